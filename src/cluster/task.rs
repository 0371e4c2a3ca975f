//! The flush task: what this node sends to Redis, and when.
//!
//! Each flush drains the tracker's change log (sessions that started, ended, or changed kind
//! or page) and the renewals that fell due into `pending`, turns each pending id into one
//! operation by reading the session once, and sends them in chunks sized by a work budget,
//! several chunks pipelined in one round trip. Nothing here scans the sessions, except the
//! full re-send after Redis lost this node's data.
//!
//! Nothing is lost: an id leaves `pending` only when Redis acknowledged the call that carried
//! it. Every call carries a sequence number; Redis keeps the last one it applied for this
//! node and ignores an older call that arrives late (it waited in a stalled server), so a
//! re-send after a timeout does no harm, and a node whose acknowledged sequence Redis no
//! longer has (restored from an older dump) learns that it must send everything again.
//!
//! Renewals: a session sent with `ttl` left is looked at again after `ttl / 2`. It is re-sent
//! only if its `last_seen` moved since (a touch or heartbeat, which the change log does not
//! record); otherwise it is looked at again, closer to its expiry, until it ends locally (then
//! the change log releases it) or shows activity. So a busy session costs one write per half
//! timeout, and an idle one none. A page change in between writes the session's record only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;
use tokio::sync::{mpsc, oneshot};

use super::cache::{Answer, Read};
use super::conn::{self, Conn, Lua};
use super::log::Diagnostics;
use super::{ClusterCounts, ClusterError, Shared};
use crate::{Kind, Peak, Presence, SessionId, SessionInfo};

/// Work units one script call carries at first: a unit is about a microsecond of Redis time
/// for the operation (see `Op::cost`, measured with the `shared_redis` bench), so a call
/// starts near 2 ms. The node then sizes its calls from their measured time (see
/// `Flusher::adapt`) between [`MIN_BUDGET`] and [`MAX_BUDGET`], aiming at [`CALL_TARGET`]:
/// well under the 5 ms a shared Redis can spare for one call, on a slow or busy server too.
pub(super) const CALL_BUDGET: usize = 2_000;
pub(super) const MIN_BUDGET: usize = 200;
pub(super) const MAX_BUDGET: usize = 8_000;
/// The time one script call should take.
const CALL_TARGET: Duration = Duration::from_millis(2);
/// Claims one call may release by sweeping (a dead node's, a parked node's, a bye's):
/// about 15 µs each, so near 2 ms.
pub(super) const SWEEP_BATCH: usize = 120;
/// Script calls in flight at once. Redis runs the calls it read from one socket back to
/// back, so a bystander would wait for all of them: one at a time, it waits for one call at
/// most (measured: with four in flight its p99 was 8 to 14 ms, with one see BENCHMARKS.md).
/// The round trip this adds is small next to a call's 2 ms on a local network.
pub(super) const PIPELINE: usize = 1;
/// Reads per read-script call in a cache refresh.
const READS_PER_CALL: usize = 64;
/// Explicit leaves kept while Redis is unreachable; past this, a leave is left to expire.
const MAX_PENDING_LEAVES: usize = 100_000;
/// Session buckets in Redis (see flush.lua).
const BUCKETS: u64 = 4096;
/// Pages whose member list TTL one flush refreshes.
const TTL_PAGES: u64 = 64;

