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
//! # On a shared Redis
//! The Redis a site gives this crate also holds its caches, queues and sessions, so the view
//! is a quiet tenant:
//! - **Short calls.** A flush sends its operations in calls of bounded work, sized from
//!   their measured time to take about 2 ms of Redis time each, one call in flight at a
//!   time, so Redis serves its other clients between any two. Sweeps (a dead node's
//!   sessions, a bye) go the same way.
//! - **Cheap.** A plain touch or heartbeat sends nothing, and neither does a page change:
//!   each session's page is counted by one node, its *page owner*, which sends the counts of
//!   its pages and the entries of its listed sessions that changed, once per flush however
//!   many sessions moved. A busy session's claim is renewed once per half `idle_timeout`.
//!   `BENCHMARKS.md` compares the Redis CPU with the classic `SET presence_<uuid> ... EX 300`
//!   per request, measured in the same run.
//! - **Reads from a cache.** [`page_count`](Cluster::page_count),
//!   [`top_pages`](Cluster::top_pages), [`user`](Cluster::user),
//!   [`online_members`](Cluster::online_members) and [`page_members`](Cluster::page_members)
//!   answer from this node's cache: a key's first read waits for Redis, then the flush task
//!   refreshes it at most once per `flush_interval` while it is asked, so requests and page
//!   polls cost Redis nothing. The cache holds at most 4096 keys and lists of at most
//!   [`MAX_LIST`] names.
//! - **Everything expires.** Every key has a TTL (at least an hour; the peak 30 days): a key
//!   gets it from the call that creates it, and the flushes refresh the rest a slice at a
//!   time, each key within a quarter of its TTL, so a namespace whose nodes all stopped
//!   disappears on its own. Redis must
//!   not evict keys (`maxmemory-policy noeviction`, the default): an evicted key would make
//!   the counts drift, and [`ClusterBuilder::start`] warns about any other policy.
//!
//! # Nothing lost
//! A change stays on the node until Redis acknowledged the call that carried it; a flush that
//! failed or timed out is sent again, whole, at the next one. Every call carries a sequence
//! number: Redis ignores an older call that reaches it late (it waited in a stalled server),
//! so nothing is applied twice or out of order. What waits is one entry per local session
//! (and at most 100 000 explicit leaves), never a queue of requests.
//!
//! Redis restarted empty, or restored from an older dump (a failover to a lagging replica, a
//! backup): each node notices at its next flush (Redis no longer has the last call it
//! acknowledged) and sends all its live sessions again. Until every node has, the view is
//! [`stale`](ClusterCounts::stale) and every read answers the last complete view; the cluster
//! peak comes back with the nodes, which send the last one they saw.
//!
//! # Key layout
//! Every key starts with the hash tag `{ns}` (the namespace, default `presence`), so a Redis
//! Cluster keeps them on one slot and the script can touch them all. Sessions sit in 4096
//! buckets by id, so that each bucket stays within Redis's compact encoding (listpack) up to
//! about 500k sessions; past that, raise `hash-max-listpack-entries` and
//! `zset-max-listpack-entries` (e.g. to 512), or spread the view over several tags.
//!
//! With [`shards(k)`](ClusterBuilder::shards), each of `k` tags (`{ns:0}` to `{ns:k-1}`,
//! some with a suffix, as `{ns:3.1}`, so that their slots spread evenly) holds every key
//! below for its part of the view: sessions in `4096 / k` buckets (guests and bots by a
//! hash of their id, signed-in sessions by a hash of their user's name, so a user's records
//! are in one tag), and page counts and page entries by a hash of the page, so a node sends
//! one count per page that changed whatever the tags of its sessions, and a page is read
//! from one tag. The one key outside them, `{ns}:shards`, says how many tags each live node
//! uses.
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `{ns}:s:<bucket>` | hash | session id (16 bytes) → kind, user, its page owner, the nodes that claim it |
//! | `{ns}:h:<node>:<bucket>`, `{ns}:hb:<node>` | zset | a node's claims, scored by their expiry (Redis time), and its buckets |
//! | `{ns}:c` | hash | `sessions`, `guests`, `bots`, `members`, `hidden` |
//! | `{ns}:u` | hash | user → listed and hidden session counts, sort key, last seen, last active |
//! | `{ns}:m` | zset | listed users, by lower-cased name (`online_members`) |
//! | `{ns}:p` | zset | page → live sessions (`page_count`, `top_pages`) |
//! | `{ns}:pc:<node>` | zset | page → the sessions a node counts there |
//! | `{ns}:pm:<node>:<b>` | zset | a node's listed sessions by page, in 256 buckets by page (`page_members`) |
//! | `{ns}:ib:<node>`, `{ns}:ibn` | zset | a node's inbox: sessions another node took, or that nobody counts now |
//! | `{ns}:pp:<node>` | hash | a parked node's sessions → their page, until they expire or are taken |
//! | `{ns}:peak` | hash | the cluster's peak `online` and when (Redis time) |
//! | `{ns}:n`, `{ns}:nn`, `{ns}:nd`, `{ns}:nseq` | | the node registry: live nodes by last flush, names, tokens and sequences |
//! | `{ns}:dead`, `{ns}:parked`, `{ns}:drain`, `{ns}:fill`, `{ns}:since` | | nodes being swept, parked nodes, nodes whose pages come off, nodes refilling, the last loss |
//!
//! A session is one entry however many nodes see it (no sticky sessions needed): each node
//! that sees it claims it, and it leaves the view when the last claim goes (released,
//! or its node declared dead), or at once on an explicit leave anywhere. Only a listed
//! (not hidden) session puts its user on a page's member list.
//!
//! A session's page is counted by one node, the last that saw it on a new page: that node
//! *takes* it (one write of its record) and the node that counted it before drops it at its
//! next flush, so a session whose requests alternate between nodes counts once, on its
//! latest page, within two flush intervals. A heartbeat (no new page) moves nothing. When
//! the node that counts a session lets it go while another still holds it, that one counts
//! it again on the page it has there; a dead node's pages come off with it.
//!
//! # Failures
//! - Redis unreachable or stalled: `touch` and every local read are unaffected. Each script
//!   call is bounded by a timeout (`flush_interval`, between 250 and 750 ms); the view keeps its last value with [`ClusterCounts::stale`] set; errors go to
//!   `tracing` (the first of each kind at once, then once a minute). [`Cluster::sync`] fails
//!   within 2 s.
//! - A node that stops flushing (crash, runtime dropped, partition) for its own
//!   `node_timeout` is declared dead by the next flush of any node; its claims are released in batches, so the
//!   sessions no live node claims leave the view. If it comes back, it registers anew and
//!   sends everything again.
//! - Two live processes under one `node_id`: the second is refused
//!   ([`ClusterError::NodeIdInUse`], logged as an error) and touches nothing of the first;
//!   once the first has been silent for `node_timeout`, the second takes over.
//! - A node shut down for a restart (its tracker has a snapshot file): its sessions stay in
//!   the view, parked, until their own expiry; the restarted node sends them again, so a
//!   deploy shows no dip and counts nothing twice.
//! - `start` fails only for an invalid URL or setting, or a password Redis refuses: Redis
//!   down at start is a stale, empty view that fills once Redis answers.
//!
//! # Limits
//! - One [`Cluster`] per [`Presence`]: the flush drains the tracker's change log.
//! - Redis 6.2 or later, or a compatible server with Lua and `cmsgpack`.
//! - [`Cluster::user`]'s `last_seen` and `idle` come from the last renewals (up to half an
//!   `idle_timeout` old), merged with this node's own view of the user.
//! - A session seen by two nodes with different kinds shows the kind the last flush sent.
//!   Spread over several tags, a session moves from its id's tag to its user's when it signs
//!   in: the node that sees the sign-in marks it moved in the former, so a node that still
//!   has it as a guest (no sticky sessions) renews its claim there without counting it. Two
//!   cases count it in both tags until the other node sees the new kind or lets the session
//!   go: a guest's first send that reaches Redis after the sign-in (a request from just
//!   before it, flushed late), and a sign-out (or a change of user) that another node has
//!   not seen, which no tag can tell from the session's id.
//! - Spread over several tags, [`top_pages`](Cluster::top_pages) merges each tag's busiest
//!   pages with exact counts; when many pages tie, which of the tied pages come last may
//!   differ from one tag's name order.
//!
//! # Scale
//! One hash tag puts every key on one Redis shard; `BENCHMARKS.md` gives the session updates
//! per second one `redis-server` core absorbs through the flush script, and the live sessions
//! that carries (each re-sent once per half `idle_timeout`, plus joins, leaves and page
//! changes). On a Redis Cluster, [`ClusterBuilder::shards`] spreads the view over several
//! tags so that every master does its share: the counts are sums over the tags, and a flush
//! sends every tag's calls at once, one round trip per master.

