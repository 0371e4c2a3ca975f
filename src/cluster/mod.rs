//! The cluster-wide view on Redis: several server nodes, one "who is online".
//!
//! Each node keeps its local [`Presence`] and its hot path exactly as without a cluster; a
//! background task per [`Cluster`] flushes what changed on this node to Redis in one round
//! trip per `flush_interval` and reads the cluster-wide view back. Every node then shows the
//! same [`ClusterCounts`]: distinct users across nodes (a user on two nodes counts once;
//! hidden only if hidden on every session), guests and bots as sessions, per-page counts, the
//! cluster's peak, and the live nodes. Redis (or Redis Cluster) holds the shared state;
//! nothing distributed is home-made.
//!
//! ```no_run
//! use std::time::Duration;
//! use presence_tracker::cluster::{Cluster, ClusterCounts};
//! use presence_tracker::{Kind, Presence, SessionId};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let presence = Presence::new();
//! let cluster = Cluster::builder("redis://127.0.0.1:6379") // or any node of a Redis Cluster
//!     .namespace("myapp")
//!     .node_id("web-1")
//!     .flush_interval(Duration::from_secs(1))
//!     .node_timeout(Duration::from_secs(10))
//!     .start(&presence)
//!     .await?;
//!
//! presence.visit(SessionId::new_v4(), Kind::member("alice"), "/forum/42")?;
//! let c: ClusterCounts = cluster.sync().await?; // flush now and read back
//! println!("{} online across {} nodes", c.online, c.nodes);
//! let c = cluster.counts(); // cached: never waits on Redis
//! assert_eq!(c.online, c.members + c.hidden + c.guests);
//! let names = cluster.page_members("/forum/42", 20).await?;
//! cluster.shutdown().await; // removes this node's sessions (parks them before a restart)
//! # Ok(()) }
//! ```
//!
//! # What a flush sends
//! The tracker records, on its write paths only, the sessions that started, ended, or changed
//! kind or page; a plain touch or heartbeat records nothing. A flush reads each recorded
//! session once and sends an *upsert* (kind, user, page, the time left until its deadline, and
//! the ages of its last touch and activity), a *release* (it ended here) or a *leave* (it left
//! explicitly: it ends for every node). A session sent with `t` left is looked at again after
//! `t / 2` and re-sent only if it was touched since, so a busy session costs Redis about one
//! write per half `idle_timeout` however many requests it makes, and an idle one nothing. A
//! flush costs what changed, not what is stored.
//!
//! The operations go to a Lua script (`EVALSHA`, loaded again after `NOSCRIPT`) that applies
//! them, scores everything with Redis `TIME` (nodes send ages and time left, never their own
//! timestamps, so a node whose clock is off changes nothing), sweeps a bounded batch of
//! expired holds and dead nodes, records this node's flush time and returns the counts.
//!
//! # Key layout
//! Every key starts with the hash tag `{ns}` (the namespace, default `presence`), so a Redis
//! Cluster keeps them on one slot and the script can touch them all. Sessions and holds sit
//! in 4096 buckets by id so that each bucket stays within Redis's compact encoding
//! (listpack) up to about 500k sessions per node: ~181 bytes of Redis memory per session at
//! 100k (measured, see below), where one hash and one sorted set over all sessions took 335.
//! Past that, raise `hash-max-listpack-entries` and `zset-max-listpack-entries` (e.g. to
//! 512) to keep the figure.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{ns}:s:<bucket>` | hash | session id (16 bytes) → kind, user, page, number of nodes holding it |
//! | `{ns}:h:<node>:<bucket>` | zset | the sessions a node holds, scored by their expiry (ms, Redis time) |
//! | `{ns}:hm:<node>` | zset | a node's hold buckets by (a lower bound of) their earliest expiry: sweeps visit only buckets with something due |
//! | `{ns}:c` | hash | `sessions`, `guests`, `bots`, `members`, `hidden` |
//! | `{ns}:u` | hash | user → listed and hidden session counts, sort key, last seen, last active |
//! | `{ns}:m` | zset | listed users, by lower-cased name (`online_members`) |
//! | `{ns}:p` | zset | page → live sessions (`page_count`, `top_pages`) |
//! | `{ns}:pu:<page>`, `{ns}:pm:<page>` | hash, zset | signed-in users on a page, their sessions there, in name order (`page_members`) |
//! | `{ns}:peak` | hash | the cluster's peak `online` and when (Redis time) |
//! | `{ns}:n`, `{ns}:nn`, `{ns}:nid`, `{ns}:nseq`, `{ns}:dead` | | the node registry: live nodes by last flush, names, numbers, nodes being cleared |
//! | `{ns}:epoch` | string | names the data set: a Redis that lost it gets a new one |
//!
//! A session is one entry however many nodes see it (no sticky sessions needed): each node
//! holding it has its own hold, and it leaves the view when the last hold goes (released,
//! expired, or its node declared dead), or at once on an explicit leave anywhere.
//!
//! # Failures
//! - Redis unreachable or stalled: `touch` and every local read are unaffected. Each script
//!   call is bounded by a timeout (`flush_interval`, between 250 and 750 ms); a failed flush
//!   keeps the last view with [`ClusterCounts::stale`] set, and keeps what changed meanwhile
//!   as one entry per session (bounded by the local sessions plus those already sent, and at
//!   most 100 000 explicit leaves), never a queue of requests: a call that times out drops
//!   its connection (and whatever was queued on it), and the next flush connects anew.
//!   [`Cluster::sync`] fails within 2 s. Operations are idempotent, so a call that timed out
//!   and still ran later counts nothing twice.
//! - Redis restarted empty: the script creates a new epoch; each node sees it at its next
//!   flush and sends all its live sessions again, so the view is whole again within two
//!   flush intervals after Redis answers.
//! - A node that stops flushing (crash, runtime dropped, partition) for `node_timeout` is
//!   declared dead by the next flush of any node; its holds are released (up to 10 000 per
//!   flush), so the sessions no live node holds leave the view. If it comes back, it is a new
//!   node and sends everything again.
//! - A node shut down for a restart (its tracker has a snapshot file): its sessions stay in
//!   the view, parked under `{ns}:parked`, until their own expiry; the restarted node sends
//!   them again, so a deploy shows no dip and counts nothing twice.
//! - `start` fails only for an invalid URL or setting: Redis down at start is a stale, empty
//!   view that fills once Redis answers.
//!
//! # Limits
//! - One [`Cluster`] per [`Presence`]: the flush drains the tracker's change log.
//! - Redis 6.2 or later (the script uses `ZADD ... LT`), or a compatible server with Lua and
//!   `cmsgpack`.
//! - [`Cluster::user`]'s `last_seen` and `idle` come from the last upserts (up to half an
//!   `idle_timeout` old), merged with this node's own view of the user.
//! - A session seen by two nodes with different kinds shows the kind the last flush sent.
//!
//! # Measured
//! `cargo bench -p presence-tracker-testbed --bench cluster -- --warm-up-time 1
//! --measurement-time 3` (a `redis-server` 7.0 it starts on loopback; a shared 2-core
//! machine under a load average of 6 to 11, so times are pessimistic and noisy):
//!
//! | what | figure |
//! | --- | --- |
//! | `touch` with a cluster attached vs without (100k sessions) | 83.2 µs vs 82.2 µs per 1000: 0.99× (a touch records nothing; a more loaded run measured 87 vs 153 µs) |
//! | a flush with nothing changed, 1M local sessions vs 1k | 74 µs vs 161 µs (one `EVALSHA`, 12 Redis commands: no scan) |
//! | a flush of 10k changed sessions (page changes) | 157 to 533 ms; 3 `EVALSHA` round trips, 92k to 118k commands inside the script |
//! | Redis memory per session at 100k (`INFO memory`, 65% guests, 30% signed in) | 181 B |
//! | counting: classic `KEYS presence_*` + `GET` each, 10k / 100k sessions | 20 ms / 428 ms |
//! | counting: ours, `counts()` cached / a fresh `sync()` | 17 ns / 61 µs, at any size |
//! | a page view: classic `SET presence_<uuid> <kind> EX 300` / ours (`touch`) | 21 µs and one Redis command / 0.1 to 0.6 µs and none |
//!
//! # Scale
//! One hash tag puts every key on one Redis shard. Its ceiling, measured by the same bench:
//! a renewal (a busy session's re-send) costs the script 5.6 to 9.3 µs of `redis-server`
//! CPU over several runs, so one core absorbs 108k to 180k session updates per second. Each
//! live session is re-sent about once per `idle_timeout / 2` (150 s by default), so one tag
//! carries about
//! 16 to 27 million busy live sessions (fewer with many joins, leaves and page changes,
//! which cost about twice a renewal). That is above the 10 million where splitting the
//! keys into several tags would pay, so the view keeps one tag. Should that change, the
//! layout splits: sessions and holds are already keyed by id bucket, and users and pages
//! would go by a hash of their name, the counts being sums over the tags.