pub(super) enum Command {
    Sync(oneshot::Sender<Result<ClusterCounts, ClusterError>>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pending {
    /// Only its claim's expiry is due (the renewal wheel; nothing in the change log): the
    /// script moves the expiry and touches the session's record only if the claim is gone.
    Renew,
    /// Read the session and send what it is now (upsert or release).
    Check,
    /// The session left explicitly: unless it started again, end it for every node.
    Leave,
}

/// What this node last renewed in Redis for a session it claims.
struct Sent {
    /// Its `last_seen` (ms since the Unix epoch) at the last renewal.
    seen: u64,
    /// When its claim expires in Redis (this node's monotonic clock; approximate).
    expires: Instant,
    /// When to look at it again.
    check_at: Instant,
    /// Whether it has an entry in the renewal wheel (at most one at a time).
    queued: bool,
}

#[derive(Debug)]
pub(super) enum Op {
    Upsert {
        id: SessionId,
        info: SessionInfo,
        ttl: Duration,
        /// Move the claim's expiry (a renewal, or a first send); a page change alone writes
        /// the session's record only.
        renew: bool,
        /// Nothing changed here but the time: the script only moves the claim's expiry
        /// (and reads the record only if the claim was gone).
        only_renew: bool,
    },
    Release(SessionId),
    Leave(SessionId),
}

impl Op {
    /// Work units: Redis commands the script runs for it at most, weighted by their cost.
    pub(super) fn cost(&self) -> usize {
        match self {
            Op::Upsert {
                info,
                renew,
                only_renew,
                ..
            } => {
                let member = if info.kind.user().is_some() { 8 } else { 0 };
                if *only_renew {
                    // The claim's expiry; the record and the user only if the claim was gone.
                    5 + member
                } else if *renew {
                    // A first send or a renewal with a change: record, claim, counters.
                    24 + member
                } else {
                    // A page change: the record, the page counts, the member lists.
                    16 + member
                }
            }
            Op::Release(_) => 18,
            Op::Leave(_) => 22,
        }
    }

    /// The packed argument flush.lua reads (see its header).
    pub(super) fn encode(&self, now: SystemTime) -> Vec<u8> {
        let age = |t: SystemTime| hex32(millis(now.duration_since(t).unwrap_or_default()));
        match self {
            Op::Upsert {
                id,
                info,
                ttl,
                renew,
                only_renew,
            } => {
                let (kind, user): (u8, &str) = match &info.kind {
                    Kind::Guest => (b'g', ""),
                    Kind::Bot => (b'b', ""),
                    k if k.is_hidden() => (b'h', k.user().map_or("", |u| u.as_str())),
                    k => (b'm', k.user().map_or("", |u| u.as_str())),
                };
                let sortkey = super::sort_key(user);
                let sortkey = truncate(&sortkey, 0xFFFF);
                let page = info.page.as_deref().unwrap_or("");
                let mut a = Vec::with_capacity(56 + user.len() + sortkey.len() + page.len());
                a.push(if *only_renew { b'n' } else { b'u' });
                a.extend_from_slice(id.as_uuid().as_bytes());
                a.push(kind);
                a.push(if *renew { b'1' } else { b'0' });
                a.extend_from_slice(hex32(millis(*ttl).max(1)).as_bytes());
                a.extend_from_slice(age(info.last_seen).as_bytes());
                a.extend_from_slice(age(info.last_active).as_bytes());
                a.extend_from_slice(format!("{:04x}", user.len()).as_bytes());
                a.extend_from_slice(user.as_bytes());
                a.extend_from_slice(format!("{:04x}", sortkey.len()).as_bytes());
                a.extend_from_slice(sortkey.as_bytes());
                a.extend_from_slice(page.as_bytes());
                a
            }
            Op::Release(id) => [b"r".as_slice(), id.as_uuid().as_bytes()].concat(),
            Op::Leave(id) => [b"l".as_slice(), id.as_uuid().as_bytes()].concat(),
        }
    }

    fn id(&self) -> SessionId {
        match self {
            Op::Upsert { id, .. } | Op::Release(id) | Op::Leave(id) => *id,
        }
    }
}

fn hex32(v: u64) -> String {
    format!("{:08x}", v.min(u64::from(u32::MAX)))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// One script call: its operations and whether it ends this node's refill.
pub(super) struct Call {
    pub(super) ops: Vec<Op>,
    filled: bool,
    seq: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    InUse,
    Old,
}

/// The script's answer.
#[derive(Debug)]
struct Reply {
    status: Status,
    reg: u64,
    counts: ClusterCounts,
    stale: bool,
    more: bool,
    done: bool,
    next_page: Option<u64>,
}

impl Reply {
    fn parse(v: Value) -> Result<Reply, ClusterError> {
        let r: Vec<i64> = redis::from_redis_value(v)
            .map_err(|e| ClusterError::Protocol(format!("flush script answer: {e}")))?;
        if r.len() < 15 {
            return Err(ClusterError::Protocol(format!(
                "flush script answered {} values, expected 15 or 16",
                r.len()
            )));
        }
        let n = |i: usize| usize::try_from(r[i]).unwrap_or(0);
        let (members, hidden, guests) = (n(8), n(9), n(6));
        Ok(Reply {
            status: match r[0] {
                1 => Status::Ok,
                2 => Status::InUse,
                _ => Status::Old,
            },
            reg: u64::try_from(r[2]).unwrap_or(0),
            counts: ClusterCounts {
                online: members + hidden + guests,
                members,
                hidden,
                guests,
                bots: n(7),
                sessions: n(5),
                nodes: n(4),
                peak: Peak {
                    online: n(10),
                    at: system_time(r[11]),
                },
                as_of: system_time(r[3]),
                stale: r[12] == 1,
            },
            stale: r[12] == 1,
            more: r[13] == 1,
            done: r[14] == 1,
            next_page: r.get(15).and_then(|&p| u64::try_from(p).ok()),
        })
    }
}

pub(super) struct Flusher {
    shared: Arc<Shared>,
    presence: Presence,
    client: redis::Client,
    script: Lua,
    read_script: Lua,
    pending: HashMap<SessionId, Pending>,
    leaves: usize,
    sent: HashMap<SessionId, Sent>,
    wheel: BTreeMap<u64, Vec<SessionId>>,
    origin: Instant,
    /// This process: another one under the same node id has another token.
    token: String,
    /// The last call's sequence number, and the highest Redis acknowledged.
    seq: u64,
    acked: u64,
    /// The call that registered this node, as Redis says; a change means Redis lost (or
    /// dropped) what this node had sent, which it then sends again.
    reg: Option<u64>,
    /// Sending everything again after a loss: the view is partial until this node is done.
    refilling: bool,
    /// The last cluster peak seen, sent back so that it survives a lost Redis.
    peak: (usize, i64),
    ttl_bucket: u64,
    ttl_page: u64,
    /// Work units per call, sized from the measured time of full calls.
    budget: usize,
    log: Diagnostics,
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
            script: Lua::new(include_str!("flush.lua")),
            read_script: Lua::new(include_str!("read.lua")),
            pending,
            leaves: 0,
            sent: HashMap::new(),
            wheel: BTreeMap::new(),
            origin: Instant::now(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            seq: 0,
            acked: 0,
            reg: None,
            refilling: false,
            peak: (0, 0),
            ttl_bucket: 0,
            ttl_page: 0,
            budget: CALL_BUDGET,
            log: Diagnostics::default(),
        }
    }

    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut tick = tokio::time::interval(self.shared.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _ = self.flush(false).await;
                }
                command = commands.recv() => match command {
                    Some(Command::Sync(reply)) => {
                        let _ = reply.send(self.flush(true).await);
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
                    // Bounded: the session then ends in Redis when this node releases it.
                    self.pending.entry(id).or_insert(Pending::Check);
                    return;
                }
                self.leaves += 1;
                self.pending.insert(id, Pending::Leave);
            }
            Pending::Check => {
                let p = self.pending.entry(id).or_insert(Pending::Check);
                if *p == Pending::Renew {
                    *p = Pending::Check;
                }
            }
            Pending::Renew => {
                self.pending.entry(id).or_insert(Pending::Renew);
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
                // Gone here: ended (the change log has it too), or due and not reaped yet
                // (a manual reaper), which the change log does not see: release it.
                self.add_pending(id, Pending::Check);
                continue;
            };
            if unix_ms(info.last_seen) > s.seen || now >= s.expires {
                self.add_pending(id, Pending::Renew);
            } else {
                // No activity yet: look again closer to the expiry. A heartbeat in the last
                // flush interval before it is re-sent at the next flush.
                let left = s.expires.saturating_duration_since(now);
                s.check_at = now + (left / 2).max(flush);
                self.queue(id);
            }
        }
    }

