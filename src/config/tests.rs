use std::time::Duration;

use super::*;

/// One listener and one backend: what every snippet below is added to.
const BASE: &str = "[[listener]]\nbind = \"127.0.0.1:8080\"\n\n[[backend]]\nname = \"app1\"\naddress = \"127.0.0.1:9001\"\n";

/// Loads `snippet` followed by [`BASE`], so the snippet's lines are the file's first.
fn with_base(snippet: &str) -> Result<Config> {
    from_str(
        &format!("{snippet}\n{BASE}"),
        Path::new("tether.toml"),
        None,
    )
}

fn ok(snippet: &str) -> Config {
    match with_base(snippet) {
        Ok(config) => config,
        Err(e) => panic!("expected {snippet:?} to load, got: {e}"),
    }
}

fn err(snippet: &str) -> String {
    with_base(snippet).unwrap_err().to_string()
}

fn err_full(text: &str) -> String {
    from_str(text, Path::new("tether.toml"), None)
        .unwrap_err()
        .to_string()
}

/// The dev certificate: the crate's own `certs/`, else the main checkout's.
fn dev_certs() -> PathBuf {
    let own = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    if own.join("localhost.crt").exists() {
        own
    } else {
        PathBuf::from("/work/main/certs")
    }
}

/// A fresh directory under the system temp dir, unique to this process and test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir =
            std::env::temp_dir().join(format!("tether-config-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const DURATION_ADVICE: &str =
    r#"expected a number with a unit, like "500ms", "2s", "30m" or "12h""#;

#[test]
fn minimal_config_has_the_spec_defaults() {
    let c = from_str(BASE, Path::new("tether.toml"), None).unwrap();
    assert_eq!(c.path, Path::new("tether.toml"));
    assert_eq!(
        c.listeners,
        [Listener {
            bind: "127.0.0.1:8080".parse().unwrap(),
            tls: false,
            proxy_protocol: false,
            defer_accept: false,
        }]
    );
    assert!(c.tls.is_none());
    assert!(c.admin.is_none());

    let s = &c.session;
    assert_eq!(s.mode, Mode::Sticky);
    assert_eq!(s.source, Source::Cookie);
    assert_eq!(s.cookie, "tether_sid");
    assert_eq!(s.app_cookie, "JSESSIONID");
    assert_eq!(s.header, "x-session-id");
    assert_eq!(s.query_param, "sid");
    assert_eq!(s.idle_timeout, Duration::from_secs(30 * 60));
    assert_eq!(s.absolute_timeout, Duration::from_secs(12 * 3600));
    assert!(s.secrets.current.is_empty());
    assert!(s.secrets.previous.is_empty());
    assert_eq!(s.secrets.origin, SecretOrigin::Generated);
    assert_eq!(s.same_site, SameSite::Lax);
    assert_eq!(s.secure, Secure::Auto);
    assert!(s.http_only);
    assert_eq!(s.path, "/");
    assert_eq!(s.domain, None);
    assert!(s.strip_cookie);
    assert_eq!(s.balance_factor, 1.25);
    assert!(s.bind_to.is_empty());
    assert_eq!(s.on_mismatch, OnMismatch::New);

    assert_eq!(c.store.kind, StoreKind::Memory);
    assert_eq!(c.store.url, "redis://127.0.0.1:6379/0");
    assert_eq!(c.store.max_sessions, 1_000_000);

    assert_eq!(
        c.backends,
        [Backend {
            name: "app1".into(),
            address: "127.0.0.1:9001".parse().unwrap(),
            weight: 1,
            protocol: Protocol::Http1,
            tls: None,
        }]
    );

    assert_eq!(c.health.path, "/healthz");
    assert_eq!(c.health.interval, Duration::from_secs(2));
    assert_eq!(c.health.timeout, Duration::from_secs(1));
    assert_eq!((c.health.rise, c.health.fall), (2, 3));

    let t = &c.timeouts;
    assert_eq!(t.connect, Duration::from_secs(2));
    assert_eq!(t.response, Duration::from_secs(30));
    assert_eq!(t.upstream_idle, Duration::from_millis(1500));
    assert_eq!(t.client_header, Duration::from_secs(10));
    assert_eq!(t.client_body, Duration::from_secs(60));
    assert_eq!(t.keepalive, Duration::from_secs(60));
    assert_eq!(t.tunnel, Duration::from_secs(3600));
    assert_eq!(t.shutdown_grace, Duration::from_secs(30));

    assert_eq!(c.limits.max_connections, 10_000);
    assert_eq!(c.limits.max_header_bytes, 16_384);
    assert_eq!(c.limits.session_rate, 0.0);
    assert_eq!(c.limits.session_burst, 0.0);
    assert_eq!(c.limits.new_session_rate, 0.0);
    assert_eq!(c.runtime.worker_threads, 0);
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(c.log.access);
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml.example");
    let text = std::fs::read_to_string(&path).unwrap();
    let c = match from_str(&text, &path, None) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.listeners.len(), 2);
    assert!(c.listeners[0].tls && !c.listeners[1].tls);
    assert!(!c.tls.unwrap().certs.is_empty());
    assert_eq!(c.backends.len(), 3);
    assert_eq!(c.admin.unwrap().bind, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(c.session.secrets.origin, SecretOrigin::Generated);
    // Every key of SPEC §2 is in the example (set or commented out).
    const KEYS: &str = "bind tls proxy_protocol cert key mode source cookie app_cookie header \
        query_param idle_timeout absolute_timeout secret_file previous_secret_files same_site \
        secure http_only partitioned path domain strip_cookie balance_factor bind_to on_mismatch strict kind url sentinels master_name \
        max_sessions name address weight protocol sni ca_file session_resumption interval timeout rise fall connect response \
        client_header client_body keepalive tunnel shutdown_grace max_connections max_header_bytes \
        session_rate session_burst new_session_rate worker_threads token_file format access";
    for key in KEYS.split_whitespace() {
        let set = format!("\n{key} = ");
        let commented = format!("# {key} = ");
        assert!(
            text.contains(&set) || text.contains(&commented),
            "{key} missing from the example"
        );
    }
}

#[test]
fn cannot_read_the_file() {
    let e = load(Path::new("/nonexistent/tether.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "/nonexistent/tether.toml: cannot read the config file: No such file or directory (os error 2)"
    );
    assert!(e.location().is_none());
}

#[test]
fn line_and_column_count_characters() {
    assert_eq!(line_col("ab\nçd x", 7), (2, 4));
    assert_eq!(line_col("abc", 0), (1, 1));
    assert_eq!(line_col("abc", 99), (1, 4));
}

// ---- toml-level errors: keys, enums, durations ----

#[test]
fn unknown_key() {
    assert_eq!(
        err("[session]\nmode = \"sticky\"\nidle_timout = \"5m\""),
        "tether.toml:3:1: unknown field `idle_timout`, expected one of `mode`, `source`, `cookie`, `app_cookie`, `header`, `query_param`, `idle_timeout`, `absolute_timeout`, `secret`, `secret_file`, `previous_secret_files`, `same_site`, `secure`, `http_only`, `partitioned`, `path`, `domain`, `strip_cookie`, `balance_factor`, `bind_to`, `on_mismatch`, `strict`"
    );
    assert_eq!(
        err("[storage]\nkind = \"memory\""),
        "tether.toml:1:2: unknown field `storage`, expected one of `listener`, `tls`, `session`, `store`, `backend`, `health`, `timeouts`, `limits`, `runtime`, `admin`, `log`"
    );
}

#[test]
fn unknown_variants() {
    assert_eq!(
        err("[session]\nmode = \"stiky\""),
        "tether.toml:2:8: unknown variant `stiky`, expected `sticky` or `rotate`"
    );
    assert_eq!(
        err("[session]\nsource = \"cookies\""),
        "tether.toml:2:10: unknown variant `cookies`, expected one of `cookie`, `app_cookie`, `header`, `query`"
    );
    assert_eq!(
        err("[session]\nsame_site = \"Lax\""),
        "tether.toml:2:13: unknown variant `Lax`, expected one of `lax`, `strict`, `none`"
    );
    assert_eq!(
        err("[session]\nsecure = \"yes\""),
        "tether.toml:2:10: unknown variant `yes`, expected one of `auto`, `always`, `never`"
    );
    assert_eq!(
        err("[session]\nbind_to = [\"ip\", \"cookie\"]"),
        "tether.toml:2:18: unknown variant `cookie`, expected one of `ip`, `ip_prefix`, `user_agent`"
    );
    assert_eq!(
        err("[session]\non_mismatch = \"drop\""),
        "tether.toml:2:15: unknown variant `drop`, expected `new` or `reject`"
    );
    assert_eq!(
        err("[store]\nkind = \"etcd\""),
        "tether.toml:2:8: unknown variant `etcd`, expected `memory` or `redis`"
    );
    assert_eq!(
        err("[log]\nformat = \"xml\""),
        "tether.toml:2:10: unknown variant `xml`, expected `text` or `json`"
    );
}

#[test]
fn toml_syntax_error_is_one_line() {
    let e = err("[session\nmode = \"sticky\"");
    assert!(!e.contains('\n'), "{e}");
    assert!(e.starts_with("tether.toml:1:"), "{e}");
}

#[test]
fn durations_take_each_unit() {
    for (text, expected) in [
        ("500ms", Duration::from_millis(500)),
        ("2s", Duration::from_secs(2)),
        ("30m", Duration::from_secs(30 * 60)),
        ("12h", Duration::from_secs(12 * 3600)),
        ("1h 30m", Duration::from_secs(90 * 60)),
    ] {
        let c = ok(&format!("[timeouts]\nconnect = \"{text}\""));
        assert_eq!(c.timeouts.connect, expected, "{text}");
    }
}

#[test]
fn durations_past_100_years_are_refused() {
    // This one used to load, then panic at shutdown (the clock overflowed).
    assert_eq!(
        err("[timeouts]\nshutdown_grace = \"500000000000y\""),
        "tether.toml:2:18: duration \"500000000000y\" is too long: at most 100 years (\"100y\") is accepted"
    );
    assert_eq!(
        err("[health]\ninterval = \"101y\""),
        "tether.toml:2:12: duration \"101y\" is too long: at most 100 years (\"100y\") is accepted"
    );
    let c = ok("[session]\nabsolute_timeout = \"36500days\"");
    assert_eq!(c.session.absolute_timeout, file::MAX_DURATION);
}

#[test]
fn durations_without_a_unit_are_refused() {
    assert_eq!(
        err("[health]\ninterval = \"5\""),
        format!("tether.toml:2:12: invalid duration \"5\": {DURATION_ADVICE}")
    );
    assert_eq!(
        err("[health]\ninterval = 5"),
        format!("tether.toml:2:12: invalid duration 5: {DURATION_ADVICE}")
    );
    assert_eq!(
        err("[health]\ninterval = \"5 parsecs\""),
        format!("tether.toml:2:12: invalid duration \"5 parsecs\": {DURATION_ADVICE}")
    );
    assert_eq!(
        err("[health]\ninterval = \"\""),
        format!("tether.toml:2:12: invalid duration \"\": {DURATION_ADVICE}")
    );
    assert_eq!(
        err("[timeouts]\nkeepalive = 1.5"),
        format!("tether.toml:2:13: invalid duration 1.5: {DURATION_ADVICE}")
    );
}

// ---- listeners and TLS ----

#[test]
fn a_listener_is_required() {
    assert_eq!(
        err_full("[[backend]]\nname = \"app1\"\naddress = \"127.0.0.1:9001\"\n"),
        "tether.toml:1:1: at least one [[listener]] is required, like [[listener]] bind = \"0.0.0.0:8080\""
    );
}

#[test]
fn listener_bind_must_be_host_port() {
    assert_eq!(
        err("[[listener]]\nbind = \"8080\""),
        "tether.toml:2:8: invalid listener bind \"8080\" (invalid socket address); expected host:port, like \"0.0.0.0:8443\""
    );
}

#[test]
fn duplicate_listener_bind() {
    assert_eq!(
        err("[[listener]]\nbind = \"127.0.0.1:8080\"\ntls = false"),
        "tether.toml:5:8: duplicate listener bind 127.0.0.1:8080"
    );
    // Port 0 means a fresh port each time: not a duplicate.
    let text = "[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
    let c = from_str(text, Path::new("tether.toml"), None).unwrap();
    assert_eq!(c.listeners.len(), 2);
}

/// The listener's switches: set per listener, shown by `tether check`, and
/// refused with where and what when not a boolean.
#[test]
fn listener_switches_are_per_listener_and_shown_by_check() {
    for key in ["proxy_protocol", "defer_accept"] {
        let text = format!(
            "[[listener]]\nbind = \"127.0.0.1:8080\"\n{key} = true\n\
             [[listener]]\nbind = \"127.0.0.1:8081\"\n\
             [[backend]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n"
        );
        let c = from_str(&text, Path::new("tether.toml"), None).unwrap();
        let on: Vec<bool> = c
            .listeners
            .iter()
            .map(|l| match key {
                "proxy_protocol" => l.proxy_protocol,
                _ => l.defer_accept,
            })
            .collect();
        assert_eq!(on, [true, false], "{key}");
        let out = c.effective_toml();
        let shown: Vec<&str> = out.lines().filter(|l| l.starts_with(key)).collect();
        assert_eq!(
            shown,
            [format!("{key} = true"), format!("{key} = false")],
            "{out}"
        );
        assert_eq!(
            err(&format!(
                "[[listener]]\nbind = \"127.0.0.1:8443\"\n{key} = \"v2\""
            )),
            format!(
                "tether.toml:3:{}: invalid type: string \"v2\", expected a boolean",
                key.len() + 4
            )
        );
    }
}

#[test]
fn tls_listener_needs_tls_section() {
    assert_eq!(
        err("[[listener]]\nbind = \"127.0.0.1:8443\"\ntls = true"),
        "tether.toml:3:7: a listener with tls = true needs a [tls] section with cert and key"
    );
}

#[test]
fn tls_loads_the_dev_certificate() {
    let certs = dev_certs();
    let snippet = format!(
        "[[listener]]\nbind = \"127.0.0.1:8443\"\ntls = true\n[tls]\ncert = \"{}\"\nkey = \"{}\"",
        certs.join("localhost.crt").display(),
        certs.join("localhost.key").display()
    );
    let c = ok(&snippet);
    let tls = c.tls.clone().unwrap();
    assert_eq!(tls.cert_path, certs.join("localhost.crt"));
    assert_eq!(tls.key_path, certs.join("localhost.key"));
    assert!(!tls.certs.is_empty());
    assert!(c.listeners[0].tls);
    assert!(!format!("{c:?}").contains("BEGIN"));
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let dir = TempDir::new("relative");
    let certs = dev_certs();
    dir.write(
        "certs/a.crt",
        &std::fs::read(certs.join("localhost.crt")).unwrap(),
    );
    dir.write(
        "certs/a.key",
        &std::fs::read(certs.join("localhost.key")).unwrap(),
    );
    dir.write("secrets/current", b"0123456789abcdef0123\n");
    dir.write("secrets/old", b"fedcba9876543210\r\n");
    dir.write("admin.token", b"  s3cret-token \n");
    let text = format!(
        "[tls]\ncert = \"certs/a.crt\"\nkey = \"certs/a.key\"\n\
         [session]\nsecret_file = \"secrets/current\"\nprevious_secret_files = [\"secrets/old\"]\n\
         [admin]\ntoken_file = \"admin.token\"\n{BASE}"
    );
    let path = dir.0.join("tether.toml");
    let c = from_str(&text, &path, Some("ignored-because-the-file-wins".into())).unwrap();
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.cert_path, dir.0.join("certs/a.crt"));
    assert_eq!(tls.key_path, dir.0.join("certs/a.key"));
    assert!(!tls.certs.is_empty());
    let secrets = &c.session.secrets;
    assert_eq!(secrets.current, b"0123456789abcdef0123");
    assert_eq!(secrets.previous, [b"fedcba9876543210".to_vec()]);
    assert_eq!(
        secrets.origin,
        SecretOrigin::File(dir.0.join("secrets/current"))
    );
    assert_eq!(
        c.admin.as_ref().unwrap().token.as_deref(),
        Some("s3cret-token")
    );
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn unreadable_cert_or_key() {
    assert_eq!(
        err("[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\""),
        "tether.toml:2:8: cannot read certificate file missing.crt: No such file or directory (os error 2)"
    );
    let crt = dev_certs().join("localhost.crt");
    assert_eq!(
        err(&format!(
            "[tls]\ncert = \"{}\"\nkey = \"missing.key\"",
            crt.display()
        )),
        "tether.toml:3:7: cannot read key file missing.key: No such file or directory (os error 2)"
    );
}

#[test]
fn cert_without_certificate_and_key_without_key() {
    let certs = dev_certs();
    let (crt, key) = (certs.join("localhost.crt"), certs.join("localhost.key"));
    assert_eq!(
        err(&format!("[tls]\ncert = \"{}\"\nkey = \"{}\"", key.display(), key.display())),
        format!(
            "tether.toml:2:8: certificate file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            key.display()
        )
    );
    assert_eq!(
        err(&format!("[tls]\ncert = \"{}\"\nkey = \"{}\"", crt.display(), crt.display())),
        format!(
            "tether.toml:3:7: cannot parse key file {}: no PEM private key (PKCS#8, RSA or EC) found",
            crt.display()
        )
    );
}

// ---- backends ----

#[test]
fn a_backend_is_required() {
    assert_eq!(
        err_full("[[listener]]\nbind = \"127.0.0.1:8080\"\n"),
        "tether.toml:1:1: at least one [[backend]] is required, like [[backend]] name = \"app1\" address = \"127.0.0.1:9001\""
    );
}

#[test]
fn duplicate_backend_name_points_at_the_second() {
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\n[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9003\""),
        "tether.toml:5:8: duplicate backend name \"app2\": names must be unique"
    );
}

#[test]
fn backend_name_charset_and_length() {
    let advice = "expected 1 to 64 of A-Z a-z 0-9 . _ -, like \"app1\"";
    assert_eq!(
        err("[[backend]]\nname = \"app 2\"\naddress = \"127.0.0.1:9002\""),
        format!("tether.toml:2:8: invalid backend name \"app 2\": {advice}")
    );
    assert_eq!(
        err("[[backend]]\nname = \"\"\naddress = \"127.0.0.1:9002\""),
        format!("tether.toml:2:8: invalid backend name \"\": {advice}")
    );
    let long = "a".repeat(65);
    assert_eq!(
        err(&format!(
            "[[backend]]\nname = \"{long}\"\naddress = \"127.0.0.1:9002\""
        )),
        format!("tether.toml:2:8: invalid backend name \"{long}\": {advice}")
    );
    ok(&format!(
        "[[backend]]\nname = \"{}\"\naddress = \"127.0.0.1:9002\"",
        "a.B_9-".repeat(10)
    ));
}

#[test]
fn backend_address_must_be_host_port() {
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1\""),
        "tether.toml:3:11: invalid backend address \"127.0.0.1\" (invalid socket address); expected host:port, like \"127.0.0.1:9001\""
    );
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:99999\""),
        "tether.toml:3:11: invalid backend address \"127.0.0.1:99999\" (invalid port value); expected host:port, like \"127.0.0.1:9001\""
    );
    let c = ok("[[backend]]\nname = \"app2\"\naddress = \"localhost:9002\"");
    assert_eq!(c.backends[0].address.port(), 9002);
    assert!(c.backends[0].address.ip().is_loopback());
}

