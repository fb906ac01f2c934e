//! gRPC through tether, sticky per session: three `echo.Echo` backends
//! speaking HTTP/2, one tether in front (`protocol = "h2"`, sessions named
//! by the `x-session` metadata), and a client making unary calls and a
//! bidirectional chat in three sessions.
//!
//! ```text
//! cargo run --example grpc                      # the walk-through; exits 0 if every session stuck
//! cargo run --release --example grpc -- serve NAME ADDR   # one backend, for benches
//! cargo run --release --example grpc -- load ADDR CALLS CONCURRENCY   # unary load, JSON out
//! ```

mod echo;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::ExitCode;

use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {}
        [cmd, name, addr] if cmd == "serve" => return serve_one(name, addr).await,
        [cmd, addr, calls, conc] if cmd == "load" => {
            if let (Ok(addr), Ok(calls), Ok(conc)) = (addr.parse(), calls.parse(), conc.parse()) {
                return load(addr, calls, conc).await;
            }
        }
        _ => {}
    }
    if !args.is_empty() {
        eprintln!(
            "usage: grpc                              (the walk-through)\n       \
             grpc serve NAME ADDR\n       grpc load ADDR CALLS CONCURRENCY"
        );
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

/// `calls` unary calls from `conc` concurrent callers over one HTTP/2
/// connection, each caller its own session; prints one JSON line.
async fn load(addr: SocketAddr, calls: u64, conc: u64) -> ExitCode {
    let client = match echo::Client::connect(addr).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = std::time::Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    let conc = conc.max(1);
    for i in 0..conc {
        let mut c = client.clone();
        let n = calls / conc + u64::from(i < calls % conc);
        callers.spawn(async move {
            let session = format!("session-{i}");
            let (mut ok, mut lat) = (0u64, Vec::with_capacity(n as usize));
            for _ in 0..n {
                let t = std::time::Instant::now();
                if c.say(&session, "ping").await.is_ok() {
                    ok += 1;
                    lat.push(t.elapsed().as_micros() as u64);
                }
            }
            (ok, lat)
        });
    }
    let (mut ok, mut lat) = (0, Vec::new());
    while let Some(Ok((o, l))) = callers.join_next().await {
        ok += o;
        lat.extend(l);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{{\"calls\":{calls},\"ok\":{ok},\"errors\":{},\"secs\":{secs:.3},\"per_sec\":{:.0},\"p50_us\":{},\"p99_us\":{}}}",
        calls - ok,
        ok as f64 / secs,
        pct(0.5),
        pct(0.99)
    );
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
