//! [`Presence`]: the public operations, each a few lines over the tracker's parts.

use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{broadcast, watch};

use crate::builder::PresenceBuilder;
use crate::core::changes::ChangeLog;
use crate::core::tracker::Tracker;
use crate::counts::Counts;
use crate::error::PresenceError;
use crate::events::Event;
use crate::info::{SessionCursor, SessionInfo, Touch, UserStatus};
use crate::live::{Hold, PageWatch};
use crate::{Kind, SessionId, UserId};

/// The "who is online" tracker. Cheap to clone (an `Arc`); all methods take `&self` and may
/// be called from any thread.
///
/// ```
/// use presence_tracker::{Kind, Presence, SessionId, Touch};
///
/// fn main() -> Result<(), presence_tracker::PresenceError> {
///     let presence = Presence::new();
///     let (alice_tab1, alice_tab2, guest) = (SessionId::new_v4(), SessionId::new_v4(), SessionId::new_v4());
///     assert_eq!(presence.touch(alice_tab1, Kind::member("alice"))?, Touch::Joined);
///     presence.visit(alice_tab2, Kind::member("alice"), "/forum/42")?;
///     presence.visit(guest, Kind::Guest, "/forum/42")?;
///
///     let c = presence.counts();
///     assert_eq!((c.online, c.members, c.guests, c.sessions), (2, 1, 1, 3));
///     assert_eq!(presence.page_count("/forum/42"), 2);
///     Ok(())
/// }
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

    /// Records activity of session `id` (a request, a click): starts the session or refreshes
    /// it, and moves it to `kind` if that changed (signing in or out moves the counts in one
    /// step). The session's page, if any, is kept.
    ///
    /// The hot path, a live session of unchanged kind, takes a shard read lock and stores
    /// the time; it allocates nothing.
    ///
    /// # Errors
    /// - [`PresenceError::Full`] when `id` is new and `max_sessions` sessions are live;
    /// - [`PresenceError::UserTooLong`] when `kind`'s user name is longer than
    ///   [`MAX_USER_LEN`](crate::MAX_USER_LEN) bytes (nothing is recorded).
    ///
    /// # Locks
    /// Takes internal locks only for the duration of the call; safe to call from any
    /// context, including while iterating [`sessions`](Self::sessions)' result.
    #[inline]
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
    /// - [`PresenceError::Full`] when `id` is new and `max_sessions` sessions are live;
    /// - [`PresenceError::UserTooLong`] when `kind`'s user name is longer than
    ///   [`MAX_USER_LEN`](crate::MAX_USER_LEN) bytes;
    /// - [`PresenceError::PageTooLong`] when `page` is longer than
    ///   [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes.
    ///
    /// A refused call records nothing: the session keeps its kind, page and times.
    pub fn visit(&self, id: SessionId, kind: Kind, page: &str) -> Result<Touch, PresenceError> {
        self.tracker.activity(id, kind, Some(page))
    }

    /// Keeps a live session online without counting as activity (a page's periodic ping):
    /// returns `true` if the session is live, `false` if it is unknown or already due, in
    /// which case it is *not* revived: the page should re-join with activity.
    ///
    /// Heartbeats alone keep a session at most `heartbeat_limit` after its last activity.
    pub fn heartbeat(&self, id: SessionId) -> bool {
        self.tracker.heartbeat(id)
    }

    /// Ends session `id` now ("go offline": logout, tab closed, an admin's kill). Returns the
    /// session as it was, or `None` if it was unknown or already due.
    ///
    /// A held session ends too, whatever its holds: they keep nothing online any more.
    pub fn leave(&self, id: SessionId) -> Option<SessionInfo> {
        self.tracker.leave(id)
    }

    /// Erases user `user` (an account deletion, an erasure request): ends each of their
    /// live sessions as [`leave`](Self::leave) does ([`Event::Left`] with
    /// [`LeaveReason::Left`](crate::LeaveReason::Left), then [`Event::UserOffline`]), and
    /// forgets their last-seen record at once instead of keeping it for
    /// `remember_users_for`. [`user`](Self::user) then answers
    /// [`UserStatus::Unknown`], and nothing of the name is left in the tracker: the next
    /// snapshot does not hold it. Returns how many live sessions it ended (0 for a user it
    /// does not know, or one only remembered as offline); a session already due and not
    /// yet reaped ends too, with its `Expired` or `HeartbeatLimit` event, uncounted as
    /// [`leave`](Self::leave) would.
    ///
    /// What it does not do:
    /// - **Keep them out.** A request the application still classifies as the user starts
    ///   a new session (and a new record). Sign the user out, or delete the account, first;
    ///   a session started while this call runs is not ended.
    /// - **Rewrite the file on disk.** The snapshot file written before still holds the
    ///   name until the next save: call [`save_snapshot`](Self::save_snapshot) after
    ///   erasing to rewrite it now (it waits for a save already under way, which may have
    ///   read the name before the erasure, then writes one without it).
    /// - **Look into pages.** A page is a path the layer recorded (`/users/alice`), not a
    ///   name; it goes when no session is on it any more.
    ///
    /// With a cluster view attached (feature `redis`), each session ended here leaves every
    /// node's view at the next flush, as an explicit leave does; the cluster's own
    /// `erase_user` also removes the user's records from Redis and from the other nodes.
    ///
    /// Costs in proportion to the user's sessions; takes each session's shard lock in turn,
    /// never all at once, so it may run beside requests and the reaper.
    ///
    /// # Errors
    /// [`PresenceError::UserTooLong`] when `user` is longer than
    /// [`MAX_USER_LEN`](crate::MAX_USER_LEN) bytes: no such name can be stored, so the
    /// caller is likely passing the wrong thing.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId, UserStatus};
    ///
    /// let presence = Presence::new();
    /// let (tab1, tab2) = (SessionId::new_v4(), SessionId::new_v4());
    /// presence.visit(tab1, Kind::member("alice"), "/forum/42")?;
    /// presence.touch(tab2, Kind::hidden_member("alice"))?;
    ///
    /// assert_eq!(presence.erase_user("alice")?, 2);
    /// assert_eq!(presence.user("alice"), UserStatus::Unknown);
    /// assert_eq!(presence.counts().online, 0);
    /// assert!(presence.page_members("/forum/42", 10).is_empty());
    /// assert_eq!(presence.erase_user("alice")?, 0, "nothing left to erase");
    /// assert!(presence.erase_user(&"x".repeat(10_000)).is_err());
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn erase_user(&self, user: &str) -> Result<usize, PresenceError> {
        crate::limits::check_user(user)?;
        Ok(self.tracker.erase_user(user).len())
    }

    /// Holds session `id` online on `page` while the returned [`Hold`] lives: for a
    /// WebSocket or a server-sent event stream, the session is online while its connection
    /// is open, with no heartbeats. Records activity on `page` (a visit: the session starts
    /// if new, and takes `kind`).
    ///
    /// A held session never expires by `idle_timeout` or `heartbeat_limit` (those promises
    /// are for sessions not held); the last hold dropped starts
    /// [`hold_grace`](PresenceBuilder::hold_grace). Several holds of one session keep it
    /// until the last is dropped. A touch, visit or heartbeat of a held session works as
    /// usual. See [`Hold`].
    ///
    /// # Errors
    /// As [`visit`](Self::visit): [`PresenceError::Full`] (a hold is a session, and counts
    /// against `max_sessions`), [`PresenceError::UserTooLong`],
    /// [`PresenceError::PageTooLong`]; a refused call records nothing.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let id = SessionId::new_v4();
    /// let socket = presence.hold(id, Kind::member("alice"), "/chat/rust")?;
    /// assert_eq!(presence.page_members("/chat/rust", 10), ["alice"]);
    /// drop(socket); // the session leaves after `hold_grace` unless held or touched again
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn hold(&self, id: SessionId, kind: Kind, page: &str) -> Result<Hold, PresenceError> {
        self.hold_on(id, kind, Some(page))
    }

    /// [`hold`](Self::hold), with or without a page (the HTTP layer, when it does not track
    /// pages).
    pub(crate) fn hold_on(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
    ) -> Result<Hold, PresenceError> {
        let (_, generation) = self.tracker.hold(id, kind, page)?;
        Ok(Hold::new(Arc::downgrade(&self.tracker), id, generation))
    }

    /// The counts, pushed: a tokio `watch` receiver holding the latest [`Counts`] (those of
    /// now to start with), sent at most every
    /// [`publish_interval`](PresenceBuilder::publish_interval) and only when they changed.
    /// A slow receiver skips to the latest value; nothing queues.
    ///
    /// The first watch starts the publish ticker (under [`Reaper::Manual`](crate::Reaper::Manual),
    /// [`reap`](Self::reap) publishes instead). With no receiver left, a publish costs one
    /// check. A touch never waits on it or builds anything for it.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, Reaper, SessionId};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let presence = Presence::builder().reaper(Reaper::Manual).build();
    /// let mut counts = presence.watch();
    /// presence.touch(SessionId::new_v4(), Kind::Guest)?;
    /// presence.touch(SessionId::new_v4(), Kind::Guest)?;
    /// presence.reap(); // publishes (a ticker does this without `Reaper::Manual`)
    /// counts.changed().await.unwrap();
    /// assert_eq!(counts.borrow_and_update().guests, 2); // both joins, in one message
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// # }).unwrap();
    /// ```
    pub fn watch(&self) -> watch::Receiver<Counts> {
        self.tracker.watch()
    }

    /// One page, pushed: its count and the listed members who join or leave it
    /// ([`PageWatch::changed`] gives a [`PageDiff`](crate::PageDiff)), coalesced as
    /// [`watch`](Self::watch).
    ///
    /// # Errors
    /// - [`PresenceError::PageTooLong`] when `page` is longer than
    ///   [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes;
    /// - [`PresenceError::TooManyWatchedPages`] when
    ///   [`max_watched_pages`](PresenceBuilder::max_watched_pages) other pages are watched
    ///   (a page already watched is always accepted: its watchers share it).
    ///
    /// ```
    /// use presence_tracker::{Presence, PresenceError};
    ///
    /// let presence = Presence::builder().max_watched_pages(1).build();
    /// let room = presence.watch_page("/chat/rust")?;
    /// let same = presence.watch_page("/chat/rust")?; // shares the page
    /// assert!(matches!(presence.watch_page("/chat/go"), Err(PresenceError::TooManyWatchedPages { max: 1 })));
    /// drop((room, same)); // frees it
    /// assert!(presence.watch_page("/chat/go").is_ok());
    /// # Ok::<(), PresenceError>(())
    /// ```
    pub fn watch_page(&self, page: &str) -> Result<PageWatch, PresenceError> {
        let (receiver, seen) = self.tracker.watch_page(page)?;
        Ok(PageWatch::new(
            Arc::downgrade(&self.tracker),
            page,
            receiver,
            seen,
        ))
    }

    /// A receiver told of each publish that found a change (counts or any page), for the
    /// HTTP streams: each then reads its own view.
    #[allow(dead_code)] // used by the optional HTTP layer
    pub(crate) fn watch_changes(&self) -> watch::Receiver<u64> {
        self.tracker.watch_changes()
    }

    /// Whether [`shutdown`](Self::shutdown) was called: the HTTP streams end then (the
    /// change signal of [`watch_changes`](Self::watch_changes) wakes them to look).
    #[allow(dead_code)] // used by the optional HTTP layer
    pub(crate) fn is_stopped(&self) -> bool {
        self.tracker.is_stopped()
    }

    /// When session `id` was last touched, visited or heartbeated, holds aside (a held
    /// session reads as seen now); `None` if it is unknown or due.
    #[allow(dead_code)] // used by the optional HTTP layer
    pub(crate) fn last_call(&self, id: SessionId) -> Option<SystemTime> {
        self.tracker.last_call(id)
    }

    /// Holds of session `id` now (0 when it is not held).
    #[allow(dead_code)] // used by the optional HTTP layer and tests
    pub(crate) fn holds(&self, id: SessionId) -> usize {
        self.tracker.holds(id)
    }

    /// Who is online now. O(1): reads counters, never scans.
    ///
    /// Exact at the time of the call: sessions already due are settled first (a cost in
    /// proportion to what fell due, usually nothing), whatever the reaper's interval.
    pub fn counts(&self) -> Counts {
        self.tracker.counts()
    }

    /// Live sessions whose last [`visit`](Self::visit) was `page`.
    pub fn page_count(&self, page: &str) -> usize {
        self.tracker.page_count(page)
    }

    /// The `n` pages with the most live sessions, busiest first (ties by name).
    pub fn top_pages(&self, n: usize) -> Vec<(String, usize)> {
        self.tracker.top_pages(n)
    }

    /// Listed users online, each once however many tabs, sorted by name case-insensitively
    /// (ties by the exact name), at most `limit`: "Registered users: alice, bob, carol".
    /// Hidden users are never listed (a user is listed unless all their live sessions are
    /// hidden). Costs what it returns: the order is kept as users come and go, never by a
    /// scan of the sessions.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// for kind in [Kind::member("bob"), Kind::member("alice"), Kind::member("alice"),
    ///              Kind::hidden_member("carol"), Kind::Guest] {
    ///     presence.touch(SessionId::new_v4(), kind).unwrap();
    /// }
    /// assert_eq!(presence.online_members(10), ["alice", "bob"]);
    /// assert_eq!(presence.online_members(1), ["alice"]);
    /// ```
    pub fn online_members(&self, limit: usize) -> Vec<UserId> {
        self.tracker.online_members(limit)
    }

    /// Listed users with a listed live session on `page`, by name as
    /// [`online_members`](Self::online_members), at most `limit`: "Users browsing this topic:
    /// alice and 3 guests", where the 3 is [`page_count`](Self::page_count) minus the names
    /// shown. Costs what it returns.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// presence.visit(SessionId::new_v4(), Kind::member("alice"), "/t/1").unwrap();
    /// presence.visit(SessionId::new_v4(), Kind::Guest, "/t/1").unwrap();
    /// presence.visit(SessionId::new_v4(), Kind::member("bob"), "/t/2").unwrap();
    /// let names = presence.page_members("/t/1", 20);
    /// assert_eq!(names, ["alice"]);
    /// assert_eq!(presence.page_count("/t/1") - names.len(), 1); // "and 1 guest"
    /// ```
    pub fn page_members(&self, page: &str, limit: usize) -> Vec<UserId> {
        self.tracker.page_members(page, limit)
    }

    /// One live session, or `None` if unknown or due.
    pub fn session(&self, id: SessionId) -> Option<SessionInfo> {
        self.tracker.session(id)
    }

    /// A live session with the time left until its deadline (`None` if unknown or due): what
    /// the cluster view sends for a session, as an age rather than a timestamp.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn session_lease(&self, id: SessionId) -> Option<(SessionInfo, Duration)> {
        self.tracker.session_lease(id)
    }

    /// The tracker behind the handle, for the internals the fuzz targets drive.
    #[cfg(any(feature = "__bench_internals", presence_loom))]
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// Known users (online or remembered) for which `matches` holds (the cluster's erasure).
    #[cfg(feature = "redis")]
    pub(crate) fn find_users(&self, matches: impl FnMut(&str) -> bool) -> Vec<crate::UserId> {
        self.tracker.find_users(matches)
    }

    /// Whether a snapshot file is set: shutdown saves the sessions for the next start.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn has_snapshot_file(&self) -> bool {
        self.tracker.has_snapshot_file()
    }

    /// The log of sessions changed on a write path, for the cluster view.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn changes(&self) -> &ChangeLog {
        self.tracker.changes()
    }

    /// The tracker's own "now" as wall-clock time, on the scale of [`SessionInfo`]'s times:
    /// the cluster view sends ages (now minus `last_seen`), never timestamps.
    #[allow(dead_code)] // used by the optional cluster view
    pub(crate) fn now_wall(&self) -> std::time::SystemTime {
        self.tracker.now_wall()
    }

    /// Where user `user` stands: online (with how many sessions, whether idle or hidden),
    /// offline with a last-seen time, or unknown.
    pub fn user(&self, user: &str) -> UserStatus {
        self.tracker.user(user)
    }

    /// Every live session: the admin list. O(sessions); for counts use
    /// [`counts`](Self::counts). "Kill" a session with [`leave`](Self::leave).
    ///
    /// # Locks
    /// Holds each shard's read lock while copying it; the result is a snapshot.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.tracker.sessions()
    }

    /// One page of the admin list: up to `limit` live sessions from `from`
    /// ([`SessionCursor::START`] for the first page), and the cursor of the next page (`None`
    /// after the last). Costs the page, not all sessions: the cursor is a position in the
    /// storage order. Sessions that start or end while someone pages may or may not be
    /// shown; the order is not meaningful (sort a page yourself if you like).
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionCursor, SessionId};
    ///
    /// let presence = Presence::new();
    /// for _ in 0..250 {
    ///     presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    /// }
    /// let (mut shown, mut cursor) = (0, Some(SessionCursor::START));
    /// while let Some(from) = cursor {
    ///     let (page, next) = presence.sessions_page(from, 100);
    ///     assert!(page.len() <= 100);
    ///     shown += page.len();
    ///     cursor = next;
    /// }
    /// assert_eq!(shown, 250);
    /// ```
    pub fn sessions_page(
        &self,
        from: SessionCursor,
        limit: usize,
    ) -> (Vec<SessionInfo>, Option<SessionCursor>) {
        self.tracker.sessions_page(from, limit)
    }

    /// Evicts every session that is due now and returns how many; sends their `Left` (and
    /// `UserOffline`) events, then publishes to the watches what changed. The background
    /// reaper calls this every `reap_interval`; with
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
        self.tracker.subscribe()
    }

    /// Stops the background reaper and the watches' ticker (for every clone of this
    /// handle), ends the HTTP layer's streams (so a graceful shutdown completes) and, with a
    /// [`snapshot_file`](PresenceBuilder::snapshot_file), saves the snapshot (a failure is
    /// logged through `tracing`; call [`save_snapshot`](Self::save_snapshot) to handle it).
    /// The tracker keeps working: reads still settle what is due, and [`reap`](Self::reap)
    /// still works. Dropping the last handle does this too.
    ///
    /// The save is blocking file I/O in the calling thread (see
    /// [`save_snapshot`](Self::save_snapshot) for its cost). In a server, save when the
    /// stop signal arrives and then drain connections with a time cap, never only after a
    /// graceful shutdown that waits for every connection: see
    /// [`snapshot_file`](PresenceBuilder::snapshot_file), "Saving in a server".
    pub fn shutdown(&self) {
        self.tracker.stop_reaper();
        self.tracker.save_on_exit();
    }

    /// Writes the snapshot file now (see
    /// [`PresenceBuilder::snapshot_file`](PresenceBuilder::snapshot_file)): atomically, so
    /// a crash leaves the previous snapshot or this one, whole. Touches go on meanwhile; each
    /// live session is saved exactly once.
    ///
    /// Costs in proportion to the sessions: about a third of a second of CPU for a million,
    /// in about 28 bytes each on disk (the benchmarks document has the figures).
    ///
    /// # Errors
    /// - [`io::ErrorKind::InvalidInput`] when no snapshot file is set;
    /// - [`io::ErrorKind::ResourceBusy`] when another process (or another tracker in this
    ///   one) uses the same file: the first save takes an advisory lock on `<path>.lock`,
    ///   held while the tracker lives;
    /// - an error when the file found at build was unusable and could not be moved aside,
    ///   or is not a regular file (a FIFO, a device): it is never overwritten until someone
    ///   removes it;
    /// - the I/O error when the file cannot be written.
    pub fn save_snapshot(&self) -> io::Result<()> {
        self.tracker.save_snapshot()
    }

    /// `online` over the last 1440 [`history_interval`](PresenceBuilder::history_interval)s,
    /// oldest first: one sample an interval, at most 1440 of them, in fixed memory, for a
    /// chart. With the default interval of a minute that is "users online today", the last
    /// 24 hours; with 10 s, the last 4 hours. Each sample's time is the start of its
    /// interval. An interval in which nothing ran (no reaper, no read) has no sample.
    ///
    /// Samples are taken by the reaper and by reads, never by a scan; restored from the
    /// snapshot across a restart.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// presence.touch(SessionId::new_v4(), Kind::Guest)?;
    /// let history = presence.history();
    /// assert_eq!(history.last().map(|&(_, online)| online), Some(1));
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn history(&self) -> Vec<(SystemTime, usize)> {
        self.tracker.history()
    }

    /// The configured `idle_timeout`.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg().idle_timeout)
    }

    /// The configured `idle_after`.
    pub fn idle_after(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg().idle_after)
    }

    /// The configured `heartbeat_limit`.
    pub fn heartbeat_limit(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg().heartbeat_limit)
    }

    /// The configured `reap_interval`.
    pub fn reap_interval(&self) -> Duration {
        self.tracker.cfg().reap_interval
    }

    /// The configured `max_sessions`, if any.
    pub fn max_sessions(&self) -> Option<usize> {
        self.tracker.cfg().max_sessions
    }

    /// The configured [`hold_grace`](PresenceBuilder::hold_grace).
    ///
    /// ```
    /// assert_eq!(presence_tracker::Presence::new().hold_grace(), std::time::Duration::from_secs(5));
    /// ```
    pub fn hold_grace(&self) -> Duration {
        Duration::from_millis(self.tracker.cfg().hold_grace)
    }

    /// The configured [`publish_interval`](PresenceBuilder::publish_interval).
    ///
    /// ```
    /// assert_eq!(presence_tracker::Presence::new().publish_interval(), std::time::Duration::from_millis(500));
    /// ```
    pub fn publish_interval(&self) -> Duration {
        self.tracker.publish_interval()
    }

    /// The configured [`max_watched_pages`](PresenceBuilder::max_watched_pages).
    ///
    /// ```
    /// assert_eq!(presence_tracker::Presence::new().max_watched_pages(), 10_000);
    /// ```
    pub fn max_watched_pages(&self) -> usize {
        self.tracker.max_watched_pages()
    }
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tracker = &*self.tracker;
        f.debug_struct("Presence")
            .field("entries", &tracker.len())
            .field("config", tracker.cfg())
            .field("clock", tracker.clock())
            .finish_non_exhaustive()
    }
}

impl PresenceBuilder {
    /// Builds the tracker, restores its [`snapshot_file`](Self::snapshot_file) if one is
    /// set, and starts its reaper.
    pub fn build(self) -> Presence {
        let tracker = Tracker::new(self.settings());
        tracker.restore_snapshot();
        Presence { tracker }
    }
}