#[test]
fn backend_protocol_and_tls() {
    let c = ok(
        "[[backend]]\nname = \"app2\"\naddress = \"localhost:9002\"\nprotocol = \"h2\"\ntls = true",
    );
    let b = &c.backends[0];
    assert_eq!(b.protocol, Protocol::H2);
    let tls = b.tls.as_ref().unwrap();
    // The name defaults to the address's host, as written.
    assert_eq!(tls.server_name.to_str(), "localhost");
    assert_eq!((tls.ca.as_ref(), tls.ca_path.as_ref()), (None, None));
    let c = ok("[[backend]]\nname = \"app2\"\naddress = \"[::1]:9002\"\ntls = true");
    assert_eq!(
        c.backends[0].tls.as_ref().unwrap().server_name.to_str(),
        "::1"
    );
    let crt = dev_certs().join("localhost.crt");
    let c = ok(&format!(
        "[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\ntls = true\nsni = \"app2.internal\"\nca_file = {:?}",
        crt.display().to_string()
    ));
    let tls = c.backends[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_name.to_str(), "app2.internal");
    assert_eq!(tls.ca.as_ref().map(Vec::len), Some(1));
    assert_eq!(tls.ca_path.as_deref(), Some(crt.as_path()));
    assert!(c.effective_toml().contains("sni = \"app2.internal\""));
}

