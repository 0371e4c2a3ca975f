//! [`Presence`]: the session map, the counters, and every operation on them.
//!
//! # Locks
//! In the order they may be taken (a thread holding one may take only later ones):
//! 1. `reaping`: serialises reaps, so a read that settles waits for one in flight;
//! 2. a session's shard lock in `sessions` (a read lock on the hot path);
//! 3. the user table's lock, then the page table's lock;
//! 4. leaves: the expiry index's lock, the peak's lock, the event queue's lock.
//!
//! Every change to a session, and the counters and events it implies, happens under that
//! session's shard *write* lock, so events about one session are queued in the order the
//! changes became visible. Events are delivered after all locks are released. No user code
//! runs under any of these locks.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::builder::PresenceBuilder;
use crate::changes::ChangeLog;
use crate::clock::{Tick, TimeSource, WallClock, millis};
use crate::events::{Event, EventQueue, LeaveReason};
use crate::expiry::ExpiryIndex;
use crate::kind::SharedStr;
use crate::map::{Cold, Entry as MapEntry, SessionMap, SlotRef};
use crate::pages::PageTable;
use crate::reaper::ReaperControl;
use crate::users::{UserSession, UserSnapshot, UserTable};
use crate::{Kind, SessionId, UserId};

/// Whether a call started a session or refreshed a live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Touch {
    /// A new session started (it was unknown, or had already expired).
    Joined,
    /// A live session was refreshed.
    Refreshed,
}

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceError {
    /// The tracker holds `max_sessions` live sessions: a new one is refused (existing ones
    /// keep working). Presence is best effort; a web server should serve the request anyway.
    Full {
        /// The configured limit.
        max_sessions: usize,
    },
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresenceError::Full { max_sessions } => write!(
                f,
                "presence is full: {max_sessions} live sessions (max_sessions); \
                 new sessions are refused until some leave or expire"
            ),
        }
    }
}

impl std::error::Error for PresenceError {}

/// The most people ever online at once, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Peak {
    /// The highest [`Counts::online`] seen since the tracker was built.
    pub online: usize,
    /// When it was first reached (the build time while `online` is 0).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
    pub at: SystemTime,
}

/// Who is online, as phpBB puts it: "12 users online: 3 registered, 1 hidden and 8 guests".
///
/// Always exact at the time of the call: `online == members + hidden + guests` and
/// `active + idle == sessions` hold in every value returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Counts {
    /// People online: `members + hidden + guests` (bots are not people).
    pub online: usize,
    /// Distinct listed users (two tabs of one user count once).
    pub members: usize,
    /// Distinct users all of whose sessions are hidden.
    pub hidden: usize,
    /// Guest sessions.
    pub guests: usize,
    /// Bot sessions.
    pub bots: usize,
    /// All live sessions, of every kind.
    pub sessions: usize,
    /// Live sessions with activity within `idle_after`.
    pub active: usize,
    /// Live sessions without activity for `idle_after` ("away").
    pub idle: usize,
    /// The most people ever online at once.
    pub peak: Peak,
}

/// Whether a live session shows activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum SessionState {
    /// Touched or visited within `idle_after`.
    Active,
    /// No activity for `idle_after` (heartbeats may still keep it online).
    Idle,
}

/// One live session, as the admin list shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SessionInfo {
    /// The session.
    pub id: SessionId,
    /// Its current kind.
    pub kind: Kind,
    /// The page of its last [`visit`](Presence::visit), if any.
    pub page: Option<String>,
    /// When it started.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
    pub first_seen: SystemTime,
    /// Its last touch, visit or heartbeat.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
    pub last_seen: SystemTime,
    /// Its last touch or visit (activity; heartbeats do not count).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
    pub last_active: SystemTime,
    /// Active or idle, now.
    pub state: SessionState,
}

/// Where a signed-in user stands: the server's truth, hidden users included.
///
/// Keeping a hidden user's status from other visitors is the application's job: check
/// `hidden` before showing it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "status", rename_all = "snake_case"))]
pub enum UserStatus {
    /// At least one live session.
    Online {
        /// How many live sessions (tabs, browsers, devices).
        sessions: usize,
        /// The latest touch, visit or heartbeat of any of them.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
        last_seen: SystemTime,
        /// Whether every session is idle.
        idle: bool,
        /// Whether every session is hidden (then the user counts in `hidden`).
        hidden: bool,
    },
    /// No live session; seen within `remember_users_for`.
    Offline {
        /// The last touch, visit or heartbeat of their last session.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::unix_millis"))]
        last_seen: SystemTime,
    },
    /// Never seen, or offline for longer than `remember_users_for`.
    Unknown,
}

