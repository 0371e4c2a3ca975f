//! The flush task: what this node sends to Redis, and when.
//!
//! Each flush drains the tracker's change log (sessions that started, ended, or changed kind
//! or page) and the renewals that fell due into `pending`, turns each pending id into one
//! operation by reading the session once, and sends them in one script call (several for a
//! very large batch). Nothing here scans the sessions, except the full re-send after Redis
//! lost its data.
//!
//! Renewals: a session sent with `ttl` left is looked at again after `ttl / 2`. It is re-sent
//! only if its `last_seen` moved since (a touch or heartbeat, which the change log does not
//! record); otherwise it is looked at again, closer to its expiry, until it ends locally (then
//! the change log releases it) or shows activity. So a busy session costs one write per half
//! timeout, and an idle one none.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::conn::{self, Conn};
use super::{ClusterCounts, ClusterError, Shared};
use crate::{Kind, Peak, Presence, SessionId, SessionInfo};

/// Operations per script call: a re-send of a million sessions is 250 calls, each short
/// enough not to hold Redis for long.
pub(super) const MAX_OPS: usize = 4_000;
/// Holds released per script call by the sweeps (expired holds, dead nodes, a node's bye).
pub(super) const SWEEP_BATCH: usize = 10_000;
/// Explicit leaves kept while Redis is unreachable; past this, a leave is left to expire.
const MAX_PENDING_LEAVES: usize = 100_000;