    /// The operation for `id`, from the session as it is now; `None` (and out of `pending`)
    /// when it needs none.
    fn op(&mut self, id: SessionId, now: Instant) -> Option<Op> {
        let p = *self.pending.get(&id)?;
        match self.presence.session_lease(id) {
            Some((info, ttl)) => {
                let renew = self.sent.get(&id).is_none_or(|s| now >= s.check_at);
                Some(Op::Upsert {
                    id,
                    info,
                    ttl,
                    renew,
                    only_renew: p == Pending::Renew && self.sent.contains_key(&id),
                })
            }
            None if p == Pending::Leave => Some(Op::Leave(id)),
            None if self.sent.contains_key(&id) => Some(Op::Release(id)),
            None => {
                self.remove_pending(&id);
                None
            }
        }
    }

    /// Every pending operation, in calls of at most `self.budget` units; at least one call
    /// (it registers the node and reads the view back).
    pub(super) fn plan(&mut self) -> Vec<Call> {
        let now = Instant::now();
        let ids: Vec<SessionId> = self.pending.keys().copied().collect();
        let mut calls = Vec::new();
        let mut ops = Vec::new();
        let mut units = 0;
        for id in ids {
            let Some(op) = self.op(id, now) else {
                continue;
            };
            let cost = op.cost();
            if units + cost > self.budget && !ops.is_empty() {
                calls.push(std::mem::take(&mut ops));
                units = 0;
            }
            units += cost;
            ops.push(op);
        }
        if !ops.is_empty() || calls.is_empty() {
            calls.push(ops);
        }
        let last = calls.len() - 1;
        calls
            .into_iter()
            .enumerate()
            .map(|(i, ops)| {
                self.seq += 1;
                Call {
                    ops,
                    filled: !self.refilling || i == last,
                    seq: self.seq,
                }
            })
            .collect()
    }

