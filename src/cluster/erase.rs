//! Erasing a user across the cluster without storing the name: the erasing node ends the
//! user's sessions here and leaves a *tombstone* in Redis, a keyed hash of the name (SHA-1
//! of a random per-namespace key and the name). Every node reads the tombstones newer than
//! the last it saw at each flush, hashes the names it knows (online or remembered) with
//! the same key, and erases those that match; their sessions then leave every view as
//! explicit leaves do, and the user's records in Redis go with the last of them.
//!
//! Tombstones are kept 30 days, so that a node restored from an older snapshot within that
//! time erases the user too.

use std::time::Duration;

use super::ClusterError;
use super::conn::{self, Conn, Lua};

/// How long a tombstone (and the key) is kept.
pub(super) const KEEP: Duration = Duration::from_secs(30 * 86_400);
/// Tombstones one flush takes in, at most.
const PER_FLUSH: usize = 1_000;

/// Stores the tombstone of `user`; the namespace's key is `candidate` if it has none yet.
/// KEYS[1] = "{ns}:n"; ARGV: name, key candidate, keep ms.
pub(super) const ERASE_LUA: &str = r#"
local P = string.sub(KEYS[1], 1, #KEYS[1] - 1)
local EKEY, ERASE = P .. 'ekey', P .. 'erase'
local key = redis.call('GET', EKEY)
if not key then
  key = ARGV[2]
  redis.call('SET', EKEY, key)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[3])
redis.call('ZADD', ERASE, now, redis.sha1hex(key .. ARGV[1]))
redis.call('ZREMRANGEBYSCORE', ERASE, '-inf', now - keep)
redis.call('PEXPIRE', EKEY, keep)
redis.call('PEXPIRE', ERASE, keep)
return now
"#;

/// The tombstone of `user` under `key`: what flush nodes compare their users with.
pub(super) fn tombstone(key: &[u8], user: &str) -> String {
    let mut h = sha1_smol::Sha1::new();
    h.update(key);
    h.update(user.as_bytes());
    h.digest().to_string()
}

/// A fresh namespace key: 32 random hex digits.
pub(super) fn new_key() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Leaves the tombstone of `user` in Redis.
pub(super) async fn store(
    conn: &mut Conn,
    script: &Lua,
    prefix: &str,
    user: &str,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let key = format!("{prefix}n");
    let args = vec![vec![
        user.as_bytes().to_vec(),
        new_key().into_bytes(),
        KEEP.as_millis().to_string().into_bytes(),
    ]];
    tokio::time::timeout(timeout, conn::eval_many(conn, script, &key, &args))
        .await
        .map_err(|_| ClusterError::Timeout(timeout))??
        .pop()
        .ok_or_else(|| ClusterError::Protocol("erase script: no answer".into()))??;
    Ok(())
}

/// The namespace's key and the tombstones stored after `cursor` (ms, Redis time): (key,
/// [(tombstone, stored at)]), oldest first. One round trip.
pub(super) async fn newer(
    conn: &mut Conn,
    prefix: &str,
    cursor: u64,
    timeout: Duration,
) -> Result<(Option<Vec<u8>>, Vec<(String, u64)>), ClusterError> {
    let mut pipe = redis::pipe();
    pipe.cmd("GET").arg(format!("{prefix}ekey"));
    pipe.cmd("ZRANGEBYSCORE")
        .arg(format!("{prefix}erase"))
        .arg(format!("({cursor}"))
        .arg("+inf")
        .arg("WITHSCORES")
        .arg("LIMIT")
        .arg(0)
        .arg(PER_FLUSH);
    let (key, list): (Option<Vec<u8>>, Vec<(String, f64)>) =
        tokio::time::timeout(timeout, pipe.query_async(conn))
            .await
            .map_err(|_| ClusterError::Timeout(timeout))??;
    Ok((
        key,
        list.into_iter()
            .map(|(t, at)| (t, at.max(0.0) as u64))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tombstone_is_the_sha1_of_key_and_name_as_redis_computes_it() {
        // redis.sha1hex("k" .. "alice"), as the erase script stores it: plain SHA-1, hex.
        assert_eq!(
            tombstone(b"k", "alice"),
            "00ef4fecd0f12f26f100470b9ff1b48bdaed6626"
        );
        assert_ne!(tombstone(b"other key", "alice"), tombstone(b"k", "alice"));
        assert_eq!(new_key().len(), 32);
    }
}
