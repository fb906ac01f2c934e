//! Checks for `[session]`: where the affinity key comes from, the cookie's
//! name and attributes (RFC 6265bis prefix rules), bounded load, binding,
//! and the secrets that key the cookie MAC.

use std::path::PathBuf;

use toml::Spanned;

use crate::config::file::{self, SameSite, Secure, Source};
use crate::config::model::{SecretOrigin, Secrets, Session, MIN_SECRET_BYTES, SECRET_ENV};
use crate::config::{Cx, Result};

impl Cx<'_> {
    /// Reads a secret file: bytes, one trailing line end removed, at least [`MIN_SECRET_BYTES`].
    fn secret_file(&self, what: &str, name: &Spanned<String>) -> Result<(PathBuf, Vec<u8>)> {
        let (path, mut bytes) = self.read(what, name)?;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(self.on(
                name,
                format!(
                    "{what} {} holds {} bytes; a secret needs at least {MIN_SECRET_BYTES} (try: head -c 32 /dev/urandom | base64 > {})",
                    path.display(),
                    bytes.len(),
                    path.display()
                ),
            ));
        }
        Ok((path, bytes))
    }

    fn secrets(&self, raw: &file::Session, env_secret: Option<String>) -> Result<Secrets> {
        let short = |n: usize| {
            format!("holds {n} bytes; a secret needs at least {MIN_SECRET_BYTES} (try: head -c 32 /dev/urandom | base64)")
        };
        let (current, origin) = match (&raw.secret, &raw.secret_file) {
            (Some(_), Some(file)) => {
                return Err(self.on(file, "set either secret or secret_file, not both"))
            }
            (Some(inline), None) => {
                let bytes = inline.get_ref().as_bytes().to_vec();
                if bytes.len() < MIN_SECRET_BYTES {
                    return Err(self.on(inline, format!("secret {}", short(bytes.len()))));
                }
                (bytes, SecretOrigin::Inline)
            }
            (None, Some(name)) => {
                let (path, bytes) = self.secret_file("secret_file", name)?;
                (bytes, SecretOrigin::File(path))
            }
            (None, None) => match env_secret {
                Some(env) => {
                    if env.len() < MIN_SECRET_BYTES {
                        return Err(self.unlocated(format!("{SECRET_ENV} {}", short(env.len()))));
                    }
                    (env.into_bytes(), SecretOrigin::Env)
                }
                None => (Vec::new(), SecretOrigin::Generated),
            },
        };
        let previous = raw
            .previous_secret_files
            .get_ref()
            .iter()
            .map(|name| {
                self.secret_file("previous secret file", name)
                    .map(|(_, b)| b)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Secrets {
            current,
            previous,
            origin,
        })
    }

    pub(super) fn session(
        &self,
        raw: file::Session,
        all_tls: bool,
        env_secret: Option<String>,
    ) -> Result<Session> {
        let secrets = self.secrets(&raw, env_secret)?;
        for (key, name) in [("cookie", &raw.cookie), ("app_cookie", &raw.app_cookie)] {
            if !is_token(name.get_ref()) {
                return Err(self.on(
                    name,
                    format!(
                        "invalid {key} name {:?}: expected an RFC 6265 token (letters, digits and !#$%&'*+-.^_`|~), like \"tether_sid\"",
                        name.get_ref()
                    ),
                ));
            }
        }
        if raw.source == Source::Header && !is_token(raw.header.get_ref()) {
            return Err(self.on(
                &raw.header,
                format!(
                    "invalid header name {:?}: expected an HTTP field name (letters, digits and !#$%&'*+-.^_`|~), like \"X-Session-Id\"",
                    raw.header.get_ref()
                ),
            ));
        }
        if raw.source == Source::Query && raw.query_param.get_ref().is_empty() {
            return Err(self.on(
                &raw.query_param,
                "query_param must not be empty when source = \"query\"",
            ));
        }
        let idle_timeout = self.positive(&raw.idle_timeout, "idle_timeout")?;
        let absolute_timeout = self.positive(&raw.absolute_timeout, "absolute_timeout")?;

        let secure = *raw.secure.get_ref();
        let same_site = *raw.same_site.get_ref();
        let partitioned = *raw.partitioned.get_ref();
        let no_secure = secure_missing(secure, all_tls);
        if partitioned {
            let why = match (same_site, no_secure) {
                (SameSite::None, None) => None,
                (SameSite::None, Some(why)) => Some(format!(
                    "{why}: browsers refuse such cookies; set secure = \"always\" or use only tls listeners"
                )),
                (other, _) => Some(format!(
                    "but same_site = {}: browsers refuse such cookies; set same_site = \"none\"",
                    toml::Value::try_from(other)
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                )),
            };
            if let Some(why) = why {
                return Err(self.on(
                    &raw.partitioned,
                    format!("partitioned = true needs same_site = \"none\" and Secure, {why}"),
                ));
            }
        }
        if same_site == SameSite::None {
            if let Some(why) = no_secure {
                let fix = match secure {
                    Secure::Never => "set secure = \"always\" or \"auto\" with only tls listeners",
                    _ => "set secure = \"always\" or use only tls listeners",
                };
                return Err(self.on(
                    &raw.same_site,
                    format!("same_site = \"none\" needs Secure, {why}: browsers drop such cookies; {fix}"),
                ));
            }
        }
        let path = raw.path.get_ref();
        if !path.starts_with('/') || !path.chars().all(|c| c.is_ascii_graphic() && c != ';') {
            return Err(self.on(
                &raw.path,
                format!("invalid cookie path {path:?}: expected a path starting with \"/\", without spaces or \";\""),
            ));
        }
        if let Some(domain) = &raw.domain {
            let d = domain.get_ref();
            if d.is_empty()
                || !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            {
                return Err(self.on(
                    domain,
                    format!(
                        "invalid cookie domain {d:?}: expected a host name, like \"example.com\""
                    ),
                ));
            }
        }
        self.cookie_prefix(&raw, all_tls)?;

        let factor = *raw.balance_factor.get_ref();
        if !(factor == 0.0 || (factor.is_finite() && factor >= 1.0)) {
            return Err(self.on(
                &raw.balance_factor,
                format!("invalid balance_factor {factor}: expected 0 (off) or a number >= 1.0, like 1.25"),
            ));
        }
        let mut bind_to = Vec::with_capacity(raw.bind_to.len());
        for item in &raw.bind_to {
            if bind_to.contains(item.get_ref()) {
                let name = toml::Value::try_from(item.get_ref())
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                return Err(self.on(item, format!("bind_to lists {name} twice")));
            }
            bind_to.push(*item.get_ref());
        }
        Ok(Session {
            mode: raw.mode,
            source: raw.source,
            cookie: raw.cookie.into_inner(),
            app_cookie: raw.app_cookie.into_inner(),
            header: raw.header.into_inner().to_ascii_lowercase(),
            query_param: raw.query_param.into_inner(),
            idle_timeout,
            absolute_timeout,
            secrets,
            same_site,
            secure,
            http_only: raw.http_only,
            partitioned,
            path: raw.path.into_inner(),
            domain: raw.domain.map(Spanned::into_inner),
            strip_cookie: raw.strip_cookie,
            balance_factor: factor,
            bind_to,
            on_mismatch: raw.on_mismatch,
            strict: raw.strict,
        })
    }

    /// Cookie name prefixes (RFC 6265bis §4.1.3). Browsers match them without
    /// regard to case, so we do too.
    fn cookie_prefix(&self, raw: &file::Session, all_tls: bool) -> Result<()> {
        let name = raw.cookie.get_ref();
        let lower = name.to_ascii_lowercase();
        let prefix = if lower.starts_with("__host-") {
            "__Host-"
        } else if lower.starts_with("__secure-") {
            "__Secure-"
        } else {
            return Ok(());
        };
        if let Some(why) = secure_missing(*raw.secure.get_ref(), all_tls) {
            return Err(self.on(
                &raw.cookie,
                format!(
                    "cookie {name:?}: the {prefix} prefix requires Secure, {why}; set secure = \"always\" or use only tls listeners"
                ),
            ));
        }
        if prefix == "__Host-" {
            if raw.path.get_ref() != "/" {
                return Err(self.on(
                    &raw.path,
                    format!("cookie {name:?}: the __Host- prefix requires path = \"/\""),
                ));
            }
            if let Some(domain) = &raw.domain {
                return Err(self.on(
                    domain,
                    format!("cookie {name:?}: the __Host- prefix forbids a domain; remove it"),
                ));
            }
        }
        Ok(())
    }
}

/// Why some cookie tether issues would lack `Secure`, as the tail of a message ("but ..."), or
/// `None` when every cookie gets it.
fn secure_missing(secure: Secure, all_tls: bool) -> Option<&'static str> {
    match secure {
        Secure::Always => None,
        Secure::Auto if all_tls => None,
        Secure::Auto => Some("but secure = \"auto\" leaves it off on plain listeners"),
        Secure::Never => Some("but secure = \"never\""),
    }
}

/// An RFC 6265 cookie name / RFC 9110 field name: one or more `tchar`s.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