pub(super) enum Command {
    Sync(oneshot::Sender<Result<ClusterCounts, ClusterError>>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pending {
    /// Read the session and send what it is now (upsert or release).
    Check,
    /// The session left explicitly: unless it started again, end it for every node.
    Leave,
}

/// What this node last sent for a session it holds in Redis.
struct Sent {
    /// Its `last_seen` (ms since the Unix epoch) when sent.
    seen: u64,
    /// When its hold expires in Redis (this node's monotonic clock; approximate).
    expires: Instant,
    /// When to look at it again.
    check_at: Instant,
    /// Whether it has an entry in the renewal wheel (at most one at a time).
    queued: bool,
}

enum Op {
    Upsert {
        id: SessionId,
        info: SessionInfo,
        ttl: Duration,
    },
    Release(SessionId),
    Leave(SessionId),
}

/// The script's answer.
struct Reply {
    epoch: i64,
    fresh: bool,
    counts: ClusterCounts,
    done: bool,
}

pub(super) struct Flusher {
    shared: Arc<Shared>,
    presence: Presence,
    client: redis::Client,
    script: Script,
    pending: HashMap<SessionId, Pending>,
    leaves: usize,
    sent: HashMap<SessionId, Sent>,
    wheel: BTreeMap<u64, Vec<SessionId>>,
    origin: Instant,
    epoch: Option<i64>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

pub(super) fn system_time(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl Flusher {
    pub(super) fn new(shared: Arc<Shared>, presence: Presence, client: redis::Client) -> Self {
        // Enable the log before reading the sessions: a change in between is seen twice,
        // which the pending map absorbs; none is missed.
        presence.changes().enable();
        let pending = presence
            .sessions()
            .into_iter()
            .map(|s| (s.id, Pending::Check))
            .collect();
        Flusher {
            shared,
            presence,
            client,
            script: Script::new(include_str!("flush.lua")),
            pending,
            leaves: 0,
            sent: HashMap::new(),
            wheel: BTreeMap::new(),
            origin: Instant::now(),
            epoch: None,
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.shared.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::debug!(error = %e, "presence cluster: flush failed");
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Sync(reply)) => {
                        let _ = reply.send(self.flush().await);
                    }
                    Some(Command::Shutdown(reply)) => {
                        self.bye().await;
                        let _ = reply.send(());
                        break;
                    }
                    // Every handle dropped without shutdown: leave as shutdown would.
                    None => {
                        self.bye().await;
                        break;
                    }
                },
            }
        }
    }

    fn call_timeout(&self) -> Duration {
        self.shared.call_timeout
    }

    /// The renewal wheel's slot of `at`: a flush handles only slots wholly past, so each
    /// entry is looked at once per slot however often `sync` runs (at most one slot late).
    fn bucket(&self, at: Instant) -> u64 {
        let gran = millis(self.shared.flush_interval.min(Duration::from_secs(1))).max(1);
        millis(at.saturating_duration_since(self.origin)) / gran
    }

    fn queue(&mut self, id: SessionId) {
        let Some(s) = self.sent.get_mut(&id) else {
            return;
        };
        if s.queued {
            return;
        }
        s.queued = true;
        let at = s.check_at;
        let b = self.bucket(at);
        self.wheel.entry(b).or_default().push(id);
    }

    fn add_pending(&mut self, id: SessionId, p: Pending) {
        match p {
            Pending::Leave => {
                if self.pending.get(&id) == Some(&Pending::Leave) {
                    return;
                }
                if self.leaves >= MAX_PENDING_LEAVES {
                    // Bounded: the session then ends in Redis when its holds expire.
                    self.pending.entry(id).or_insert(Pending::Check);
                    return;
                }
                self.leaves += 1;
                self.pending.insert(id, Pending::Leave);
            }
            Pending::Check => {
                self.pending.entry(id).or_insert(Pending::Check);
            }
        }
    }

    fn remove_pending(&mut self, id: &SessionId) {
        if self.pending.remove(id) == Some(Pending::Leave) {
            self.leaves -= 1;
        }
    }

    /// Gathers what changed: explicit leaves, the change log, renewals due.
    fn collect(&mut self) {
        for id in self.presence.changes().drain_left() {
            self.add_pending(id, Pending::Leave);
        }
        for id in self.presence.changes().drain() {
            // A session that started and ended while Redis was out of reach was never sent:
            // nothing to undo. This keeps `pending` within local sessions plus those sent.
            if self.sent.contains_key(&id) || self.presence.session_lease(id).is_some() {
                self.add_pending(id, Pending::Check);
            }
        }
        let now = Instant::now();
        let later = self.wheel.split_off(&self.bucket(now));
        let due = std::mem::replace(&mut self.wheel, later);
        let flush = self.shared.flush_interval;
        for id in due.into_values().flatten() {
            let Some(s) = self.sent.get_mut(&id) else {
                continue;
            };
            s.queued = false;
            if s.check_at > now {
                self.queue(id);
                continue;
            }
            let Some((info, _)) = self.presence.session_lease(id) else {
                // Ended locally: the change log has it and releases it.
                continue;
            };
            if unix_ms(info.last_seen) > s.seen || now >= s.expires {
                self.add_pending(id, Pending::Check);
            } else {
                // No activity yet: look again closer to the expiry. A heartbeat in the last
                // flush interval before it is re-sent at the next flush.
                let left = s.expires.saturating_duration_since(now);
                s.check_at = now + (left / 2).max(flush);
                self.queue(id);
            }
        }
    }

    /// The operation for each id, from the session as it is now; ids that need none leave
    /// `pending` at once.
    fn ops(&mut self, ids: &[SessionId]) -> Vec<Op> {
        let mut ops = Vec::with_capacity(ids.len());
        for &id in ids {
            let Some(&p) = self.pending.get(&id) else {
                continue;
            };
            match self.presence.session_lease(id) {
                Some((info, ttl)) => ops.push(Op::Upsert { id, info, ttl }),
                None if p == Pending::Leave => ops.push(Op::Leave(id)),
                None if self.sent.contains_key(&id) => ops.push(Op::Release(id)),
                None => self.remove_pending(&id),
            }
        }
        ops
    }

    fn args(&self, mode: &str, ops: &[Op]) -> Vec<Vec<u8>> {
        let s = &*self.shared;
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(4 + ops.len() * 9);
        args.push(s.node_id.as_bytes().to_vec());
        args.push(millis(s.node_timeout).to_string().into_bytes());
        args.push(SWEEP_BATCH.to_string().into_bytes());
        args.push(mode.as_bytes().to_vec());
        let now = self.presence.now_wall();
        let age = |t: SystemTime| millis(now.duration_since(t).unwrap_or_default());
        for op in ops {
            match op {
                Op::Upsert { id, info, ttl } => {
                    let (kind, user): (&[u8], &str) = match &info.kind {
                        Kind::Guest => (b"g", ""),
                        Kind::Bot => (b"b", ""),
                        k if k.is_hidden() => (b"h", k.user().map_or("", |u| u.as_str())),
                        k => (b"m", k.user().map_or("", |u| u.as_str())),
                    };
                    args.push(b"u".to_vec());
                    args.push(id.as_uuid().as_bytes().to_vec());
                    args.push(kind.to_vec());
                    args.push(user.as_bytes().to_vec());
                    args.push(super::sort_key(user).into_bytes());
                    args.push(info.page.as_deref().unwrap_or("").as_bytes().to_vec());
                    args.push(millis(*ttl).max(1).to_string().into_bytes());
                    args.push(age(info.last_seen).to_string().into_bytes());
                    args.push(age(info.last_active).to_string().into_bytes());
                }
                Op::Release(id) => {
                    args.push(b"r".to_vec());
                    args.push(id.as_uuid().as_bytes().to_vec());
                }
                Op::Leave(id) => {
                    args.push(b"l".to_vec());
                    args.push(id.as_uuid().as_bytes().to_vec());
                }
            }
        }
        args
    }

    async fn connection(&mut self) -> Result<Conn, ClusterError> {
        if let Some(c) = self.shared.conn.lock().clone() {
            return Ok(c);
        }
        let timeout = self.call_timeout();
        let url = self.shared.url.clone();
        let c = tokio::time::timeout(timeout, conn::connect(&url, &self.client, timeout))
            .await
            .map_err(|_| ClusterError::Timeout(timeout))??;
        *self.shared.conn.lock() = Some(c.clone());
        Ok(c)
    }

    async fn call(&self, conn: &mut Conn, mode: &str, ops: &[Op]) -> Result<Reply, ClusterError> {
        let args = self.args(mode, ops);
        let mut inv = self.script.key(&self.shared.epoch_key);
        for a in &args {
            inv.arg(a.as_slice());
        }
        let timeout = self.call_timeout();
        let r: Vec<i64> = tokio::time::timeout(timeout, inv.invoke_async(conn))
            .await
            .map_err(|_| ClusterError::Timeout(timeout))??;
        if r.len() != 12 {
            return Err(ClusterError::Protocol(format!(
                "flush script answered {} values, expected 12",
                r.len()
            )));
        }
        let n = |i: usize| usize::try_from(r[i]).unwrap_or(0);
        let (members, hidden, guests) = (n(7), n(8), n(5));
        Ok(Reply {
            epoch: r[0],
            fresh: r[1] == 1,
            done: r[11] == 1,
            counts: ClusterCounts {
                online: members + hidden + guests,
                members,
                hidden,
                guests,
                bots: n(6),
                sessions: n(4),
                nodes: n(3),
                peak: Peak {
                    online: n(9),
                    at: system_time(r[10]),
                },
                as_of: system_time(r[2]),
                stale: false,
            },
        })
    }

    fn fail(&self, e: ClusterError) -> Result<ClusterCounts, ClusterError> {
        self.shared.view.lock().stale = true;
        if matches!(e, ClusterError::Timeout(_)) {
            // A stalled server: drop the connection, and with it the calls queued on it,
            // rather than pile one more on it every flush. The next flush connects anew
            // (bounded by the same timeout), so nothing waits in memory but `pending`.
            *self.shared.conn.lock() = None;
        }
        Err(e)
    }

    /// Redis lost our data (a new epoch) or dropped this node (it was silent past the node
    /// timeout): everything live here is sent again.
    fn resync(&mut self) {
        self.sent.clear();
        self.wheel.clear();
        for s in self.presence.sessions() {
            self.add_pending(s.id, Pending::Check);
        }
    }

    pub(super) async fn flush(&mut self) -> Result<ClusterCounts, ClusterError> {
        self.collect();
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let mut ids: Vec<SessionId> = self.pending.keys().copied().collect();
        let mut pos = 0;
        let mut resynced = false;
        loop {
            let end = (pos + MAX_OPS).min(ids.len());
            let ops = self.ops(&ids[pos..end]);
            let mut started = Instant::now();
            let mut reply = self.call(&mut conn, "f", &ops).await;
            if let Err(ClusterError::Redis(e)) = &reply {
                // The first call after Redis came back finds the old connection broken and
                // the client reconnects: try once more rather than wait a flush interval.
                if e.is_io_error() || e.is_connection_dropped() {
                    started = Instant::now();
                    reply = self.call(&mut conn, "f", &ops).await;
                }
            }
            let reply = match reply {
                Ok(r) => r,
                Err(e) => return self.fail(e),
            };
            let lost = self.epoch.is_some_and(|e| e != reply.epoch);
            let dropped = reply.fresh && self.epoch.is_some();
            self.epoch = Some(reply.epoch);
            if (lost || dropped) && !resynced {
                resynced = true;
                tracing::info!(
                    node = %self.shared.node_id,
                    "presence cluster: Redis lost this node's sessions; sending them all again"
                );
                self.resync();
                ids = self.pending.keys().copied().collect();
                pos = 0;
                continue;
            }
            self.confirm(ops, started);
            *self.shared.view.lock() = reply.counts;
            pos = end;
            if pos >= ids.len() {
                return Ok(reply.counts);
            }
        }
    }

    fn confirm(&mut self, ops: Vec<Op>, sent_at: Instant) {
        for op in ops {
            match op {
                Op::Upsert { id, info, ttl } => {
                    self.remove_pending(&id);
                    let s = Sent {
                        seen: unix_ms(info.last_seen),
                        expires: sent_at + ttl,
                        check_at: sent_at + ttl / 2,
                        queued: self.sent.get(&id).is_some_and(|s| s.queued),
                    };
                    self.sent.insert(id, s);
                    self.queue(id);
                }
                Op::Release(id) | Op::Leave(id) => {
                    self.remove_pending(&id);
                    self.sent.remove(&id);
                }
            }
        }
    }

    /// The final flush: what changed, then this node's holds, a batch per call, and its
    /// registry entry. Best effort: Redis down means the node timeout does it instead.
    async fn bye(&mut self) {
        let flushed = self.flush().await.is_ok();
        self.presence.changes().disable();
        // A tracker with a snapshot file saves its sessions at shutdown and restores them at
        // the next start: a restart is coming, so its sessions stay in the view ("parked")
        // and expire on their own time if the node does not come back.
        let mode = if self.presence.has_snapshot_file() {
            "k"
        } else {
            "b"
        };
        if flushed {
            if let Ok(mut conn) = self.connection().await {
                loop {
                    match self.call(&mut conn, mode, &[]).await {
                        Ok(r) if r.done => {
                            *self.shared.view.lock() = r.counts;
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "presence cluster: shutdown could not remove this node's sessions; they leave the view after the node timeout");
                            break;
                        }
                    }
                }
            }
        }
        self.sent.clear();
        self.wheel.clear();
        self.pending.clear();
        self.leaves = 0;
        self.shared.view.lock().stale = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::{ManualClock, Reaper};

    /// Redis unreachable (nothing listens on port 1) for many flushes while sessions come,
    /// go, change pages and leave: what waits is one entry per live session or explicit
    /// leave, never a queue of everything that happened.
    #[tokio::test]
    async fn what_waits_for_an_unreachable_redis_is_bounded_by_the_local_sessions() {
        let clock = ManualClock::new();
        let presence = Presence::builder()
            .clock(clock.clone())
            .reaper(Reaper::Manual)
            .idle_timeout(Duration::from_secs(10))
            .build();
        let live: Vec<SessionId> = (0..100).map(|_| SessionId::new_v4()).collect();
        for id in &live {
            presence.visit(*id, Kind::Guest, "/").unwrap();
        }
        let b = Cluster::builder("redis://127.0.0.1:1").flush_interval(Duration::from_millis(10));
        let client = conn::client(&b.url).unwrap();
        let shared = Arc::new(b.into_shared(&presence));
        let mut f = Flusher::new(shared.clone(), presence.clone(), client);
        for round in 0..20 {
            for id in &live {
                presence
                    .visit(*id, Kind::member("u"), &format!("/p/{round}"))
                    .unwrap();
            }
            // Sessions that come and expire while Redis is away were never sent: nothing
            // waits for them.
            for _ in 0..500 {
                presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
            }
            clock.advance(Duration::from_secs(5));
            for id in &live {
                presence.heartbeat(*id);
            }
            clock.advance(Duration::from_secs(6));
            presence.reap();
            assert!(f.flush().await.is_err());
            assert!(shared.view.lock().stale);
            assert!(
                f.pending.len() <= live.len(),
                "round {round}: {} pending for {} live sessions",
                f.pending.len(),
                live.len()
            );
        }
        for id in &live[..10] {
            presence.leave(*id);
        }
        assert!(f.flush().await.is_err());
        assert_eq!(f.pending.len(), live.len(), "90 live plus 10 leaves");
        assert_eq!(f.leaves, 10);
    }
}
