//! How tether reaches one backend: TCP, TLS on top when the backend asks for
//! it (certificates verified, sessions resumed), and HTTP/1.1 or HTTP/2 on
//! that. Requests and health probes share it, so a probe tests exactly the
//! path a request takes.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, StatusCode, Uri};
use hyper::client::conn::{http1, http2};
use hyper::rt::{Read, Write};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::Body;
use crate::coalesce::Coalesce;
use crate::config::{self, BackendTls, Protocol};

use super::tape::{Tape, Taped};

/// Where a backend is and what tether speaks to it.
pub struct Link {
    addr: SocketAddr,
    protocol: Protocol,
    /// Present when the backend is reached over TLS.
    tls: Option<Tls>,
}

struct Tls {
    /// As configured: compared on reload so a changed CA or name gets a new
    /// link (and a new session cache).
    spec: BackendTls,
    connector: TlsConnector,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("addr", &self.addr)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.as_ref().map(|t| &t.spec.server_name))
            .finish()
    }
}

impl Link {
    /// The link `b` describes. Its TLS client config, and with it the cache
    /// of sessions to resume, lives as long as the link.
    pub fn new(b: &config::Backend) -> Link {
        Link {
            addr: b.address,
            protocol: b.protocol,
            tls: b.tls.as_ref().map(|spec| Tls {
                connector: TlsConnector::from(client_config(spec.ca.as_deref(), b.protocol)),
                spec: spec.clone(),
            }),
        }
    }

    /// Whether `b` describes this same link (a reload keeps its connections).
    pub fn is(&self, b: &config::Backend) -> bool {
        self.addr == b.address
            && self.protocol == b.protocol
            && self.tls.as_ref().map(|t| &t.spec) == b.tls.as_ref()
    }

    /// The backend address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// HTTP/1.1 or HTTP/2.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// A connected, handshaken HTTP/1.1 connection; its driver is spawned
    /// (with upgrades, for WebSocket).
    pub(super) async fn http1(
        &self,
        connect: Duration,
    ) -> io::Result<(http1::SendRequest<Body>, Arc<Tape>)> {
        let tape = Arc::new(Tape::default());
        let within = tokio::time::timeout(connect, async {
            let t = tape.clone();
            match self.dial().await? {
                Io::Plain(io) => h1(TokioIo::new(Coalesce(Taped { io, tape: t }))).await,
                Io::Tls(io) => h1(TokioIo::new(Coalesce(Taped { io, tape: t }))).await,
            }
        });
        Ok((within.await.unwrap_or_else(|_| Err(timed_out()))?, tape))
    }

    /// A connected, handshaken HTTP/2 connection; its driver is spawned.
    pub(super) async fn http2(&self, connect: Duration) -> io::Result<http2::SendRequest<Body>> {
        let within = tokio::time::timeout(connect, async {
            match self.dial().await? {
                Io::Plain(s) => h2(TokioIo::new(s)).await,
                Io::Tls(s) => h2(TokioIo::new(s)).await,
            }
        });
        within.await.unwrap_or_else(|_| Err(timed_out()))
    }

    async fn dial(&self) -> io::Result<Io> {
        let tcp = TcpStream::connect(self.addr).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(Io::Plain(tcp));
        };
        let name = tls.spec.server_name.clone();
        match tls.connector.connect(name, tcp).await {
            Ok(s) => Ok(Io::Tls(Box::new(s))),
            Err(e) => Err(io::Error::new(
                e.kind(),
                format!(
                    "TLS handshake with {} failed: {e}{}",
                    tls.spec.server_name.to_str(),
                    advice(&e)
                ),
            )),
        }
    }

    /// Rewrites a request for this link: HTTP/2 carries the scheme and the
    /// host in the URI (`:scheme`, `:authority`), not in a `Host` header.
    pub(super) fn prepare(&self, req: &mut Request<Body>) {
        if self.protocol != Protocol::H2 {
            return;
        }
        let host = req.headers_mut().remove(http::header::HOST);
        let authority = host
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| self.default_authority());
        let mut parts = std::mem::take(req.uri_mut()).into_parts();
        parts.scheme = Some(self.scheme());
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }

    fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    fn default_authority(&self) -> Authority {
        Authority::try_from(self.addr.to_string().as_str())
            .unwrap_or_else(|_| Authority::from_static("localhost"))
    }

    /// One health probe over a fresh connection of this link: `GET path`.
    pub async fn probe(&self, path: &str, timeout: Duration) -> Result<StatusCode, String> {
        let attempt = async {
            let mut req = Request::get(path)
                .header(http::header::HOST, self.addr.to_string())
                .header(http::header::USER_AGENT, "tether-health-check")
                .body(Body::empty())
                .map_err(|e| e.to_string())?;
            self.prepare(&mut req);
            let resp = match self.protocol {
                Protocol::Http1 => {
                    let (mut s, _) = self.http1(timeout).await.map_err(|e| e.to_string())?;
                    s.send_request(req).await
                }
                Protocol::H2 => {
                    let mut s = self.http2(timeout).await.map_err(|e| e.to_string())?;
                    s.send_request(req).await
                }
            };
            resp.map(|r| r.status()).map_err(|e| e.to_string())
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "connect timed out")
}

/// What an operator can do about a TLS failure.
fn advice(e: &io::Error) -> &'static str {
    let Some(rustls::Error::InvalidCertificate(why)) =
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>())
    else {
        return "";
    };
    match why {
        rustls::CertificateError::NotValidForName
        | rustls::CertificateError::NotValidForNameContext { .. } => {
            "; set the backend's sni to a name its certificate holds"
        }
        rustls::CertificateError::Expired
        | rustls::CertificateError::ExpiredContext { .. }
        | rustls::CertificateError::NotValidYet
        | rustls::CertificateError::NotValidYetContext { .. } => {
            "; the backend's certificate is outside its validity period"
        }
        _ => "; set the backend's ca_file to the CA that signed its certificate",
    }
}

async fn h1<I>(io: I) -> io::Result<http1::SendRequest<Body>>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

async fn h2<I>(io: I) -> io::Result<http2::SendRequest<Body>>
where
    I: Read + Write + Unpin + Send + 'static,
{
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .handshake(io)
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
        }
    });
    Ok(sender)
}

/// A client config verifying against `ca` (or the system's roots) and
/// offering only `protocol` by ALPN. rustls keeps its default in-memory
/// session cache, so reconnects to the backend resume.
fn client_config(ca: Option<&[CertificateDer<'static>]>, protocol: Protocol) -> Arc<ClientConfig> {
    let roots = match ca {
        Some(certs) => {
            let mut roots = RootCertStore::empty();
            // Checked when the config was loaded.
            let _ = roots.add_parsable_certificates(certs.iter().cloned());
            Arc::new(roots)
        }
        None => system_roots(),
    };
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| ClientConfig::builder());
    let mut cfg = builder.with_root_certificates(roots).with_no_client_auth();
    cfg.alpn_protocols = match protocol {
        Protocol::Http1 => vec![b"http/1.1".to_vec()],
        Protocol::H2 => vec![b"h2".to_vec()],
    };
    Arc::new(cfg)
}

/// The operating system's trust roots, read once.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's trust roots");
            }
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    "no system trust roots found (install ca-certificates); TLS backends \
                     without ca_file cannot be verified and will be marked down"
                );
            }
            Arc::new(roots)
        })
        .clone()
}
