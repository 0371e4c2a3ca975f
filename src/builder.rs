//! [`PresenceBuilder`](crate::PresenceBuilder): the settings of a tracker, validated where they are set.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock, TimeSource};
use crate::core::reaper::Reaper;
use crate::core::tracker::Settings;

/// Longest accepted `idle_timeout`, `idle_after` and `heartbeat_limit`: 7 days. Presence is
/// about who is here now; longer values are almost certainly a unit mistake.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Longest accepted `remember_users_for`: 366 days.
pub const MAX_REMEMBER: Duration = Duration::from_secs(366 * 24 * 3600);
/// Default of [`PresenceBuilder::max_remembered_users`](crate::PresenceBuilder::max_remembered_users).
const DEFAULT_MAX_REMEMBERED_USERS: usize = 200_000;
/// Default of [`PresenceBuilder::max_snapshot_size`](crate::PresenceBuilder::max_snapshot_size): 4 GiB.
const DEFAULT_MAX_SNAPSHOT_SIZE: u64 = 4 << 30;
/// Longest accepted `reap_interval`: 1 hour.
pub const MAX_REAP_INTERVAL: Duration = Duration::from_secs(3600);
/// Default of [`PresenceBuilder::max_watched_pages`](crate::PresenceBuilder::max_watched_pages).
const DEFAULT_MAX_WATCHED_PAGES: usize = 10_000;

/// Settings for a [`Presence`](crate::Presence) tracker; start from [`Presence::builder`](crate::Presence::builder).
///
/// Every setting has a default suited to a web site; setters refuse nonsensical values (zero
/// or absurdly long durations) by panicking with a message naming the setting, so mistakes
/// show up at start-up rather than as sessions that never expire.
///
/// ```
/// use presence_tracker::{Presence, Reaper};
/// use std::time::Duration;
///
/// let presence = Presence::builder()
///     .idle_timeout(Duration::from_secs(120))
///     .max_sessions(100_000)
///     .reaper(Reaper::Manual)
///     .build();
/// assert_eq!(presence.idle_timeout(), Duration::from_secs(120));
/// ```
#[must_use = "a builder does nothing until build() is called"]
pub struct PresenceBuilder {
    /// Everything the builder sets, handed to the tracker as it is at `build()`.
    pub(crate) settings: Settings,
}

impl Default for PresenceBuilder {
    fn default() -> Self {
        PresenceBuilder {
            settings: Settings {
                idle_timeout: Duration::from_secs(300),
                idle_after: Duration::from_secs(300),
                heartbeat_limit: Duration::from_secs(20 * 60),
                reap_interval: Duration::from_secs(1),
                max_sessions: None,
                remember_users_for: Duration::from_secs(24 * 3600),
                max_remembered_users: DEFAULT_MAX_REMEMBERED_USERS,
                event_capacity: 1024,
                clock: TimeSource::System(SystemClock::new()),
                reaper: Reaper::Auto,
                snapshot_file: None,
                max_snapshot_size: DEFAULT_MAX_SNAPSHOT_SIZE,
                history_interval: Duration::from_secs(60),
                hold_grace: Duration::from_secs(5),
                publish_interval: Duration::from_millis(500),
                max_watched_pages: DEFAULT_MAX_WATCHED_PAGES,
            },
        }
    }
}

impl PresenceBuilder {
    /// The settings, for the tracker to start from.
    pub(crate) fn settings(self) -> Settings {
        self.settings
    }
}

fn check(setting: &str, value: Duration, min: Duration, max: Duration) {
    assert!(
        value >= min && value <= max,
        "presence-tracker: {setting} must be between {min:?} and {max:?}, got {value:?}"
    );
}