    fn args(&mut self, mode: &str, call: &Call, first: bool) -> Vec<Vec<u8>> {
        let s = &*self.shared;
        let ms = |d: Duration| millis(d).to_string().into_bytes();
        let n = |v: u64| v.to_string().into_bytes();
        let (ttl_bn, ttl_pn) = if first {
            let per_flush =
                (BUCKETS * 4 * millis(s.flush_interval)).div_ceil(millis(s.key_ttl).max(1));
            (per_flush.clamp(1, BUCKETS), TTL_PAGES)
        } else {
            (0, 0)
        };
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(16 + call.ops.len());
        args.push(s.node_id.as_bytes().to_vec());
        args.push(self.token.as_bytes().to_vec());
        args.push(n(call.seq));
        args.push(n(self.acked));
        args.push(ms(s.node_timeout));
        args.push(ms(s.flush_interval));
        args.push(mode.as_bytes().to_vec());
        args.push(if call.filled {
            b"1".to_vec()
        } else {
            b"0".to_vec()
        });
        args.push(n(self.peak.0 as u64));
        args.push(self.peak.1.to_string().into_bytes());
        args.push(n(SWEEP_BATCH as u64));
        args.push(n(self.ttl_bucket));
        args.push(n(ttl_bn));
        args.push(n(self.ttl_page));
        args.push(n(ttl_pn));
        args.push(ms(s.key_ttl));
        if first {
            self.ttl_bucket = (self.ttl_bucket + ttl_bn) % BUCKETS;
        }
        let now = self.presence.now_wall();
        args.extend(call.ops.iter().map(|op| op.encode(now)));
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

    /// Sends `calls` in one round trip; the replies, in order.
    async fn send(
        &mut self,
        conn: &mut Conn,
        mode: &str,
        calls: &[Call],
        first: bool,
    ) -> Result<Vec<Reply>, ClusterError> {
        let args: Vec<Vec<Vec<u8>>> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| self.args(mode, c, first && i == 0))
            .collect();
        let key = format!("{}n", self.shared.prefix);
        let timeout = self.call_timeout() * u32::try_from(calls.len().max(1)).unwrap_or(1);
        let mut answers =
            tokio::time::timeout(timeout, conn::eval_many(conn, &self.script, &key, &args))
                .await
                .map_err(|_| ClusterError::Timeout(timeout))?;
        if let Err(ClusterError::Redis(e)) = &answers {
            // The first call after Redis came back finds the old connection broken and the
            // client reconnects: try once more rather than wait a flush interval.
            if e.is_io_error() || e.is_connection_dropped() {
                answers =
                    tokio::time::timeout(timeout, conn::eval_many(conn, &self.script, &key, &args))
                        .await
                        .map_err(|_| ClusterError::Timeout(timeout))?;
            }
        }
        answers?
            .into_iter()
            .map(|a| a.map_err(ClusterError::from).and_then(Reply::parse))
            .collect()
    }

    fn fail(&mut self, e: ClusterError) -> Result<ClusterCounts, ClusterError> {
        self.shared.view.lock().stale = true;
        if matches!(e, ClusterError::Timeout(_)) {
            // A stalled server: drop the connection, and with it the calls queued on it,
            // rather than pile one more on it every flush. The next flush connects anew
            // (bounded by the same timeout), so nothing waits in memory but `pending`.
            *self.shared.conn.lock() = None;
        }
        self.log.failed(&self.shared.node_id, &e);
        Err(e)
    }