mod cache;
mod conn;
mod erase;
mod log;
mod node;
mod pages;
mod tags;
mod task;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::{Peak, Presence, UserId, UserStatus};
use cache::{Answer, Read, ReadCache};
use conn::Conn;
use task::Command;

pub use cache::MAX_LIST;
pub use tags::MAX_SHARDS;

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
    /// `true` when the view is spread over several hash tags
    /// ([`ClusterBuilder::shards`]) and some answered the last flush while others did not
    /// (a Redis Cluster master down, with `cluster-require-full-coverage no`): the counts
    /// add the current parts and the last known ones of the rest. `stale` is `true` too.
    pub partial: bool,
}

impl ClusterCounts {
    /// Nothing known yet, as of `now`.
    pub(crate) fn empty(now: SystemTime) -> ClusterCounts {
        ClusterCounts {
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
            partial: false,
        }
    }
}

/// Why a cluster call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// A setting or the Redis URL is invalid (from [`ClusterBuilder::start`] only).
    InvalidSetting(String),
    /// Not connected to Redis yet, or the view is stale (Redis unreachable, or refilling
    /// after it lost data) and this key was never read before: reads never wait on a Redis
    /// that is down, nor answer from a partial one.
    Unavailable,
    /// Redis did not answer within this time.
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
    /// Redis answered something this version does not understand.
    Protocol(String),
    /// The cluster view was shut down.
    Stopped,
    /// Another live process uses this node id (two processes started with one name): this
    /// one sends nothing, and touches nothing of the other's, until the other has been
    /// silent for `node_timeout`. Give each process its own `node_id`.
    NodeIdInUse(String),
    /// Redis refused the password in the URL (from [`ClusterBuilder::start`], when Redis
    /// answered at start).
    Authentication(redis::RedisError),
    /// The tracker refused the request (e.g. a user name over
    /// [`MAX_USER_LEN`](crate::MAX_USER_LEN)).
    Presence(crate::PresenceError),
    /// Another live node spreads this namespace over another number of hash tags
    /// ([`ClusterBuilder::shards`]): the two would keep two separate views, so this node
    /// sends nothing until every node of the other count has stopped. Change `shards` on
    /// every node at once (stop them all), or start the new count under a new namespace.
    ShardsMismatch {
        /// This node's `shards`.
        ours: usize,
        /// The other node's.
        theirs: usize,
    },
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
            ClusterError::NodeIdInUse(id) => write!(
                f,
                "node id {id:?} is in use by another live process; give each process its own node_id"
            ),
            ClusterError::Authentication(e) => {
                write!(f, "Redis refused the credentials in the URL: {e}")
            }
            ClusterError::Presence(e) => e.fmt(f),
            ClusterError::ShardsMismatch { ours, theirs } => write!(
                f,
                "another live node spreads this namespace over {theirs} shards, this one over \
                 {ours}; this node sends nothing until the others stop (use one `shards` for \
                 every node of a namespace)"
            ),
        }
    }
}

