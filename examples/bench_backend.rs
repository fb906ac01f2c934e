//! A small, fast backend for load benches: answers every request 200 with a
//! short body naming itself and `x-backend: NAME`; `/healthz` answers 200 `ok`.
//!
//! ```text
//! cargo run --release --example bench_backend -- --name b1 --port 0 [--exit-after 120s]
//! ```
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
}

/// What every response carries, built once.
#[derive(Clone)]
struct Canned {
    name: HeaderValue,
    body: Bytes,
}

const X_BACKEND: HeaderName = HeaderName::from_static("x-backend");
const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");

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
    resp
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let canned = Canned {
        name: HeaderValue::from_str(&args.name)?,
        body: Bytes::from(format!("{}\n", args.name)),
    };
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
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = answer(&canned, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
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