mod conn;
mod task;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use redis::Script;
use tokio::sync::{mpsc, oneshot};

use crate::{Peak, Presence, UserId, UserStatus};
use conn::Conn;
use task::{Command, Flusher};

/// How long the reads wait for Redis at most.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The cluster-wide counts, as [`Counts`](crate::Counts) but across all nodes.
///
/// `online == members + hidden + guests` holds in every value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ClusterCounts {
    /// People online across the cluster: `members + hidden + guests`.
    pub online: usize,
    /// Distinct listed users (a user on several nodes or tabs counts once).
    pub members: usize,
    /// Distinct users all of whose sessions, on every node, are hidden.
    pub hidden: usize,
    /// Guest sessions.
    pub guests: usize,
    /// Bot sessions.
    pub bots: usize,
    /// All live sessions, each once however many nodes see it.
    pub sessions: usize,
    /// Live nodes (those that flushed within `node_timeout`).
    pub nodes: usize,
    /// The most people ever online at once across the cluster, timed by Redis.
    pub peak: Peak,
    /// When Redis computed this view (Redis server time).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
    pub as_of: SystemTime,
    /// `true` while the last flush failed (Redis unreachable or stalled) or before the first
    /// one succeeded: the view is the last one known.
    pub stale: bool,
}

/// Why a cluster call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// A setting or the Redis URL is invalid (from [`ClusterBuilder::start`] only).
    InvalidSetting(String),
    /// Not connected to Redis yet (it was unreachable since the start).
    Unavailable,
    /// Redis did not answer within this time.
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
    /// Redis answered something this version does not understand.
    Protocol(String),
    /// The cluster view was shut down.
    Stopped,
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::InvalidSetting(s) => write!(f, "invalid cluster setting: {s}"),
            ClusterError::Unavailable => {
                f.write_str("Redis is not reachable yet; the cluster view fills once it answers")
            }
            ClusterError::Timeout(d) => write!(
                f,
                "Redis did not answer within {d:?}; the cluster view is stale until it does"
            ),
            ClusterError::Redis(e) => write!(f, "Redis error: {e}"),
            ClusterError::Protocol(s) => write!(f, "unexpected answer from Redis: {s}"),
            ClusterError::Stopped => f.write_str("the cluster view was shut down"),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::Redis(e) => Some(e),
            _ => None,
        }
    }
}