#[test]
fn backend_tls_refusals() {
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nprotocol = \"h3\""),
        "tether.toml:4:12: unknown variant `h3`, expected `http1` or `h2`"
    );
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nsni = \"x\""),
        "tether.toml:4:7: sni applies to a TLS backend only: add tls = true to this [[backend]], or remove sni"
    );
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nca_file = \"ca.pem\""),
        "tether.toml:4:11: ca_file applies to a TLS backend only: add tls = true to this [[backend]], or remove ca_file"
    );
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\ntls = true\nsni = \"bad name!\""),
        "tether.toml:5:7: invalid TLS server name \"bad name!\": expected a DNS name or an IP address, like sni = \"app1.internal\""
    );
    let e = err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\ntls = true\nca_file = \"/nonexistent/ca.pem\"");
    assert!(
        e.starts_with("tether.toml:5:11: cannot read CA file /nonexistent/ca.pem: "),
        "{e}"
    );
    let dir = TempDir::new("bad-ca");
    let junk = dir.write("ca.pem", b"not a certificate\n");
    let e = err(&format!(
        "[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\ntls = true\nca_file = {:?}",
        junk.display().to_string()
    ));
    assert!(e.starts_with("tether.toml:5:11: certificate file "), "{e}");
    assert!(e.contains("holds no PEM certificate"), "{e}");
}

