//! gRPC end to end through tether to HTTP/2 backends (SPEC section 11): a
//! real tonic client and real tonic-coded servers, unary and bidirectional
//! streaming, sticky per session.

mod support;

#[path = "../examples/grpc/echo.rs"]
mod echo;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;

use tokio::net::TcpListener;

use support::*;

/// Three `echo.Echo` backends and a tether routing by `x-session`.
async fn setup() -> (Tether, Vec<tokio::task::JoinHandle<()>>) {
    let mut toml = format!(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n[session]\nsecret = \"{SECRET}\"\nsource = \"header\"\nheader = \"x-session\"\n\n[log]\naccess = false\n"
    );
    let mut tasks = vec![];
    for name in ["grpc1", "grpc2", "grpc3"] {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        toml.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddress = \"{}\"\nprotocol = \"h2\"\n",
            l.local_addr().unwrap()
        ));
        tasks.push(echo::serve(name, l));
    }
    (Tether::start(&toml).await, tasks)
}

async fn client(addr: SocketAddr) -> echo::Client {
    tokio::time::timeout(HANG, echo::Client::connect(addr))
        .await
        .expect("connect hung")
        .expect("gRPC client connects to tether")
}

const SESSIONS: [&str; 8] = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi",
];

#[tokio::test]
async fn unary_calls_stick_to_their_session_backend() {
    let (t, _tasks) = setup().await;
    let mut c = client(t.addr()).await;
    let mut homes = HashMap::new();
    for round in 0..3 {
        for s in SESSIONS {
            let said = tokio::time::timeout(HANG, c.say(s, &format!("{s} {round}")))
                .await
                .expect("call hung")
                .expect("unary call succeeds");
            assert_eq!(said.text, format!("{s} {round}"));
            let home = homes.entry(s).or_insert_with(|| said.backend.clone());
            assert_eq!(*home, said.backend, "session {s} moved");
        }
    }
    let used: BTreeSet<_> = homes.values().collect();
    assert!(
        used.len() >= 2,
        "sessions spread over backends, not one per connection: {homes:?}"
    );
}

#[tokio::test]
async fn a_bidirectional_stream_flows_both_ways_on_its_session_backend() {
    let (t, _tasks) = setup().await;
    let mut c = client(t.addr()).await;
    for s in ["alice", "bob", "carol"] {
        let home = c.say(s, "hi").await.expect("unary").backend;
        let (tx, mut answers) = tokio::time::timeout(HANG, c.chat(s))
            .await
            .expect("chat hung")
            .expect("chat opens");
        // Each message is answered before the next is sent: the stream is
        // live both ways, not buffered until the request ends.
        for (i, word) in ["one", "two", "three", "four"].into_iter().enumerate() {
            tx.send(echo::Say { text: word.into() }).await.unwrap();
            let said = tokio::time::timeout(HANG, answers.message())
                .await
                .expect("answer hung: the stream is buffered")
                .expect("stream reads")
                .expect("an answer per message");
            assert_eq!(
                (said.text.as_str(), said.seq, said.backend.as_str()),
                (word, i as u64 + 1, home.as_str())
            );
        }
        drop(tx);
        let end = tokio::time::timeout(HANG, answers.message())
            .await
            .expect("end hung");
        assert!(
            matches!(end, Ok(None)),
            "the chat ends with grpc-status 0 in the trailers: {end:?}"
        );
    }
}