impl From<redis::RedisError> for ClusterError {
    fn from(e: redis::RedisError) -> Self {
        ClusterError::Redis(e)
    }
}

/// Settings of a [`Cluster`], from [`Cluster::builder`]; [`start`](Self::start) checks them.
#[derive(Clone, Debug)]
pub struct ClusterBuilder {
    url: String,
    namespace: String,
    node_id: Option<String>,
    flush_interval: Duration,
    node_timeout: Duration,
}

/// Longest namespace and node id accepted: they are part of every key or every call.
pub const MAX_NAME_LEN: usize = 128;

impl ClusterBuilder {
    /// The key prefix: every key carries the hash tag `{namespace}`. Default `"presence"`.
    /// At most [`MAX_NAME_LEN`] bytes, not empty, without `{` or `}`. Nodes that share a
    /// view use the same namespace; different applications on one Redis use different ones.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// This node's name in the registry. Default: a random UUID, so that a restarted
    /// process is a new node (its sessions are keyed by id, so nothing counts twice).
    /// At most [`MAX_NAME_LEN`] bytes, not empty; two running nodes must not share one.
    pub fn node_id(mut self, node_id: impl Into<String>) -> Self {
        self.node_id = Some(node_id.into());
        self
    }

    /// How often this node flushes what changed and reads the view back: one round trip
    /// per interval. Default 1 s; between 10 ms and 1 h. A change shows on every node
    /// within two intervals.
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// A node that has not flushed for this long is declared dead and its sessions leave
    /// the view (unless another node holds them). Default 10 s; at least twice
    /// `flush_interval`, at most 1 day.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    fn check(&self) -> Result<(), ClusterError> {
        let bad = |s: String| Err(ClusterError::InvalidSetting(s));
        let name_ok = |s: &str| !s.is_empty() && s.len() <= MAX_NAME_LEN;
        if !name_ok(&self.namespace) || self.namespace.contains(['{', '}']) {
            return bad(format!(
                "namespace must be 1 to {MAX_NAME_LEN} bytes without '{{' or '}}', got {:?}",
                self.namespace
            ));
        }
        if let Some(id) = &self.node_id {
            if !name_ok(id) {
                return bad(format!(
                    "node_id must be 1 to {MAX_NAME_LEN} bytes, got {} bytes",
                    id.len()
                ));
            }
        }
        if self.flush_interval < Duration::from_millis(10)
            || self.flush_interval > Duration::from_secs(3600)
        {
            return bad(format!(
                "flush_interval must be between 10 ms and 1 h, got {:?}",
                self.flush_interval
            ));
        }
        if self.node_timeout < self.flush_interval * 2
            || self.node_timeout > Duration::from_secs(86_400)
        {
            return bad(format!(
                "node_timeout must be between twice flush_interval ({:?}) and 1 day, got {:?}",
                self.flush_interval * 2,
                self.node_timeout
            ));
        }
        Ok(())
    }

    fn into_shared(self, presence: &Presence) -> Shared {
        let node_id = self
            .node_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let call_timeout = self
            .flush_interval
            .clamp(Duration::from_millis(250), Duration::from_millis(750));
        let now = SystemTime::now();
        Shared {
            url: self.url,
            epoch_key: format!("{{{}}}:epoch", self.namespace),
            prefix: format!("{{{}}}:", self.namespace),
            node_id,
            flush_interval: self.flush_interval,
            node_timeout: self.node_timeout,
            call_timeout,
            read_script: Script::new(include_str!("read.lua")),
            presence: presence.clone(),
            conn: Mutex::new(None),
            view: Mutex::new(ClusterCounts {
                online: 0,
                members: 0,
                hidden: 0,
                guests: 0,
                bots: 0,
                sessions: 0,
                nodes: 0,
                peak: Peak { online: 0, at: now },
                as_of: now,
                stale: true,
            }),
        }
    }

    /// Starts the flush task on the current tokio runtime and returns the handle.
    ///
    /// Fails only for an invalid URL or setting ([`ClusterError::InvalidSetting`]): Redis
    /// down at start is a stale, empty view that fills once Redis answers. The first flush
    /// sends every live session of `presence`. Use one `Cluster` per `Presence`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self, presence: &Presence) -> Result<Cluster, ClusterError> {
        self.check()?;
        let client = conn::client(&self.url)?;
        let shared = Arc::new(self.into_shared(presence));
        let (tx, rx) = mpsc::channel(16);
        let flusher = Flusher::new(shared.clone(), presence.clone(), client);
        tokio::spawn(flusher.run(rx));
        Ok(Cluster {
            inner: Arc::new(Inner {
                shared,
                commands: tx,
            }),
        })
    }
}

