//! The flush of one hash tag: what this node sends to the part of the view that tag keeps
//! (all of it with one tag), and when.
//!
//! The node's task (`node.rs`) hands each tag the sessions of the tracker's change log that
//! are, or were, kept there (they started, ended, or changed kind or page); each flush adds
//! the renewals that fell due to them in `pending`, turns each pending id into one operation
//! by reading the session once, and sends them sorted by bucket, in calls sized by a work
//! budget, one call in flight (two during a refill). Nothing here scans the sessions, except
//! the full re-send after Redis lost this node's data.
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
//! timeout, and an idle one none.
//!
//! Pages: each session's page is counted by one node, its page owner, which keeps the page
//! counts and page entries of the sessions it owns (see `Own`) and sends the pages and
//! entries that changed as absolute values: a page change costs no per-session operation.
//! A node that sees a page on a session it does not own takes it (one record write); the
//! former owner learns it from its inbox and drops the session from its pages.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use redis::Value;
use tokio::sync::{Semaphore, oneshot};

use super::cache::{Answer, Read};
use super::conn::{self, Conn, Lua};
use super::pages::{self, PageBook};
use super::{ClusterCounts, ClusterError, Shared, tags};
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
/// a bucket's claims are released with one read and one write of its records, about 8 µs
/// each (measured with the `shared_redis` bench), so near 2 ms. A call that carries
/// operations sweeps in proportion to the room they leave.
pub(super) const SWEEP_BATCH: usize = 250;
/// Script calls in flight at once. Redis runs the calls it read from one socket back to
/// back, so a bystander would wait for all of them: one at a time, it waits for one call at
/// most (measured: with four in flight its p99 was 8 to 14 ms, with one see BENCHMARKS.md).
/// The round trip this adds is small next to a call's 2 ms on a local network.
pub(super) const PIPELINE: usize = 1;
/// Calls in flight while this node sends everything again after Redis lost it: two, so that
/// Redis is not idle while the next call travels (each call stays within its budget; the
/// view is stale meanwhile, and a refill is rare).
const REFILL_PIPELINE: usize = 2;
/// Inbox messages one call brings back at most (flush.lua reads as many), and the extra
/// rounds of calls one flush makes to read a full inbox and act on it: with sessions moving
/// between nodes at every view (no sticky sessions), thousands of messages a second.
const INBOX_PAGE: usize = 1024;
const MAX_INBOX_ROUNDS: usize = 16;
/// Reads per read-script call in a cache refresh.
const READS_PER_CALL: usize = 64;
/// A Redis server's share, in permits, of the calls in flight to it at once: a full call
/// (its tag's budget) takes all of it, a call with nothing to send [`CALL_FLOOR`]. So the
/// tags of one server (spread over several, see `tags.rs`) send their small calls together,
/// in one round trip, and their full calls one after another, as one tag would: a bystander
/// waits for about one full call.
pub(super) const GATE: usize = 1000;
/// A call's share of the gate however little it carries: registering and the view.
const CALL_FLOOR: usize = 30;
/// Explicit leaves kept while Redis is unreachable; past this, a leave is left to expire.
const MAX_PENDING_LEAVES: usize = 100_000;

