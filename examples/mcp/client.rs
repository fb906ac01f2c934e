//! An MCP-style client (the streamable HTTP transport, reduced to what a
//! proxy sees): `initialize` without a session, then every request repeats
//! the `Mcp-Session-Id` the server named; requests share one keep-alive
//! connection, and the event stream has its own. Shared by the `mcp` example
//! and `tests/learned.rs`.
#![allow(dead_code)]

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The header the server names its sessions in.
pub const SESSION_HEADER: &str = "mcp-session-id";

/// One MCP client talking to `addr` (tether, or a server directly).
pub struct McpClient {
    pub addr: SocketAddr,
    /// The session the server named, once `initialize` got one.
    pub session: Option<String>,
    next_id: u64,
    conn: Option<http1::SendRequest<Full<Bytes>>>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The server that answered (`x-backend`).
    pub fn server(&self) -> String {
        server_of(&self.headers)
    }

    /// The session the answer names, if any.
    pub fn session(&self) -> Option<String> {
        self.headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

fn server_of(h: &HeaderMap) -> String {
    h.get("x-backend")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

impl McpClient {
    pub fn new(addr: SocketAddr) -> McpClient {
        McpClient {
            addr,
            session: None,
            next_id: 0,
            conn: None,
        }
    }

    /// A client that presents `session` without having been given it.
    pub fn claiming(addr: SocketAddr, session: &str) -> McpClient {
        McpClient {
            session: Some(session.to_string()),
            ..McpClient::new(addr)
        }
    }

    /// `initialize`: keeps the session the answer names.
    pub async fn initialize(&mut self) -> io::Result<Answer> {
        self.session = None;
        let a = self.rpc("initialize").await?;
        self.session = a.session();
        Ok(a)
    }

    /// A JSON-RPC request in the session.
    pub async fn rpc(&mut self, method: &str) -> io::Result<Answer> {
        self.next_id += 1;
        let msg = serde_json::json!({"jsonrpc": "2.0", "id": self.next_id, "method": method});
        self.post(msg).await
    }

    /// A JSON-RPC notification in the session (no answer expected: 202).
    pub async fn notify(&mut self, method: &str) -> io::Result<Answer> {
        self.post(serde_json::json!({"jsonrpc": "2.0", "method": method}))
            .await
    }

    async fn post(&mut self, msg: serde_json::Value) -> io::Result<Answer> {
        let req = self
            .request(Method::POST)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(Full::new(Bytes::from(msg.to_string())))
            .map_err(io::Error::other)?;
        self.send(req).await
    }

    /// Ends the session at the server (`DELETE`).
    pub async fn delete(&mut self) -> io::Result<Answer> {
        let req = self
            .request(Method::DELETE)
            .body(Full::new(Bytes::new()))
            .map_err(io::Error::other)?;
        self.send(req).await
    }

    /// Opens the session's event stream (`GET`, `Accept: text/event-stream`)
    /// on a connection of its own.
    pub async fn events(&self) -> io::Result<Stream> {
        let req = self
            .request(Method::GET)
            .header(ACCEPT, "text/event-stream")
            .body(Full::new(Bytes::new()))
            .map_err(io::Error::other)?;
        let mut conn = connect(self.addr).await?;
        let resp = conn.send_request(req).await.map_err(io::Error::other)?;
        let (parts, body) = resp.into_parts();
        Ok(Stream {
            status: parts.status,
            headers: parts.headers,
            body,
            buf: Vec::new(),
            _conn: conn,
        })
    }

    fn request(&self, method: Method) -> http::request::Builder {
        let mut b = Request::builder()
            .method(method)
            .uri("/mcp")
            .header(HOST, "localhost");
        if let Some(s) = &self.session {
            b = b.header(SESSION_HEADER, s);
        }
        b
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> io::Result<Answer> {
        let mut conn = match self.conn.take() {
            Some(c) if c.is_ready() => c,
            _ => connect(self.addr).await?,
        };
        let resp = conn.send_request(req).await.map_err(io::Error::other)?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        self.conn = Some(conn);
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

async fn connect(addr: SocketAddr) -> io::Result<http1::SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (send, conn) = http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(io::Error::other)?;
    tokio::spawn(conn);
    Ok(send)
}

/// An open event stream.
pub struct Stream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
    buf: Vec<u8>,
    _conn: http1::SendRequest<Full<Bytes>>,
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: Option<String>,
    pub data: String,
}

impl Stream {
    /// The server that answered (`x-backend`).
    pub fn server(&self) -> String {
        server_of(&self.headers)
    }

    /// The next event; `None` once the stream has ended.
    pub async fn next(&mut self) -> io::Result<Option<Event>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8_lossy(&raw);
                let mut e = Event {
                    id: None,
                    data: String::new(),
                };
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        e.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        e.data.push_str(v.trim_start());
                    }
                }
                return Ok(Some(e));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(io::Error::other(e)),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}