impl PresenceBuilder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long a session stays online with no touch, visit or heartbeat. Default 300 s,
    /// the classic "users active over the past five minutes".
    ///
    /// # Panics
    /// Below 1 ms or above [`MAX_TIMEOUT`].
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        check(
            "idle_timeout",
            timeout,
            Duration::from_millis(1),
            MAX_TIMEOUT,
        );
        self.settings.idle_timeout = timeout;
        self
    }

    /// How long without *activity* (touch or visit; heartbeats do not count) before a live
    /// session is reported idle ("away"). Default 300 s.
    ///
    /// # Panics
    /// Below 1 ms or above [`MAX_TIMEOUT`].
    pub fn idle_after(mut self, after: Duration) -> Self {
        check("idle_after", after, Duration::from_millis(1), MAX_TIMEOUT);
        self.settings.idle_after = after;
        self
    }

    /// The longest heartbeats alone keep a session: with no activity for this long it is
    /// evicted ([`LeaveReason::HeartbeatLimit`](crate::LeaveReason::HeartbeatLimit)) whatever
    /// its heartbeats, so a forgotten tab does not stay online forever. Default 20 min.
    ///
    /// # Panics
    /// Below 1 ms or above [`MAX_TIMEOUT`].
    pub fn heartbeat_limit(mut self, limit: Duration) -> Self {
        check(
            "heartbeat_limit",
            limit,
            Duration::from_millis(1),
            MAX_TIMEOUT,
        );
        self.settings.heartbeat_limit = limit;
        self
    }

    /// How often the background reaper evicts what fell due. Default 1 s: a session that went
    /// quiet leaves (its `Left` event fires) within `idle_timeout + reap_interval`. Reads
    /// are exact at any interval.
    ///
    /// # Panics
    /// Below 1 ms or above [`MAX_REAP_INTERVAL`].
    pub fn reap_interval(mut self, interval: Duration) -> Self {
        check(
            "reap_interval",
            interval,
            Duration::from_millis(1),
            MAX_REAP_INTERVAL,
        );
        self.settings.reap_interval = interval;
        self
    }

    /// The most live sessions at once. Past it, new sessions get
    /// [`PresenceError::Full`](crate::PresenceError::Full) while existing ones keep working;
    /// nothing is ever dropped silently. Default: unbounded.
    ///
    /// At the limit, a newcomer first evicts one small batch of sessions already due (so it
    /// never waits on a large reap); when none of that batch was due, or a reap is running
    /// at that moment, it is refused although due sessions remain, and the reaper frees them
    /// within one `reap_interval`.
    ///
    /// # Panics
    /// If `max` is 0.
    pub fn max_sessions(mut self, max: usize) -> Self {
        assert!(max > 0, "presence-tracker: max_sessions must be at least 1");
        self.settings.max_sessions = Some(max);
        self
    }

    /// How long an offline member's last-seen time is kept for
    /// [`Presence::user`](crate::Presence::user) (then it reports `Unknown`). Default 24 h.
    ///
    /// # Panics
    /// Above [`MAX_REMEMBER`]. Zero is allowed: forget users as soon as they go offline.
    pub fn remember_users_for(mut self, remember: Duration) -> Self {
        check("remember_users_for", remember, Duration::ZERO, MAX_REMEMBER);
        self.settings.remember_users_for = remember;
        self
    }

    /// How many offline users' last-seen times are kept at most; past it the users offline
    /// the longest are forgotten first. Default 200 000: about 100 MB in the worst case of
    /// names of [`MAX_USER_LEN`](crate::MAX_USER_LEN) bytes, about 46 MB for short names
    /// (230 bytes a remembered user, counted by allocation). Online users are never
    /// forgotten.
    ///
    /// # Panics
    /// If `max` is 0.
    pub fn max_remembered_users(mut self, max: usize) -> Self {
        assert!(
            max > 0,
            "presence-tracker: max_remembered_users must be at least 1"
        );
        self.settings.max_remembered_users = max;
        self
    }

    /// Capacity of the event channel: how far a subscriber may fall behind before it misses
    /// events. Default 1024.
    ///
    /// # Panics
    /// If `capacity` is 0 or above `usize::MAX / 2`.
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        assert!(
            capacity > 0 && capacity <= usize::MAX / 2,
            "presence-tracker: event_capacity must be between 1 and usize::MAX / 2, got {capacity}"
        );
        self.settings.event_capacity = capacity;
        self
    }

    /// The time source. Default: [`SystemClock`], the coarse monotonic clock. Tests pass a
    /// [`ManualClock`](crate::ManualClock) and keep a clone to advance.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = TimeSource::Custom(Arc::new(clock));
        self
    }

    /// Who evicts quiet sessions. Default [`Reaper::Auto`].
    pub fn reaper(mut self, reaper: Reaper) -> Self {
        self.settings.reaper = reaper;
        self
    }

    /// Keeps who is online across restarts in the file at `path`. Default: none.
    ///
    /// [`build`](Self::build) restores what the file holds: the sessions still live by the
    /// wall clock (with their kind, page and times, and without a `Joined` event: a deploy
    /// that takes 20 s keeps everyone online and subscribers see no storm), the last-seen
    /// time of offline users, the peak and the [`history`](crate::Presence::history).
    /// [`Presence::save_snapshot`](crate::Presence::save_snapshot),
    /// [`Presence::shutdown`](crate::Presence::shutdown) and the drop of the last handle
    /// write it.
    ///
    /// A missing file is an empty start. A file that cannot be read as a snapshot (cut
    /// short, corrupt, from another format version, a directory, not readable) is moved aside
    /// to `<path>.corrupt-<unix seconds>` with a warning through `tracing`, and the tracker
    /// starts empty; if it cannot be moved aside either, the tracker starts empty and refuses
    /// to overwrite it (saves fail with an error) until someone removes it. Never a panic,
    /// never a deleted file. A path that is not a regular file (a FIFO, a device) is never
    /// read, moved nor replaced: the tracker starts empty and saves fail saying so. Files
    /// larger than [`max_snapshot_size`](Self::max_snapshot_size) are not read.
    ///
    /// The file is created `0600` (it holds session ids, names and pages). The first save
    /// takes an advisory lock on `<path>.lock` (created beside it, never removed) and holds
    /// it while the tracker lives: a second process, or a second tracker, saving to the
    /// same path gets [`std::io::ErrorKind::ResourceBusy`].
    ///
    /// # Saving in a server
    /// Save when the stop signal arrives, *then* drain the connections with a time cap. Do
    /// not save only after `axum::serve(..).with_graceful_shutdown(..)` returns: it waits
    /// for every connection, so one client that never finishes its request keeps the save
    /// from running until the service manager's SIGKILL loses every session. Shut the
    /// tracker down before the drain too: the HTTP layer's presence streams are requests
    /// that end only then.
    ///
    /// ```no_run
    /// # #[cfg(feature = "axum")]
    /// # async fn serve(presence: presence_tracker::Presence, app: axum::Router) -> std::io::Result<()> {
    /// use std::time::Duration;
    ///
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    /// let (stop, stopped) = tokio::sync::watch::channel(false);
    /// let server = tokio::spawn(
    ///     axum::serve(listener, app)
    ///         .with_graceful_shutdown(async move {
    ///             let mut stopped = stopped;
    ///             let _ = stopped.wait_for(|s| *s).await;
    ///         })
    ///         .into_future(),
    /// );
    /// tokio::signal::ctrl_c().await?; // or SIGTERM
    /// presence.save_snapshot()?; // at once: nothing can hold it up
    /// presence.shutdown(); // ends the presence streams, which the drain would wait on
    /// let _ = stop.send(true);
    /// let _ = tokio::time::timeout(Duration::from_secs(10), server).await; // drain, capped
    /// presence.save_snapshot()?; // what changed during the drain
    /// # Ok(()) }
    /// ```
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, Reaper, SessionId};
    ///
    /// let path = std::env::temp_dir().join(format!("presence-doc-{}.snapshot", std::process::id()));
    /// # let _ = std::fs::remove_file(&path);
    /// let presence = Presence::builder().snapshot_file(&path).reaper(Reaper::Manual).build();
    /// presence.visit(SessionId::new_v4(), Kind::member("alice"), "/forum")?;
    /// presence.save_snapshot()?;
    ///
    /// let restarted = Presence::builder().snapshot_file(&path).reaper(Reaper::Manual).build();
    /// assert_eq!(restarted.counts().members, 1);
    /// assert_eq!(restarted.page_count("/forum"), 1);
    /// # drop((presence, restarted)); // the last handle saves once more when dropped
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn snapshot_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.settings.snapshot_file = Some(path.into());
        self
    }

    /// The largest snapshot file [`build`](Self::build) reads, in bytes. Default 4 GiB
    /// (about 140 million sessions at their usual size on disk).
    ///
    /// The size is taken from the file's metadata before a byte is read; a larger file is
    /// moved aside as an unusable snapshot, with a warning naming this setting, and the
    /// tracker starts empty. What the reader allocates is bounded by the file's size.
    ///
    /// # Panics
    /// Below 1024 bytes (smaller than an empty tracker's snapshot could need).
    pub fn max_snapshot_size(mut self, bytes: u64) -> Self {
        assert!(
            bytes >= 1024,
            "presence-tracker: max_snapshot_size must be at least 1024 bytes, got {bytes}"
        );
        self.settings.max_snapshot_size = bytes;
        self
    }

    /// How often [`Presence::history`](crate::Presence::history) samples `online`. Default
    /// 1 minute, which with its 1440 samples covers 24 hours; a shorter interval covers
    /// 1440 of them (a demo or a browser test that wants a chart with several points within
    /// seconds).
    ///
    /// # Panics
    /// Below 1 ms or above [`MAX_REAP_INTERVAL`].
    pub fn history_interval(mut self, interval: Duration) -> Self {
        check(
            "history_interval",
            interval,
            Duration::from_millis(1),
            MAX_REAP_INTERVAL,
        );
        self.settings.history_interval = interval;
        self
    }
}