pub(super) enum Command {
    Sync(oneshot::Sender<Result<ClusterCounts, ClusterError>>),
    Shutdown(oneshot::Sender<()>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Pending {
    /// Only its claim's expiry is due (the renewal wheel; nothing in the change log): the
    /// script moves the expiry and touches the session's record only if the claim is gone.
    Renew,
    /// Read the session and send what it is now (upsert or release).
    Check,
    /// The session left explicitly: unless it started again, end it for every node.
    Leave,
    /// A guest's session signed in and is now kept by its user's tag: this tag (its id's)
    /// counts it no more, for any node, though this node never sent it here (another
    /// node saw it as a guest).
    Moved,
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
    /// Its kind (and user) as the session's record in Redis has it.
    kind: Kind,
}

/// A session whose page this node counts: what it adds to this node's page counts and page
/// entries.
struct Own {
    page: Arc<str>,
    /// Its entry in the page's member list, for a listed member.
    entry: Option<Vec<u8>>,
    /// The inbox stamp when Redis acknowledged this node's take (`None` until then): a
    /// message that another node took the session counts only if it is newer.
    stamp: Option<u64>,
}

/// Page entries one operation adds or removes, at most.
const ENTRIES_PER_OP: usize = 128;
/// Member buckets of each node's page entries (flush.lua and read.lua compute the same).
pub(super) const PM_BUCKETS: u16 = 256;

/// Member buckets per tag: [`PM_BUCKETS`] in all, as session buckets (see `tags.rs`), so a
/// bucket holds as many entries whatever the number of tags.
pub(super) fn pm_buckets(tags: usize) -> u16 {
    (PM_BUCKETS / u16::try_from(tags.max(1)).unwrap_or(u16::MAX)).max(8)
}

/// The session bucket of `id` among a tag's `buckets` (flush.lua's `bucket`).
fn bucket_of(id: SessionId, buckets: u64) -> u16 {
    let b = id.as_uuid().as_bytes();
    ((u64::from(b[0]) * 16 + u64::from(b[1] / 16)) % buckets) as u16
}

/// The member bucket of `page`: read.lua computes the same.
pub(super) fn pm_bucket(page: &str, buckets: u16) -> u16 {
    let h = page
        .bytes()
        .fold(0u32, |h, b| (h * 31 + u32::from(b)) % 65_521);
    (h % u32::from(buckets)) as u16
}

/// The entry of a listed session on `page`: `page_len page sortkey \0 user \0 id`.
fn page_entry(page: &str, user: &str, id: SessionId) -> Vec<u8> {
    let key = super::sort_key(user);
    let mut e = Vec::with_capacity(4 + page.len() + key.len() + user.len() + 18);
    e.extend_from_slice(format!("{:04x}", page.len().min(0xFFFF)).as_bytes());
    e.extend_from_slice(page.as_bytes());
    e.extend_from_slice(key.as_bytes());
    e.push(0);
    e.extend_from_slice(user.as_bytes());
    e.push(0);
    e.extend_from_slice(id.as_uuid().as_bytes());
    e
}

#[derive(Debug)]
pub(super) enum Op {
    Upsert {
        id: SessionId,
        info: SessionInfo,
        ttl: Duration,
        /// Move the claim's expiry (a renewal, or a first send).
        renew: bool,
        /// Nothing changed here but the time: the script only moves the claim's expiry
        /// (and reads the record only if the claim was gone).
        only_renew: bool,
        /// This node now counts the session's page (it did not before).
        take: bool,
    },
    Release(SessionId),
    Leave(SessionId),
    /// Kept by another tag now (signed in or out): counted no more in this one.
    Moved(SessionId),
    /// This node's count of a page, as it is now.
    Page {
        page: Arc<str>,
        count: u32,
    },
    /// Page entries this node adds to (or removes from) one of its member buckets.
    Entries {
        bucket: u16,
        add: bool,
        entries: Vec<Vec<u8>>,
    },
    /// Before a bye that parks: where this node counts some of its sessions.
    Park(Vec<(SessionId, Vec<u8>)>),
}

impl Op {
    /// Work units: Redis commands the script runs for it at most, weighted by their cost.
    pub(super) fn cost(&self) -> usize {
        match self {
            Op::Upsert {
                info,
                renew,
                only_renew,
                take,
                ..
            } => {
                // A bucket's operations share one read and one write of its records and
                // claims (see flush.lua): what is left is parsing and packing.
                let member = if info.kind.user().is_some() { 2 } else { 0 };
                let take = if *take { 1 } else { 0 };
                if *only_renew {
                    // The claim's expiry, and the user's last seen.
                    2 + member
                } else if *renew {
                    // A first send or a renewal with a change: record, claim, counters.
                    8 + member + take
                } else {
                    // A change of kind, or a take: the record.
                    6 + member + take
                }
            }
            Op::Release(_) => 6,
            Op::Leave(_) | Op::Moved(_) => 8,
            // The node's count, the page's count.
            Op::Page { .. } => 5,
            Op::Entries { entries, .. } => 2 + entries.len(),
            Op::Park(items) => 2 + items.len(),
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
                take,
            } => {
                let (kind, user): (u8, &str) = match &info.kind {
                    Kind::Guest => (b'g', ""),
                    Kind::Bot => (b'b', ""),
                    k if k.is_hidden() => (b'h', k.user().map_or("", |u| u.as_str())),
                    k => (b'm', k.user().map_or("", |u| u.as_str())),
                };
                let sortkey = super::sort_key(user);
                let sortkey = truncate(&sortkey, 0xFFFF);
                let mut a = Vec::with_capacity(56 + user.len() + sortkey.len());
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
                a.push(if *take { b'1' } else { b'0' });
                a
            }
            Op::Release(id) => [b"r".as_slice(), id.as_uuid().as_bytes()].concat(),
            Op::Leave(id) => [b"l".as_slice(), id.as_uuid().as_bytes()].concat(),
            Op::Moved(id) => [b"x".as_slice(), id.as_uuid().as_bytes()].concat(),
            Op::Page { page, count } => {
                let mut a = Vec::with_capacity(9 + page.len());
                a.push(b'P');
                a.extend_from_slice(format!("{count:08x}").as_bytes());
                a.extend_from_slice(page.as_bytes());
                a
            }
            Op::Entries {
                bucket,
                add,
                entries,
            } => {
                let len: usize = entries.iter().map(|e| 4 + e.len()).sum();
                let mut a = Vec::with_capacity(5 + len);
                a.push(if *add { b'A' } else { b'D' });
                a.extend_from_slice(format!("{bucket:04x}").as_bytes());
                for e in entries {
                    a.extend_from_slice(format!("{:04x}", e.len()).as_bytes());
                    a.extend_from_slice(e);
                }
                a
            }
            Op::Park(items) => {
                let len: usize = items.iter().map(|(_, v)| 20 + v.len()).sum();
                let mut a = Vec::with_capacity(1 + len);
                a.push(b'K');
                for (id, v) in items {
                    a.extend_from_slice(id.as_uuid().as_bytes());
                    a.extend_from_slice(format!("{:04x}", v.len()).as_bytes());
                    a.extend_from_slice(v);
                }
                a
            }
        }
    }

    /// The session of a session operation.
    fn id(&self) -> Option<SessionId> {
        match self {
            Op::Upsert { id, .. } | Op::Release(id) | Op::Leave(id) | Op::Moved(id) => Some(*id),
            Op::Page { .. } | Op::Entries { .. } | Op::Park(_) => None,
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
    /// The operations packed, at planning: nothing to pack between two calls.
    encoded: Vec<Vec<u8>>,
    /// Their work units: a call full of operations leaves little room for sweeping.
    units: usize,
    filled: bool,
    seq: u64,
}

impl Call {
    /// A call with no operation (sweeping, a bye).
    fn empty(seq: u64, filled: bool) -> Call {
        Call {
            ops: Vec::new(),
            encoded: Vec::new(),
            units: 0,
            filled,
            seq,
        }
    }
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
    /// The inbox stamp at the end of the call.
    stamp: u64,
    /// The time the call took in Redis.
    took: Duration,
    /// This node's inbox: (kind, session, stamp).
    inbox: Vec<(u8, SessionId, u64)>,
}

impl Reply {
    fn parse(v: Value) -> Result<Reply, ClusterError> {
        let bad = |what: String| ClusterError::Protocol(format!("flush script answer: {what}"));
        let Value::Array(items) = v else {
            return Err(bad(format!("not a list: {v:?}")));
        };
        if items.len() < 17 || (items.len() - 17) % 2 != 0 {
            return Err(bad(format!(
                "{} values, expected 17 and pairs",
                items.len()
            )));
        }
        let mut items = items.into_iter();
        let r: Vec<i64> = items
            .by_ref()
            .take(17)
            .map(|v| redis::from_redis_value::<i64>(v).map_err(|e| bad(e.to_string())))
            .collect::<Result<_, _>>()?;
        let rest: Vec<Value> = items.collect();
        let mut inbox = Vec::with_capacity(rest.len() / 2);
        for pair in rest.chunks_exact(2) {
            let m: Vec<u8> =
                redis::from_redis_value(pair[0].clone()).map_err(|e| bad(e.to_string()))?;
            let stamp: u64 =
                redis::from_redis_value(pair[1].clone()).map_err(|e| bad(e.to_string()))?;
            let (&[kind], id) = (&m[..m.len().min(1)], &m[m.len().min(1)..]) else {
                return Err(bad("empty inbox message".into()));
            };
            let id = uuid::Uuid::from_slice(id)
                .map_err(|_| bad("inbox message without a session id".into()))?;
            inbox.push((kind, SessionId::from(id), stamp));
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
                partial: false,
            },
            stale: r[12] == 1,
            more: r[13] == 1,
            done: r[14] == 1,
            stamp: u64::try_from(r[15]).unwrap_or(0),
            took: Duration::from_micros(u64::try_from(r[16]).unwrap_or(0)),
            inbox,
        })
    }
}

/// The flush of one hash tag: what this node sends to the part of the view that tag keeps
/// (all of it with one tag), and the last view of it Redis gave back.
pub(super) struct Flusher {
    shared: Arc<Shared>,
    presence: Presence,
    /// This tag, among `tags`, and its key prefix and session buckets.
    tag: usize,
    tags: usize,
    prefix: String,
    buckets: u64,
    pm_buckets: u16,
    script: Lua,
    pending: HashMap<SessionId, Pending>,
    leaves: usize,
    sent: HashMap<SessionId, Sent>,
    wheel: BTreeMap<u64, Vec<SessionId>>,
    origin: Instant,
    /// The sessions whose page this node counts, and what it counts: sessions per page.
    own: HashMap<SessionId, Own>,
    /// The node's page counts and entries, for all tags (see `pages.rs`): this tag sends
    /// those of its own pages.
    pub(super) book: Arc<Mutex<PageBook>>,
    /// Counts no pages (spread over several tags, a bye that parks drops them first).
    no_pages: bool,
    /// The session operations [`prepare`](Self::prepare) made for the next flush.
    prepared: Option<Vec<Op>>,
    /// Inbox messages taken in and not yet acted on (kind, stamp), and the highest stamp
    /// taken in (Redis drops what it has up to it).
    inbox: HashMap<SessionId, (u8, u64)>,
    inbox_seen: u64,
    /// Sessions another node took from this one, with the page they had here then: this
    /// node takes one back only when it sees it on another page (or its owner lets it go).
    taken: HashMap<SessionId, Arc<str>>,
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
    pub(super) peak: (usize, i64),
    ttl_bucket: u64,
    ttl_page: u64,
    /// Flushes so far: the TTL refresh goes by them (see [`ttl_slice`]).
    flushes: u64,
    /// Work units per call, sized from the measured time of full calls.
    budget: usize,
    /// The Redis server this tag's keys are on, shared with the other tags there: a call
    /// holds a share of it in proportion to its work, so the calls one server runs back to
    /// back take about what one full call would (see [`GATE`]).
    pub(super) gate: Arc<Semaphore>,
    /// This tag's part of the view as Redis last gave it whole, and whether the last flush
    /// brought it (`false`: failed, or Redis says it is partial).
    pub(super) last: ClusterCounts,
    pub(super) fresh: bool,
}

/// How many of `items` keys whose TTL a flush refreshes at `turn`, so that each is refreshed
/// once in `cycle` flushes: a few every flush when there are more keys than flushes, one
/// every few flushes when fewer (so that a namespace spread over many tags costs no more
/// TTL refreshes than one of a single tag).
fn ttl_slice(items: u64, cycle: u64, turn: u64) -> u64 {
    if items == 0 {
        return 0;
    }
    let every = (cycle / items).max(1);
    if turn % every == 0 {
        (items * every).div_ceil(cycle).clamp(1, items)
    } else {
        0
    }
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
    /// The flush of tag `tag` of `tags`; its sessions come through [`route`](Self::route).
    pub(super) fn new(
        shared: Arc<Shared>,
        presence: Presence,
        tag: usize,
        book: Arc<Mutex<PageBook>>,
    ) -> Self {
        let tags = shared.prefixes.len();
        let empty = ClusterCounts::empty(SystemTime::now());
        Flusher {
            prefix: shared.prefixes[tag].clone(),
            shared,
            presence,
            tag,
            tags,
            buckets: tags::buckets(tags),
            pm_buckets: pm_buckets(tags),
            script: Lua::new(include_str!("flush.lua")),
            pending: HashMap::new(),
            leaves: 0,
            sent: HashMap::new(),
            wheel: BTreeMap::new(),
            origin: Instant::now(),
            own: HashMap::new(),
            book,
            no_pages: false,
            prepared: None,
            inbox: HashMap::new(),
            inbox_seen: 0,
            taken: HashMap::new(),
            token: uuid::Uuid::new_v4().simple().to_string(),
            seq: 0,
            acked: 0,
            reg: None,
            refilling: false,
            peak: (0, 0),
            ttl_bucket: 0,
            ttl_page: 0,
            flushes: 0,
            budget: CALL_BUDGET,
            gate: Arc::new(Semaphore::new(GATE)),
            last: empty,
            fresh: false,
        }
    }

    /// Session `id` as this tag sees it: `None` when it is not here or kept by another tag.
    fn lease(&self, id: SessionId) -> Option<(SessionInfo, Duration)> {
        let lease = self.presence.session_lease(id)?;
        (self.tags == 1 || tags::of_session(id, &lease.0.kind, self.tags) == self.tag)
            .then_some(lease)
    }

    /// Whether this tag has anything of session `id`: it sent it, counts its page, or has
    /// it pending.
    pub(super) fn holds(&self, id: &SessionId) -> bool {
        self.sent.contains_key(id) || self.own.contains_key(id) || self.pending.contains_key(id)
    }

    /// Stops counting pages: what this node counted comes off them at the next flush.
    pub(super) fn drop_pages(&mut self) {
        self.forget_pages();
        self.no_pages = true;
    }

    /// Whether this node sent session `id` to this tag.
    pub(super) fn has_sent(&self, id: &SessionId) -> bool {
        self.sent.contains_key(id)
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

    pub(super) fn add_pending(&mut self, id: SessionId, p: Pending) {
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
            Pending::Renew | Pending::Moved => {
                self.pending.entry(id).or_insert(p);
            }
        }
    }

    fn remove_pending(&mut self, id: &SessionId) {
        if self.pending.remove(id) == Some(Pending::Leave) {
            self.leaves -= 1;
        }
    }

    /// Gathers the renewals due (what changed comes through `add_pending`).
    pub(super) fn collect(&mut self) {
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
            let lease = self.lease(id);
            let Some((info, _)) = lease else {
                // Gone here: ended (the change log has it too), or due and not reaped yet
                // (a manual reaper), which the change log does not see: release it.
                self.add_pending(id, Pending::Check);
                continue;
            };
            let Some(s) = self.sent.get_mut(&id) else {
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

    /// Brings this node's page counts in line with session `id` as it is now (`None`: gone
    /// here): the page it counts the session on, and its entry there if listed. A session
    /// this node does not count yet is taken when it shows a page here, unless another node
    /// took it from this one and it is still on the page it had here then.
    fn account(&mut self, id: SessionId, info: Option<&SessionInfo>) {
        if self.no_pages {
            return;
        }
        let want = info.and_then(|i| {
            let page = i.page.as_deref().filter(|p| !p.is_empty())?;
            let entry = match &i.kind {
                Kind::Member(u) => Some(page_entry(page, u.as_str(), id)),
                _ => None,
            };
            Some((page, entry))
        });
        let Some((page, entry)) = want else {
            self.unown(id);
            self.taken.remove(&id);
            return;
        };
        let stamp = match self.own.get(&id) {
            Some(o) if &*o.page == page && o.entry == entry => return,
            Some(o) => o.stamp,
            None => {
                if self.taken.get(&id).is_some_and(|p| &**p == page) {
                    return;
                }
                self.taken.remove(&id);
                None
            }
        };
        self.unown(id);
        let page = {
            let mut book = self.book.lock();
            let page = book.intern(page);
            let bucket = pm_bucket(&page, self.pm_buckets);
            book.add(&page, entry.as_deref().map(|e| (e, bucket)));
            page
        };
        self.own.insert(id, Own { page, entry, stamp });
    }

    /// Takes session `id` off this node's page counts.
    fn unown(&mut self, id: SessionId) -> Option<Arc<str>> {
        let o = self.own.remove(&id)?;
        let bucket = pm_bucket(&o.page, self.pm_buckets);
        self.book
            .lock()
            .remove(&o.page, o.entry.map(|e| (e, bucket)));
        Some(o.page)
    }

    /// Acts on the inbox: a session another node took (`m`) leaves this node's pages; one
    /// whose page owner let it go (`o`) is taken if it is still here. A message older than
    /// this node's own take is stale; one about a take still in flight waits for its answer.
    /// `true` when that changed something to send.
    fn read_inbox(&mut self) -> bool {
        let mut changed = false;
        for (id, (kind, stamp)) in std::mem::take(&mut self.inbox) {
            match self.own.get(&id).map(|o| o.stamp) {
                Some(None) => {
                    self.inbox.insert(id, (kind, stamp));
                }
                Some(Some(mine)) if mine >= stamp => {}
                Some(Some(_)) => {
                    if let Some(page) = self.unown(id) {
                        changed = true;
                        if kind == b'm' {
                            self.taken.insert(id, page);
                        } else {
                            self.add_pending(id, Pending::Check);
                        }
                    }
                }
                None => {
                    if kind == b'o' && self.taken.remove(&id).is_some() {
                        changed = true;
                        self.add_pending(id, Pending::Check);
                    }
                }
            }
        }
        changed
    }

    /// The operation for `id`, from the session as it is now; `None` (and out of `pending`)
    /// when it needs none: a page change alone is carried by this node's page counts.
    fn op(&mut self, id: SessionId, now: Instant) -> Option<Op> {
        let p = *self.pending.get(&id)?;
        let lease = self.lease(id);
        self.account(id, lease.as_ref().map(|(info, _)| info));
        match lease {
            Some((info, ttl)) => {
                let take = self.own.get(&id).is_some_and(|o| o.stamp.is_none());
                let sent = self.sent.get(&id);
                let renew = sent.is_none_or(|s| now >= s.check_at);
                let changed = sent.is_none_or(|s| s.kind != info.kind);
                if !renew && !take && !changed && p != Pending::Renew {
                    self.remove_pending(&id);
                    return None;
                }
                let only_renew = p == Pending::Renew && sent.is_some() && !take && !changed;
                Some(Op::Upsert {
                    id,
                    info,
                    ttl,
                    renew,
                    only_renew,
                    take,
                })
            }
            None if p == Pending::Leave => Some(Op::Leave(id)),
            None if p == Pending::Moved => Some(Op::Moved(id)),
            // Live here under another tag (a guest signed in, a user signed out): it moved,
            // so it counts here no more, for any node.
            None if self.sent.contains_key(&id) && self.presence.session_lease(id).is_some() => {
                Some(Op::Moved(id))
            }
            None if self.sent.contains_key(&id) => Some(Op::Release(id)),
            None => {
                self.remove_pending(&id);
                None
            }
        }
    }

    /// The page counts and page entries of this tag's pages that Redis may not have as they
    /// are here.
    fn page_ops(&self) -> Vec<Op> {
        let book = self.book.lock();
        let mut ops: Vec<Op> = book.dirty_pages[self.tag]
            .iter()
            .map(|page| Op::Page {
                page: page.clone(),
                count: book.pages.get(page).copied().unwrap_or(0),
            })
            .collect();
        let mut groups: BTreeMap<(u16, bool), Vec<Vec<u8>>> = BTreeMap::new();
        for (e, &(bucket, add)) in &book.dirty_entries[self.tag] {
            groups.entry((bucket, add)).or_default().push(e.clone());
        }
        for ((bucket, add), list) in groups {
            for chunk in list.chunks(ENTRIES_PER_OP) {
                ops.push(Op::Entries {
                    bucket,
                    add,
                    entries: chunk.to_vec(),
                });
            }
        }
        ops
    }

    /// Every pending operation, in calls of at most `self.budget` units; at least one call
    /// (it registers the node and reads the view back).
    pub(super) fn plan(&mut self) -> Vec<Call> {
        let session_ops = match self.prepared.take() {
            Some(ops) => ops,
            None => self.session_ops(),
        };
        let page_ops = self.page_ops();
        self.calls(session_ops.into_iter().chain(page_ops))
    }

    /// The renewals due and the session operations, ready for the next flush: every tag
    /// prepares before any sends, so that the page counts each tag sends include what
    /// the others' sessions changed (a page is kept by its own tag).
    pub(super) fn prepare(&mut self) {
        self.collect();
        self.prepared = Some(self.session_ops());
    }

    fn session_ops(&mut self) -> Vec<Op> {
        let now = Instant::now();
        let ids: Vec<SessionId> = self.pending.keys().copied().collect();
        let mut session_ops: Vec<Op> = ids.into_iter().filter_map(|id| self.op(id, now)).collect();
        // By bucket, so that each call touches few buckets, each once (see flush.lua).
        let buckets = self.buckets;
        session_ops.sort_unstable_by_key(|op| op.id().map(|id| bucket_of(id, buckets)));
        session_ops
    }

    /// Whether the node's page counts hold something this tag's pages must send.
    pub(super) fn pages_dirty(&self) -> bool {
        self.book.lock().dirty(self.tag)
    }

    /// `ops` in calls of at most `self.budget` units; at least one call.
    fn calls(&mut self, all: impl Iterator<Item = Op>) -> Vec<Call> {
        let mut calls = Vec::new();
        let mut ops = Vec::new();
        let mut units = 0;
        for op in all {
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
        let now = self.presence.now_wall();
        calls
            .into_iter()
            .enumerate()
            .map(|(i, ops)| {
                self.seq += 1;
                Call {
                    encoded: ops.iter().map(|op| op.encode(now)).collect(),
                    units: ops.iter().map(Op::cost).sum(),
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
        let buckets = self.buckets;
        // Every key's TTL is refreshed at least once a quarter of the key TTL: a cycle of
        // that many flushes, each tag's turns staggered by its index.
        let (ttl_bn, ttl_pn, fixed) = if first {
            let cycle = (millis(s.key_ttl) / (4 * millis(s.flush_interval)).max(1)).max(1);
            let turn = self.flushes + self.tag as u64;
            let fixed = self.flushes == 0 || turn % cycle == 0;
            self.flushes += 1;
            (
                ttl_slice(buckets, cycle, turn),
                ttl_slice(u64::from(self.pm_buckets), cycle, turn),
                fixed,
            )
        } else {
            (0, 0, false)
        };
        let mut args: Vec<Vec<u8>> = Vec::with_capacity(20 + call.ops.len());
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
        // Sweeping shares the call with the operations: a full call sweeps a little.
        let room = self.budget.saturating_sub(call.units) as u64;
        let sweep = (SWEEP_BATCH as u64 * room / self.budget.max(1) as u64).max(16);
        args.push(n(sweep));
        args.push(n(self.ttl_bucket));
        args.push(n(ttl_bn));
        args.push(n(self.ttl_page));
        args.push(n(ttl_pn));
        args.push(ms(s.key_ttl));
        args.push(n(self.inbox_seen));
        args.push(n(buckets));
        args.push(n(u64::from(self.pm_buckets)));
        args.push(if fixed { b"1".to_vec() } else { b"0".to_vec() });
        if first {
            self.ttl_bucket = (self.ttl_bucket + ttl_bn) % buckets;
            self.ttl_page = (self.ttl_page + ttl_pn) % u64::from(self.pm_buckets);
        }
        args.extend(call.encoded.iter().cloned());
        args
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
        let key = format!("{}n", self.prefix);
        let timeout = self.call_timeout() * u32::try_from(calls.len().max(1)).unwrap_or(1);
        let share: usize = calls
            .iter()
            .map(|c| CALL_FLOOR + c.units * (GATE - CALL_FLOOR) / self.budget.max(1))
            .sum();
        let gate = self.gate.clone();
        let _turn = tokio::time::timeout(
            timeout,
            gate.acquire_many(u32::try_from(share.min(GATE)).unwrap_or(1)),
        )
        .await
        .map_err(|_| ClusterError::Timeout(timeout))?
        .map_err(|_| ClusterError::Stopped)?;
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

    fn fail(&mut self, e: ClusterError) -> Result<(), ClusterError> {
        self.fresh = false;
        Err(e)
    }

    /// Redis lost (or dropped) what this node sent: everything live here is sent again.
    fn resync(&mut self) {
        self.sent.clear();
        self.wheel.clear();
        self.forget_pages();
        // This tag's pages, as this node counts them, go again whole.
        self.book.lock().tag_lost(self.tag);
        for s in self.presence.sessions() {
            if self.tags == 1 || tags::of_session(s.id, &s.kind, self.tags) == self.tag {
                self.add_pending(s.id, Pending::Check);
            }
        }
        self.refilling = true;
        tracing::info!(
            node = %self.shared.node_id,
            tag = %self.prefix,
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
            tracing::info!(node = %self.shared.node_id, tag = %self.prefix, "presence cluster: refill sent");
        }
        for &(kind, id, stamp) in &reply.inbox {
            let e = self.inbox.entry(id).or_insert((kind, stamp));
            if stamp >= e.1 {
                *e = (kind, stamp);
            }
            self.inbox_seen = self.inbox_seen.max(stamp);
        }
        self.confirm(call.ops, sent_at, reply.stamp);
        if reply.stale {
            self.fresh = false;
        } else {
            self.last = reply.counts;
            self.fresh = true;
        }
        Ok(lost)
    }

    /// Flushes this tag: what changed, the inbox, and a dead node's claims for most of a
    /// flush interval. `self.last` and `self.fresh` then say what Redis gave back.
    pub(super) async fn flush(&mut self, mut conn: Conn) -> Result<(), ClusterError> {
        if self.prepared.is_none() {
            self.collect();
        }
        let started = Instant::now();
        let mut resynced = false;
        let mut inbox_rounds = 0;
        let mut more = false;
        loop {
            let mut calls = self.plan();
            let mut lost = false;
            let mut first = true;
            let mut inbox_full = false;
            while !calls.is_empty() {
                let depth = if self.refilling {
                    REFILL_PIPELINE
                } else {
                    PIPELINE
                };
                let rest = calls.split_off(calls.len().min(depth));
                let group = std::mem::replace(&mut calls, rest);
                let sent_at = Instant::now();
                let units: usize = group.iter().flat_map(|c| &c.ops).map(Op::cost).sum();
                let replies = match self.send(&mut conn, "f", &group, first).await {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                // Sized by their time in Redis, which is what a bystander waits for (the
                // round trip and this node's own work hold nobody up).
                let took = replies.iter().map(|r| r.took).sum();
                self.adapt(units, group.len(), took);
                first = false;
                for (call, reply) in group.into_iter().zip(&replies) {
                    match self.take(call, reply, sent_at) {
                        Ok(l) => lost |= l,
                        Err(e) => return self.fail(e),
                    }
                    more = reply.more;
                    inbox_full |= reply.inbox.len() >= INBOX_PAGE;
                }
            }
            if lost && !resynced {
                resynced = true;
                self.resync();
                continue;
            }
            // Sessions other nodes took: off this node's pages in the same flush, and the
            // rest of a full inbox read with another call (a bounded number per flush).
            let changed = self.read_inbox();
            if (changed || inbox_full) && inbox_rounds < MAX_INBOX_ROUNDS {
                inbox_rounds += 1;
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
                    Call::empty(self.seq, !self.refilling)
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
        Ok(())
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

    fn confirm(&mut self, ops: Vec<Op>, sent_at: Instant, stamp: u64) {
        for op in ops {
            if let Some(id) = op.id() {
                self.remove_pending(&id);
            }
            match op {
                Op::Upsert {
                    id,
                    info,
                    ttl,
                    renew,
                    take,
                    ..
                } => {
                    if take {
                        if let Some(o) = self.own.get_mut(&id) {
                            o.stamp.get_or_insert(stamp);
                        }
                    }
                    if renew || !self.sent.contains_key(&id) {
                        let queued = self.sent.get(&id).is_some_and(|s| s.queued);
                        self.sent.insert(
                            id,
                            Sent {
                                seen: unix_ms(info.last_seen),
                                expires: sent_at + ttl,
                                check_at: sent_at + ttl / 2,
                                queued,
                                kind: info.kind,
                            },
                        );
                        self.queue(id);
                    } else if let Some(s) = self.sent.get_mut(&id) {
                        s.kind = info.kind;
                    }
                }
                Op::Release(id) | Op::Leave(id) | Op::Moved(id) => {
                    self.sent.remove(&id);
                }
                Op::Page { page, count } => self.book.lock().page_sent(&page, count),
                Op::Entries { add, entries, .. } => {
                    self.book.lock().entries_sent(self.tag, entries, add);
                }
                Op::Park(_) => {}
            }
        }
    }

    /// Forgets what this node counts on pages: Redis lost it, or the node leaves.
    fn forget_pages(&mut self) {
        let owned: Vec<SessionId> = self.own.keys().copied().collect();
        for id in owned {
            self.unown(id);
        }
        self.inbox.clear();
        self.inbox_seen = 0;
        self.taken.clear();
    }

    /// Before a bye that parks: tells Redis on which page (and with which entry) this node
    /// counts each of its sessions, so that a parked session leaves its page when it expires
    /// or another node takes it. `false` if Redis did not take it all.
    async fn park(&mut self, conn: &mut Conn) -> bool {
        let items: Vec<(SessionId, Vec<u8>)> = self
            .own
            .iter()
            .filter(|(_, o)| o.stamp.is_some())
            .map(|(id, o)| {
                let entry = o.entry.as_deref().unwrap_or_default();
                let mut v = Vec::with_capacity(8 + o.page.len() + entry.len());
                v.extend_from_slice(
                    format!("{:04x}", pm_bucket(&o.page, self.pm_buckets)).as_bytes(),
                );
                v.extend_from_slice(format!("{:04x}", o.page.len().min(0xFFFF)).as_bytes());
                v.extend_from_slice(o.page.as_bytes());
                v.extend_from_slice(entry);
                (*id, v)
            })
            .collect();
        if items.is_empty() {
            return true;
        }
        let ops: Vec<Op> = items
            .chunks(ENTRIES_PER_OP)
            .map(|c| Op::Park(c.to_vec()))
            .collect();
        for call in self.calls(ops.into_iter()) {
            let sent_at = Instant::now();
            match self
                .send(conn, "f", std::slice::from_ref(&call), false)
                .await
            {
                Ok(replies) if replies.iter().all(|r| r.status == Status::Ok) => {
                    for r in &replies {
                        let _ = self.take(Call::empty(call.seq, true), r, sent_at);
                    }
                }
                _ => return false,
            }
        }
        true
    }

    /// This tag's part of the final flush, after a last flush that succeeded (`conn`): this
    /// node's claims, a batch per call, and its registry entry ("b"), or its sessions parked
    /// until their own expiry ("k", a restart is coming). Best effort: Redis down means the
    /// node timeout does it instead.
    pub(super) async fn bye(&mut self, conn: Option<Conn>, mode: &str) {
        if let Some(mut conn) = conn {
            if mode == "k" && !self.park(&mut conn).await {
                tracing::warn!(node = %self.shared.node_id, "presence cluster: shutdown could not park this node's pages; they leave the view after the node timeout");
            }
            'bye: loop {
                let calls: Vec<Call> = (0..PIPELINE)
                    .map(|_| {
                        self.seq += 1;
                        Call::empty(self.seq, true)
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
                                    self.last = r.counts;
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
        self.sent.clear();
        self.wheel.clear();
        self.pending.clear();
        self.forget_pages();
        self.leaves = 0;
        self.fresh = false;
    }
}

/// Reads `reads` with the read script, a few dozen per call, one call at a time (as the
/// flush's calls: a bystander waits for one at most).
pub(super) async fn read_many(
    conn: &mut Conn,
    script: &Lua,
    prefix: &str,
    reads: &[Read],
    tags: usize,
    timeout: Duration,
) -> Result<Vec<Answer>, ClusterError> {
    let key = format!("{prefix}n");
    let pm_buckets = pm_buckets(tags);
    let mut out = Vec::with_capacity(reads.len());
    for chunk in reads.chunks(READS_PER_CALL) {
        let call: Vec<Vec<u8>> = chunk.iter().flat_map(|r| r.args(pm_buckets)).collect();
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

/// Reads `reads` from the tags that keep them, the tags at once (one round trip per Redis
/// server), and merges the parts: a page's count and members, and a user, are read from
/// their own tag; the busiest pages and the listed users of all tags are merged, each page
/// and each user being kept by one tag.
pub(super) async fn read_spread(
    conn: &Conn,
    script: &Lua,
    shared: &Shared,
    reads: &[Read],
    timeout: Duration,
) -> Result<Vec<Answer>, ClusterError> {
    let prefixes = &shared.prefixes;
    let k = prefixes.len();
    if k == 1 {
        return read_many(&mut conn.clone(), script, &prefixes[0], reads, 1, timeout).await;
    }
    let mut per_tag: Vec<Vec<(usize, Read)>> = vec![Vec::new(); k];
    for (i, r) in reads.iter().enumerate() {
        let one = match r {
            Read::User(u) => Some(tags::of_user(u, k)),
            Read::PageCount(p) | Read::PageMembers(p, _) => Some(pages::tag_of(p, k)),
            Read::Top(_) | Read::Members(_) => None,
        };
        match one {
            Some(t) => per_tag[t].push((i, r.clone())),
            None => {
                for list in &mut per_tag {
                    list.push((i, r.clone()));
                }
            }
        }
    }
    let answers = futures_util::future::join_all(per_tag.iter().enumerate().map(|(t, list)| {
        let mut conn = conn.clone();
        let reads: Vec<Read> = list.iter().map(|(_, r)| r.clone()).collect();
        async move {
            if reads.is_empty() {
                return Ok(Vec::new());
            }
            read_many(&mut conn, script, &prefixes[t], &reads, k, timeout).await
        }
    }))
    .await;
    let mut parts: Vec<Vec<Answer>> = vec![Vec::new(); reads.len()];
    for (list, answers) in per_tag.iter().zip(answers) {
        for ((i, _), a) in list.iter().zip(answers?) {
            parts[*i].push(a);
        }
    }
    Ok(reads
        .iter()
        .zip(parts)
        .map(|(read, parts)| merge_parts(read, parts))
        .collect())
}

fn merge_parts(read: &Read, parts: Vec<Answer>) -> Answer {
    match read {
        Read::Top(n) => {
            let mut pages: Vec<(String, usize)> = parts
                .into_iter()
                .flat_map(|a| match a {
                    Answer::Pages(p) => p,
                    _ => Vec::new(),
                })
                .collect();
            pages.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            pages.truncate(*n);
            Answer::Pages(pages)
        }
        Read::Members(n) => {
            let mut names: Vec<(String, crate::UserId)> = parts
                .into_iter()
                .flat_map(|a| match a {
                    Answer::Names(v) => v,
                    _ => Vec::new(),
                })
                .map(|u| (super::sort_key(u.as_str()), u))
                .collect();
            names.sort_unstable_by(|a, b| (&a.0, a.1.as_str()).cmp(&(&b.0, b.1.as_str())));
            names.truncate(*n);
            Answer::Names(names.into_iter().map(|(_, u)| u).collect())
        }
        Read::PageCount(_) | Read::PageMembers(..) | Read::User(_) => {
            parts.into_iter().next().unwrap_or(Answer::User(None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Cluster;
    use crate::cluster::node::Node;
    use crate::{ManualClock, Reaper};

    fn flusher(presence: &Presence) -> (Arc<Shared>, Node) {
        let b = Cluster::builder("redis://127.0.0.1:1").flush_interval(Duration::from_millis(10));
        let client = conn::client(&b.url).unwrap();
        let shared = Arc::new(b.into_shared(presence));
        let node = Node::new(shared.clone(), presence.clone(), client);
        (shared, node)
    }

    /// Any `cycle` flushes in a row refresh at least every one of `items` keys, and never
    /// many more than that: a few keys a flush or one every few flushes.
    #[test]
    fn a_cycle_of_ttl_slices_covers_every_key() {
        for items in [1, 2, 8, 16, 17, 255, 256, 4096] {
            for cycle in [1, 2, 3, 9, 16, 100, 255, 256, 257, 900, 5000] {
                for start in [0, 1, 7, 1000] {
                    let sum: u64 = (start..start + cycle)
                        .map(|turn| ttl_slice(items, cycle, turn))
                        .sum();
                    assert!(sum >= items, "{items} keys, cycle {cycle}: {sum}");
                    assert!(
                        sum <= 2 * items + cycle,
                        "{items} keys, cycle {cycle}: {sum} refreshed"
                    );
                }
            }
        }
        assert_eq!(ttl_slice(0, 9, 0), 0);
        assert_eq!(ttl_slice(4096, 900, 3), 5);
        assert_eq!((0..9).map(|t| ttl_slice(16, 900, t)).sum::<u64>(), 1);
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
                f.tags[0].pending.len() <= live.len(),
                "round {round}: {} pending for {} live sessions",
                f.tags[0].pending.len(),
                live.len()
            );
        }
        for id in &live[..10] {
            presence.leave(*id);
        }
        assert!(f.flush(false).await.is_err());
        assert_eq!(
            f.tags[0].pending.len(),
            live.len(),
            "90 live plus 10 leaves"
        );
        assert_eq!(f.tags[0].leaves, 10);
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
        let (_, mut node) = flusher(&presence);
        let f = &mut node.tags[0];
        let calls = f.plan();
        let sessions = calls
            .iter()
            .flat_map(|c| &c.ops)
            .filter(|op| op.id().is_some())
            .count();
        assert_eq!(sessions, 20_000, "every session is in some call");
        let entries: usize = calls
            .iter()
            .flat_map(|c| &c.ops)
            .map(|op| match op {
                Op::Entries { entries, .. } => entries.len(),
                _ => 0,
            })
            .sum();
        let listed_with_page = (0..20_000)
            .filter(|i| i % 3 == 1 && i % long.len() != 0)
            .count();
        assert_eq!(
            entries, listed_with_page,
            "every listed member's page entry"
        );
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
        let (_, mut node) = flusher(&presence);
        let f = &mut node.tags[0];
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

    /// The inbox: a message older than this node's own take is stale, and one about a take
    /// still in flight waits for its answer. "Another node took it" takes the session off
    /// this node's pages, and only a new page here takes it back (a heartbeat on the old
    /// page does not); "its owner let it go" takes it back at once.
    #[tokio::test]
    async fn inbox_messages_move_a_page_only_when_newer_than_the_take() {
        let presence = Presence::builder().reaper(Reaper::Manual).build();
        let (_, mut node) = flusher(&presence);
        let (x, y) = (SessionId::new_v4(), SessionId::new_v4());
        presence.visit(x, Kind::member("x"), "/x").unwrap();
        presence.visit(y, Kind::Guest, "/y").unwrap();
        node.collect();
        let f = &mut node.tags[0];
        let takes = f
            .plan()
            .iter()
            .flat_map(|c| &c.ops)
            .filter(|op| matches!(op, Op::Upsert { take: true, .. }))
            .count();
        assert_eq!(takes, 2, "first seen here: taken");
        assert_eq!(f.book.lock().pages.get("/x"), Some(&1));
        f.own.get_mut(&x).unwrap().stamp = Some(5);
        f.inbox.insert(x, (b'm', 4));
        f.inbox.insert(y, (b'm', 9));
        assert!(!f.read_inbox());
        assert!(f.own.contains_key(&x), "older than x's take: stale");
        assert_eq!(f.inbox.len(), 1, "y's take is in flight: its message waits");

        f.inbox.insert(x, (b'm', 6));
        assert!(f.read_inbox());
        assert!(!f.own.contains_key(&x));
        assert_eq!(f.book.lock().pages.get("/x"), None);
        assert!(f.book.lock().dirty_pages[0].contains("/x"));
        assert!(
            f.book.lock().dirty_entries[0]
                .values()
                .any(|&(_, add)| !add),
            "its page entry goes"
        );
        let upsert = |f: &mut Flusher, id| {
            f.pending.insert(id, Pending::Check);
            match f.op(id, Instant::now()) {
                Some(Op::Upsert { take, .. }) => take,
                other => panic!("{other:?}"),
            }
        };
        assert!(presence.heartbeat(x));
        assert!(
            !upsert(f, x),
            "still on the page it had here: not taken back"
        );
        presence.visit(x, Kind::member("x"), "/x/2").unwrap();
        assert!(upsert(f, x), "a new page here: taken back");
        assert_eq!(f.book.lock().pages.get("/x/2"), Some(&1));

        // y: taken by another node, then let go by it.
        f.own.get_mut(&y).unwrap().stamp = Some(1);
        assert!(f.read_inbox(), "y's message, now that its take is answered");
        assert!(!f.own.contains_key(&y));
        f.inbox.insert(y, (b'o', 12));
        assert!(f.read_inbox());
        assert!(upsert(f, y), "nobody counts it: taken back");
        assert_eq!(f.book.lock().pages.get("/y"), Some(&1));
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
            take: true,
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
        assert_eq!(&a[59..], b"1", "take: this node counts its page");
    }
}