/// The counters `counts()` reads. Each is changed under the lock of the thing it counts.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) guests: AtomicUsize,
    pub(crate) bots: AtomicUsize,
    pub(crate) active: AtomicUsize,
    pub(crate) idle: AtomicUsize,
    pub(crate) members: AtomicUsize,
    pub(crate) hidden: AtomicUsize,
    /// `members + hidden + guests`, changed by each operation's net delta in one step, so
    /// its history is a sequence of real states: the peak is taken from it.
    people: AtomicUsize,
    /// Entries in the map (live, or due and not yet reaped): the capacity check.
    occupied: AtomicUsize,
}

#[derive(Debug)]
struct Config {
    idle_timeout: Tick,
    idle_after: Tick,
    heartbeat_limit: Tick,
    reap_interval: Duration,
    max_sessions: Option<usize>,
    remember_users_for: Tick,
}

/// One session's hot part, in 16 bytes (32 with its id in the map's slot, one cache line):
/// what `touch` and `heartbeat` read and write, and all the reaper's first look needs. The
/// rest is in [`Details`], the slot's cold part.
///
/// `times` (last seen, last active) is atomic because the hot path refreshes it under the
/// shard's *read* lock; everything else changes under the write lock. One word for both, so
/// that a touch refreshes them with one atomic operation. Each holds the low 32 bits of its
/// tick and is widened against `now`: a live session's times lie within
/// `idle_timeout` (at most 7 days) of now, far inside the +-24 days that 32 bits of
/// milliseconds tell apart. Every read and reap settles due sessions, so a time is only
/// misread if nothing at all (no reap, no read) happened for 24 days under
/// [`Reaper::Manual`](crate::Reaper::Manual) and the session is then touched: it is simply
/// refreshed.
#[derive(Debug)]
struct Session {
    /// Last seen in the low half, last active in the high half; see [`Times`].
    times: AtomicU64,
    tag: KindTag,
    /// Counted as idle (set by the reaper, cleared by activity).
    idle: bool,
    /// The low 32 bits of the time of this session's one current expiry item.
    next_check: u32,
}

/// One session's cold part, in 24 bytes: read when a session starts, ends, changes or is
/// listed, and by a touch only to compare a member's user.
#[derive(Debug, Default)]
struct Details {
    /// The session's user: `Some` exactly when its tag is `Member` or `Hidden`.
    user: Option<UserId>,
    page: Option<SharedStr>,
    first_seen: Tick,
}

/// A [`Kind`] without its user, which the session keeps beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KindTag {
    Guest,
    Bot,
    Member,
    Hidden,
}

impl KindTag {
    /// The tag and the user a session keeps for `kind`.
    fn split(kind: Kind) -> (Self, Option<UserId>) {
        let tag = Self::of(&kind);
        let user = match kind {
            Kind::Member(u) | Kind::HiddenMember(u) => Some(u),
            Kind::Guest | Kind::Bot => None,
        };
        (tag, user)
    }

    fn of(kind: &Kind) -> Self {
        match kind {
            Kind::Guest => KindTag::Guest,
            Kind::Bot => KindTag::Bot,
            Kind::Member(_) => KindTag::Member,
            Kind::HiddenMember(_) => KindTag::Hidden,
        }
    }
}

/// The full tick of `t`, the low 32 bits of a tick within +-24 days of `now`.
#[inline]
fn widen(now: Tick, t: u32) -> Tick {
    // Truncation intended: both sides are the low 32 bits.
    let back = i64::from((now as u32).wrapping_sub(t) as i32);
    u64::try_from(i64::try_from(now).unwrap_or(i64::MAX) - back).unwrap_or(0)
}

/// The low 32 bits of a tick.
#[inline]
fn narrow(t: Tick) -> u32 {
    t as u32
}

impl Session {
    fn new(kind: Kind, page: Option<SharedStr>, now: Tick) -> (Self, Details) {
        let (tag, user) = KindTag::split(kind);
        let session = Session {
            times: AtomicU64::new(Times::both(narrow(now)).0),
            next_check: 0,
            tag,
            idle: false,
        };
        let details = Details {
            user,
            page,
            first_seen: now,
        };
        (session, details)
    }

    fn kind(&self, details: &Details) -> Kind {
        match (self.tag, &details.user) {
            (KindTag::Member, Some(u)) => Kind::Member(u.clone()),
            (KindTag::Hidden, Some(u)) => Kind::HiddenMember(u.clone()),
            (KindTag::Bot, _) => Kind::Bot,
            _ => Kind::Guest,
        }
    }