impl PresenceBuilder {
    /// How long a session stays after its last [`Hold`](crate::Hold) is dropped: a
    /// reconnect (a new hold), touch, visit or heartbeat within it continues the session,
    /// with no `Left` and no `Joined`; otherwise it leaves then with
    /// [`LeaveReason::Closed`](crate::LeaveReason::Closed). Default 5 s: a page reload or a
    /// dropped mobile connection comes back within that, and a closed tab shows as gone
    /// soon after.
    ///
    /// Zero ends a session as soon as its last hold is dropped (at the next reap or read).
    ///
    /// # Panics
    /// Above [`MAX_TIMEOUT`].
    pub fn hold_grace(mut self, grace: Duration) -> Self {
        check("hold_grace", grace, Duration::ZERO, MAX_TIMEOUT);
        self.settings.hold_grace = grace;
        self
    }

    /// How often the watches ([`Presence::watch`](crate::Presence::watch),
    /// [`Presence::watch_page`](crate::Presence::watch_page), the HTTP streams) are sent
    /// what changed: at most once per interval, and only when something did. Default
    /// 500 ms: a join shows in every open page within half a second, and a burst of
    /// thousands of changes costs each watcher one message.
    ///
    /// The ticker starts with the first watch, and runs as the [`reaper`](Self::reaper)
    /// does (a tokio task or a thread); under [`Reaper::Manual`] there is none and
    /// [`Presence::reap`](crate::Presence::reap) publishes.
    ///
    /// # Panics
    /// Below 10 ms or above [`MAX_REAP_INTERVAL`].
    pub fn publish_interval(mut self, interval: Duration) -> Self {
        check(
            "publish_interval",
            interval,
            Duration::from_millis(10),
            MAX_REAP_INTERVAL,
        );
        self.settings.publish_interval = interval;
        self
    }

