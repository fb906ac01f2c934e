use super::*;

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn claims() -> Claims {
    Claims {
        id: SessionId([7; 16]),
        backend: backend_tag("app1"),
        issued_ms: 1_700_000_000_000,
        seen_ms: 1_700_000_123_456,
        binding: 0xdead_beef_0bad_cafe,
    }
}

fn codec(secret: &[u8]) -> CookieCodec {
    CookieCodec::new(secret, &[])
}

fn attrs() -> CookieAttrs {
    CookieAttrs {
        name: "tether_sid".into(),
        path: "/".into(),
        domain: None,
        same_site: SameSite::Lax,
        secure: true,
        http_only: true,
        partitioned: false,
    }
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap()
}

#[test]
fn round_trip() {
    let codec = codec(b"secret A");
    let mut c = claims();
    c.id = SessionId::random();
    let value = codec.encode(&c);
    assert_eq!(value.len(), ENCODED_LEN);
    assert!(value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    assert_eq!(codec.decode(&value), Some(c));
}

#[test]
fn round_trip_extremes() {
    let codec = codec(b"secret A");
    for fill in [0u64, u64::MAX] {
        let c = Claims {
            id: SessionId([fill as u8; 16]),
            backend: fill,
            issued_ms: fill,
            seen_ms: fill,
            binding: fill,
        };
        assert_eq!(codec.decode(&codec.encode(&c)), Some(c));
    }
}

#[test]
fn every_single_character_change_is_rejected() {
    let codec = codec(b"secret A");
    let value = codec.encode(&claims());
    for pos in 0..value.len() {
        for &replacement in BASE64URL {
            if replacement == value.as_bytes()[pos] {
                continue;
            }
            let mut tampered = value.clone().into_bytes();
            tampered[pos] = replacement;
            let tampered = String::from_utf8(tampered).unwrap();
            assert_eq!(
                codec.decode(&tampered),
                None,
                "position {pos} replaced by {:?} still verified",
                replacement as char
            );
        }
    }
}

#[test]
fn truncated_empty_and_extended_are_rejected() {
    let codec = codec(b"secret A");
    let value = codec.encode(&claims());
    for len in 0..value.len() {
        assert_eq!(codec.decode(&value[..len]), None, "truncated to {len}");
    }
    assert_eq!(codec.decode(""), None);
    assert_eq!(codec.decode(&format!("{value}A")), None);
    assert_eq!(codec.decode(&format!("{value}AAAA")), None);
    assert_eq!(codec.decode(&format!("A{value}")), None);
    assert_eq!(codec.decode(&format!("{value}=")), None);
    let not_base64 = format!("{}!", "é".repeat(ENCODED_LEN / 2));
    assert_eq!(not_base64.len(), ENCODED_LEN);
    assert_eq!(codec.decode(&not_base64), None);
}

#[test]
fn padded_or_standard_alphabet_is_rejected() {
    let codec = codec(b"secret A");
    let value = codec.encode(&claims());
    let standard = value.replace('-', "+").replace('_', "/");
    if standard != value {
        assert_eq!(codec.decode(&standard), None);
    }
    assert_eq!(
        codec.decode(&format!("{}=", &value[..ENCODED_LEN - 1])),
        None
    );
}

#[test]
fn wrong_version_is_rejected_even_with_a_valid_mac() {
    let codec = codec(b"secret A");
    let mut raw = URL_SAFE_NO_PAD.decode(codec.encode(&claims())).unwrap();
    raw[0] = 2;
    let tag = hmac::sign(&derive_key(b"secret A"), &raw[..PAYLOAD_LEN]);
    raw[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
    assert_eq!(codec.decode(&URL_SAFE_NO_PAD.encode(&raw)), None);
    // The same construction with version 1 verifies, so only the version byte was refused.
    raw[0] = VERSION;
    let tag = hmac::sign(&derive_key(b"secret A"), &raw[..PAYLOAD_LEN]);
    raw[PAYLOAD_LEN..].copy_from_slice(&tag.as_ref()[..TAG_LEN]);
    assert_eq!(codec.decode(&URL_SAFE_NO_PAD.encode(&raw)), Some(claims()));
}

#[test]
fn previous_secret_verifies_only_while_listed() {
    let old = codec(b"old secret");
    let value = old.encode(&claims());

    let rotated = CookieCodec::new(b"new secret", &[b"other".to_vec(), b"old secret".to_vec()]);
    assert_eq!(rotated.decode(&value), Some(claims()));
    // New cookies are signed with the current secret only.
    let fresh = rotated.encode(&claims());
    assert_ne!(fresh, value);
    assert_eq!(codec(b"new secret").decode(&fresh), Some(claims()));
    assert_eq!(old.decode(&fresh), None);

    let dropped = CookieCodec::new(b"new secret", &[b"other".to_vec()]);
    assert_eq!(dropped.decode(&value), None);
}

#[test]
fn another_secret_is_rejected() {
    let value = codec(b"secret A").encode(&claims());
    assert_eq!(codec(b"secret B").decode(&value), None);
}

#[test]
fn random_ids_differ() {
    let ids: std::collections::HashSet<_> = (0..1000).map(|_| SessionId::random()).collect();
    assert_eq!(ids.len(), 1000);
    assert_ne!(SessionId::random().as_u128(), 0);
}

#[test]
fn as_u128_is_little_endian() {
    let mut bytes = [0u8; 16];
    bytes[0] = 1;
    bytes[15] = 0x80;
    assert_eq!(SessionId(bytes).as_u128(), (1u128 << 127) | 1);
}

#[test]
fn debug_hides_the_id() {
    let id = SessionId([0xab; 16]);
    let printed = format!("{id:?} {:?}", Claims { id, ..claims() });
    assert!(!printed.contains("ab"), "{printed}");
    assert!(!printed.contains("171"), "{printed}");
    assert!(printed.contains("SessionId(<redacted>)"));
    let codec = format!("{:?}", codec(b"hunter2"));
    assert!(!codec.contains("hunter2"), "{codec}");
}

#[test]
fn backend_tag_is_fnv1a_64() {
    // Published FNV-1a 64 test vectors: the tag must never change between versions.
    assert_eq!(backend_tag(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(backend_tag("a"), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(backend_tag("foobar"), 0x8594_4171_f739_67e8);
    assert_ne!(backend_tag("app1"), backend_tag("app2"));
}

#[test]
fn set_cookie_attributes() {
    let a = attrs();
    assert_eq!(
        a.set_cookie("v"),
        "tether_sid=v; HttpOnly; SameSite=Lax; Secure; Path=/"
    );
    let a = CookieAttrs {
        same_site: SameSite::Strict,
        secure: false,
        http_only: false,
        path: "/app".into(),
        domain: Some("example.com".into()),
        ..attrs()
    };
    assert_eq!(
        a.set_cookie("v"),
        "tether_sid=v; SameSite=Strict; Path=/app; Domain=example.com"
    );
    let a = CookieAttrs {
        same_site: SameSite::None,
        ..attrs()
    };
    assert_eq!(
        a.set_cookie("v"),
        "tether_sid=v; HttpOnly; SameSite=None; Secure; Path=/"
    );
    // What is configured is what is written, even where browsers will object.
    let a = CookieAttrs {
        same_site: SameSite::None,
        secure: false,
        ..attrs()
    };
    assert_eq!(
        a.set_cookie("v"),
        "tether_sid=v; HttpOnly; SameSite=None; Path=/"
    );
}

#[test]
fn partitioned_cookie_and_its_clearing_cookie_carry_partitioned() {
    let a = CookieAttrs {
        same_site: SameSite::None,
        partitioned: true,
        ..attrs()
    };
    assert_eq!(
        a.set_cookie("v"),
        "tether_sid=v; HttpOnly; SameSite=None; Partitioned; Secure; Path=/"
    );
    // Browsers only clear a partitioned cookie with a partitioned Set-Cookie.
    assert_eq!(
        a.clear_cookie(),
        "tether_sid=; HttpOnly; SameSite=None; Partitioned; Secure; Path=/; Max-Age=0"
    );
    assert!(!attrs()
        .set_cookie("v")
        .to_str()
        .unwrap()
        .contains("Partitioned"));
}

#[test]
fn set_cookie_carries_an_encoded_value() {
    let value = codec(b"s").encode(&claims());
    let header = attrs().set_cookie(&value);
    let header = header.to_str().unwrap();
    assert!(
        header.starts_with(&format!("tether_sid={value};")),
        "{header}"
    );
    assert!(!header.contains("Max-Age") && !header.contains("Expires"));
}

#[test]
fn clear_cookie_has_same_scope_and_max_age_zero() {
    let a = CookieAttrs {
        domain: Some("example.com".into()),
        ..attrs()
    };
    assert_eq!(
        a.clear_cookie(),
        "tether_sid=; HttpOnly; SameSite=Lax; Secure; Path=/; Domain=example.com; Max-Age=0"
    );
}

#[test]
fn check_refuses_attribute_injection() {
    assert_eq!(attrs().check(), Ok(()));
    let bad_path = CookieAttrs {
        path: "/; Domain=evil.example".into(),
        ..attrs()
    };
    assert_eq!(bad_path.check().unwrap_err().attribute, "path");
    let bad_name = CookieAttrs {
        name: "a b".into(),
        ..attrs()
    };
    assert_eq!(bad_name.check().unwrap_err().attribute, "name");
    let empty_name = CookieAttrs {
        name: String::new(),
        ..attrs()
    };
    assert_eq!(
        empty_name.check().unwrap_err().to_string(),
        "invalid cookie name: expected a token: letters, digits and !#$%&'*+-.^_`|~"
    );
    let bad_domain = CookieAttrs {
        domain: Some("exämple.com".into()),
        ..attrs()
    };
    assert_eq!(bad_domain.check().unwrap_err().attribute, "domain");
    let host_prefix = CookieAttrs {
        name: "__Host-sid".into(),
        ..attrs()
    };
    assert_eq!(host_prefix.check(), Ok(()));
}

#[test]
fn find_cookie_across_headers() {
    let headers = [
        hv("a=1; b=2"),
        hv("tether_sid=first; c=3"),
        hv("tether_sid=second"),
    ];
    assert_eq!(find_cookie(headers.iter(), "tether_sid"), Some("first"));
    assert_eq!(find_cookie(headers.iter(), "c"), Some("3"));
    assert_eq!(find_cookie(headers.iter(), "a"), Some("1"));
    assert_eq!(find_cookie(headers.iter(), "missing"), None);
    assert_eq!(find_cookie(std::iter::empty(), "a"), None);
}

#[test]
fn find_cookie_is_exact_and_tolerant_of_spacing() {
    let headers = [hv("xtether_sid=no;tether_sidx=no ;  tether_sid = yes ;d=4")];
    assert_eq!(find_cookie(headers.iter(), "tether_sid"), Some("yes"));
    assert_eq!(find_cookie(headers.iter(), "d"), Some("4"));
    let headers = [hv("tether_sid; Tether_Sid=no; tether_sid=")];
    assert_eq!(find_cookie(headers.iter(), "tether_sid"), Some(""));
    let headers = [hv("a=b=c")];
    assert_eq!(find_cookie(headers.iter(), "a"), Some("b=c"));
}

#[test]
fn strip_cookie_keeps_the_others_in_order() {
    let stripped = strip_cookie(&hv("a=1; tether_sid=x; b=2"), "tether_sid");
    assert_eq!(stripped, Some(hv("a=1; b=2")));
    let stripped = strip_cookie(&hv("tether_sid=x; a=1; tether_sid=y;b=2"), "tether_sid");
    assert_eq!(stripped, Some(hv("a=1; b=2")));
    let stripped = strip_cookie(&hv("a=1; b=2; tether_sid=x"), "tether_sid");
    assert_eq!(stripped, Some(hv("a=1; b=2")));
}

#[test]
fn strip_cookie_leaves_an_unrelated_header_untouched() {
    let header = hv("a=1;b=2;  tether_sidx=3");
    assert_eq!(strip_cookie(&header, "tether_sid"), Some(header.clone()));
}

#[test]
fn strip_cookie_of_the_only_cookie_leaves_nothing() {
    assert_eq!(strip_cookie(&hv("tether_sid=x"), "tether_sid"), None);
    assert_eq!(
        strip_cookie(&hv(" tether_sid=x ; tether_sid=y;"), "tether_sid"),
        None
    );
}

#[test]
fn strip_cookie_keeps_non_utf8_neighbours() {
    let header = HeaderValue::from_bytes(b"a=\xe9t\xe9; tether_sid=x").unwrap();
    let stripped = strip_cookie(&header, "tether_sid").unwrap();
    assert_eq!(stripped.as_bytes(), b"a=\xe9t\xe9");
    let headers = [header];
    assert_eq!(find_cookie(headers.iter(), "tether_sid"), Some("x"));
}
