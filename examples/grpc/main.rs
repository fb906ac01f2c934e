//! gRPC through tether, sticky per session: three `echo.Echo` backends
//! speaking HTTP/2, one tether in front (`protocol = "h2"`, sessions named
//! by the `x-session` metadata), and a client making unary calls and a
//! bidirectional chat in three sessions.
//!
//! ```text
//! cargo run --example grpc                      # the walk-through; exits 0 if every session stuck
//! cargo run --release --example grpc -- serve NAME ADDR   # one backend, for benches
//! ```

mod echo;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [cmd, name, addr] = args.as_slice() {
        if cmd == "serve" {
            return serve_one(name, addr).await;
        }
    }
    if !args.is_empty() {
        eprintln!("usage: grpc            (the walk-through)\n       grpc serve NAME ADDR");
        return ExitCode::from(2);
    }
    match walk().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_one(name: &str, addr: &str) -> ExitCode {
    let listener = match TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Ok(a) = listener.local_addr() {
        println!("listening {a}");
    }
    let _ = echo::serve(name, listener).await;
    ExitCode::SUCCESS
}

async fn walk() -> Result<bool, Box<dyn std::error::Error + Send + Sync>> {
    let mut backends = Vec::new();
    let mut config = String::from(
        "[[listener]]\nbind = \"127.0.0.1:0\"\n\n\
         [session]\nsource = \"header\"\nheader = \"x-session\"\n\
         secret = \"an example secret of at least 32 bytes\"\n\n\
         [log]\naccess = false\n",
    );
    for name in ["grpc1", "grpc2", "grpc3"] {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        config.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddress = \"{addr}\"\nprotocol = \"h2\"\n"
        ));
        backends.push(echo::serve(name, l));
    }
    let cfg = tether::config::from_str(&config, std::path::Path::new("grpc-example.toml"), None)?;
    let tether = tether::server::start(cfg, tether::clock::Clock::system()).await?;
    let addr: SocketAddr = tether.addrs()[0];
    println!("tether on {addr}, backends grpc1 grpc2 grpc3 (HTTP/2)\n");

    let mut client = echo::Client::connect(addr).await?;
    let mut all_stuck = true;
    for session in ["frank", "grace", "heidi"] {
        let mut seen = BTreeSet::new();
        for i in 1..=3 {
            let said = client.say(session, &format!("hello {i}")).await?;
            println!(
                "{session:>6}  unary Say  {:<10} -> {}",
                said.text, said.backend
            );
            seen.insert(said.backend);
        }
        let (tx, mut answers) = client.chat(session).await?;
        for word in ["one", "two", "three"] {
            tx.send(echo::Say { text: word.into() }).await?;
            // Each answer arrives before the next message is sent.
            let said = answers.message().await?.ok_or("the chat ended early")?;
            println!(
                "{session:>6}  chat #{}    {:<10} -> {}",
                said.seq, said.text, said.backend
            );
            seen.insert(said.backend);
        }
        drop(tx);
        let stuck = seen.len() == 1;
        all_stuck &= stuck;
        println!(
            "{session:>6}  {}\n",
            if stuck {
                "stayed on one backend"
            } else {
                "MOVED between backends"
            }
        );
    }
    tether.shutdown().await;
    Ok(all_stuck)
}
