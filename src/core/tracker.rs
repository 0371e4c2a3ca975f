//! The tracker: the shared state behind every [`Presence`](crate::Presence) handle, its
//! construction, the reads, and reaping. The sessions and every table kept in step with them
//! are the write path's ([`Lifecycle`], `lifecycle.rs`): the tracker reads them and asks it
//! for changes, never touching a table itself.
//!
//! # Locks
//! In the order they may be taken (a thread holding one may take only later ones):
//! 1. `reaping`: serialises reaps; a read or write that finds one in flight does not wait;
//! 2. a session's shard lock in `sessions` (a read lock on the hot path);
//! 3. the user table's lock, then the page table's lock, then the change log's;
//! 4. leaves: the hold table's lock, the expiry index's lock, the peak's lock, the event
//!    queue's lock.
//!
//! The publisher's locks (see `observe::publish`) are taken with none of these held, except
//! that registering a watched page reads the page table inside the publisher's registry
//! lock.
//!
//! Every change to a session, and the counters and events it implies, happens under that
//! session's shard *write* lock, so events about one session are queued in the order the
//! changes became visible. Events are delivered after all locks are released. No user code
//! runs under any of these locks.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::SessionId;
use crate::clock::{Tick, TimeSource, WallClock, millis};
use crate::core::changes::ChangeLog;
use crate::core::lifecycle::{Lifecycle, READ_BATCH};
use crate::core::map::Cold;
use crate::core::reaper::{Periodic, Reaper, ReaperControl, resolve};
use crate::core::session::{Config, Details, Session};
use crate::core::users::UserSnapshot;
use crate::counts::Counts;
use crate::error::PresenceError;
use crate::events::Event;
use crate::info::{SessionCursor, SessionInfo, SessionState, Touch, UserStatus};
use crate::kind::{Kind, UserId};
use crate::observe::history::History;
use crate::observe::publish::{Full, PageRead, PageView, Publisher};
use crate::persist::format::SnapshotFile;

/// A tracker's settings, as the builder validated them.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) idle_timeout: Duration,
    pub(crate) idle_after: Duration,
    pub(crate) heartbeat_limit: Duration,
    pub(crate) reap_interval: Duration,
    pub(crate) max_sessions: Option<usize>,
    pub(crate) remember_users_for: Duration,
    pub(crate) max_remembered_users: usize,
    pub(crate) event_capacity: usize,
    pub(crate) clock: TimeSource,
    pub(crate) reaper: Reaper,
    pub(crate) snapshot_file: Option<PathBuf>,
    pub(crate) max_snapshot_size: u64,
    pub(crate) history_interval: Duration,
    pub(crate) hold_grace: Duration,
    pub(crate) publish_interval: Duration,
    pub(crate) max_watched_pages: usize,
}

/// The shared state behind every [`Presence`](crate::Presence) handle.
pub(crate) struct Tracker {
    pub(super) clock: TimeSource,
    pub(super) wall: WallClock,
    /// The sessions and every table kept in step with them: changed only through its methods.
    pub(super) life: Lifecycle,
    reaper: ReaperControl,
    /// `online` once per `history_interval`, the last 1440 of them.
    pub(super) history: History,
    /// Where the tracker is saved across restarts, if anywhere.
    pub(super) snapshot: Option<SnapshotFile>,
    /// The watches' channels and the watched pages.
    live: Publisher,
    /// The publish ticker, started with the first watch (never under `Reaper::Manual`).
    ticker: ReaperControl,
    ticker_started: AtomicBool,
    /// How background work runs (`Reaper::Auto` resolved at build).
    background: Reaper,
    publish_interval: Duration,
    /// What the ticker drives: a publish each interval.
    publishing: Arc<Publishing>,
}

/// The ticker's pass: one publish. Its own allocation, so that the ticker holds a `Weak`
/// of it and never keeps the tracker alive.
#[derive(Debug)]
struct Publishing {
    tracker: Weak<Tracker>,
}

impl Periodic for Publishing {
    fn step(&self) -> bool {
        if let Some(tracker) = self.tracker.upgrade() {
            tracker.publish();
        }
        false
    }

    fn pass_done(&self, _took: Duration) {}
}

