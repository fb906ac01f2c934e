//! A small gRPC service, `echo.Echo`, written out by hand so that no
//! protobuf compiler is needed to build it: the two messages are prost
//! structs and the two methods are wired as tonic's generated code would.
//!
//! ```text
//! service Echo {
//!   rpc Say (Say) returns (Said);                 // unary
//!   rpc Chat (stream Say) returns (stream Said);  // bidirectional
//! }
//! message Say  { string text = 1; }
//! message Said { string backend = 1; string text = 2; uint64 seq = 3; }
//! ```
//!
//! Every answer names the backend that gave it, so a client sees where its
//! session went.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codegen::Service;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

/// The request message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Say {
    #[prost(string, tag = "1")]
    pub text: String,
}

/// The answer: who answered, what was said, and its place in a chat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Said {
    #[prost(string, tag = "1")]
    pub backend: String,
    #[prost(string, tag = "2")]
    pub text: String,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
}

/// The unary method's path.
pub const SAY: &str = "/echo.Echo/Say";
/// The bidirectional streaming method's path.
pub const CHAT: &str = "/echo.Echo/Chat";

// ---------------------------------------------------------------- server

/// Serves `echo.Echo` as backend `name` on `listener` (HTTP/2 without TLS,
/// as gRPC servers usually listen behind a proxy), until dropped.
pub fn serve(name: &str, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let name: Arc<str> = name.into();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let name = name.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| dispatch(name.clone(), req));
                let _ = http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

async fn dispatch(
    name: Arc<str>,
    req: http::Request<Incoming>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut grpc = tonic::server::Grpc::new(ProstCodec::<Said, Say>::default());
    Ok(match req.uri().path() {
        SAY => grpc.unary(SayMethod(name), req).await,
        CHAT => grpc.streaming(ChatMethod(name), req).await,
        _ => Status::unimplemented("echo.Echo has Say and Chat").into_http(),
    })
}

/// `Say`: one answer naming the backend.
struct SayMethod(Arc<str>);

impl Service<Request<Say>> for SayMethod {
    type Response = Response<Said>;
    type Error = Status;
    type Future = Ready<Result<Response<Said>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Say>) -> Self::Future {
        ready(Ok(Response::new(Said {
            backend: self.0.to_string(),
            text: req.into_inner().text,
            seq: 0,
        })))
    }
}

/// A stream of answers, one per message received.
pub type SaidStream = Pin<Box<dyn Stream<Item = Result<Said, Status>> + Send>>;

/// `Chat`: answers each message as it arrives, numbering them.
struct ChatMethod(Arc<str>);

impl Service<Request<Streaming<Say>>> for ChatMethod {
    type Response = Response<SaidStream>;
    type Error = Status;
    type Future = Ready<Result<Response<SaidStream>, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Streaming<Say>>) -> Self::Future {
        let name = self.0.clone();
        let answers = req.into_inner().enumerate().map(move |(i, m)| {
            m.map(|m| Said {
                backend: name.to_string(),
                text: m.text,
                seq: i as u64 + 1,
            })
        });
        ready(Ok(Response::new(Box::pin(answers) as SaidStream)))
    }
}

// ---------------------------------------------------------------- client

/// A client of `echo.Echo` over one HTTP/2 connection; each call names its
/// session in the `x-session` metadata, which tether routes by.
#[derive(Clone)]
pub struct Client {
    grpc: tonic::client::Grpc<Channel>,
}

impl Client {
    /// Connects to `addr` (tether, or a backend directly).
    pub async fn connect(addr: SocketAddr) -> Result<Client, tonic::codegen::StdError> {
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Client {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary `Say` in `session`.
    pub async fn say(&mut self, session: &str, text: &str) -> Result<Said, Status> {
        let mut req = Request::new(Say { text: text.into() });
        with_session(&mut req, session);
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::from_static(SAY);
        let resp = self.grpc.unary(req, path, ProstCodec::default()).await?;
        Ok(resp.into_inner())
    }

    /// Opens a `Chat` in `session`: send with the returned sender, read
    /// answers from the stream as they come.
    pub async fn chat(
        &mut self,
        session: &str,
    ) -> Result<(tokio::sync::mpsc::Sender<Say>, Streaming<Said>), Status> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Say>(16);
        let outgoing =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|m| (m, rx)) },
            );
        let mut req = Request::new(outgoing);
        with_session(&mut req, session);
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = PathAndQuery::from_static(CHAT);
        let resp = self
            .grpc
            .streaming(req, path, ProstCodec::default())
            .await?;
        Ok((tx, resp.into_inner()))
    }
}

fn with_session<T>(req: &mut Request<T>, session: &str) {
    if let Ok(v) = session.parse() {
        req.metadata_mut().insert("x-session", v);
    }
}
