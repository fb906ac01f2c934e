//! Errors at tether's two boundaries.
//!
//! `ConfigError` (defined beside the loader, re-exported here) is what an
//! operator sees when a file is wrong. `ProxyError` is what can go wrong with
//! one request: [`ProxyError::response`] is the one place that turns it into
//! the SPEC's status and a short plain-text body. Whether another backend may
//! be tried is decided from the upstream failure (`upstream::Failure`), which
//! knows whether bytes left, not from this error.

use http::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

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

    /// The response the client gets: status, short text, `Retry-After` where the SPEC asks.
    pub fn response(&self) -> Response<Body> {
        let status = self.status();
        let text = match self {
            ProxyError::BadRequest(why) => format!("400 bad request: {why}\n"),
            other => format!(
                "{} {}\n",
                status.as_u16(),
                match other {
                    ProxyError::HeadTooLarge { .. } => "request header fields too large",
                    ProxyError::Forbidden => "session belongs to another client",
                    ProxyError::BodyTimeout => "request body timeout",
                    ProxyError::RateLimited { .. } => "too many requests",
                    ProxyError::NoBackend => "no backend available",
                    ProxyError::Connect { .. } | ProxyError::Upstream { .. } => "bad gateway",
                    ProxyError::Timeout { .. } => "gateway timeout",
                    ProxyError::BadRequest(_) => unreachable!("handled above"),
                }
            ),
        };
        let mut resp = Response::new(Body::full(text));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
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
        resp
    }
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