impl Tracker {
    /// A tracker with settings `b`, its reaper started.
    pub(crate) fn new(b: Settings) -> Arc<Self> {
        let now = b.clock.now();
        let cfg = Config {
            idle_timeout: millis(b.idle_timeout).max(1),
            idle_after: millis(b.idle_after).max(1),
            heartbeat_limit: millis(b.heartbeat_limit).max(1),
            reap_interval: b.reap_interval,
            max_sessions: b.max_sessions,
            remember_users_for: millis(b.remember_users_for),
            hold_grace: millis(b.hold_grace),
        };
        let reap_interval = cfg.reap_interval;
        let background = resolve(b.reaper);
        let wall = WallClock::new(now, b.clock.wall_now());
        let life = Lifecycle::new(cfg, now, b.max_remembered_users, b.event_capacity);
        let live = Publisher::new(life.counts(&wall), b.max_watched_pages);
        let tracker = Arc::new_cyclic(|me| Tracker {
            wall,
            clock: b.clock,
            life,
            reaper: ReaperControl::default(),
            history: History::new(b.history_interval),
            snapshot: b
                .snapshot_file
                .map(|path| SnapshotFile::new(path, b.max_snapshot_size)),
            live,
            ticker: ReaperControl::default(),
            ticker_started: AtomicBool::new(false),
            background: background.clone(),
            publish_interval: b.publish_interval,
            publishing: Arc::new(Publishing {
                tracker: me.clone(),
            }),
        });
        let weak: Weak<dyn Periodic> = Arc::downgrade(&tracker) as Weak<Tracker>;
        tracker
            .reaper
            .start(background, "presence-reaper", weak, reap_interval);
        tracker
    }

    /// The settings in ticks.
    pub(crate) fn cfg(&self) -> &Config {
        self.life.cfg()
    }

    /// The clock the tracker reads.
    pub(crate) fn clock(&self) -> &TimeSource {
        &self.clock
    }

    /// Sessions stored (live, or due and not yet reaped).
    pub(crate) fn len(&self) -> usize {
        self.life.len()
    }

    /// Reads the clock and settles a bounded batch of what is due; returns now.
    pub(crate) fn settle(&self) -> Tick {
        let now = self.clock.now();
        if self.life.settle_at(now) {
            self.life.deliver();
        }
        now
    }

    /// Activity of session `id` (a touch or a visit): the write path's.
    #[inline]
    pub(crate) fn activity(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
    ) -> Result<Touch, PresenceError> {
        self.life.activity(id, kind, page, self.clock.now())
    }

    /// [`Presence::reap`](crate::Presence::reap): everything due now, then its events, then
    /// a publish to the watches.
    pub(crate) fn reap(&self) -> usize {
        let started = Instant::now();
        let evicted = self.life.reap_all(self.clock.now());
        self.life.deliver();
        self.after_pass(self.clock.now(), started.elapsed());
        // Under `Reaper::Manual` there is no ticker: a reap publishes.
        self.publish();
        evicted
    }

    /// After a reap pass: a history sample if one is due, the gauges, a word if it was slow,
    /// and the user table's memory back after a flood was forgotten (off the request path).
    fn after_pass(&self, now: Tick, took: Duration) {
        self.life.tidy();
        self.history.sample(now, &self.wall, || self.life.online());
        crate::observe::metrics::reap_pass(|| self.life.counts(&self.wall), took);
    }

    pub(crate) fn counts(&self) -> Counts {
        let now = self.settle();
        self.history.sample(now, &self.wall, || self.life.online());
        self.life.counts(&self.wall)
    }

    /// `online` over the history's samples, oldest first.
    pub(crate) fn history(&self) -> Vec<(std::time::SystemTime, usize)> {
        let now = self.settle();
        self.history.sample(now, &self.wall, || self.life.online());
        self.history.read(self.wall.at(now))
    }

    pub(crate) fn heartbeat(&self, id: SessionId) -> bool {
        self.life.heartbeat(id, self.clock.now())
    }

    pub(crate) fn leave(&self, id: SessionId) -> Option<SessionInfo> {
        let now = self.clock.now();
        let info = self.life.leave(id, now, |s, d| self.info(id, s, d, now));
        self.life.deliver();
        info
    }