    /// Whether the session is of `kind`. A guest's or bot's tag says it all (such a session
    /// has no user), so `details` is called, and on the hot path the cold part loaded, only
    /// for a member's kind.
    #[inline]
    fn is<'d>(&self, details: impl FnOnce() -> &'d Details, kind: &Kind) -> bool {
        self.tag == KindTag::of(kind)
            && kind
                .user()
                .is_none_or(|user| details().user.as_ref() == Some(user))
    }

    #[inline]
    fn last_seen(&self, now: Tick) -> Tick {
        widen(now, Times(self.times.load(Ordering::Relaxed)).seen())
    }

    #[inline]
    fn last_active(&self, now: Tick) -> Tick {
        widen(now, Times(self.times.load(Ordering::Relaxed)).active())
    }

    /// When it goes offline for lack of any call, and for lack of activity.
    #[inline]
    fn limits(&self, cfg: &Config, now: Tick) -> (Tick, Tick) {
        (
            self.last_seen(now) + cfg.idle_timeout,
            self.last_active(now) + cfg.heartbeat_limit,
        )
    }

    #[inline]
    fn deadline(&self, cfg: &Config, now: Tick) -> Tick {
        let (seen, active) = self.limits(cfg, now);
        seen.min(active)
    }

    fn leave_reason(&self, cfg: &Config, now: Tick) -> LeaveReason {
        let (seen, active) = self.limits(cfg, now);
        if active < seen {
            LeaveReason::HeartbeatLimit
        } else {
            LeaveReason::Expired
        }
    }

    fn idle_at(&self, cfg: &Config, now: Tick) -> Tick {
        self.last_active(now) + cfg.idle_after
    }

    /// When its state may next change: it expires, or (while counted active) goes idle.
    fn next_change(&self, cfg: &Config, now: Tick) -> Tick {
        let deadline = self.deadline(cfg, now);
        if self.idle {
            deadline
        } else {
            deadline.min(self.idle_at(cfg, now))
        }
    }

    /// Moves `last_seen` (and with `active`, `last_active`) forward to `now`. Concurrent
    /// callers read the clock at slightly different times; only a later time is stored.
    /// The load first: repeated touches within one clock tick write nothing at all.
    #[inline]
    fn refresh(&self, now: Tick, active: bool) {
        let now = narrow(now);
        let mut current = self.times.load(Ordering::Relaxed);
        loop {
            let new = Times(current).refreshed(now, active);
            if new.0 == current {
                return;
            }
            match self.times.compare_exchange_weak(
                current,
                new.0,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

/// A session's last-seen and last-active times (low 32 bits of each) in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Times(u64);

impl Times {
    fn both(t: u32) -> Self {
        Self::new(t, t)
    }

    fn new(seen: u32, active: u32) -> Self {
        Times((u64::from(active) << 32) | u64::from(seen))
    }

    fn seen(self) -> u32 {
        self.0 as u32 // truncation intended: the low half
    }

    fn active(self) -> u32 {
        (self.0 >> 32) as u32
    }

    /// Both times moved forward to `now`, `active` only if the refresh is activity; a time
    /// later than `now` (compared modulo 2^32) is kept.
    fn refreshed(self, now: u32, active: bool) -> Self {
        let later = |t: u32| {
            if (now.wrapping_sub(t) as i32) > 0 {
                now
            } else {
                t
            }
        };
        let active_time = if active {
            later(self.active())
        } else {
            self.active()
        };
        Self::new(later(self.seen()), active_time)
    }
}

/// The shared state behind every [`Presence`] handle.
pub(crate) struct Tracker {
    cfg: Config,
    clock: TimeSource,
    wall: WallClock,
    sessions: SessionMap<Session, Details>,
    counters: Counters,
    users: UserTable,
    pages: PageTable,
    expiry: ExpiryIndex,
    reaping: Mutex<()>,
    peak: Mutex<(usize, Tick)>,
    /// `peak.0`, readable without the lock: most changes need not take it.
    peak_online: AtomicUsize,
    events: EventQueue,
    /// Sessions changed on a write path, for the cluster view (off unless one is attached).
    changes: ChangeLog,
    reaper: ReaperControl,
}

/// The "who is online" tracker. Cheap to clone (an `Arc`); all methods take `&self` and may
/// be called from any thread.
///
/// ```
/// use presence_tracker::{Kind, Presence, SessionId, Touch};
///
/// let presence = Presence::new();
/// let (alice_tab1, alice_tab2, guest) = (SessionId::new_v4(), SessionId::new_v4(), SessionId::new_v4());
/// assert_eq!(presence.touch(alice_tab1, Kind::member("alice"))?, Touch::Joined);
/// presence.visit(alice_tab2, Kind::member("alice"), "/forum/42")?;
/// presence.visit(guest, Kind::Guest, "/forum/42")?;
///
/// let c = presence.counts();
/// assert_eq!((c.online, c.members, c.guests, c.sessions), (2, 1, 1, 3));
/// assert_eq!(presence.page_count("/forum/42"), 2);
/// # Ok::<(), presence_tracker::PresenceError>(())
/// ```
#[derive(Clone)]
pub struct Presence {
    tracker: Arc<Tracker>,
}

impl Default for Presence {
    fn default() -> Self {
        Self::new()
    }
}

impl Presence {
    /// A builder to configure a tracker; see [`PresenceBuilder`] for the defaults.
    pub fn builder() -> PresenceBuilder {
        PresenceBuilder::new()
    }

    /// A tracker with the defaults (5 minutes to go offline, reaper started by
    /// [`Reaper::Auto`](crate::Reaper::Auto)).
    pub fn new() -> Self {
        PresenceBuilder::new().build()
    }

    pub(crate) fn from_builder(b: PresenceBuilder) -> Self {
        let now = b.clock.now();
        let tracker = Arc::new(Tracker {
            cfg: Config {
                idle_timeout: millis(b.idle_timeout).max(1),
                idle_after: millis(b.idle_after).max(1),
                heartbeat_limit: millis(b.heartbeat_limit).max(1),
                reap_interval: b.reap_interval,
                max_sessions: b.max_sessions,
                remember_users_for: millis(b.remember_users_for),
            },
            wall: WallClock::new(now),
            clock: b.clock,
            sessions: SessionMap::new(),
            counters: Counters::default(),
            users: UserTable::default(),
            pages: PageTable::default(),
            expiry: ExpiryIndex::new(),
            reaping: Mutex::new(()),
            peak: Mutex::new((0, now)),
            peak_online: AtomicUsize::new(0),
            events: EventQueue::new(b.event_capacity),
            changes: ChangeLog::default(),
            reaper: ReaperControl::default(),
        });
        tracker
            .reaper
            .start(b.reaper, &tracker, tracker.cfg.reap_interval);
        Presence { tracker }
    }

    /// Records activity of session `id` (a request, a click): starts the session or refreshes
    /// it, and moves it to `kind` if that changed (signing in or out moves the counts in one
    /// step). The session's page, if any, is kept.
    ///
    /// The hot path, a live session of unchanged kind, takes a shard read lock and stores
    /// the time; it allocates nothing.
    ///
    /// # Errors
    /// [`PresenceError::Full`] when `id` is new and `max_sessions` sessions are live.
    ///
    /// # Locks
    /// Takes internal locks only for the duration of the call; safe to call from any
    /// context, including while iterating [`sessions`](Self::sessions)' result.
    pub fn touch(&self, id: SessionId, kind: Kind) -> Result<Touch, PresenceError> {
        self.tracker.activity(id, kind, None)
    }

    /// Records activity of session `id` on `page` ("currently viewing"): as
    /// [`touch`](Self::touch), and moves the session to `page` for
    /// [`page_count`](Self::page_count) and [`top_pages`](Self::top_pages).
    ///
    /// Pages are compared as exact strings; normalise them (strip query strings, bound their
    /// length) before calling if they come from the outside world.
    ///
    /// # Errors
    /// [`PresenceError::Full`] when `id` is new and `max_sessions` sessions are live.
    pub fn visit(&self, id: SessionId, kind: Kind, page: &str) -> Result<Touch, PresenceError> {
        self.tracker.activity(id, kind, Some(page))
    }

    /// Keeps a live session online without counting as activity (a page's periodic ping):
    /// returns `true` if the session is live, `false` if it is unknown or already due, in
    /// which case it is *not* revived: the page should re-join with activity.
    ///
    /// Heartbeats alone keep a session at most `heartbeat_limit` after its last activity.
    pub fn heartbeat(&self, id: SessionId) -> bool {
        let tracker = &*self.tracker;
        let now = tracker.clock.now();
        let live = |s: &Session, _: Cold<'_, Details>| {
            let live = now < s.deadline(&tracker.cfg, now);
            if live {
                s.refresh(now, false);
            }
            live
        };
        tracker.sessions.read(&id, live).unwrap_or(false)
    }

    /// Ends session `id` now ("go offline": logout, tab closed, an admin's kill). Returns the
    /// session as it was, or `None` if it was unknown or already due.
    pub fn leave(&self, id: SessionId) -> Option<SessionInfo> {
        let tracker = &*self.tracker;
        let now = tracker.clock.now();
        let info = match tracker.sessions.entry(id) {
            MapEntry::Occupied(entry) => {
                let (session, details) = entry.get();
                let live = now < session.deadline(&tracker.cfg, now);
                let info = live.then(|| tracker.info(id, session, details, now));
                let reason = if live {
                    LeaveReason::Left
                } else {
                    session.leave_reason(&tracker.cfg, now)
                };
                tracker.end(id, session, details, reason, now);
                entry.remove();
                tracker.counters.occupied.fetch_sub(1, Ordering::Relaxed);
                info
            }
            MapEntry::Vacant(_) => None,
        };
        tracker.events.deliver();
        info
    }

    /// Who is online now. O(1): reads counters, never scans.
    ///
    /// Exact at the time of the call: sessions already due are settled first (a cost in
    /// proportion to what fell due, usually nothing), whatever the reaper's interval.
    pub fn counts(&self) -> Counts {
        let tracker = &*self.tracker;
        tracker.settle();
        let c = &tracker.counters;
        let members = c.members.load(Ordering::Relaxed);
        let hidden = c.hidden.load(Ordering::Relaxed);
        let guests = c.guests.load(Ordering::Relaxed);
        let active = c.active.load(Ordering::Relaxed);
        let idle = c.idle.load(Ordering::Relaxed);
        let (peak, at) = *tracker.peak.lock();
        Counts {
            online: members + hidden + guests,
            members,
            hidden,
            guests,
            bots: c.bots.load(Ordering::Relaxed),
            sessions: active + idle,
            active,
            idle,
            peak: Peak {
                online: peak,
                at: tracker.wall.at(at),
            },
        }
    }

    /// Live sessions whose last [`visit`](Self::visit) was `page`.
    pub fn page_count(&self, page: &str) -> usize {
        self.tracker.settle();
        self.tracker.pages.count(page)
    }

    /// The `n` pages with the most live sessions, busiest first (ties by name).
    pub fn top_pages(&self, n: usize) -> Vec<(String, usize)> {
        self.tracker.settle();
        self.tracker.pages.top(n)
    }

    /// One live session, or `None` if unknown or due.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        let tracker = &*self.tracker;
        let now = tracker.clock.now();
        tracker
            .sessions
            .read(&id, |s, d| {
                (now < s.deadline(&tracker.cfg, now)).then(|| tracker.info(id, s, d.get(), now))
            })
            .flatten()
    }

    /// A live session with the time left until its deadline (`None` if unknown or due): what
    /// the cluster view sends for a session, as an age rather than a timestamp.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn session_lease(&self, id: SessionId) -> Option<(SessionInfo, Duration)> {
        let tracker = &*self.tracker;
        let now = tracker.clock.now();
        tracker
            .sessions
            .read(&id, |s, d| {
                let deadline = s.deadline(&tracker.cfg, now);
                (now < deadline).then(|| {
                    let left = Duration::from_millis(deadline - now);
                    (tracker.info(id, s, d.get(), now), left)
                })
            })
            .flatten()
    }

    /// The log of sessions changed on a write path, for the cluster view.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn changes(&self) -> &ChangeLog {
        &self.tracker.changes
    }

    /// The tracker's own "now" as wall-clock time, on the same scale as [`SessionInfo`]'s
    /// times: the cluster view sends ages (now minus `last_seen`), never timestamps.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn now_wall(&self) -> SystemTime {
        let tracker = &*self.tracker;
        tracker.wall.at(tracker.clock.now())
    }

    /// Where user `user` stands: online (with how many sessions, whether idle or hidden),
    /// offline with a last-seen time, or unknown.
    pub fn user(&self, user: &str) -> UserStatus {
        let tracker = &*self.tracker;
        let now = tracker.settle();
        tracker
            .users
            .forget_due(now, tracker.cfg.remember_users_for);
        match tracker.users.snapshot(user) {
            UserSnapshot::Unknown => UserStatus::Unknown,
            // The forget queue is only roughly ordered; the read is exact.
            UserSnapshot::Offline { since, .. }
                if since.saturating_add(tracker.cfg.remember_users_for) <= now =>
            {
                UserStatus::Unknown
            }
            UserSnapshot::Offline { last_seen, .. } => UserStatus::Offline {
                last_seen: tracker.wall.at(last_seen),
            },
            UserSnapshot::Online { sessions, hidden } => {
                let mut last_seen = 0;
                let mut idle = true;
                for id in &sessions {
                    let times = |s: &Session, _: Cold<'_, Details>| {
                        (s.last_seen(now), s.idle_at(&tracker.cfg, now))
                    };
                    if let Some((seen, idle_at)) = tracker.sessions.read(id, times) {
                        last_seen = last_seen.max(seen);
                        idle &= idle_at <= now;
                    }
                }
                UserStatus::Online {
                    sessions: sessions.len(),
                    last_seen: tracker.wall.at(last_seen),
                    idle,
                    hidden,
                }
            }
        }
    }

    /// Every live session: the admin list. O(sessions); for counts use
    /// [`counts`](Self::counts). "Kill" a session with [`leave`](Self::leave).
    ///
    /// # Locks
    /// Holds each shard's read lock while copying it; the result is a snapshot.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let tracker = &*self.tracker;
        let now = tracker.settle();
        let mut list = Vec::new();
        tracker.sessions.for_each(|id, s, d| {
            if now < s.deadline(&tracker.cfg, now) {
                list.push(tracker.info(id, s, d, now));
            }
        });
        list
    }

    /// Evicts every session that is due now and returns how many; sends their `Left` (and
    /// `UserOffline`) events. The background reaper calls this every `reap_interval`; with
    /// [`Reaper::Manual`](crate::Reaper::Manual) call it yourself.
    ///
    /// Costs in proportion to what falls due (plus sessions whose check time came and that
    /// are re-scheduled), not to the number of sessions.
    pub fn reap(&self) -> usize {
        self.tracker.reap()
    }

    /// A receiver of every [`Event`] from now on. Events are built only while someone is
    /// subscribed.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tracker.events.subscribe()
    }

    /// Stops the background reaper (for every clone of this handle). The tracker keeps
    /// working: reads still settle what is due, and [`reap`](Self::reap) still works.
    /// Dropping the last handle does this too.
    pub fn shutdown(&self) {
        self.tracker.reaper.stop();
    }

    /// The configured `idle_timeout`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg.idle_timeout)
    }

    /// The configured `idle_after`.
    pub fn idle_after(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg.idle_after)
    }

    /// The configured `heartbeat_limit`.
    pub fn heartbeat_limit(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg.heartbeat_limit)
    }

    /// The configured `reap_interval`.
    pub fn reap_interval(&self) -> Duration {
        self.tracker.cfg.reap_interval
    }

    /// The configured `max_sessions`, if any.
    pub fn max_sessions(&self) -> Option<usize> {
        self.tracker.cfg.max_sessions
    }
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracker = &*self.tracker;
        f.debug_struct("Presence")
            .field("entries", &tracker.sessions.len())
            .field("config", &tracker.cfg)
            .field("clock", &tracker.clock)
            .finish_non_exhaustive()
    }
}