#[test]
fn backend_weight_range() {
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nweight = 0"),
        "tether.toml:4:10: invalid weight 0: expected 1 to 1000"
    );
    assert_eq!(
        err("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nweight = 1001"),
        "tether.toml:4:10: invalid weight 1001: expected 1 to 1000"
    );
    let c = ok("[[backend]]\nname = \"app2\"\naddress = \"127.0.0.1:9002\"\nweight = 1000");
    assert_eq!(c.backends[0].weight, 1000);
}

#[test]
fn backend_weights_are_bounded_in_sum() {
    let pool = |n: usize, weight: u32| {
        (0..n)
            .map(|i| {
                format!(
                    "[[backend]]\nname = \"w{i}\"\naddress = \"127.0.0.1:{}\"\nweight = {weight}\n",
                    10000 + i
                )
            })
            .collect::<String>()
    };
    // The base config's own backend(s) take part of the budget.
    let base: u64 = ok("").backends.iter().map(|b| u64::from(b.weight)).sum();
    let fits = (MAX_TOTAL_WEIGHT - base) as usize / 1000;
    assert_eq!(
        ok(&pool(fits, 1000)).backends.len(),
        fits + ok("").backends.len()
    );
    // The snippet's own weights cross the bound at its last backend...
    let e = err(&pool(fits + 2, 1000));
    assert!(
        e.contains("backend weights add up to more than 10000"),
        "{e}"
    );
    let at = format!("tether.toml:{}:10: ", 4 * (fits + 2));
    assert!(e.starts_with(&at), "{e}");
    // ...and a backend with the default weight is named where it tips it.
    let full = pool(fits, 1000)
        + &pool(1, (MAX_TOTAL_WEIGHT - 1000 * fits as u64) as u32).replace("w0", "tail");
    let e = err(&full);
    let app1 = format!("tether.toml:{}:8: ", 4 * (fits + 1) + 6);
    assert!(e.starts_with(&app1), "{e}");
}

#[test]
fn at_most_1024_backends() {
    let mut text = String::from(BASE);
    for i in 2..=1025 {
        text.push_str(&format!(
            "[[backend]]\nname = \"b{i}\"\naddress = \"127.0.0.1:{i}\"\n"
        ));
    }
    // The 1025th backend's name: 6 base lines, then 3 lines per backend.
    assert_eq!(
        err_full(&text),
        format!(
            "tether.toml:{}:8: too many backends: at most 1024 are allowed",
            6 + 1023 * 3 + 2
        )
    );
}

// ---- session ----

#[test]
fn session_timeouts_must_be_positive() {
    assert_eq!(
        err("[session]\nidle_timeout = \"0s\""),
        "tether.toml:2:16: idle_timeout must be greater than 0, like \"2s\""
    );
    assert_eq!(
        err("[session]\nabsolute_timeout = \"0ms\""),
        "tether.toml:2:20: absolute_timeout must be greater than 0, like \"2s\""
    );
}

#[test]
fn balance_factor_zero_or_at_least_one() {
    assert_eq!(
        err("[session]\nbalance_factor = 0.5"),
        "tether.toml:2:18: invalid balance_factor 0.5: expected 0 (off) or a number >= 1.0, like 1.25"
    );
    assert_eq!(
        err("[session]\nbalance_factor = nan"),
        "tether.toml:2:18: invalid balance_factor NaN: expected 0 (off) or a number >= 1.0, like 1.25"
    );
    assert_eq!(
        ok("[session]\nbalance_factor = 0").session.balance_factor,
        0.0
    );
    assert_eq!(
        ok("[session]\nbalance_factor = 1.0").session.balance_factor,
        1.0
    );
}