pub(crate) struct Shared {
    url: String,
    epoch_key: String,
    prefix: String,
    node_id: String,
    flush_interval: Duration,
    node_timeout: Duration,
    call_timeout: Duration,
    read_script: Script,
    presence: Presence,
    conn: Mutex<Option<Conn>>,
    view: Mutex<ClusterCounts>,
}

struct Inner {
    shared: Arc<Shared>,
    commands: mpsc::Sender<Command>,
}

/// The cluster-wide presence view of one node: a handle to its flush task and the cached
/// view. `Clone` (an `Arc` bump), `Send`, `Sync`.
///
/// Dropping the last handle ends the task after a final flush that removes this node's
/// sessions, as [`shutdown`](Self::shutdown) does, if the runtime is still running.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &*self.inner.shared;
        f.debug_struct("Cluster")
            .field("namespace", &s.prefix)
            .field("node_id", &s.node_id)
            .field("flush_interval", &s.flush_interval)
            .field("node_timeout", &s.node_timeout)
            .field("view", &*s.view.lock())
            .finish()
    }
}

/// The sort key of a user name in the name-ordered lists: case-insensitive, as phpBB lists
/// users; the name itself breaks ties.
fn sort_key(user: &str) -> String {
    // NUL separates the sort key from the name in the sorted sets: keep it out of the key.
    user.to_lowercase().replace('\0', "")
}

