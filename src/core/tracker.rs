//! The tracker: the shared state behind every [`Presence`](crate::Presence) handle, its
//! construction, the reads, and reaping. What a write does to a session is in
//! `lifecycle.rs`.
//!
//! # Locks
//! In the order they may be taken (a thread holding one may take only later ones):
//! 1. `reaping`: serialises reaps; a read or write that finds one in flight does not wait;
//! 2. a session's shard lock in `sessions` (a read lock on the hot path);
//! 3. the user table's lock, then the page table's lock, then the change log's;
//! 4. leaves: the expiry index's lock, the peak's lock, the event queue's lock.
//!
//! Every change to a session, and the counters and events it implies, happens under that
//! session's shard *write* lock, so events about one session are queued in the order the
//! changes became visible. Events are delivered after all locks are released. No user code
//! runs under any of these locks.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::SessionId;
use crate::builder::PresenceBuilder;
use crate::clock::{Tick, TimeSource, WallClock, millis};
use crate::core::changes::ChangeLog;
use crate::core::counters::{Counters, Counts};
use crate::core::expiry::ExpiryIndex;
use crate::core::map::{Cold, Entry as MapEntry, SessionMap};
use crate::core::pages::PageTable;
use crate::core::reaper::{Reap, ReaperControl};
use crate::core::session::{Config, Details, Session, narrow};
use crate::core::users::{UserSnapshot, UserTable};
use crate::events::{EventQueue, LeaveReason};
use crate::info::{SessionCursor, SessionInfo, SessionState, UserStatus};
use crate::observe::history::History;
use crate::observe::metrics::Refusals;
use crate::persist::format::SnapshotFile;

/// Due sessions a read or a write settles itself at most; the reaper does the rest.
const READ_BATCH: usize = 256;
/// Due sessions one reaper step evicts under one hold of the locks.
const REAP_BATCH: usize = 2048;

/// The shared state behind every [`Presence`](crate::Presence) handle.
pub(crate) struct Tracker {
    pub(crate) cfg: Config,
    pub(crate) clock: TimeSource,
    pub(crate) wall: WallClock,
    pub(crate) sessions: SessionMap<Session, Details>,
    pub(crate) counters: Counters,
    pub(crate) users: UserTable,
    pub(crate) pages: PageTable,
    pub(crate) expiry: ExpiryIndex,
    reaping: Mutex<()>,
    pub(crate) events: EventQueue,
    /// Sessions changed on a write path, for the cluster view (off unless one is attached).
    pub(crate) changes: ChangeLog,
    pub(crate) reaper: ReaperControl,
    /// `online` once per `history_interval`, the last 1440 of them.
    pub(crate) history: History,
    /// Where the tracker is saved across restarts, if anywhere.
    pub(crate) snapshot: Option<SnapshotFile>,
    pub(crate) refusals: Refusals,
}