impl std::error::Error for ClusterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClusterError::Redis(e) | ClusterError::Authentication(e) => Some(e),
            ClusterError::Presence(e) => Some(e),
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
    shards: usize,
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

    /// How often this node flushes what changed and reads the view back: one script call
    /// per interval when little changed (more, each about 2 ms of Redis time, for a burst).
    /// Default 1 s; between 10 ms and 1 h. A change shows on every node within two
    /// intervals.
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

    /// Spreads the view over `k` hash tags (default 1), so that the masters of a Redis
    /// Cluster share the work instead of one doing it all: guests and bots are kept by a
    /// hash of their session id, a signed-in user's sessions by a hash of the user's name.
    /// The counts add the tags' parts; page counts, the busiest pages and the name lists are
    /// merged when read, and a flush sends each tag's calls at once (one round trip per
    /// Redis server). Between 1 and [`MAX_SHARDS`].
    ///
    /// Every node of a namespace must use the same `k`: a node started with another one
    /// while a node of the first count is live gets [`ClusterError::ShardsMismatch`] from
    /// [`Cluster::sync`] and sends nothing (never a silently split view).
    ///
    /// On one plain Redis more tags buy nothing and cost a little: every flush makes at
    /// least one call per tag (see BENCHMARKS.md: with 16 tags, about 1.06x the Redis CPU
    /// per page change, and 0.8 ms against 0.2 ms for a flush with nothing to send). On a
    /// Redis Cluster of `m` masters, a few tags per master (a multiple of `m` splits evenly)
    /// spread the work: tag names are chosen so that their slots fall in `k` equal slices of
    /// the slot space. With Redis's default
    /// `cluster-require-full-coverage yes`, one master down makes every master refuse, and
    /// the whole view is [`stale`](ClusterCounts::stale) until it returns; with `no`, the
    /// tags of the other masters go on, and the view says it is
    /// [`partial`](ClusterCounts::partial) ([`Cluster::sync`] then returns the error of the
    /// tags that failed; [`Cluster::counts`] shows the rest as they are).
    ///
    /// A node shut down for a restart (see [`Cluster::shutdown`]) parks its sessions, which
    /// stay counted; spread over several tags, their pages are kept by other tags than the
    /// sessions, so they come off their pages at once, until the node is back.
    ///
    /// A session that signs in moves from its id's tag to its user's, and counts no more in
    /// the former for any node: one that saw it only as a guest (no sticky sessions) keeps
    /// renewing its claim there without counting it, until it lets it go. See the [module
    /// docs](self#limits) for the two cases that count it in both tags for a while.
    ///
    /// ```no_run
    /// use presence_tracker::Presence;
    /// use presence_tracker::cluster::Cluster;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let presence = Presence::new();
    /// // Any master of a Redis Cluster of three: 15 tags, five on each.
    /// let cluster = Cluster::builder("redis://10.0.0.7:7000")
    ///     .namespace("myapp")
    ///     .shards(15)
    ///     .start(&presence)
    ///     .await?;
    /// if let Err(e) = cluster.sync().await {
    ///     // A master down (with `cluster-require-full-coverage no`): the other tags go on.
    ///     let c = cluster.counts();
    ///     if c.partial {
    ///         println!("{e}; {} online, some tags as last known", c.online);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn shards(mut self, k: usize) -> Self {
        self.shards = k;
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
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return bad(format!(
                "shards must be between 1 and {MAX_SHARDS}, got {}",
                self.shards
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
        // Long enough that the flushes refresh every key well before it expires, and that a
        // parked session outlives its own expiry; short enough that an abandoned namespace
        // goes away.
        let key_ttl = Duration::from_secs(3600)
            .max(self.node_timeout * 4)
            .max(presence.idle_timeout() * 2)
            .max(self.flush_interval * 16);
        Shared {
            url: self.url,
            base_prefix: format!("{{{}}}:", self.namespace),
            prefixes: tags::prefixes(&self.namespace, self.shards),
            node_id,
            flush_interval: self.flush_interval,
            node_timeout: self.node_timeout,
            call_timeout,
            key_ttl,
            read_script: conn::Lua::new(include_str!("read.lua")),
            erase_script: conn::Lua::new(erase::ERASE_LUA),
            presence: presence.clone(),
            conn: Mutex::new(None),
            cache: ReadCache::default(),
            view: Mutex::new(ClusterCounts::empty(SystemTime::now())),
        }
    }

    /// Starts the flush task on the current tokio runtime and returns the handle.
    ///
    /// Connects once (bounded by the call timeout) to check the credentials and Redis's
    /// eviction policy (any but `noeviction` is warned about: an evicted key would make the
    /// counts drift). The first flush sends every live session of `presence`. Use one
    /// `Cluster` per `Presence`.
    ///
    /// # Errors
    /// [`ClusterError::InvalidSetting`] for an invalid URL or setting, and
    /// [`ClusterError::Authentication`] when Redis answers and refuses the password. Redis
    /// down or slow at start is not an error: the view is stale and empty until it answers.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub async fn start(self, presence: &Presence) -> Result<Cluster, ClusterError> {
        self.check()?;
        let client = conn::client(&self.url)?;
        let shared = Arc::new(self.into_shared(presence));
        let timeout = shared.call_timeout;
        match tokio::time::timeout(timeout, conn::connect(&shared.url, &client, timeout, &[])).await
        {
            Ok(Ok(mut c)) => {
                conn::check_eviction_policy(&mut c, &shared.node_id).await;
                *shared.conn.lock() = Some(c);
            }
            Ok(Err(ClusterError::Redis(e))) if conn::is_auth_error(&e) => {
                tracing::error!(node = %shared.node_id, error = %e, "presence cluster: Redis refused the credentials");
                return Err(ClusterError::Authentication(e));
            }
            Ok(Err(e)) => {
                tracing::warn!(node = %shared.node_id, error = %e, "presence cluster: Redis is not reachable at start; the view fills once it answers");
            }
            Err(_) => {
                tracing::warn!(node = %shared.node_id, ?timeout, "presence cluster: Redis did not answer at start; the view fills once it answers");
            }
        }
        let (tx, rx) = mpsc::channel(16);
        let node = node::Node::new(shared.clone(), presence.clone(), client);
        tokio::spawn(node.run(rx));
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
    /// `{ns}:`: the namespace's own tag (its shape, see `node.rs`).
    base_prefix: String,
    /// `{tag}:` of each hash tag the view is spread over (`{ns}:` alone with one): every
    /// key of the view starts with one of them. The first also keeps the cluster peak and
    /// the erasures.
    prefixes: Vec<String>,
    node_id: String,
    flush_interval: Duration,
    node_timeout: Duration,
    call_timeout: Duration,
    key_ttl: Duration,
    read_script: conn::Lua,
    erase_script: conn::Lua,
    presence: Presence,
    conn: Mutex<Option<Conn>>,
    cache: ReadCache,
    /// The last complete view (`stale` set while it is not current).
    view: Mutex<ClusterCounts>,
}