impl Cluster {
    /// Settings for a cluster view on the Redis at `url` (`redis://host:port[/db]`, or any
    /// node of a Redis Cluster: detected from the server). Defaults: namespace `presence`,
    /// a random node id, `flush_interval` 1 s, `node_timeout` 10 s.
    pub fn builder(url: impl Into<String>) -> ClusterBuilder {
        ClusterBuilder {
            url: url.into(),
            namespace: "presence".into(),
            node_id: None,
            flush_interval: Duration::from_secs(1),
            node_timeout: Duration::from_secs(10),
        }
    }

    /// The last cluster-wide view: cached, O(1), never waits on Redis. `stale` says whether
    /// the last flush failed.
    pub fn counts(&self) -> ClusterCounts {
        *self.inner.shared.view.lock()
    }

    /// This node's id in the registry.
    pub fn node_id(&self) -> &str {
        &self.inner.shared.node_id
    }

    /// Flushes this node now and reads the view back.
    ///
    /// Fails within 2 s when Redis is unreachable or stalled (the cached view is then marked
    /// stale): every step of a flush (connecting, each script call) is bounded by a timeout
    /// of at most 750 ms, and a waiting flush of the task may come first. A large flush that
    /// makes progress (the first send of a million sessions) takes what it takes.
    pub async fn sync(&self) -> Result<ClusterCounts, ClusterError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(Command::Sync(tx))
            .await
            .map_err(|_| ClusterError::Stopped)?;
        rx.await.map_err(|_| ClusterError::Stopped)?
    }

    /// Stops the flush task after a final flush that removes this node's sessions from the
    /// view (those another node also holds stay). Best effort: with Redis down, the node
    /// timeout removes them instead. Later calls to [`sync`](Self::sync) fail with
    /// [`ClusterError::Stopped`]; the reads keep working.
    ///
    /// A tracker with a [`snapshot_file`](crate::PresenceBuilder::snapshot_file) saves its
    /// sessions at shutdown for the next start: a restart is coming, so its sessions stay in
    /// the view ("parked", no longer tied to this node's liveness) and expire on their own
    /// time if the node does not come back; when it does, it sends them again and nothing
    /// counts twice. A deploy then shows no dip in who is online.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .commands
            .send(Command::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    fn conn(&self) -> Result<Conn, ClusterError> {
        self.inner
            .shared
            .conn
            .lock()
            .clone()
            .ok_or(ClusterError::Unavailable)
    }

    async fn read<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> Result<T, ClusterError> {
        let s = &*self.inner.shared;
        let mut inv = s.read_script.key(&s.epoch_key);
        for a in args {
            inv.arg(*a);
        }
        let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
        let mut retried = false;
        loop {
            let mut conn = self.conn()?;
            match tokio::time::timeout_at(deadline, inv.invoke_async(&mut conn)).await {
                Err(_) => return Err(ClusterError::Timeout(READ_TIMEOUT)),
                Ok(Ok(v)) => return Ok(v),
                // The first call after Redis came back finds the old connection broken; the
                // client reconnects, so try once more.
                Ok(Err(e)) if !retried && (e.is_io_error() || e.is_connection_dropped()) => {
                    retried = true;
                }
                Ok(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Live sessions, across the cluster, whose last visit was `page`.
    pub async fn page_count(&self, page: &str) -> Result<usize, ClusterError> {
        let count: i64 = self.read(&[b"page_count", page.as_bytes()]).await?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    /// The `n` pages with the most live sessions across the cluster, busiest first, ties by
    /// name. Costs O(log pages + n).
    pub async fn top_pages(&self, n: usize) -> Result<Vec<(String, usize)>, ClusterError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let n = n.to_string();
        let flat: Vec<String> = self.read(&[b"top", n.as_bytes()]).await?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        for pair in flat.chunks_exact(2) {
            let count: f64 = pair[1]
                .parse()
                .map_err(|_| ClusterError::Protocol(format!("page count {:?}", pair[1])))?;
            out.push((pair[0].clone(), count.max(0.0) as usize));
        }
        Ok(out)
    }

    /// Where user `user` stands across the cluster: `Online` if any node holds a live
    /// session of theirs (`hidden` only if every one is hidden), else what this node
    /// knows (`Offline` with its last-seen time, or `Unknown`).
    ///
    /// `last_seen` and `idle` merge this node's own view with the last upserts other nodes
    /// sent (a busy session is re-sent every half `idle_timeout`, so they may lag by that).
    pub async fn user(&self, user: &str) -> Result<UserStatus, ClusterError> {
        let r: Vec<i64> = self.read(&[b"user", user.as_bytes()]).await?;
        let local = self.inner.shared.presence.user(user);
        if r.len() != 5 || r[0] + r[1] <= 0 {
            return Ok(local);
        }
        let (listed, hidden, seen, active, now) = (r[0], r[1], r[2], r[3], r[4]);
        let idle_after =
            i64::try_from(self.inner.shared.presence.idle_after().as_millis()).unwrap_or(i64::MAX);
        let mut status_seen = task::system_time(seen);
        let mut idle = now.saturating_sub(active) >= idle_after;
        if let UserStatus::Online {
            last_seen,
            idle: local_idle,
            ..
        } = local
        {
            status_seen = status_seen.max(last_seen);
            idle &= local_idle;
        }
        Ok(UserStatus::Online {
            sessions: usize::try_from(listed + hidden).unwrap_or(0),
            last_seen: status_seen,
            idle,
            hidden: listed == 0,
        })
    }

    /// The counts of several pages in one round trip (the HTTP routes' `pages=`).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn page_counts(&self, pages: &[&str]) -> Result<Vec<usize>, ClusterError> {
        if pages.is_empty() {
            return Ok(Vec::new());
        }
        let mut args: Vec<&[u8]> = vec![b"page_counts"];
        args.extend(pages.iter().map(|p| p.as_bytes()));
        let counts: Vec<i64> = self.read(&args).await?;
        Ok(counts
            .into_iter()
            .map(|c| usize::try_from(c).unwrap_or(0))
            .collect())
    }

    /// A session some node holds in the view, with its kind and page: lets a node that
    /// does not know it (no sticky sessions) take it up. `None` when no node holds it.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn live_session(
        &self,
        id: crate::SessionId,
    ) -> Result<Option<(crate::Kind, Option<String>)>, ClusterError> {
        let r: Vec<String> = self
            .read(&[b"session", id.as_uuid().as_bytes().as_slice()])
            .await?;
        let [kind, user, page] = r.as_slice() else {
            return Ok(None);
        };
        let kind = match kind.as_str() {
            "g" => crate::Kind::Guest,
            "b" => crate::Kind::Bot,
            "m" => crate::Kind::member(user.as_str()),
            "h" => crate::Kind::hidden_member(user.as_str()),
            other => {
                return Err(ClusterError::Protocol(format!("session kind {other:?}")));
            }
        };
        Ok(Some((kind, (!page.is_empty()).then(|| page.clone()))))
    }

    /// Listed users online anywhere in the cluster, by name (case-insensitive), at most
    /// `n`; hidden users never appear. Costs what it returns.
    pub async fn online_members(&self, n: usize) -> Result<Vec<UserId>, ClusterError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let n = n.to_string();
        let names: Vec<String> = self.read(&[b"members", n.as_bytes()]).await?;
        Ok(names.into_iter().map(UserId::from).collect())
    }

    /// Listed users with a live session on `page` anywhere in the cluster, by name, at most
    /// `n`. Costs what it returns (plus users on the page hidden everywhere).
    pub async fn page_members(&self, page: &str, n: usize) -> Result<Vec<UserId>, ClusterError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let n = n.to_string();
        let names: Vec<String> = self
            .read(&[b"page_members", page.as_bytes(), n.as_bytes()])
            .await?;
        Ok(names.into_iter().map(UserId::from).collect())
    }
}

const _: () = {
    const fn handle<T: Send + Sync + Clone + fmt::Debug + 'static>() {}
    handle::<Cluster>();
    handle::<ClusterCounts>();
    handle::<ClusterBuilder>();
};