#[test]
fn cookie_names_are_tokens() {
    assert_eq!(
        err("[session]\ncookie = \"my sid\""),
        "tether.toml:2:10: invalid cookie name \"my sid\": expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\""
    );
    assert_eq!(
        err("[session]\napp_cookie = \"a=b\""),
        "tether.toml:2:14: invalid app_cookie name \"a=b\": expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\""
    );
    assert_eq!(
        err("[session]\ncookie = \"\""),
        "tether.toml:2:10: invalid cookie name \"\": expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\""
    );
}

#[test]
fn same_site_none_needs_secure() {
    assert_eq!(
        err("[session]\nsame_site = \"none\"\nsecure = \"never\""),
        "tether.toml:2:13: same_site = \"none\" needs Secure, but secure = \"never\": browsers drop such cookies; set secure = \"always\" or \"auto\" with only tls listeners"
    );
    ok("[session]\nsame_site = \"none\"\nsecure = \"always\"");
    // `auto` leaves Secure off the plain listener BASE adds.
    assert_eq!(
        err("[session]\nsame_site = \"none\""),
        "tether.toml:2:13: same_site = \"none\" needs Secure, but secure = \"auto\" leaves it off on plain listeners: browsers drop such cookies; set secure = \"always\" or use only tls listeners"
    );
}

#[test]
fn partitioned_needs_same_site_none_and_secure() {
    assert_eq!(
        err("[session]\npartitioned = true\nsecure = \"always\""),
        "tether.toml:2:15: partitioned = true needs same_site = \"none\" and Secure, but same_site = \"lax\": browsers refuse such cookies; set same_site = \"none\""
    );
    assert_eq!(
        err("[session]\npartitioned = true\nsame_site = \"none\"\nsecure = \"never\""),
        "tether.toml:2:15: partitioned = true needs same_site = \"none\" and Secure, but secure = \"never\": browsers refuse such cookies; set secure = \"always\" or use only tls listeners"
    );
    assert_eq!(
        err("[session]\npartitioned = true\nsame_site = \"none\""),
        "tether.toml:2:15: partitioned = true needs same_site = \"none\" and Secure, but secure = \"auto\" leaves it off on plain listeners: browsers refuse such cookies; set secure = \"always\" or use only tls listeners"
    );
    let c = ok("[session]\npartitioned = true\nsame_site = \"none\"\nsecure = \"always\"");
    assert!(c.session.partitioned);
    assert!(!ok("").session.partitioned);
}

#[test]
fn host_prefix_needs_secure() {
    assert_eq!(
        err("[session]\ncookie = \"__Host-sid\""),
        "tether.toml:2:10: cookie \"__Host-sid\": the __Host- prefix requires Secure, but secure = \"auto\" leaves it off on plain listeners; set secure = \"always\" or use only tls listeners"
    );
    assert_eq!(
        err("[session]\ncookie = \"__host-sid\"\nsecure = \"never\""),
        "tether.toml:2:10: cookie \"__host-sid\": the __Host- prefix requires Secure, but secure = \"never\"; set secure = \"always\" or use only tls listeners"
    );
    ok("[session]\ncookie = \"__Host-sid\"\nsecure = \"always\"");
}

#[test]
fn host_prefix_needs_root_path_and_no_domain() {
    assert_eq!(
        err("[session]\ncookie = \"__Host-sid\"\nsecure = \"always\"\npath = \"/app\""),
        "tether.toml:4:8: cookie \"__Host-sid\": the __Host- prefix requires path = \"/\""
    );
    assert_eq!(
        err("[session]\ncookie = \"__Host-sid\"\nsecure = \"always\"\ndomain = \"example.com\""),
        "tether.toml:4:10: cookie \"__Host-sid\": the __Host- prefix forbids a domain; remove it"
    );
}

#[test]
fn secure_prefix_needs_secure() {
    assert_eq!(
        err("[session]\ncookie = \"__Secure-sid\"\nsecure = \"never\""),
        "tether.toml:2:10: cookie \"__Secure-sid\": the __Secure- prefix requires Secure, but secure = \"never\"; set secure = \"always\" or use only tls listeners"
    );
    assert_eq!(
        err("[session]\ncookie = \"__Secure-sid\""),
        "tether.toml:2:10: cookie \"__Secure-sid\": the __Secure- prefix requires Secure, but secure = \"auto\" leaves it off on plain listeners; set secure = \"always\" or use only tls listeners"
    );
    let c = ok("[session]\ncookie = \"__Secure-sid\"\nsecure = \"always\"\npath = \"/app\"\ndomain = \"example.com\"");
    assert_eq!(c.session.domain.as_deref(), Some("example.com"));
}

#[test]
fn prefixes_with_auto_and_only_tls_listeners() {
    let certs = dev_certs();
    let text = format!(
        "[[listener]]\nbind = \"127.0.0.1:8443\"\ntls = true\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\
         [session]\ncookie = \"__Host-sid\"\n[[backend]]\nname = \"a\"\naddress = \"127.0.0.1:9001\"\n",
        certs.join("localhost.crt").display(),
        certs.join("localhost.key").display()
    );
    let c = from_str(&text, Path::new("tether.toml"), None).unwrap();
    assert_eq!(c.session.cookie, "__Host-sid");
    assert_eq!(c.session.secure, Secure::Auto);
}

#[test]
fn cookie_path_and_domain_shape() {
    assert_eq!(
        err("[session]\npath = \"app\""),
        "tether.toml:2:8: invalid cookie path \"app\": expected a path starting with \"/\", without spaces or \";\""
    );
    assert_eq!(
        err("[session]\ndomain = \"exa mple.com\""),
        "tether.toml:2:10: invalid cookie domain \"exa mple.com\": expected a host name, like \"example.com\""
    );
}

#[test]
fn header_source_needs_a_field_name() {
    assert_eq!(
        err("[session]\nsource = \"header\"\nheader = \"X Session\""),
        "tether.toml:3:10: invalid header name \"X Session\": expected an HTTP field name (letters, digits and !#$%&'*+-.^_`|~), like \"X-Session-Id\""
    );
    let c = ok("[session]\nsource = \"header\"\nheader = \"X-Tenant-Session\"");
    assert_eq!(c.session.source, Source::Header);
    assert_eq!(c.session.header, "x-tenant-session");
}

#[test]
fn query_source_needs_a_name() {
    assert_eq!(
        err("[session]\nsource = \"query\"\nquery_param = \"\""),
        "tether.toml:3:15: query_param must not be empty when source = \"query\""
    );
    let c = ok("[session]\nsource = \"query\"\nquery_param = \"s\"");
    assert_eq!(c.session.query_param, "s");
}