    /// Redis lost (or dropped) what this node sent: everything live here is sent again.
    fn resync(&mut self) {
        self.sent.clear();
        self.wheel.clear();
        for s in self.presence.sessions() {
            self.add_pending(s.id, Pending::Check);
        }
        self.refilling = true;
        tracing::info!(
            node = %self.shared.node_id,
            sessions = self.pending.len(),
            "presence cluster: Redis lost this node's sessions; sending them all again"
        );
    }

    /// Takes in one acknowledged reply; `Err` for a node id in use.
    fn take(&mut self, call: Call, reply: &Reply, sent_at: Instant) -> Result<bool, ClusterError> {
        match reply.status {
            Status::InUse => {
                return Err(ClusterError::NodeIdInUse(self.shared.node_id.clone()));
            }
            // An older call of ours had run after this one: its operations stay pending.
            Status::Old => return Ok(false),
            Status::Ok => {}
        }
        self.acked = self.acked.max(call.seq);
        let lost = self.reg.is_some_and(|r| r != reply.reg);
        self.reg = Some(reply.reg);
        if call.filled && self.refilling && !lost {
            self.refilling = false;
            tracing::info!(node = %self.shared.node_id, "presence cluster: refill sent");
        }
        self.confirm(call.ops, sent_at);
        if let Some(p) = reply.next_page {
            self.ttl_page = p;
        }
        let mut view = self.shared.view.lock();
        if reply.stale {
            view.stale = true;
        } else {
            *view = reply.counts;
            self.peak = (
                reply.counts.peak.online,
                unix_ms(reply.counts.peak.at) as i64,
            );
        }
        Ok(lost)
    }

