//! Errors at tether's two boundaries.
//!
//! `ConfigError` (defined beside the loader, re-exported here) is what an
//! operator sees when a file is wrong. `ProxyError` is what can go wrong with
//! one request: [`ProxyError::response`] is the one place that turns it into
//! the SPEC's status and a short plain-text body. Whether another backend may
//! be tried is decided from the upstream failure (`upstream::Failure`), which
//! knows whether bytes left, not from this error.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Response, StatusCode};

use crate::body::Body;

pub use crate::config::ConfigError;

/// Why one request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request head is larger than `limits.max_header_bytes`.
    #[error("request head larger than {limit} bytes")]
    HeadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A bound session's cookie came from another client and `on_mismatch = "reject"`.
    #[error("session cookie presented by a different client")]
    Forbidden,
    /// The client paused its request body longer than `timeouts.client_body`.
    #[error("client request body stalled")]
    BodyTimeout,
    /// Over a rate limit.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a request would be admitted.
        retry_after_secs: u64,
    },
    /// No backend may take this request.
    #[error("no eligible backend")]
    NoBackend,
    /// Connecting to the backend failed: nothing was sent, a retry elsewhere is safe.
    #[error("cannot connect to backend {backend}: {source}")]
    Connect {
        /// Backend name.
        backend: String,
        /// What the socket said.
        #[source]
        source: std::io::Error,
    },
    /// The backend broke the exchange after the request was (maybe) sent.
    #[error("backend {backend} failed: {source}")]
    Upstream {
        /// Backend name.
        backend: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The backend did not send response headers within `timeouts.response`.
    #[error("backend {backend} did not answer in time")]
    Timeout {
        /// Backend name.
        backend: String,
    },
}

impl ProxyError {
    /// The SPEC section 5 status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::HeadTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::NoBackend => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The few words a client is told, after the status.
    fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::HeadTooLarge { .. } => "request header fields too large",
            ProxyError::Forbidden => "session belongs to another client",
            ProxyError::BodyTimeout => "request body timeout",
            ProxyError::RateLimited { .. } => "too many requests",
            ProxyError::NoBackend => "no backend available",
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => "bad gateway",
            ProxyError::Timeout { .. } => "gateway timeout",
        }
    }

    /// The response the client gets: status, short text, `Retry-After` where the SPEC asks.
    pub fn response(&self) -> Response<Body> {
        let status = self.status();
        let text = match self {
            ProxyError::BadRequest(why) => format!("400 bad request: {why}\n"),
            other => format!("{} {}\n", status.as_u16(), other.reason()),
        };
        let mut resp = Response::new(Body::full(text));
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.extra_headers(resp.headers_mut());
        resp
    }

    /// The answer a gRPC client understands (SPEC section 11): HTTP 200,
    /// trailers-only (`grpc-status` and `grpc-message` in the head, no
    /// body), since gRPC clients read the call's outcome from `grpc-status`
    /// and report a bare HTTP error as an opaque transport failure.
    pub fn grpc_response(&self) -> Response<Body> {
        let mut resp = Response::new(Body::empty());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(grpc_status(self.status())));
        let message = match self {
            ProxyError::BadRequest(why) => format!("bad request: {why}"),
            other => other.reason().to_owned(),
        };
        if let Ok(v) = HeaderValue::from_str(&grpc_message(&message)) {
            h.insert("grpc-message", v);
        }
        self.extra_headers(h);
        resp
    }

    /// `Retry-After` where the SPEC asks, and `Connection: close` after a
    /// request whose framing can no longer be trusted.
    fn extra_headers(&self, h: &mut HeaderMap) {
        match self {
            ProxyError::NoBackend => {
                h.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ProxyError::RateLimited { retry_after_secs } => {
                h.insert(RETRY_AFTER, HeaderValue::from((*retry_after_secs).max(1)));
            }
            _ => {}
        }
        if matches!(
            self.status(),
            StatusCode::BAD_REQUEST | StatusCode::REQUEST_TIMEOUT
        ) {
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// Whether a request is a gRPC call: its `content-type` starts with
/// `application/grpc` (`+proto`, `+json` and gRPC-Web included; media types
/// compare case-insensitively).
pub fn is_grpc(req: &HeaderMap) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    req.get(CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.len() >= GRPC.len() && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
    })
}

/// The gRPC status code for a status tether answers with (SPEC section 11).
/// A request tether finds malformed or too large (400, 431) and a stalled
/// request body (408) are INTERNAL (13), as gRPC's own HTTP mapping has it
/// for 400: the fault lies in the client's transport, not in an argument
/// the application could correct.
pub fn grpc_status(status: StatusCode) -> u16 {
    match status.as_u16() {
        502 | 503 => 14, // UNAVAILABLE
        504 => 4,        // DEADLINE_EXCEEDED
        429 => 8,        // RESOURCE_EXHAUSTED
        403 => 7,        // PERMISSION_DENIED
        _ => 13,         // INTERNAL
    }
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII,
/// and `%` itself.
fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_spec_table() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(ProxyError::BadRequest("x").status(), 400);
        assert_eq!(ProxyError::HeadTooLarge { limit: 1 }.status(), 431);
        assert_eq!(ProxyError::Forbidden.status(), 403);
        assert_eq!(
            ProxyError::RateLimited {
                retry_after_secs: 1
            }
            .status(),
            429
        );
        assert_eq!(ProxyError::NoBackend.status(), 503);
        let c = ProxyError::Connect {
            backend: "a".into(),
            source: io(),
        };
        assert_eq!(c.status(), 502);
        assert_eq!(
            ProxyError::Timeout {
                backend: "a".into()
            }
            .status(),
            504
        );
    }

    #[test]
    fn grpc_status_follows_the_spec_table() {
        #[rustfmt::skip]
        let table = [
            (502, 14), (503, 14), (504, 4), (429, 8), (403, 7),
            (400, 13), (431, 13), (408, 13),
        ];
        for (http, grpc) in table {
            let s = StatusCode::from_u16(http).unwrap();
            assert_eq!(grpc_status(s), grpc, "{http}");
        }
    }

    #[test]
    fn grpc_calls_are_told_by_content_type() {
        let h = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            h
        };
        assert!(is_grpc(&h("application/grpc")));
        assert!(is_grpc(&h("application/grpc+proto")));
        assert!(is_grpc(&h("Application/GRPC")));
        assert!(!is_grpc(&h("application/json")));
        assert!(!is_grpc(&h("application/grp")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_response_is_trailers_only() {
        let r = ProxyError::NoBackend.grpc_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no backend available");
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        let r = ProxyError::BadRequest("50% off\u{e9}").grpc_response();
        assert_eq!(r.headers()["grpc-status"], "13");
        assert_eq!(r.headers()["grpc-message"], "bad request: 50%25 off%C3%A9");
    }

    #[test]
    fn retry_after_is_set_for_503_and_429() {
        let r = ProxyError::NoBackend.response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
        let r = ProxyError::RateLimited {
            retry_after_secs: 3,
        }
        .response();
        assert_eq!(r.headers()[RETRY_AFTER], "3");
    }
}