#[test]
fn bind_to_items_are_unique() {
    assert_eq!(
        err("[session]\nbind_to = [\"ip\", \"user_agent\", \"ip\"]"),
        "tether.toml:2:32: bind_to lists \"ip\" twice"
    );
    let c = ok("[session]\nbind_to = [\"ip_prefix\", \"user_agent\"]\non_mismatch = \"reject\"");
    assert_eq!(c.session.bind_to, [BindTo::IpPrefix, BindTo::UserAgent]);
    assert_eq!(c.session.on_mismatch, OnMismatch::Reject);
}

#[test]
fn rotate_mode_and_enums() {
    let c = ok("[session]\nmode = \"rotate\"\nsource = \"app_cookie\"\nsame_site = \"strict\"\nsecure = \"always\"\n[log]\nformat = \"json\"\naccess = false");
    assert_eq!(c.session.mode, Mode::Rotate);
    assert_eq!(c.session.source, Source::AppCookie);
    assert_eq!(c.session.same_site, SameSite::Strict);
    assert_eq!(c.session.secure, Secure::Always);
    assert_eq!(c.log.format, LogFormat::Json);
    assert!(!c.log.access);
}

// ---- secrets ----

#[test]
fn inline_secret() {
    let c = ok("[session]\nsecret = \"0123456789abcdef\"");
    assert_eq!(c.session.secrets.current, b"0123456789abcdef");
    assert_eq!(c.session.secrets.origin, SecretOrigin::Inline);
    assert_eq!(
        err("[session]\nsecret = \"short\""),
        "tether.toml:2:10: secret holds 5 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64)"
    );
}

#[test]
fn secret_and_secret_file_conflict() {
    assert_eq!(
        err("[session]\nsecret = \"0123456789abcdef\"\nsecret_file = \"secret\""),
        "tether.toml:3:15: set either secret or secret_file, not both"
    );
}

#[test]
fn secret_file_errors() {
    assert_eq!(
        err("[session]\nsecret_file = \"no/such/secret\""),
        "tether.toml:2:15: cannot read secret_file no/such/secret: No such file or directory (os error 2)"
    );
    let dir = TempDir::new("short-secret");
    let short = dir.write("secret", b"tooshort\n");
    assert_eq!(
        err(&format!("[session]\nsecret_file = \"{}\"", short.display())),
        format!(
            "tether.toml:2:15: secret_file {0} holds 8 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64 > {0})",
            short.display()
        )
    );
    assert_eq!(
        err(&format!(
            "[session]\nprevious_secret_files = [\"{}\"]",
            short.display()
        )),
        format!(
            "tether.toml:2:26: previous secret file {0} holds 8 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64 > {0})",
            short.display()
        )
    );
}

#[test]
fn env_secret_is_used_when_the_file_names_none() {
    let c = from_str(
        BASE,
        Path::new("tether.toml"),
        Some("from-the-environment".into()),
    )
    .unwrap();
    assert_eq!(c.session.secrets.current, b"from-the-environment");
    assert_eq!(c.session.secrets.origin, SecretOrigin::Env);

    let inline = format!("[session]\nsecret = \"0123456789abcdef\"\n{BASE}");
    let c = from_str(
        &inline,
        Path::new("tether.toml"),
        Some("from-the-environment".into()),
    )
    .unwrap();
    assert_eq!(c.session.secrets.origin, SecretOrigin::Inline);

    assert_eq!(
        from_str(BASE, Path::new("tether.toml"), Some("short".into()))
            .unwrap_err()
            .to_string(),
        "tether.toml: TETHER_SECRET holds 5 bytes; a secret needs at least 16 (try: head -c 32 /dev/urandom | base64)"
    );
}

// ---- store, health, timeouts, limits, runtime ----

#[test]
fn store_checks() {
    assert_eq!(
        err("[store]\nmax_sessions = 0"),
        "tether.toml:2:16: invalid max_sessions 0: expected a number >= 1"
    );
    assert_eq!(
        err("[store]\nkind = \"redis\"\nurl = \"http://127.0.0.1:6379\""),
        "tether.toml:3:7: invalid redis url \"http://127.0.0.1:6379\": expected redis:// or rediss://, like \"redis://127.0.0.1:6379/0\""
    );
    let c = ok("[store]\nkind = \"redis\"\nurl = \"rediss://cache:6380/1\"\n[session]\nsecret = \"0123456789abcdef\"");
    assert_eq!(c.store.kind, StoreKind::Redis);
    assert_eq!(c.store.url, "rediss://cache:6380/1");
    // The URL only matters for the Redis store.
    ok("[store]\nurl = \"whatever\"");
    assert_eq!(
        (
            c.store.key_prefix.as_str(),
            c.store.connect_timeout,
            c.store.command_timeout
        ),
        (
            "tether:",
            Duration::from_millis(500),
            Duration::from_millis(250)
        )
    );
    let c = ok("[store]\nkind = \"redis\"\nkey_prefix = \"app1/\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"50ms\"\n[session]\nsecret = \"0123456789abcdef\"");
    assert_eq!(
        (
            c.store.key_prefix.as_str(),
            c.store.connect_timeout,
            c.store.command_timeout
        ),
        ("app1/", Duration::from_secs(2), Duration::from_millis(50))
    );
    assert_eq!(
        err("[store]\nkey_prefix = \"my app\""),
        "tether.toml:2:14: invalid key_prefix \"my app\": expected 1 to 64 printable characters without spaces, like \"tether:\""
    );
    assert_eq!(
        err("[store]\nkey_prefix = \"\""),
        "tether.toml:2:14: invalid key_prefix \"\": expected 1 to 64 printable characters without spaces, like \"tether:\""
    );
    assert_eq!(
        err("[store]\ncommand_timeout = \"0s\""),
        "tether.toml:2:19: command_timeout must be greater than 0, like \"2s\""
    );
    assert_eq!(
        err("[store]\nkind = \"redis\"\nurl = \"redis://127.0.0.1:6379/db\""),
        "tether.toml:3:7: invalid redis url \"redis://127.0.0.1:6379/db\": Invalid database number"
    );
}

#[test]
fn a_redis_store_needs_a_shared_secret() {
    let refused = "tether.toml:2:8: [store] kind = \"redis\" needs a shared session secret: without one every instance makes up its own and none can read the others' cookies; set [session] secret_file (or secret, or the TETHER_SECRET environment variable) to the same secret on every instance";
    assert_eq!(err("[store]\nkind = \"redis\""), refused);
    let from_env = from_str(
        &format!("[store]\nkind = \"redis\"\n{BASE}"),
        Path::new("tether.toml"),
        Some("0123456789abcdef".into()),
    )
    .expect("TETHER_SECRET is shared by whoever sets it");
    assert_eq!(from_env.session.secrets.origin, SecretOrigin::Env);
    ok("[store]\nkind = \"redis\"\n[session]\nsecret = \"0123456789abcdef\"");
    // The memory store has no one to share with.
    ok("[store]\nkind = \"memory\"");
}