/// What an operation does to the session counters.
enum Step {
    Add,
    Remove,
}

impl Tracker {
    /// Reads the clock and, if anything may be due, reaps it; returns now.
    fn settle(&self) -> Tick {
        let now = self.clock.now();
        if self.expiry.may_be_due(now) {
            self.reap_at(now);
            self.events.deliver();
        }
        now
    }

    pub(crate) fn reap(&self) -> usize {
        let now = self.clock.now();
        let evicted = self.reap_at(now);
        self.events.deliver();
        evicted
    }

    fn reap_at(&self, now: Tick) -> usize {
        let _reaping = self.reaping.lock();
        let mut due = Vec::new();
        self.expiry.take_due(now, &mut due);
        let mut later = Vec::new();
        let mut evicted = 0;
        // What the closure below will evict: a current item (not left stale by a reschedule
        // or by the session leaving) whose session is past its deadline.
        let evicts =
            |at: Tick, s: &Session| s.next_check == narrow(at) && s.deadline(&self.cfg, now) <= now;
        self.sessions.at_each(&due, evicts, |at, slot, mut entry| {
            let id = entry.id();
            let (session, details) = entry.get_mut();
            if session.next_check != narrow(at) {
                return; // a stale item: the session was rescheduled, or left and another came
            }
            if session.deadline(&self.cfg, now) <= now {
                let reason = session.leave_reason(&self.cfg, now);
                self.end(id, session, details, reason, now);
                entry.remove();
                self.counters.occupied.fetch_sub(1, Ordering::Relaxed);
                evicted += 1;
                return;
            }
            if !session.idle && session.idle_at(&self.cfg, now) <= now {
                session.idle = true;
                self.counters.idle.fetch_add(1, Ordering::Relaxed);
                self.counters.active.fetch_sub(1, Ordering::Relaxed);
            }
            let next = session.next_change(&self.cfg, now);
            session.next_check = narrow(next);
            later.push((next, slot));
        });
        self.expiry.schedule_all(later);
        self.expiry.finish();
        self.users.forget_due(now, self.cfg.remember_users_for);
        evicted
    }

