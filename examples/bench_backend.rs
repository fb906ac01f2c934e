//! A small, fast backend for load benches: answers every request 200 with a
//! short body naming itself and `x-backend: NAME`; `/healthz` answers 200 `ok`;
//! `/logout` also says `Tether-Session-Control: end` (the app's logout), and
//! `/state` answers with the request's `Tether-Session-State` as `x-session-state`.
//! A request with `Upgrade: websocket` is answered 101 and then echoes every
//! byte back (no WebSocket framing: the proxies splice bytes, they do not read
//! frames), for benches that hold upgraded connections open.
//!
//! ```text
//! cargo run --release --example bench_backend -- --name b1 --port 0 [--exit-after 120s] [--tls]
//! ```
//!
//! `--tls` serves HTTP/1.1 over TLS with the dev certificate (`certs/`), for
//! the cost of TLS between tether and its backends.
//!
//! Prints `listening 127.0.0.1:PORT` on stdout once it accepts connections.
//! One current-thread runtime: three of these share a 2-core machine with the
//! proxy and the load client, so each stays on one thread and does no work per
//! request beyond cloning prebuilt values. `--exit-after` bounds its life, so a
//! bench that dies without its cleanup never leaves it running.

use std::convert::Infallible;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "A small fast backend that names itself, for benches")]
struct Args {
    /// Name put in the body and in `x-backend`.
    #[arg(long)]
    name: String,
    /// Port on 127.0.0.1 (0 = any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Exit by itself after this long (e.g. "120s"); default: run until killed.
    #[arg(long, value_parser = humantime::parse_duration)]
    exit_after: Option<Duration>,
    /// Serve over TLS with certs/localhost.crt and .key.
    #[arg(long)]
    tls: bool,
}

fn acceptor() -> Result<tokio_rustls::TlsAcceptor, Box<dyn std::error::Error>> {
    use rustls_pki_types::pem::PemObject;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(dir.join("localhost.crt"))?
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(dir.join("localhost.key"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(cfg)))
}

/// What every response carries, built once.
#[derive(Clone)]
struct Canned {
    name: HeaderValue,
    body: Bytes,
}

const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
const CONTROL: HeaderName = HeaderName::from_static("tether-session-control");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

/// `101 Switching Protocols` for an upgrade request, echoing every byte once
/// the upgrade completes; `None` for any other request.
fn upgrade(req: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let wanted = req.headers().get(http::header::UPGRADE)?.clone();
    let on = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let (mut r, mut w) = tokio::io::split(TokioIo::new(up));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(http::header::UPGRADE, wanted);
    headers.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
    // Any value will do: the bench clients do not check it.
    headers.insert(
        HeaderName::from_static("sec-websocket-accept"),
        HeaderValue::from_static("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
    );
    Some(resp)
}

fn answer(canned: &Canned, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let body = if req.uri().path() == "/healthz" {
        Bytes::from_static(b"ok\n")
    } else {
        canned.body.clone()
    };
    let mut resp = Response::new(Full::new(body));
    let headers = resp.headers_mut();
    headers.insert(X_BACKEND, canned.name.clone());
    headers.insert(CONTENT_TYPE, TEXT_PLAIN);
    match req.uri().path() {
        "/logout" => {
            headers.insert(CONTROL, HeaderValue::from_static("end"));
        }
        "/state" => {
            if let Some(v) = req.headers().get("tether-session-state") {
                headers.insert(HeaderName::from_static("x-session-state"), v.clone());
            }
        }
        _ => {}
    }
    resp
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let canned = Canned {
        name: HeaderValue::from_str(&args.name)?,
        body: Bytes::from(format!("{}\n", args.name)),
    };
    let tls = if args.tls { Some(acceptor()?) } else { None };
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {addr}")?;
        out.flush()?;
    }
    let serve = async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                // EMFILE and friends: back off instead of spinning.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let canned = canned.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |mut req: Request<Incoming>| {
                    let resp = upgrade(&mut req).unwrap_or_else(|| answer(&canned, &req));
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = http1::Builder::new();
                let _ = match tls {
                    None => {
                        conn.serve_connection(TokioIo::new(stream), svc)
                            .with_upgrades()
                            .await
                    }
                    Some(a) => match a.accept(stream).await {
                        Ok(s) => {
                            conn.serve_connection(TokioIo::new(s), svc)
                                .with_upgrades()
                                .await
                        }
                        Err(_) => return,
                    },
                };
            });
        }
    };
    match args.exit_after {
        Some(limit) => {
            let _ = tokio::time::timeout(limit, serve).await;
        }
        None => serve.await,
    }
    Ok(())
}