impl Tracker {
    /// A tracker with `b`'s settings, its reaper started.
    pub(crate) fn new(b: PresenceBuilder) -> Arc<Self> {
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
            wall: WallClock::new(now, b.clock.wall_now()),
            clock: b.clock,
            sessions: SessionMap::new(),
            counters: Counters::new(now),
            users: UserTable::new(b.max_remembered_users),
            pages: PageTable::default(),
            expiry: ExpiryIndex::new(),
            reaping: Mutex::new(()),
            events: EventQueue::new(b.event_capacity),
            changes: ChangeLog::default(),
            reaper: ReaperControl::default(),
            history: History::new(b.history_interval),
            snapshot: b
                .snapshot_file
                .map(|path| SnapshotFile::new(path, b.max_snapshot_size)),
            refusals: Refusals::default(),
        });
        let weak = Arc::downgrade(&tracker);
        tracker
            .reaper
            .start(b.reaper, weak, tracker.cfg.reap_interval);
        tracker
    }

    /// Reads the clock and settles a bounded batch of what is due; returns now.
    pub(crate) fn settle(&self) -> Tick {
        let now = self.clock.now();
        if self.settle_at(now) {
            self.events.deliver();
        }
        now
    }

    /// Evicts up to [`READ_BATCH`] due sessions, unless a reap is already in flight (then
    /// the reaper is on it, and this caller does not wait). Returns whether it reaped.
    ///
    /// So a read or a write never waits on a large reap: during an expiry storm a read may
    /// count a due session for up to one reap interval; with fewer than `READ_BATCH` due (the
    /// usual case, and every test under [`Reaper::Manual`](crate::Reaper::Manual) that does
    /// not storm) the read is exact.
    pub(crate) fn settle_at(&self, now: Tick) -> bool {
        if !self.expiry.may_be_due(now) {
            return false;
        }
        let Some(_reaping) = self.reaping.try_lock() else {
            return false;
        };
        self.reap_batch(now, READ_BATCH);
        true
    }

    /// Evicts everything due now, in batches that each release the locks, so that requests
    /// go on between them.
    pub(crate) fn reap_all(&self, now: Tick) -> usize {
        let mut evicted = 0;
        loop {
            let (n, more) = {
                let _reaping = self.reaping.lock();
                self.reap_batch(now, REAP_BATCH)
            };
            evicted += n;
            if !more {
                return evicted;
            }
            std::thread::yield_now();
        }
    }

    /// [`Presence::reap`](crate::Presence::reap): everything due now, then its events.
    pub(crate) fn reap(&self) -> usize {
        let started = Instant::now();
        let evicted = self.reap_all(self.clock.now());
        self.events.deliver();
        self.after_pass(self.clock.now(), started.elapsed());
        evicted
    }

    /// After a reap pass: a history sample if one is due, the gauges, a word if it was slow,
    /// and the user table's memory back after a flood was forgotten (off the request path).
    fn after_pass(&self, now: Tick, took: Duration) {
        self.users.tidy();
        self.history
            .sample(now, &self.wall, || self.counters.online());
        crate::observe::metrics::reap_pass(|| self.counters.read(&self.wall), took);
    }

    /// Evicts up to `limit` due items; returns how many sessions it evicted and whether more
    /// are due. The caller holds `reaping`.
    fn reap_batch(&self, now: Tick, limit: usize) -> (usize, bool) {
        let mut due = Vec::new();
        let more = self.expiry.take_due(now, &mut due, limit);
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
        let forget_more = self
            .users
            .forget_due(now, self.cfg.remember_users_for, limit);
        (evicted, more || forget_more)
    }

    pub(crate) fn counts(&self) -> Counts {
        let now = self.settle();
        self.history
            .sample(now, &self.wall, || self.counters.online());
        self.counters.read(&self.wall)
    }

    pub(crate) fn heartbeat(&self, id: SessionId) -> bool {
        let tracker = self;
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

    pub(crate) fn leave(&self, id: SessionId) -> Option<SessionInfo> {
        let tracker = self;
        let now = tracker.clock.now();
        let info = match tracker.sessions.entry(id) {
            MapEntry::Occupied(entry) => {
                let (session, details) = entry.get();
                let live = now < session.deadline(&tracker.cfg, now);
                let info = live.then(|| tracker.info(id, session, details, now));
                let reason = if live {
                    tracker.changes.record_left(id);
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

    pub(crate) fn session(&self, id: SessionId) -> Option<SessionInfo> {
        let tracker = self;
        let now = tracker.clock.now();
        tracker
            .sessions
            .read(&id, |s, d| {
                (now < s.deadline(&tracker.cfg, now)).then(|| tracker.info(id, s, d.get(), now))
            })
            .flatten()
    }

    pub(crate) fn session_lease(&self, id: SessionId) -> Option<(SessionInfo, Duration)> {
        let tracker = self;
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

    pub(crate) fn user(&self, user: &str) -> UserStatus {
        let tracker = self;
        let now = tracker.settle();
        tracker
            .users
            .forget_due(now, tracker.cfg.remember_users_for, READ_BATCH);
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

    pub(crate) fn sessions(&self) -> Vec<SessionInfo> {
        let tracker = self;
        let now = tracker.settle();
        let mut list = Vec::new();
        tracker.sessions.for_each(|id, s, d| {
            if now < s.deadline(&tracker.cfg, now) {
                list.push(tracker.info(id, s, d, now));
            }
        });
        list
    }

    pub(crate) fn sessions_page(
        &self,
        from: SessionCursor,
        limit: usize,
    ) -> (Vec<SessionInfo>, Option<SessionCursor>) {
        let now = self.settle();
        let mut list = Vec::with_capacity(limit.min(1024));
        let next = self.sessions.for_each_from(from.0, limit, |id, s, d| {
            if now < s.deadline(&self.cfg, now) {
                list.push(self.info(id, s, d, now));
            }
        });
        (list, next.map(SessionCursor))
    }

    pub(crate) fn info(&self, id: SessionId, s: &Session, d: &Details, now: Tick) -> SessionInfo {
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

impl Reap for Tracker {
    fn reap_step(&self) -> bool {
        let now = self.clock.now();
        let more = {
            let _reaping = self.reaping.lock();
            self.reap_batch(now, REAP_BATCH).1
        };
        self.events.deliver();
        more
    }

    fn pass_done(&self, took: Duration) {
        self.after_pass(self.clock.now(), took);
    }
}

impl Drop for Tracker {
    /// The last handle is gone: a best-effort save (a failure is logged).
    fn drop(&mut self) {
        self.save_on_exit();
    }
}