    pub(super) async fn flush(&mut self, asked: bool) -> Result<ClusterCounts, ClusterError> {
        self.collect();
        let mut conn = match self.connection().await {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let started = Instant::now();
        let mut resynced = false;
        let mut more = false;
        loop {
            let mut calls = self.plan();
            let mut lost = false;
            let mut first = true;
            while !calls.is_empty() {
                let rest = calls.split_off(calls.len().min(PIPELINE));
                let group = std::mem::replace(&mut calls, rest);
                let sent_at = Instant::now();
                let units: usize = group.iter().flat_map(|c| &c.ops).map(Op::cost).sum();
                let replies = match self.send(&mut conn, "f", &group, first).await {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                self.adapt(units, group.len(), sent_at.elapsed());
                first = false;
                for (call, reply) in group.into_iter().zip(&replies) {
                    match self.take(call, reply, sent_at) {
                        Ok(l) => lost |= l,
                        Err(e) => return self.fail(e),
                    }
                    more = reply.more;
                }
            }
            if lost && !resynced {
                resynced = true;
                self.resync();
                continue;
            }
            break;
        }
        // A dead node's claims: swept a batch per call, call after call, for most of a flush
        // interval each flush; the view is stale until done.
        let allowance = self.shared.flush_interval.mul_f32(0.9);
        while more && started.elapsed() < allowance {
            let calls: Vec<Call> = (0..PIPELINE)
                .map(|_| {
                    self.seq += 1;
                    Call {
                        ops: Vec::new(),
                        filled: !self.refilling,
                        seq: self.seq,
                    }
                })
                .collect();
            let sent_at = Instant::now();
            let replies = match self.send(&mut conn, "f", &calls, false).await {
                Ok(r) => r,
                Err(e) => return self.fail(e),
            };
            for (call, reply) in calls.into_iter().zip(&replies) {
                if let Err(e) = self.take(call, reply, sent_at) {
                    return self.fail(e);
                }
                more = reply.more;
            }
        }
        let view = *self.shared.view.lock();
        self.log.succeeded(&self.shared.node_id, view.stale);
        if !view.stale {
            // Asked for (`sync`): every cached key now; on the tick, those due.
            let min_age = if asked {
                Duration::ZERO
            } else {
                self.shared.flush_interval.mul_f32(0.9)
            };
            if let Err(e) = self.refresh(&mut conn, min_age).await {
                tracing::debug!(error = %e, "presence cluster: cache refresh failed");
            }
        }
        Ok(view)
    }

    /// Sizes the next calls from a round trip of `calls` calls carrying `units`: only full
    /// calls say what a unit costs; the budget moves by at most a third per round trip.
    fn adapt(&mut self, units: usize, calls: usize, took: Duration) {
        if calls == 0 || units < self.budget * calls / 2 {
            return;
        }
        let per_unit = took.as_secs_f64() / units as f64;
        let fit = (CALL_TARGET.as_secs_f64() / per_unit.max(1e-9)) as usize;
        self.budget = fit
            .clamp(self.budget * 2 / 3, self.budget * 4 / 3)
            .clamp(MIN_BUDGET, MAX_BUDGET);
    }

    /// Reads again the cached keys that are due, in one round trip.
    async fn refresh(&mut self, conn: &mut Conn, min_age: Duration) -> Result<(), ClusterError> {
        let due = self.shared.cache.due(min_age);
        if due.is_empty() {
            return Ok(());
        }
        let answers = read_many(
            conn,
            &self.read_script,
            &self.shared.prefix,
            &due,
            self.call_timeout(),
        )
        .await?;
        for (read, answer) in due.into_iter().zip(answers) {
            self.shared.cache.store(read, answer);
        }
        Ok(())
    }

    fn confirm(&mut self, ops: Vec<Op>, sent_at: Instant) {
        for op in ops {
            let id = op.id();
            self.remove_pending(&id);
            match op {
                Op::Upsert {
                    info, ttl, renew, ..
                } => {
                    if renew || !self.sent.contains_key(&id) {
                        let queued = self.sent.get(&id).is_some_and(|s| s.queued);
                        self.sent.insert(
                            id,
                            Sent {
                                seen: unix_ms(info.last_seen),
                                expires: sent_at + ttl,
                                check_at: sent_at + ttl / 2,
                                queued,
                            },
                        );
                        self.queue(id);
                    }
                }
                Op::Release(_) | Op::Leave(_) => {
                    self.sent.remove(&id);
                }
            }
        }
    }

    /// The final flush: what changed, then this node's claims, a batch per call, and its
    /// registry entry. Best effort: Redis down means the node timeout does it instead.
    async fn bye(&mut self) {
        let flushed = self.flush(false).await.is_ok();
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
                'bye: loop {
                    let calls: Vec<Call> = (0..PIPELINE)
                        .map(|_| {
                            self.seq += 1;
                            Call {
                                ops: Vec::new(),
                                filled: true,
                                seq: self.seq,
                            }
                        })
                        .collect();
                    match self.send(&mut conn, mode, &calls, false).await {
                        Ok(replies) => {
                            for r in replies {
                                if r.status != Status::Ok {
                                    break 'bye;
                                }
                                if r.done {
                                    if !r.stale {
                                        *self.shared.view.lock() = r.counts;
                                    }
                                    break 'bye;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(node = %self.shared.node_id, error = %e, "presence cluster: shutdown could not remove this node's sessions; they leave the view after the node timeout");
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

/// Reads `reads` with the read script, a few dozen per call, one call at a time (as the
/// flush's calls: a bystander waits for one at most).
pub(super) async fn read_many(
    conn: &mut Conn,
    script: &Lua,
    prefix: &str,
    reads: &[Read],
    timeout: Duration,
) -> Result<Vec<Answer>, ClusterError> {
    let key = format!("{prefix}n");
    let mut out = Vec::with_capacity(reads.len());
    for chunk in reads.chunks(READS_PER_CALL) {
        let call: Vec<Vec<u8>> = chunk.iter().flat_map(|r| r.args()).collect();
        let answer = tokio::time::timeout(
            timeout,
            conn::eval_many(conn, script, &key, std::slice::from_ref(&call)),
        )
        .await
        .map_err(|_| ClusterError::Timeout(timeout))??
        .pop()
        .ok_or_else(|| ClusterError::Protocol("read script: no answer".into()))?;
        let list: Vec<Value> = redis::from_redis_value(answer?)
            .map_err(|e| ClusterError::Protocol(format!("read script answer: {e}")))?;
        if list.len() != chunk.len() {
            return Err(ClusterError::Protocol(format!(
                "read script answered {} values for {} reads",
                list.len(),
                chunk.len()
            )));
        }
        for (read, v) in chunk.iter().zip(list) {
            out.push(read.answer(v)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::{ManualClock, Reaper};

    fn flusher(presence: &Presence) -> (Arc<Shared>, Flusher) {
        let b = Cluster::builder("redis://127.0.0.1:1").flush_interval(Duration::from_millis(10));
        let client = conn::client(&b.url).unwrap();
        let shared = Arc::new(b.into_shared(presence));
        let f = Flusher::new(shared.clone(), presence.clone(), client);
        (shared, f)
    }

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
        let (shared, mut f) = flusher(&presence);
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
            assert!(f.flush(false).await.is_err());
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
        assert!(f.flush(false).await.is_err());
        assert_eq!(f.pending.len(), live.len(), "90 live plus 10 leaves");
        assert_eq!(f.leaves, 10);
    }

    /// Whatever is pending, each call carries at most the budget's work, so that no call
    /// holds a shared Redis for long: a 20k join burst of members with long names and pages.
    #[tokio::test]
    async fn every_call_carries_at_most_the_budget() {
        let presence = Presence::builder().reaper(Reaper::Manual).build();
        let long = "x".repeat(crate::MAX_PAGE_LEN);
        for i in 0..20_000 {
            let kind = match i % 3 {
                0 => Kind::Guest,
                1 => Kind::member(format!("user-{i}")),
                _ => Kind::hidden_member(format!("user-{i}")),
            };
            presence
                .visit(SessionId::new_v4(), kind, &long[..i % long.len()])
                .unwrap();
        }
        let (_, mut f) = flusher(&presence);
        let calls = f.plan();
        let ops: usize = calls.iter().map(|c| c.ops.len()).sum();
        assert_eq!(ops, 20_000, "every session is in some call");
        for c in &calls {
            let units: usize = c.ops.iter().map(Op::cost).sum();
            assert!(units <= CALL_BUDGET, "{units} units in one call");
            assert!(c.ops.len() <= CALL_BUDGET / 5);
            assert!(!c.ops.is_empty());
        }
        let seqs: Vec<u64> = calls.iter().map(|c| c.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "sequence numbers grow"
        );
    }

    /// Calls are sized from their measured time: slow calls shrink the budget, fast ones
    /// grow it, a third at a time, within the bounds; calls far from full say nothing.
    #[tokio::test]
    async fn the_budget_follows_the_measured_time_of_full_calls() {
        let presence = Presence::builder().reaper(Reaper::Manual).build();
        let (_, mut f) = flusher(&presence);
        let b = f.budget;
        f.adapt(b * 4, 4, CALL_TARGET * 4 * 10);
        assert_eq!(f.budget, b * 2 / 3, "ten times too slow: down a third");
        for _ in 0..100 {
            let b = f.budget;
            f.adapt(b * 4, 4, CALL_TARGET * 40);
        }
        assert_eq!(f.budget, MIN_BUDGET);
        for _ in 0..100 {
            let b = f.budget;
            f.adapt(b * 4, 4, Duration::from_micros(1));
        }
        assert_eq!(f.budget, MAX_BUDGET);
        f.adapt(10, 4, Duration::from_secs(10));
        assert_eq!(f.budget, MAX_BUDGET, "a nearly empty call says nothing");
        let b = f.budget;
        f.adapt(b * 2, 2, CALL_TARGET * 2);
        assert!(f.budget.abs_diff(b) < b / 50, "on target: stays");
    }

    #[test]
    fn an_upsert_is_packed_as_the_script_reads_it() {
        let now = SystemTime::now();
        let info = SessionInfo {
            id: SessionId::new_v4(),
            kind: Kind::member("Zoë"),
            page: Some("/f/1".into()),
            first_seen: now,
            last_seen: now - Duration::from_millis(1500),
            last_active: now - Duration::from_millis(3000),
            state: crate::SessionState::Active,
        };
        let id = info.id;
        let op = Op::Upsert {
            id,
            info,
            ttl: Duration::from_millis(300_000),
            renew: true,
            only_renew: false,
        };
        let a = op.encode(now);
        assert_eq!(a[0], b'u');
        assert_eq!(&a[1..17], id.as_uuid().as_bytes());
        assert_eq!(&a[17..19], b"m1");
        assert_eq!(&a[19..27], b"000493e0");
        assert_eq!(&a[27..35], b"000005dc");
        assert_eq!(&a[35..43], b"00000bb8");
        assert_eq!(&a[43..47], b"0004");
        assert_eq!(&a[47..51], "Zoë".as_bytes());
        assert_eq!(&a[51..55], b"0004");
        assert_eq!(&a[55..59], "zoë".as_bytes());
        assert_eq!(&a[59..], b"/f/1");
    }
}