/// `[store] sentinels` + `master_name`: both or neither, Redis only, not
/// with an explicit `url`, every entry `host:port`.
#[test]
fn sentinel_checks() {
    const SECRET: &str = "[session]\nsecret = \"0123456789abcdef\"";
    let c = ok(&format!("[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\", \"sentinel-1.redis:26380\", \"[::1]:26381\"]\nmaster_name = \"mymaster\"\n{SECRET}"));
    let s = c.store.sentinel.as_ref().expect("sentinel settings");
    assert_eq!(s.master_name, "mymaster");
    let addrs: Vec<(String, u16)> = s.addrs.iter().map(|a| (a.host.clone(), a.port)).collect();
    assert_eq!(
        addrs,
        [
            ("10.0.0.1".to_string(), 26379),
            ("sentinel-1.redis".to_string(), 26380),
            ("::1".to_string(), 26381)
        ]
    );
    let shown: Vec<String> = s.addrs.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        ["10.0.0.1:26379", "sentinel-1.redis:26380", "[::1]:26381"]
    );
    // `check` prints them back, and no url (none is used).
    let out = c.effective_toml();
    assert!(
        out.contains(
            "sentinels = [\"10.0.0.1:26379\", \"sentinel-1.redis:26380\", \"[::1]:26381\"]\n"
        ),
        "{out}"
    );
    assert!(out.contains("master_name = \"mymaster\"\n"), "{out}");
    assert!(!out.contains("url ="), "{out}");
    // Without sentinels, the url as before.
    let c = ok(&format!("[store]\nkind = \"redis\"\n{SECRET}"));
    assert_eq!(c.store.sentinel, None);
    assert!(c
        .effective_toml()
        .contains("url = \"redis://127.0.0.1:6379/0\"\n"));

    let cases: &[(&str, &str)] = &[
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\"]",
            "tether.toml:3:13: [store] sentinels needs master_name, the name the sentinels monitor the primary under (`sentinel monitor <name> ...` in their config), like master_name = \"mymaster\"",
        ),
        (
            "[store]\nkind = \"redis\"\nmaster_name = \"mymaster\"",
            "tether.toml:3:15: [store] master_name needs sentinels, the sentinels to ask for that primary, like sentinels = [\"10.0.0.1:26379\", \"10.0.0.2:26379\", \"10.0.0.3:26379\"]",
        ),
        (
            "[store]\nkind = \"redis\"\nurl = \"redis://10.0.0.9:6379/0\"\nsentinels = [\"10.0.0.1:26379\"]\nmaster_name = \"mymaster\"",
            "tether.toml:3:7: [store] url and sentinels are exclusive: with sentinels, tether asks them for the primary's address; remove url",
        ),
        (
            "[store]\nsentinels = [\"10.0.0.1:26379\"]\nmaster_name = \"mymaster\"",
            "tether.toml:2:13: [store] sentinels is for the Redis store: set kind = \"redis\" (or remove sentinels and master_name)",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = []\nmaster_name = \"mymaster\"",
            "tether.toml:3:13: [store] sentinels is empty: expected at least one host:port, like [\"10.0.0.1:26379\"]",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\", \"10.0.0.2\"]\nmaster_name = \"mymaster\"",
            "tether.toml:3:32: invalid sentinel address \"10.0.0.2\": expected host:port, like \"10.0.0.1:26379\" or \"[::1]:26379\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"redis://10.0.0.1:26379\"]\nmaster_name = \"m\"",
            "tether.toml:3:14: invalid sentinel address \"redis://10.0.0.1:26379\": expected host:port, like \"10.0.0.1:26379\" or \"[::1]:26379\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:0\"]\nmaster_name = \"m\"",
            "tether.toml:3:14: invalid sentinel address \"10.0.0.1:0\": expected host:port, like \"10.0.0.1:26379\" or \"[::1]:26379\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"::1:26379\"]\nmaster_name = \"m\"",
            "tether.toml:3:14: invalid sentinel address \"::1:26379\": expected host:port, like \"10.0.0.1:26379\" or \"[::1]:26379\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\":26379\"]\nmaster_name = \"m\"",
            "tether.toml:3:14: invalid sentinel address \":26379\": expected host:port, like \"10.0.0.1:26379\" or \"[::1]:26379\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\"]\nmaster_name = \"my master\"",
            "tether.toml:4:15: invalid master_name \"my master\": expected the name the sentinels monitor the primary under, printable characters without spaces, like \"mymaster\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\"]\nmaster_name = \"\"",
            "tether.toml:4:15: invalid master_name \"\": expected the name the sentinels monitor the primary under, printable characters without spaces, like \"mymaster\"",
        ),
        (
            "[store]\nkind = \"redis\"\nsentinels = \"10.0.0.1:26379\"\nmaster_name = \"m\"",
            "tether.toml:3:13: invalid type: string \"10.0.0.1:26379\", expected a sequence",
        ),
    ];
    for (snippet, refused) in cases {
        assert_eq!(&err(&format!("{snippet}\n{SECRET}")), refused, "{snippet}");
    }
    // Still a Redis store: the secret must be shared.
    assert_eq!(
        err("[store]\nkind = \"redis\"\nsentinels = [\"10.0.0.1:26379\"]\nmaster_name = \"m\""),
        "tether.toml:2:8: [store] kind = \"redis\" needs a shared session secret: without one every instance makes up its own and none can read the others' cookies; set [session] secret_file (or secret, or the TETHER_SECRET environment variable) to the same secret on every instance"
    );
}

#[test]
fn health_checks() {
    assert_eq!(
        err("[health]\nrise = 0"),
        "tether.toml:2:8: invalid rise 0: expected 1 to 1000"
    );
    assert_eq!(
        err("[health]\nfall = 0"),
        "tether.toml:2:8: invalid fall 0: expected 1 to 1000"
    );
    assert_eq!(
        err("[health]\ninterval = \"0s\""),
        "tether.toml:2:12: interval must be greater than 0, like \"2s\""
    );
    assert_eq!(
        err("[health]\ntimeout = \"0s\""),
        "tether.toml:2:11: timeout must be greater than 0, like \"2s\""
    );
    assert_eq!(
        err("[health]\npath = \"healthz\""),
        "tether.toml:2:8: invalid health path \"healthz\": expected a path starting with \"/\", like \"/healthz\""
    );
}

