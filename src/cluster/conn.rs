//! The connection to Redis: one server through a `ConnectionManager` (it reconnects by
//! itself), or a Redis Cluster, detected from the server's `INFO cluster`, so the URL of any
//! cluster node works.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, Pipeline, RedisFuture, Script, Value};

use super::ClusterError;

#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Conn::Single(_) => "Conn::Single",
            Conn::Cluster(_) => "Conn::Cluster",
        })
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Checks the URL without connecting: the only thing `start` may fail on, besides settings.
pub(super) fn client(url: &str) -> Result<Client, ClusterError> {
    Client::open(url)
        .map_err(|e| ClusterError::InvalidSetting(format!("Redis URL {:?}: {e}", redacted(url))))
}

/// The URL without its password, for messages and logs.
pub(super) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_never_shows_in_a_message() {
        assert_eq!(
            redacted("redis://:s3cret@h:6379/0"),
            "redis://:***@h:6379/0"
        );
        assert_eq!(redacted("redis://me:s3cret@h"), "redis://me:***@h");
        assert_eq!(redacted("redis://h:6379"), "redis://h:6379");
        let e = client("redis://:s3cret@h:notaport")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn a_seed_keeps_the_credentials_and_database() {
        assert_eq!(
            with_address("redis://:pw@a:1/2", "10.0.0.2:7001"),
            "redis://:pw@10.0.0.2:7001/2"
        );
        assert_eq!(
            with_address("rediss://b:6379", "[::1]:7"),
            "rediss://[::1]:7"
        );
        assert_eq!(
            with_address("redis://u:p@h?protocol=resp3", "c:1"),
            "redis://u:p@c:1?protocol=resp3"
        );
    }
}

/// Connects, asking the server whether it is part of a Redis Cluster. `timeout` bounds each
/// step; the caller bounds the whole. `seeds`: the URLs of a Redis Cluster's masters, known
/// from an earlier connection, so that a reconnect works with the URL's own node down.
pub(super) async fn connect(
    url: &str,
    client: &Client,
    timeout: Duration,
    seeds: &[String],
) -> Result<Conn, ClusterError> {
    if !seeds.is_empty() {
        let cluster = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()?;
        return Ok(Conn::Cluster(cluster.get_async_connection().await?));
    }
    let mut probe = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
        )
        .await?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut probe)
        .await?;
    if info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        let cluster = ClusterClient::builder(vec![url])
            .connection_timeout(timeout)
            .response_timeout(timeout)
            .retries(1)
            .build()?;
        Ok(Conn::Cluster(cluster.get_async_connection().await?))
    } else {
        // Our own timeout bounds every call; the manager only reconnects, quickly.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(timeout);
        Ok(Conn::Single(
            ConnectionManager::new_with_config(client.clone(), config).await?,
        ))
    }
}

/// Runs `script` once per argument list in `calls`, pipelined in one round trip, each call
/// its own `EVALSHA` (so Redis serves other clients between them). A script Redis does not
/// know (restarted, `SCRIPT FLUSH`) is loaded and the round trip sent again: the calls are
/// idempotent. Returns one answer per call; an error answer does not fail the others.
pub(super) async fn eval_many(
    conn: &mut Conn,
    script: &Lua,
    key: &str,
    calls: &[Vec<Vec<u8>>],
) -> Result<Vec<Result<Value, redis::RedisError>>, ClusterError> {
    let mut loaded = false;
    loop {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for args in calls {
            let cmd = pipe.cmd("EVALSHA").arg(&script.hash).arg(1).arg(key);
            for a in args {
                cmd.arg(a.as_slice());
            }
        }
        let answers: Vec<Value> = pipe.query_async(conn).await?;
        let mut out = Vec::with_capacity(answers.len());
        let mut unknown = false;
        for v in answers {
            match v.extract_error() {
                Ok(v) => out.push(Ok(v)),
                Err(e) => {
                    unknown |=
                        e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript);
                    out.push(Err(e));
                }
            }
        }
        if !unknown || loaded {
            return Ok(out);
        }
        loaded = true;
        let _: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script.code)
            .query_async(conn)
            .await?;
    }
}

/// A Lua script and its SHA1, sent with `EVALSHA`.
#[derive(Debug)]
pub(super) struct Lua {
    code: &'static str,
    hash: String,
}

impl Lua {
    pub(super) fn new(code: &'static str) -> Lua {
        Lua {
            code,
            hash: Script::new(code).get_hash().to_owned(),
        }
    }
}

/// Warns when Redis may evict keys: an evicted bucket would make the counts drift for good.
/// A managed Redis that refuses `CONFIG` says nothing worth a warning.
pub(super) async fn check_eviction_policy(conn: &mut Conn, node: &str) {
    let answer: Result<Vec<String>, _> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match answer {
        Ok(pair) => match pair.get(1).map(String::as_str) {
            Some("noeviction") | None => {}
            Some(policy) => tracing::warn!(
                node,
                policy,
                "presence cluster: Redis may evict keys (maxmemory-policy {policy}); an \
                 evicted key makes the cluster counts drift until the nodes re-send: use \
                 noeviction, or a Redis of its own"
            ),
        },
        Err(e) => tracing::debug!(node, error = %e, "presence cluster: CONFIG GET refused"),
    }
}

/// Whether Redis refused us for a wrong or missing password.
pub(super) fn is_auth_error(e: &redis::RedisError) -> bool {
    e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
}

/// A Redis Cluster's slot ranges and the `host:port` of the master of each, from
/// `CLUSTER SLOTS` (`None` on one server, or if it cannot tell).
pub(super) async fn slot_map(conn: &mut Conn) -> Option<Vec<(i64, i64, String)>> {
    if matches!(conn, Conn::Single(_)) {
        return None;
    }
    let Ok(Value::Array(ranges)) = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async::<Value>(conn)
        .await
    else {
        return None;
    };
    // Each range: start, end, then the master's [host, port, id, ...] and its replicas'.
    let mut masters: Vec<(i64, i64, String)> = Vec::new();
    for r in ranges {
        let Value::Array(r) = r else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(m))) =
            (r.first(), r.get(1), r.get(2))
        else {
            continue;
        };
        let who = match (m.first(), m.get(1)) {
            (Some(Value::BulkString(host)), Some(Value::Int(port))) => {
                let host = String::from_utf8_lossy(host);
                if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                }
            }
            _ => continue,
        };
        masters.push((*start, *end, who));
    }
    Some(masters)
}

/// The server of each of `slots`, numbered from 0, from `map` (see [`slot_map`]): all on
/// server 0 on one Redis, or if the map cannot tell.
pub(super) fn servers(map: Option<&[(i64, i64, String)]>, slots: &[u16]) -> Vec<usize> {
    let Some(masters) = map else {
        return vec![0; slots.len()];
    };
    let mut names: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(slots.len());
    for &slot in slots {
        let slot = i64::from(slot);
        let Some((_, _, who)) = masters.iter().find(|(s, e, _)| (*s..=*e).contains(&slot)) else {
            return vec![0; slots.len()];
        };
        let i = names.iter().position(|n| n == who).unwrap_or_else(|| {
            names.push(who);
            names.len() - 1
        });
        out.push(i);
    }
    out
}

/// `url` with its host and port replaced by `addr` (`host:port`): its scheme, credentials,
/// database and parameters kept.
pub(super) fn with_address(url: &str, addr: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, rest),
    };
    let tail = rest.find(['/', '?']).map_or("", |i| &rest[i..]);
    match userinfo {
        Some(u) => format!("{scheme}://{u}@{addr}{tail}"),
        None => format!("{scheme}://{addr}{tail}"),
    }
}