    /// The most pages watched at once through
    /// [`Presence::watch_page`](crate::Presence::watch_page) (watchers of one page share
    /// it); past it, watching another page is refused with
    /// [`PresenceError::TooManyWatchedPages`](crate::PresenceError::TooManyWatchedPages).
    /// Default 10 000. Each watched page costs a channel, and each publish that follows a
    /// page change looks its version up.
    ///
    /// # Panics
    /// If `max` is 0.
    pub fn max_watched_pages(mut self, max: usize) -> Self {
        assert!(
            max > 0,
            "presence-tracker: max_watched_pages must be at least 1"
        );
        self.settings.max_watched_pages = max;
        self
    }
}

impl fmt::Debug for PresenceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PresenceBuilder")
            .field(&self.settings)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[should_panic(expected = "idle_timeout must be between")]
    fn zero_idle_timeout_is_refused() {
        let _ = PresenceBuilder::new().idle_timeout(Duration::ZERO);
    }

    #[test]
    #[should_panic(expected = "heartbeat_limit must be between")]
    fn absurd_heartbeat_limit_is_refused() {
        let _ = PresenceBuilder::new().heartbeat_limit(Duration::from_secs(365 * 24 * 3600));
    }

    #[test]
    #[should_panic(expected = "max_sessions must be at least 1")]
    fn zero_capacity_is_refused() {
        let _ = PresenceBuilder::new().max_sessions(0);
    }
}
