//! What tether writes to Redis, spelled in one place: key names, the record
//! value, session ids as set members, and invalidation messages. Instances of
//! different versions share one Redis, so none of these may change shape.
//! The record is also written by `script.lua`, which must agree with
//! [`parse`].

use crate::store::{EndReason, SessionKey};

/// Key and channel names under `[store] key_prefix`.
pub(super) struct Keys {
    /// `<prefix>s:`, followed by the session id in hex.
    session: String,
    /// `<prefix>b:`, followed by a backend name: that backend's sorted set.
    pub(super) backend: String,
    /// `<prefix>events`: the invalidation channel.
    pub(super) channel: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Keys {
        Keys {
            session: format!("{prefix}s:"),
            backend: format!("{prefix}b:"),
            channel: format!("{prefix}events"),
        }
    }

    /// The record's key.
    pub(super) fn session(&self, key: SessionKey) -> String {
        format!("{}{}", self.session, member(key))
    }

    /// The sorted set of one backend's live sessions.
    pub(super) fn backend_set(&self, name: &str) -> String {
        format!("{}{}", self.backend, name)
    }
}

/// A session id as it appears in keys, sets and messages: 32 hex digits.
pub(super) fn member(key: SessionKey) -> String {
    format!("{:032x}", key.0)
}

/// The invalidation payload: `<instance> <id>`. The instance tag lets the
/// sender skip its own messages.
pub(super) fn invalidation(instance: &str, key: SessionKey) -> String {
    format!("{instance} {}", member(key))
}

/// The session an invalidation names, unless it is malformed or this
/// instance (`own`) sent it.
pub(super) fn parse_invalidation(payload: &[u8], own: &str) -> Option<SessionKey> {
    let text = std::str::from_utf8(payload).ok()?;
    let (from, key) = text.split_once(' ')?;
    if from == own {
        return None;
    }
    u128::from_str_radix(key, 16).ok().map(SessionKey)
}

/// A stored record, as the script writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stored<'a> {
    pub(super) created_ms: u64,
    pub(super) seen_ms: u64,
    /// `None` live, else the tombstone's reason.
    pub(super) ended: Option<EndReason>,
    pub(super) backend: &'a str,
}

/// `created|seen|state|backend`, state `L`, `E` or `R`; anything else is
/// `None` (and read as no record).
pub(super) fn parse(v: &str) -> Option<Stored<'_>> {
    let mut it = v.splitn(4, '|');
    let created_ms = it.next()?.parse().ok()?;
    let seen_ms = it.next()?.parse().ok()?;
    let ended = match it.next()? {
        "L" => None,
        "E" => Some(EndReason::Ended),
        "R" => Some(EndReason::Regenerated),
        _ => return None,
    };
    Some(Stored {
        created_ms,
        seen_ms,
        ended,
        backend: it.next()?,
    })
}

/// The state letter of a tombstone.
pub(super) fn reason_code(r: EndReason) -> &'static str {
    match r {
        EndReason::Regenerated => "R",
        // Idle and absolute never reach a tombstone; treat them as ended.
        _ => "E",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_parse_strictly() {
        assert_eq!(
            parse("10|20|L|app-1.x"),
            Some(Stored {
                created_ms: 10,
                seen_ms: 20,
                ended: None,
                backend: "app-1.x"
            })
        );
        assert_eq!(
            parse("10|20|R|").map(|s| s.ended),
            Some(Some(EndReason::Regenerated))
        );
        assert_eq!(
            parse("10|20|E|b").map(|s| s.ended),
            Some(Some(EndReason::Ended))
        );
        for bad in ["", "10|20|L", "x|20|L|b", "10|20|Q|b", "10|-1|L|b"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_on_the_wire() {
        let keys = Keys::new("tether:");
        let key = SessionKey(0xab);
        assert_eq!(
            keys.session(key),
            "tether:s:000000000000000000000000000000ab"
        );
        assert_eq!(keys.backend_set("app1"), "tether:b:app1");
        assert_eq!(keys.channel, "tether:events");
        let msg = invalidation("00000000000000ff", key);
        assert_eq!(msg, "00000000000000ff 000000000000000000000000000000ab");
        assert_eq!(parse_invalidation(msg.as_bytes(), "other"), Some(key));
        assert_eq!(parse_invalidation(msg.as_bytes(), "00000000000000ff"), None);
        for bad in [&b"x"[..], b"a zz", b"a \xff", b""] {
            assert_eq!(parse_invalidation(bad, "me"), None);
        }
    }
}