    fn activity(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
    ) -> Result<Touch, PresenceError> {
        let now = self.clock.now();
        let refreshed = self.sessions.read(&id, |s, d| {
            let unchanged = !s.idle
                && s.is(|| d.get(), &kind)
                && page.is_none_or(|p| d.get().page.as_ref().map(SharedStr::as_str) == Some(p))
                && now < s.deadline(&self.cfg, now);
            if unchanged {
                s.refresh(now, true);
            }
            unchanged
        });
        if refreshed == Some(true) {
            return Ok(Touch::Refreshed);
        }
        // A due session is logically gone: evict it before starting or changing one, so that
        // a newcomer is not counted alongside it (peak) and its user's `UserOffline` /
        // `UserOnline` are not lost.
        if self.expiry.may_be_due(now) {
            self.reap_at(now);
        }
        let result = self.activity_slow(id, kind, page, now);
        self.events.deliver();
        result
    }

    fn activity_slow(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) -> Result<Touch, PresenceError> {
        let mut settled = false;
        loop {
            match self.sessions.entry(id) {
                MapEntry::Occupied(mut entry) => {
                    let slot = entry.slot_ref();
                    let (session, details) = entry.get_mut();
                    if now < session.deadline(&self.cfg, now) {
                        self.refresh_live(id, slot, (session, details), kind, page, now);
                        return Ok(Touch::Refreshed);
                    }
                    // Due but not yet reaped: it ends, and a new session starts in its place.
                    let reason = session.leave_reason(&self.cfg, now);
                    self.end(id, session, details, reason, now);
                    let (fresh, fresh_details, check) = self.start(id, kind, page, now);
                    (*session, *details) = (fresh, fresh_details);
                    self.expiry.schedule(check, slot);
                    return Ok(Touch::Joined);
                }
                MapEntry::Vacant(entry) => {
                    if !self.reserve() {
                        drop(entry);
                        if settled {
                            let max_sessions = self.cfg.max_sessions.unwrap_or(usize::MAX);
                            return Err(PresenceError::Full { max_sessions });
                        }
                        // Full: evict what is already due, then try once more.
                        self.reap_at(now);
                        settled = true;
                        continue;
                    }
                    let (fresh, details, check) = self.start(id, kind, page, now);
                    match entry.insert(fresh, details) {
                        Ok(slot) => self.expiry.schedule(check, slot),
                        Err((fresh, details)) => {
                            // No slot left in this shard (2^26 sessions): as full as it gets.
                            self.end(id, &fresh, &details, LeaveReason::Left, now);
                            self.counters.occupied.fetch_sub(1, Ordering::Relaxed);
                            let max_sessions = self.cfg.max_sessions.unwrap_or(usize::MAX);
                            return Err(PresenceError::Full { max_sessions });
                        }
                    }
                    return Ok(Touch::Joined);
                }
            }
        }
    }