    /// [`Presence::erase_user`](crate::Presence::erase_user): the sessions it ended.
    /// Known users (online or remembered) for which `matches` holds.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn find_users(&self, matches: impl FnMut(&str) -> bool) -> Vec<crate::UserId> {
        self.life.find_users(matches)
    }

    pub(crate) fn erase_user(&self, user: &str) -> Vec<SessionId> {
        let ended = self.life.erase_user(user, self.clock.now());
        self.life.deliver();
        ended
    }

    /// Live sessions on `page`.
    pub(crate) fn page_count(&self, page: &str) -> usize {
        self.settle();
        self.life.page_count(page)
    }

    /// The busiest pages.
    pub(crate) fn top_pages(&self, n: usize) -> Vec<(String, usize)> {
        self.settle();
        self.life.top_pages(n)
    }

    /// Listed users online, by name.
    pub(crate) fn online_members(&self, limit: usize) -> Vec<UserId> {
        self.settle();
        self.life.listed(limit)
    }

    /// Listed users on `page`, by name.
    pub(crate) fn page_members(&self, page: &str, limit: usize) -> Vec<UserId> {
        self.settle();
        self.life.page_members(page, limit)
    }

    /// A receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.life.subscribe()
    }

    /// The log of sessions changed on a write path, for the cluster view.
    pub(crate) fn changes(&self) -> &ChangeLog {
        self.life.changes()
    }

    /// Whether a snapshot file is set.
    pub(crate) fn has_snapshot_file(&self) -> bool {
        self.snapshot.is_some()
    }

    /// The tracker's "now" as wall-clock time.
    pub(crate) fn now_wall(&self) -> std::time::SystemTime {
        self.wall.at(self.clock.now())
    }

    /// Stops the background reaper and the publish ticker, and ends the HTTP streams.
    pub(crate) fn stop_reaper(&self) {
        self.reaper.stop();
        // Marked started, so that a later watch does not start it again.
        self.ticker_started.store(true, Ordering::Relaxed);
        self.ticker.stop();
        self.live.stop();
    }

    /// Session `id` held once more (activity, and its page if given): how it went, and the
    /// hold's generation.
    pub(crate) fn hold(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
    ) -> Result<(Touch, u64), PresenceError> {
        self.life.hold(id, kind, page, self.clock.now())
    }

    /// One hold of session `id` dropped: see [`Lifecycle::release`].
    pub(crate) fn release(&self, id: SessionId, generation: u64, grace: bool) {
        self.life.release(id, generation, self.clock.now(), grace);
    }

    /// Activity through a hold: see [`Lifecycle::hold_activity`].
    pub(crate) fn hold_activity(
        &self,
        id: SessionId,
        generation: u64,
        page: Option<&str>,
    ) -> Result<(), PresenceError> {
        self.life
            .hold_activity(id, generation, page, self.clock.now())
    }

    /// How long ago session `id` was last touched, visited or heartbeated (held or not);
    /// `None` if it is unknown or due.
    #[allow(dead_code)] // used by the optional HTTP layer
    pub(crate) fn quiet_for(&self, id: SessionId) -> Option<Duration> {
        let now = self.clock.now();
        let cfg = self.cfg();
        self.life
            .read(&id, |s, _| {
                (now < s.deadline(cfg, now))
                    .then(|| Duration::from_millis(now.saturating_sub(s.last_call(now))))
            })
            .flatten()
    }

    /// When session `id` was last touched, visited or heartbeated, held or not; `None` if
    /// it is unknown or due.
    pub(crate) fn last_call(&self, id: SessionId) -> Option<std::time::SystemTime> {
        let now = self.clock.now();
        let cfg = self.cfg();
        self.life
            .read(&id, |s, _| {
                (now < s.deadline(cfg, now)).then(|| self.wall.at(s.last_call(now)))
            })
            .flatten()
    }

    /// Whether session `id` is held by holds of generation `generation`.
    pub(crate) fn is_held_by(&self, id: SessionId, generation: u64) -> bool {
        self.life.is_held_by(id, generation)
    }

    /// Holds of session `id`.
    pub(crate) fn holds(&self, id: SessionId) -> usize {
        self.life.holds(id)
    }

    /// A receiver of the counts, from now on; starts the ticker.
    pub(crate) fn watch(&self) -> tokio::sync::watch::Receiver<Counts> {
        self.start_ticker();
        self.live.watch_counts(self.counts())
    }

    /// A receiver told of every publish that found a change; starts the ticker.
    pub(crate) fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.start_ticker();
        self.live.watch_changes()
    }

    /// Whether the tracker is shut down (the HTTP streams end).
    pub(crate) fn is_stopped(&self) -> bool {
        self.live.is_stopped()
    }

    /// One more watcher of `page`: its receiver and the state it starts from.
    #[allow(clippy::type_complexity)]
    pub(crate) fn watch_page(
        &self,
        page: &str,
    ) -> Result<(tokio::sync::watch::Receiver<Arc<PageView>>, Arc<PageView>), PresenceError> {
        crate::limits::check_lengths(&Kind::Guest, Some(page))?;
        self.settle();
        self.start_ticker();
        self.live
            .watch_page(page, || self.read_page(page))
            .map_err(|Full| PresenceError::TooManyWatchedPages {
                max: self.max_watched_pages(),
            })
    }

    /// `page`'s version, sessions and listed members now.
    fn read_page(&self, page: &str) -> PageRead {
        self.life
            .pages_changed_since(&[(page, u64::MAX)])
            .pop()
            .flatten()
            .unwrap_or((0, 0, Vec::new()))
    }

    /// A watcher of `page` is gone.
    pub(crate) fn unwatch_page(&self, page: &str) {
        self.live.unwatch_page(page);
    }

    /// The configured `max_watched_pages`.
    pub(crate) fn max_watched_pages(&self) -> usize {
        self.live.max_pages()
    }

    /// The configured `publish_interval`.
    pub(crate) fn publish_interval(&self) -> Duration {
        self.publish_interval
    }

    /// Sends the watches what changed (nothing at all when nobody watches): the ticker's
    /// pass, and part of a manual [`reap`](Self::reap).
    pub(crate) fn publish(&self) {
        if !self.live.wanted() {
            return;
        }
        let counts = self.counts();
        let version = self.life.pages_version();
        self.live.publish(counts, version, |asked| {
            self.life.pages_changed_since(asked)
        });
    }

    /// Starts the publish ticker once (not under `Reaper::Manual`, where `reap` publishes).
    fn start_ticker(&self) {
        if self.ticker_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak: Weak<dyn Periodic> = Arc::downgrade(&self.publishing) as Weak<Publishing>;
        self.ticker.start(
            self.background.clone(),
            "presence-ticker",
            weak,
            self.publish_interval,
        );
    }

    pub(crate) fn session(&self, id: SessionId) -> Option<SessionInfo> {
        let now = self.clock.now();
        let cfg = self.cfg();
        self.life
            .read(&id, |s, d| {
                (now < s.deadline(cfg, now)).then(|| self.info(id, s, d.get(), now))
            })
            .flatten()
    }

    pub(crate) fn session_lease(&self, id: SessionId) -> Option<(SessionInfo, Duration)> {
        let now = self.clock.now();
        let cfg = self.cfg();
        self.life
            .read(&id, |s, d| {
                let deadline = s.lease_deadline(cfg, now);
                (now < deadline).then(|| {
                    let left = Duration::from_millis(deadline - now);
                    (self.info(id, s, d.get(), now), left)
                })
            })
            .flatten()
    }

    pub(crate) fn user(&self, user: &str) -> UserStatus {
        let now = self.settle();
        let cfg = self.cfg();
        self.life.forget_due(now, READ_BATCH);
        match self.life.user_snapshot(user) {
            UserSnapshot::Unknown => UserStatus::Unknown,
            // The forget queue is only roughly ordered; the read is exact.
            UserSnapshot::Offline { since, .. }
                if since.saturating_add(cfg.remember_users_for) <= now =>
            {
                UserStatus::Unknown
            }
            UserSnapshot::Offline { last_seen, .. } => UserStatus::Offline {
                last_seen: self.wall.at(last_seen),
            },
            UserSnapshot::Online { sessions, hidden } => {
                let mut last_seen = 0;
                let mut idle = true;
                for id in &sessions {
                    let times =
                        |s: &Session, _: Cold<'_, Details>| (s.last_seen(now), s.idle_at(cfg, now));
                    if let Some((seen, idle_at)) = self.life.read(id, times) {
                        last_seen = last_seen.max(seen);
                        idle &= idle_at <= now;
                    }
                }
                UserStatus::Online {
                    sessions: sessions.len(),
                    last_seen: self.wall.at(last_seen),
                    idle,
                    hidden,
                }
            }
        }
    }

    pub(crate) fn sessions(&self) -> Vec<SessionInfo> {
        let now = self.settle();
        let cfg = self.cfg();
        let mut list = Vec::new();
        self.life.for_each(|id, s, d| {
            if now < s.deadline(cfg, now) {
                list.push(self.info(id, s, d, now));
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
        let cfg = self.cfg();
        let mut list = Vec::with_capacity(limit.min(1024));
        let next = self.life.for_each_from(from.0, limit, |id, s, d| {
            if now < s.deadline(cfg, now) {
                list.push(self.info(id, s, d, now));
            }
        });
        (list, next.map(SessionCursor))
    }

    pub(crate) fn info(&self, id: SessionId, s: &Session, d: &Details, now: Tick) -> SessionInfo {
        let cfg = self.cfg();
        SessionInfo {
            id,
            kind: s.kind(d),
            page: d.page.as_ref().map(|p| p.as_str().to_owned()),
            first_seen: self.wall.at(d.first_seen),
            last_seen: self.wall.at(s.last_seen(now)),
            last_active: self.wall.at(s.last_active(now)),
            state: if s.idle_at(cfg, now) <= now {
                SessionState::Idle
            } else {
                SessionState::Active
            },
        }
    }
}

impl Periodic for Tracker {
    fn step(&self) -> bool {
        let more = self.life.reap_step(self.clock.now());
        self.life.deliver();
        more
    }

    fn pass_done(&self, took: Duration) {
        self.after_pass(self.clock.now(), took);
    }
}
