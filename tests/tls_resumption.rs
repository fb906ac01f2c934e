//! `[tls] session_resumption` (SPEC section 2): on by default, a returning
//! client resumes its TLS session; off, every handshake is a full one.

mod support;

use support::*;
use tokio::net::TcpStream;

/// Two connections from one client (one session cache): how each handshake went.
async fn two_handshakes(addr: std::net::SocketAddr) -> Vec<Option<rustls::HandshakeKind>> {
    let connector = tls_connector(&[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio::time::timeout(
            HANG,
            connector.connect("localhost".try_into().unwrap(), tcp),
        )
        .await
        .expect("handshake hung")
        .expect("handshake");
        kinds.push(tls.get_ref().1.handshake_kind());
        // A request, so the server's TLS 1.3 ticket is read before closing.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(HANG, tls.read_to_end(&mut sink)).await;
    }
    kinds
}

#[tokio::test]
async fn a_returning_client_resumes_by_default_and_never_when_resumption_is_off() {
    use rustls::HandshakeKind::{Full, Resumed};
    let a = Backend::start("app1").await;
    let on = Tether::start(&(config_tls("", &[&a]) + "\n[admin]\nbind = \"127.0.0.1:0\"\n")).await;
    assert_eq!(two_handshakes(on.addr()).await, [Some(Full), Some(Resumed)]);
    let (_, metrics) = admin(on.running().admin_addr().unwrap(), "GET", "/metrics", None).await;
    assert!(
        metrics.contains("\ntether_tls_handshakes_total 2\n")
            && metrics.contains("\ntether_tls_handshakes_resumed_total 1\n"),
        "the second handshake is counted as resumed:\n{metrics}"
    );

    let off = config_tls("", &[&a]).replace(
        "key = \"certs/localhost.key\"\n",
        "key = \"certs/localhost.key\"\nsession_resumption = false\n",
    );
    assert!(off.contains("session_resumption = false"));
    let off = Tether::start(&off).await;
    assert_eq!(two_handshakes(off.addr()).await, [Some(Full), Some(Full)]);
}
