//! The MCP streamable HTTP flow through tether, on loopback:
//!
//! ```text
//! cargo run --example mcp
//! ```
//!
//! Starts three MCP-style servers (`server.rs`) and, in-process, a tether
//! with `source = "header"`, `header = "Mcp-Session-Id"`. Then three
//! clients each walk the flow: `initialize` (the server names the session in
//! `Mcp-Session-Id`; tether learns that id is pinned to that server), a few
//! requests, the `text/event-stream` stream, and `DELETE`. Prints which
//! server answered each step; exits 0 if every step of every session reached
//! the server that named it, else 1.

mod client;
mod server;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use client::McpClient;
use server::{McpServer, Options};

const CONFIG: &str = r#"
[[listener]]
bind = "127.0.0.1:0"
tls = false

[session]
source = "header"
header = "Mcp-Session-Id"
secret = "mcp-example-secret-0123456789abcdef"

[timeouts]
response = "2s"
"#;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("mcp example: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<bool, Box<dyn std::error::Error>> {
    let options = Options {
        every: Duration::from_millis(200),
        ..Options::default()
    };
    let mut servers = Vec::new();
    let mut config = CONFIG.to_string();
    for name in ["mcp-1", "mcp-2", "mcp-3"] {
        let s = McpServer::start(name, options.clone()).await?;
        config.push_str(&format!(
            "\n[[backend]]\nname = \"{name}\"\naddress = \"{}\"\n",
            s.addr
        ));
        servers.push(s);
    }
    let cfg = tether::config::from_str(&config, Path::new("mcp-example.toml"), None)?;
    let tether = tether::server::start(cfg, tether::clock::Clock::system()).await?;
    let addr = tether.addrs()[0];
    println!("tether on http://{addr}, servers mcp-1..3, source = \"header\" (Mcp-Session-Id)\n");

    let mut all_home = true;
    for n in 1..=3 {
        let mut c = McpClient::new(addr);
        let init = c.initialize().await?;
        let Some(id) = c.session.clone() else {
            println!(
                "session {n}: initialize got no Mcp-Session-Id ({})",
                init.status
            );
            all_home = false;
            continue;
        };
        let home = init.server();
        let short: String = id.chars().take(8).collect();
        println!("session {n}: Mcp-Session-Id {short}…");
        println!("  {:<34} -> {home} {}", "POST initialize", init.status);
        let a = c.notify("notifications/initialized").await?;
        all_home &= step(
            &home,
            "POST notifications/initialized",
            &a.server(),
            a.status,
        );
        for method in ["tools/list", "tools/call"] {
            let a = c.rpc(method).await?;
            all_home &= step(&home, &format!("POST {method}"), &a.server(), a.status);
        }
        let mut events = c.events().await?;
        all_home &= step(
            &home,
            "GET text/event-stream",
            &events.server(),
            events.status,
        );
        if events.status.is_success() {
            for _ in 0..3 {
                match tokio::time::timeout(Duration::from_secs(5), events.next()).await {
                    Ok(Ok(Some(e))) => {
                        println!("    event {}: {}", e.id.unwrap_or_default(), e.data)
                    }
                    _ => {
                        println!("    the event stream stopped");
                        all_home = false;
                        break;
                    }
                }
            }
        }
        drop(events);
        let a = c.delete().await?;
        all_home &= step(&home, "DELETE", &a.server(), a.status);
        println!();
    }
    tether.shutdown().await;
    drop(servers);
    if all_home {
        println!("every step reached the server that named its session");
    } else {
        println!("some steps reached another server: that server did not know the session");
    }
    Ok(all_home)
}

/// Prints one step; whether it reached `home` and succeeded.
fn step(home: &str, what: &str, server: &str, status: http::StatusCode) -> bool {
    let ok = server == home && status.is_success();
    let mark = if server != home {
        "  <- not the server that named the session"
    } else if !ok {
        "  <- failed"
    } else {
        ""
    };
    println!("  {what:<34} -> {server} {status}{mark}");
    ok
}