#[test]
fn timeouts_must_be_positive() {
    assert_eq!(
        err("[timeouts]\nresponse = \"0s\""),
        "tether.toml:2:12: response must be greater than 0, like \"2s\""
    );
    assert_eq!(
        err("[timeouts]\nupstream_idle = \"0s\""),
        "tether.toml:2:17: upstream_idle must be greater than 0, like \"2s\""
    );
    let c = ok("[timeouts]\nupstream_idle = \"300ms\"");
    assert_eq!(c.timeouts.upstream_idle, Duration::from_millis(300));
    let c = ok("[timeouts]\nkeepalive = \"0s\"\nshutdown_grace = \"0s\"");
    assert_eq!(c.timeouts.keepalive, Duration::ZERO);
    assert_eq!(
        err("[timeouts]\ntunnel = \"0s\""),
        "tether.toml:2:10: tunnel must be greater than 0, like \"2s\""
    );
    assert_eq!(
        ok("[timeouts]\ntunnel = \"90s\"").timeouts.tunnel,
        Duration::from_secs(90)
    );
}

#[test]
fn limits_checks() {
    assert_eq!(
        err("[limits]\nmax_connections = 0"),
        "tether.toml:2:19: invalid max_connections 0: expected a number >= 1"
    );
    assert_eq!(
        err("[limits]\nmax_header_bytes = 1023"),
        "tether.toml:2:20: invalid max_header_bytes 1023: expected 1024 to 1048576"
    );
    assert_eq!(
        err("[limits]\nmax_header_bytes = 1048577"),
        "tether.toml:2:20: invalid max_header_bytes 1048577: expected 1024 to 1048576"
    );
    assert_eq!(
        err("[limits]\nsession_rate = -1"),
        "tether.toml:2:16: invalid session_rate -1: expected a number >= 0 (0 = off)"
    );
    assert_eq!(
        err("[limits]\nnew_session_rate = -0.5"),
        "tether.toml:2:20: invalid new_session_rate -0.5: expected a number >= 0 (0 = off)"
    );
    let c = ok("[limits]\nsession_rate = 5");
    assert_eq!((c.limits.session_rate, c.limits.session_burst), (5.0, 10.0));
    let c = ok("[limits]\nsession_rate = 5\nsession_burst = 3");
    assert_eq!(c.limits.session_burst, 3.0);
}

#[test]
fn worker_threads_bound() {
    assert_eq!(
        err("[runtime]\nworker_threads = 1025"),
        "tether.toml:2:18: invalid worker_threads 1025: expected 0 to 1024 (0 = one per core)"
    );
    assert_eq!(
        ok("[runtime]\nworker_threads = 4").runtime.worker_threads,
        4
    );
}

// ---- admin ----

#[test]
fn admin_defaults_and_absence() {
    let c = ok("[admin]");
    let admin = c.admin.unwrap();
    assert_eq!(admin.bind, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(admin.token, None);
}

#[test]
fn admin_off_loopback_needs_a_token() {
    assert_eq!(
        err("[admin]\nbind = \"0.0.0.0:9901\""),
        "tether.toml:2:8: admin bind 0.0.0.0:9901 is not a loopback address: tether refuses to expose the admin API without a token; set token_file or bind 127.0.0.1"
    );
    let dir = TempDir::new("admin-token");
    let token = dir.write("token", b"t0ken\n");
    let c = ok(&format!(
        "[admin]\nbind = \"0.0.0.0:9901\"\ntoken_file = \"{}\"",
        token.display()
    ));
    assert_eq!(c.admin.unwrap().token.as_deref(), Some("t0ken"));
    let empty = dir.write("empty", b" \n");
    assert_eq!(
        err(&format!("[admin]\ntoken_file = \"{}\"", empty.display())),
        format!("tether.toml:2:14: token_file {} is empty", empty.display())
    );
}

#[test]
fn admin_bind_clashing_with_a_listener() {
    assert_eq!(
        err("[admin]\nbind = \"127.0.0.1:8080\""),
        "tether.toml:2:8: admin bind 127.0.0.1:8080 is also a listener's bind; pick another port"
    );
}

// ---- effective config ----

#[test]
fn effective_toml_redacts_a_redis_password() {
    for (url, shown) in [
        (
            "redis://:hunter2@10.0.0.5:6379/0",
            "redis://:<redacted>@10.0.0.5:6379/0",
        ),
        (
            "rediss://tether:hunter2@cache:6380",
            "rediss://tether:<redacted>@cache:6380",
        ),
        ("redis://10.0.0.5:6379/0", "redis://10.0.0.5:6379/0"),
        ("redis://user@host:1", "redis://user@host:1"),
    ] {
        let c = ok(&format!(
            "[store]\nkind = \"redis\"\nurl = \"{url}\"\n[session]\nsecret = \"a shared secret of 32 bytes or more\""
        ));
        let out = c.effective_toml();
        assert!(!out.contains("hunter2"), "{out}");
        assert!(out.contains(&format!("url = \"{shown}\"")), "{url}: {out}");
        assert_eq!(c.store.url, url, "the running config keeps the password");
    }
}

#[test]
fn effective_toml_redacts_secrets_and_fills_defaults() {
    let dir = TempDir::new("effective");
    let secret = dir.write("secret", b"super-secret-value-123\n");
    let token = dir.write("token", b"admin-token-xyz\n");
    let text = format!(
        "[session]\nsecret_file = \"{}\"\n[admin]\ntoken_file = \"{}\"\n{BASE}",
        secret.display(),
        token.display()
    );
    let c = from_str(&text, Path::new("tether.toml"), None).unwrap();
    let out = c.effective_toml();
    assert!(!out.contains("super-secret"), "{out}");
    assert!(!out.contains("admin-token-xyz"), "{out}");
    assert!(
        out.contains(&format!(
            "secret = \"<redacted: from {}>\"\n",
            secret.display()
        )),
        "{out}"
    );
    assert!(out.contains("token_file = \"<redacted>\"\n"), "{out}");
    for line in [
        "idle_timeout = \"30m\"",
        "absolute_timeout = \"12h\"",
        "balance_factor = 1.25",
        "max_sessions = 1000000",
        "bind = \"127.0.0.1:9901\"",
        "interval = \"2s\"",
        "tunnel = \"1h\"",
        "access = true",
    ] {
        assert!(out.lines().any(|l| l == line), "{line} not in {out}");
    }
    // What `check` prints is itself valid TOML of the same shape.
    let reparsed: file::Root = toml::from_str(&out).unwrap();
    assert_eq!(reparsed.backends.len(), 1);
}
