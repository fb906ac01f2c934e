//! One live tether per fuzz process, shared by the targets that drive bytes
//! through a real proxy: a tokio runtime, a demo backend and tether on a
//! plain 127.0.0.1:0 listener. A panic anywhere aborts the process (so
//! libFuzzer sees a crash even when it happens in a tokio task), unless
//! `ignore` says it is a known one.

use std::net::SocketAddr;
use std::panic::PanicHookInfo;
use std::path::Path;

pub struct Live {
    pub addr: SocketAddr,
    // Held for the life of the process: dropping either would stop tether.
    _running: tether::server::Running,
    _rt: tokio::runtime::Runtime,
}

/// Starts tether with `sections` (TOML for `[timeouts]`, `[limits]` ...)
/// added to the common listener, secret and backend.
pub fn start(sections: &str, ignore: fn(&PanicHookInfo<'_>) -> bool) -> Live {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if ignore(info) {
            return;
        }
        default_hook(info);
        std::process::abort();
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let running = rt.block_on(async {
        let backend = tether::demo::spawn_backend("app1")
            .await
            .expect("backend binds");
        let toml = format!(
            "[[listener]]\nbind = \"127.0.0.1:0\"\ntls = false\n\n\
             [session]\nsecret = \"fuzz-secret-0123456789abcdef\"\n\n\
             {sections}\n\
             [[backend]]\nname = \"app1\"\naddress = \"{backend}\"\n"
        );
        let cfg = tether::config::from_str(&toml, Path::new("fuzz.toml"), None)
            .expect("the fuzz config is valid");
        tether::server::start(cfg, tether::clock::Clock::system())
            .await
            .expect("tether starts")
    });
    Live {
        addr: running.addrs()[0],
        _running: running,
        _rt: rt,
    }
}