    /// Takes one place for a new entry, if `max_sessions` allows.
    fn reserve(&self) -> bool {
        let occupied = &self.counters.occupied;
        match self.cfg.max_sessions {
            None => {
                occupied.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => occupied
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// Activity on a live session that the hot path could not take: it was counted idle, or
    /// its kind or page changes. Under the shard write lock.
    fn refresh_live(
        &self,
        id: SessionId,
        slot: SlotRef,
        (session, details): (&mut Session, &mut Details),
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) {
        session.refresh(now, true);
        if session.idle {
            session.idle = false;
            self.counters.active.fetch_add(1, Ordering::Relaxed);
            self.counters.idle.fetch_sub(1, Ordering::Relaxed);
        }
        if !session.is(|| details, &kind) {
            self.changes.record(id);
            let events = self.events.wanted().then_some(&self.events);
            if let Some(events) = events {
                events.push(Event::KindChanged {
                    session: id,
                    from: session.kind(details),
                    to: kind.clone(),
                });
            }
            let new_tag = KindTag::of(&kind);
            let mut people =
                self.count_kind(new_tag, Step::Add) - self.count_kind(session.tag, Step::Remove);
            people += self.users.apply(
                user_session(id, session.tag, details.user.as_ref())
                    .map(|s| (s, session.last_seen(now))),
                user_session(id, new_tag, kind.user()),
                now,
                &self.counters,
                events,
            );
            self.add_people(people, now);
            (session.tag, details.user) = KindTag::split(kind);
        }
        if let Some(page) = page {
            if details.page.as_ref().map(SharedStr::as_str) != Some(page) {
                self.changes.record(id);
                details.page = Some(self.pages.change(details.page.as_ref(), page));
            }
        }
        // Activity only moves the session's times later, so its current expiry item usually
        // still fires early enough. The exception: a session counted idle becomes active and
        // may now go idle again before that item.
        let next = session.next_change(&self.cfg, now);
        if next < widen(now, session.next_check) {
            session.next_check = narrow(next);
            self.expiry.schedule(next, slot);
        }
    }

    /// A new session, counted and announced, and the time of its first check. Under the
    /// shard write lock.
    fn start(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) -> (Session, Details, Tick) {
        self.changes.record(id);
        let events = self.events.wanted().then_some(&self.events);
        if let Some(events) = events {
            events.push(Event::Joined {
                session: id,
                kind: kind.clone(),
            });
        }
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        let tag = KindTag::of(&kind);
        let mut people = self.count_kind(tag, Step::Add);
        people += self.users.apply(
            None,
            user_session(id, tag, kind.user()),
            now,
            &self.counters,
            events,
        );
        self.add_people(people, now);
        let page = page.map(|p| self.pages.change(None, p));
        let (mut session, details) = Session::new(kind, page, now);
        let check = session.next_change(&self.cfg, now);
        session.next_check = narrow(check);
        (session, details, check)
    }

    /// Uncounts a session that ends and announces it. Under the shard write lock; the caller
    /// removes or replaces the entry.
    fn end(
        &self,
        id: SessionId,
        session: &Session,
        details: &Details,
        reason: LeaveReason,
        now: Tick,
    ) {
        self.changes.record(id);
        let events = self.events.wanted().then_some(&self.events);
        if let Some(events) = events {
            events.push(Event::Left {
                session: id,
                kind: session.kind(details),
                reason,
            });
        }
        let counter = if session.idle {
            &self.counters.idle
        } else {
            &self.counters.active
        };
        counter.fetch_sub(1, Ordering::Relaxed);
        let mut people = -self.count_kind(session.tag, Step::Remove);
        // A due session ended at its deadline, however late that is noticed.
        let ended = now.min(session.deadline(&self.cfg, now));
        people += self.users.apply(
            user_session(id, session.tag, details.user.as_ref())
                .map(|s| (s, session.last_seen(now))),
            None,
            ended,
            &self.counters,
            events,
        );
        self.add_people(people, now);
        if let Some(page) = &details.page {
            self.pages.leave(page);
        }
    }

    /// Counts a guest or bot session in or out; returns the guests it adds to `people`.
    fn count_kind(&self, tag: KindTag, step: Step) -> isize {
        let counter = match tag {
            KindTag::Guest => &self.counters.guests,
            KindTag::Bot => &self.counters.bots,
            KindTag::Member | KindTag::Hidden => return 0,
        };
        match step {
            Step::Add => counter.fetch_add(1, Ordering::Relaxed),
            Step::Remove => counter.fetch_sub(1, Ordering::Relaxed),
        };
        isize::from(tag == KindTag::Guest)
    }

    /// Applies an operation's net change in people online and records a new peak.
    fn add_people(&self, delta: isize, now: Tick) {
        let people = &self.counters.people;
        let online = match delta {
            0 => return,
            d if d > 0 => people.fetch_add(d.unsigned_abs(), Ordering::AcqRel) + d.unsigned_abs(),
            d => {
                people.fetch_sub(d.unsigned_abs(), Ordering::AcqRel);
                return;
            }
        };
        if online > self.peak_online.load(Ordering::Relaxed) {
            let mut peak = self.peak.lock();
            if online > peak.0 {
                *peak = (online, now);
                self.peak_online.store(online, Ordering::Relaxed);
            }
        }
    }

    fn info(&self, id: SessionId, s: &Session, d: &Details, now: Tick) -> SessionInfo {
        SessionInfo {
            id,
            kind: s.kind(d),
            page: d.page.as_ref().map(|p| p.as_str().to_owned()),
            first_seen: self.wall.at(d.first_seen),
            last_seen: self.wall.at(s.last_seen(now)),
            last_active: self.wall.at(s.last_active(now)),
            state: if s.idle_at(&self.cfg, now) <= now {
                SessionState::Idle
            } else {
                SessionState::Active
            },
        }
    }
}

fn user_session(id: SessionId, tag: KindTag, user: Option<&UserId>) -> Option<UserSession<'_>> {
    user.map(|user| UserSession {
        user,
        hidden: tag == KindTag::Hidden,
        session: id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_stays_small() {
        // Memory per session is a tracked figure: 16 + 24 bytes here, 56 with its id in the
        // map, whose hot part (id and `Session`) must fit its 32 bytes.
        assert_eq!(crate::map::hot_slot_bytes::<Session>(), 32);
        assert!(
            std::mem::size_of::<Details>() <= 24,
            "{}",
            std::mem::size_of::<Details>()
        );
    }

    #[test]
    fn times_widen_across_the_32_bit_wrap() {
        let now: Tick = (1 << 32) + 5;
        assert_eq!(widen(now, narrow(now - 10)), now - 10);
        assert_eq!(widen(now, narrow(now + 3)), now + 3);
        assert_eq!(widen(7, narrow(2)), 2);
        let t = Times::both(narrow((1 << 32) - 2)).refreshed(narrow(now), false);
        assert_eq!(widen(now, t.seen()), now);
        assert_eq!(
            widen(now, t.active()),
            (1 << 32) - 2,
            "a heartbeat is not activity"
        );
        let t = t.refreshed(narrow(now), true);
        assert_eq!((widen(now, t.seen()), widen(now, t.active())), (now, now));
        // An earlier time never overwrites a later one.
        assert_eq!(t.refreshed(narrow(now - 1), true), t);
    }
}