impl Shared {
    /// The Redis Cluster slot of each tag.
    fn tag_slots(&self) -> Vec<u16> {
        self.prefixes
            .iter()
            .map(|p| tags::slot(p.trim_start_matches('{').trim_end_matches("}:")))
            .collect()
    }
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
            .field("namespace", &s.base_prefix)
            .field("shards", &s.prefixes.len())
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
            shards: 1,
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

    /// Erases `user` from the whole cluster (a GDPR erasure, an account deletion): ends the
    /// user's sessions here as [`Presence::erase_user`] does, and tells the other nodes to
    /// do the same without storing the name in Redis: it leaves a keyed hash of the name
    /// (see below), which each node matches against the users it knows at its next flush.
    /// The sessions leave every view as explicit leaves; the user's records in Redis go
    /// with the last of them, so within two flush intervals of this call no key or value in
    /// Redis holds the name. Returns the live sessions it ended on this node.
    ///
    /// The hash is SHA-1 of a random key kept in the namespace (`{ns}:ekey`) and the name;
    /// it is kept 30 days, so that a node restarted from an older snapshot erases the user
    /// too. Erasing a name twice does no harm. Sessions parked by a node that shut down for
    /// a restart leave at their own expiry, or when that node is back (it erases the user
    /// from what it restored). The snapshot file of each node keeps the name until its next
    /// save (see [`Presence::erase_user`]).
    ///
    /// ```no_run
    /// # async fn run(cluster: presence_tracker::cluster::Cluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let ended = cluster.erase_user("alice").await?;
    /// println!("{ended} of alice's sessions ended here; the other nodes follow at their next flush");
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`ClusterError::Presence`] for a name no user can have (too long); a Redis error or
    /// timeout when the hash could not be stored: the local part is done, and calling again
    /// later is safe.
    pub async fn erase_user(&self, user: &str) -> Result<usize, ClusterError> {
        let s = &*self.inner.shared;
        let ended = s
            .presence
            .erase_user(user)
            .map_err(ClusterError::Presence)?;
        let mut conn = self.conn()?;
        erase::store(
            &mut conn,
            &s.erase_script,
            &s.prefixes[0],
            user,
            READ_TIMEOUT,
        )
        .await?;
        self.sync().await?;
        Ok(ended)
    }

    fn conn(&self) -> Result<Conn, ClusterError> {
        self.inner
            .shared
            .conn
            .lock()
            .clone()
            .ok_or(ClusterError::Unavailable)
    }

    /// Answers `reads` from the cache; the keys never read before are read from Redis in one
    /// call, unless the view is stale (then `Err(Unavailable)` at once: never a wait on a
    /// Redis that is down, nor an answer from a partial one).
    async fn cached(&self, reads: &[Read]) -> Result<Vec<Answer>, ClusterError> {
        let s = &*self.inner.shared;
        let mut out: Vec<Option<Answer>> = reads.iter().map(|r| s.cache.get(r)).collect();
        if out.iter().all(Option::is_some) {
            return Ok(out.into_iter().flatten().collect());
        }
        // One caller at a time reads missing keys: a key many requests ask for at once is
        // read once, and the others find it cached.
        let _one = s.cache.misses.lock().await;
        let mut missing = Vec::new();
        for (i, r) in reads.iter().enumerate() {
            if out[i].is_none() {
                out[i] = s.cache.get(r);
                if out[i].is_none() {
                    missing.push(i);
                }
            }
        }
        if !missing.is_empty() {
            if s.view.lock().stale {
                return Err(ClusterError::Unavailable);
            }
            let wanted: Vec<Read> = missing.iter().map(|&i| reads[i].clone()).collect();
            let answers = self.read_now(&wanted).await?;
            for ((i, read), answer) in missing.into_iter().zip(wanted).zip(answers) {
                s.cache.store(read, answer.clone());
                out[i] = Some(answer);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Reads from Redis now, bypassing the cache; once more after a broken connection.
    async fn read_now(&self, reads: &[Read]) -> Result<Vec<Answer>, ClusterError> {
        let s = &*self.inner.shared;
        let mut retried = false;
        loop {
            let conn = self.conn()?;
            match task::read_spread(&conn, &s.read_script, s, reads, READ_TIMEOUT).await {
                Ok(v) => return Ok(v),
                // The first call after Redis came back finds the old connection broken; the
                // client reconnects, so try once more.
                Err(ClusterError::Redis(e))
                    if !retried && (e.is_io_error() || e.is_connection_dropped()) =>
                {
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn cached_one(&self, read: Read) -> Result<Answer, ClusterError> {
        let mut v = self.cached(std::slice::from_ref(&read)).await?;
        v.pop()
            .ok_or_else(|| ClusterError::Protocol(format!("no answer for {read:?}")))
    }

    /// Live sessions, across the cluster, whose last visit was `page`.
    ///
    /// From this node's cache (see the [module docs](self)): the first read of a page waits
    /// for Redis, later ones answer at once, as of the last flush.
    ///
    /// # Errors
    /// [`ClusterError::Unavailable`] when the page was never read and the view is stale; a
    /// Redis error or timeout from that first read.
    pub async fn page_count(&self, page: &str) -> Result<usize, ClusterError> {
        match self.cached_one(Read::PageCount(page.to_owned())).await? {
            Answer::Count(n) => Ok(n),
            other => Err(ClusterError::Protocol(format!("page count: {other:?}"))),
        }
    }

    /// The `n` pages (at most [`MAX_LIST`]) with the most live sessions across the cluster,
    /// busiest first, ties by name. From the cache, as [`page_count`](Self::page_count).
    ///
    /// # Errors
    /// As [`page_count`](Self::page_count).
    pub async fn top_pages(&self, n: usize) -> Result<Vec<(String, usize)>, ClusterError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        match self.cached_one(Read::Top(n.min(MAX_LIST))).await? {
            Answer::Pages(p) => Ok(p),
            other => Err(ClusterError::Protocol(format!("top pages: {other:?}"))),
        }
    }

    /// Where user `user` stands across the cluster: `Online` if any node holds a live
    /// session of theirs (`hidden` only if every one is hidden), else what this node
    /// knows (`Offline` with its last-seen time, or `Unknown`).
    ///
    /// `last_seen` and `idle` merge this node's own view with the last renewals other nodes
    /// sent (a busy session is renewed every half `idle_timeout`, so they may lag by that).
    /// From the cache, as [`page_count`](Self::page_count).
    ///
    /// # Errors
    /// As [`page_count`](Self::page_count).
    pub async fn user(&self, user: &str) -> Result<UserStatus, ClusterError> {
        let local = self.inner.shared.presence.user(user);
        let remote = match self.cached_one(Read::User(user.to_owned())).await? {
            Answer::User(u) => u,
            other => return Err(ClusterError::Protocol(format!("user: {other:?}"))),
        };
        let Some(r) = remote else {
            return Ok(local);
        };
        let idle_after =
            i64::try_from(self.inner.shared.presence.idle_after().as_millis()).unwrap_or(i64::MAX);
        let mut status_seen = task::system_time(r.seen_ms);
        let mut idle = r.now_ms.saturating_sub(r.active_ms) >= idle_after;
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
            sessions: usize::try_from(r.listed + r.hidden).unwrap_or(0),
            last_seen: status_seen,
            idle,
            hidden: r.listed == 0,
        })
    }

    /// The counts of several pages (the HTTP routes' `pages=`), from the cache.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn page_counts(&self, pages: &[&str]) -> Result<Vec<usize>, ClusterError> {
        let reads: Vec<Read> = pages
            .iter()
            .map(|p| Read::PageCount((*p).to_owned()))
            .collect();
        self.cached(&reads)
            .await?
            .into_iter()
            .map(|a| match a {
                Answer::Count(n) => Ok(n),
                other => Err(ClusterError::Protocol(format!("page count: {other:?}"))),
            })
            .collect()
    }

    /// A session some node claims in the view, with its kind and page: lets a node that
    /// does not know it (no sticky sessions) take it up. `None` when no node claims it.
    /// Reads Redis (not cached: a rare path, once per session taken up).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    pub(crate) async fn live_session(
        &self,
        id: crate::SessionId,
    ) -> Result<Option<(crate::Kind, Option<String>)>, ClusterError> {
        let s = &*self.inner.shared;
        let conn = self.conn()?;
        // A guest's tag follows from its id, a member's from a name not known here: every
        // tag is asked, at once.
        let buckets = tags::buckets(s.prefixes.len()).to_string().into_bytes();
        let args = vec![vec![
            b"sess".to_vec(),
            id.as_uuid().as_bytes().to_vec(),
            buckets,
        ]];
        let answers = futures_util::future::join_all(s.prefixes.iter().map(|prefix| {
            let mut conn = conn.clone();
            let key = format!("{prefix}n");
            let args = &args;
            async move {
                tokio::time::timeout(
                    READ_TIMEOUT,
                    conn::eval_many(&mut conn, &s.read_script, &key, args),
                )
                .await
                .map_err(|_| ClusterError::Timeout(READ_TIMEOUT))??
                .into_iter()
                .next()
                .ok_or_else(|| ClusterError::Protocol("no answer".into()))?
                .map_err(ClusterError::from)
            }
        }))
        .await;
        let mut found = Vec::new();
        for answer in answers {
            let mut list: Vec<Vec<String>> = redis::from_redis_value(answer?)
                .map_err(|e| ClusterError::Protocol(format!("session read: {e}")))?;
            if let Some(r) = list.pop().filter(|r| !r.is_empty()) {
                found = r;
            }
        }
        let r = found;
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

    /// Listed users online anywhere in the cluster, by name (case-insensitive), at most `n`
    /// (and at most [`MAX_LIST`]); hidden users never appear. From the cache, as
    /// [`page_count`](Self::page_count).
    ///
    /// # Errors
    /// As [`page_count`](Self::page_count).
    pub async fn online_members(&self, n: usize) -> Result<Vec<UserId>, ClusterError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        match self.cached_one(Read::Members(n.min(MAX_LIST))).await? {
            Answer::Names(v) => Ok(v),
            other => Err(ClusterError::Protocol(format!("members: {other:?}"))),
        }
    }

    /// Users with a listed session on `page` anywhere in the cluster, by name, at most `n`
    /// (and at most [`MAX_LIST`]). A session hidden on that page never names its user there,
    /// even when the user is listed elsewhere, as [`Presence::page_members`]. From the cache,
    /// as [`page_count`](Self::page_count).
    ///
    /// # Errors
    /// As [`page_count`](Self::page_count).
    pub async fn page_members(&self, page: &str, n: usize) -> Result<Vec<UserId>, ClusterError> {
        if n == 0 {
            return Ok(Vec::new());
        }
        match self
            .cached_one(Read::PageMembers(page.to_owned(), n.min(MAX_LIST)))
            .await?
        {
            Answer::Names(v) => Ok(v),
            other => Err(ClusterError::Protocol(format!("page members: {other:?}"))),
        }
    }
}

const _: () = {
    const fn handle<T: Send + Sync + Clone + fmt::Debug + 'static>() {}
    handle::<Cluster>();
    handle::<ClusterCounts>();
    handle::<ClusterBuilder>();
};
