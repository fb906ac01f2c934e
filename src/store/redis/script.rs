//! The one Lua script behind every store operation (`script.lua`), called by
//! its SHA1 digest (`EVALSHA`) so a request sends a few dozen bytes instead
//! of the script's text.
//!
//! Redis forgets scripts when it restarts, fails over or is told `SCRIPT
//! FLUSH`, and the connection manager reconnects without telling us. A single
//! call goes through `redis::Script`, which loads the script and retries on
//! `NOSCRIPT`; a pipeline does not, so [`query_pipeline`] does the same.

use std::sync::LazyLock;

use redis::aio::ConnectionManager;
use redis::{ErrorKind, RedisResult, Script, ScriptInvocation};

use super::codec;
use super::Inner;
use crate::store::cache::Times;
use crate::store::SessionKey;

/// Built once: `Script::new` hashes the text.
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("script.lua")));

impl Inner {
    /// One call of the script for `op` on `key`, with the arguments every op
    /// takes and then `extra` (see the header of `script.lua`).
    pub(super) fn eval(
        &self,
        op: &str,
        key: SessionKey,
        now_ms: u64,
        t: Times,
        extra: &[&str],
    ) -> ScriptInvocation<'static> {
        let mut c = SCRIPT.prepare_invoke();
        c.key(self.keys.session(key))
            .arg(op)
            .arg(now_ms)
            .arg(t.idle_ms)
            .arg(t.absolute_ms)
            .arg(&self.keys.backend)
            .arg(codec::member(key));
        for a in extra {
            c.arg(*a);
        }
        c
    }
}

/// Sends `pipe`; when Redis no longer has the script, loads it and sends
/// `pipe` once more. Sending twice is safe: each op, given the same
/// arguments, leaves the same record whether it runs once or twice, and a
/// repeated invalidation only makes other instances read Redis again.
pub(super) async fn query_pipeline(
    pipe: &redis::Pipeline,
    conn: &mut ConnectionManager,
) -> RedisResult<()> {
    match pipe.query_async::<()>(conn).await {
        Err(e) if e.kind() == ErrorKind::NoScriptError => {
            SCRIPT.load_async(conn).await?;
            pipe.query_async::<()>(conn).await
        }
        done => done,
    }
}
