//! Time: the [`Clock`] trait, the default coarse [`SystemClock`] and the [`ManualClock`] tests
//! drive by hand.
//!
//! The tracker reads its clock once per call and keeps times as integer milliseconds since
//! the clock's origin (`Tick`), so entries stay small and comparisons are integer compares.
//! Wall-clock values ([`SystemTime`]) are derived from a monotonic tick plus a base taken
//! when the tracker is built, so a wall-clock jump never expires anyone.
//!
//! Ticks start at [`EPOCH`], not at zero: a tracker restored from a snapshot holds times
//! from before it was built (a session last seen 20 s before a restart, a peak reached last
//! month), and those must be ticks too.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Milliseconds since the clock's origin, plus [`EPOCH`].
pub(crate) type Tick = u64;

/// The tick of a clock's origin: 2^40 ms, about 34.8 years. Times restored from a snapshot
/// up to that long before the tracker was built keep their place; older ones (a peak from
/// decades ago) are moved up to the first tick. Far inside `u64`, and the 32-bit times a
/// session keeps are compared modulo 2^32, so nothing else notices the offset.
pub(crate) const EPOCH: Tick = 1 << 40;

/// A monotonic time source.
///
/// Implement it to drive a tracker from your own notion of time; most code uses the default
/// [`SystemClock`], and tests use [`ManualClock`]. The tracker works in whole milliseconds.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time elapsed since an arbitrary fixed origin; must never go backwards.
    fn now(&self) -> Duration;

    /// The wall-clock time now, if this clock decides it. The default, `None`, takes the
    /// operating system's [`SystemTime::now`] once, when a tracker is built; a clock that
    /// returns `Some` makes a tracker's wall-clock times (last-seen, the peak, restoring a
    /// snapshot) follow it instead.
    fn wall_time(&self) -> Option<SystemTime> {
        None
    }
}

/// The default clock: the operating system's coarse monotonic clock.
///
/// On Linux this is `CLOCK_MONOTONIC_COARSE`: a few nanoseconds per read (no hardware
/// counter access) at a resolution of a few milliseconds, which is plenty for timeouts
/// measured in seconds and keeps the clock read off the `touch` hot path's budget.
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    origin: coarsetime::Instant,
}

impl SystemClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        SystemClock {
            origin: coarsetime::Instant::now_without_cache_update(),
        }
    }

    #[inline]
    fn now_ms(&self) -> Tick {
        // `now_without_cache_update`: `now()` would also store into a process-wide cache,
        // a write to one shared cache line from every thread on every call.
        let now = coarsetime::Instant::now_without_cache_update();
        now.duration_since(self.origin).as_millis()
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms())
    }
}

/// A clock that moves only when told to; clones share one time.
///
/// Keep one clone in the test and give another to the tracker:
///
/// ```
/// use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId};
/// use std::time::Duration;
///
/// fn main() -> Result<(), presence_tracker::PresenceError> {
///     let clock = ManualClock::new();
///     let presence = Presence::builder()
///         .clock(clock.clone())
///         .reaper(Reaper::Manual)
///         .idle_timeout(Duration::from_secs(60))
///         .build();
///     let id = SessionId::new_v4();
///     presence.touch(id, Kind::Guest)?;
///     clock.advance(Duration::from_secs(59));
///     assert_eq!(presence.counts().guests, 1);
///     clock.advance(Duration::from_secs(1));
///     assert_eq!(presence.counts().guests, 0); // due at exactly 60 s
///     Ok(())
/// }
/// ```
///
/// A clock can also stand for a chosen wall-clock time, so that a test can play a restart:
/// the second tracker's clock starts ten minutes after the first one's.
///
/// ```
/// use presence_tracker::ManualClock;
/// use std::time::{Duration, SystemTime};
///
/// let deploy = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
/// let before = ManualClock::starting_at(deploy);
/// before.advance(Duration::from_secs(30));
/// let after = ManualClock::starting_at(deploy + Duration::from_secs(600));
/// assert_eq!(before.wall_time(), Some(deploy + Duration::from_secs(30)));
/// assert_eq!(after.wall_time(), Some(deploy + Duration::from_secs(600)));
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    /// The wall-clock time at the origin, if chosen.
    wall: Option<SystemTime>,
}

impl ManualClock {
    /// A clock standing at zero. Its wall-clock time is the system's when a tracker is built
    /// with it.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock standing at zero that stands for wall-clock time `wall`: a tracker built on
    /// it reports times from there ([`SessionInfo::last_seen`](crate::SessionInfo), the
    /// peak, [`Presence::history`](crate::Presence::history)) and restores a snapshot against
    /// it. Clones share the time, as with [`new`](Self::new).
    pub fn starting_at(wall: SystemTime) -> Self {
        ManualClock {
            nanos: Arc::default(),
            wall: Some(wall),
        }
    }

    /// The wall-clock time the clock stands for now, if it was started at one
    /// ([`starting_at`](Self::starting_at)).
    pub fn wall_time(&self) -> Option<SystemTime> {
        self.wall.map(|wall| wall + self.now())
    }

    /// Moves time forward by `by`, for every clone.
    ///
    /// # Panics
    /// If the clock would pass `u64::MAX` nanoseconds (about 584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).expect("ManualClock::advance: duration too large");
        let before = self.nanos.fetch_add(by, Ordering::SeqCst);
        assert!(before.checked_add(by).is_some(), "ManualClock overflowed");
    }

    /// The time elapsed since the clock's origin (its creation).
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .field("wall", &self.wall_time())
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        ManualClock::now(self)
    }

    fn wall_time(&self) -> Option<SystemTime> {
        ManualClock::wall_time(self)
    }
}

/// The tracker's clock: the system clock without dynamic dispatch, or any other.
#[derive(Clone, Debug)]
pub(crate) enum TimeSource {
    System(SystemClock),
    Custom(Arc<dyn Clock>),
}

impl TimeSource {
    #[inline]
    pub(crate) fn now(&self) -> Tick {
        let ms = match self {
            TimeSource::System(c) => c.now_ms(),
            TimeSource::Custom(c) => millis(c.now()),
        };
        ms.saturating_add(EPOCH)
    }

    /// The wall-clock time now: the clock's if it has one, else the system's.
    pub(crate) fn wall_now(&self) -> SystemTime {
        match self {
            TimeSource::System(_) => None,
            TimeSource::Custom(c) => c.wall_time(),
        }
        .unwrap_or_else(SystemTime::now)
    }
}

pub(crate) fn millis(d: Duration) -> Tick {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Maps monotonic ticks to wall-clock time, from one reading of both at build time.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WallClock {
    base_tick: Tick,
    base_wall: SystemTime,
}

impl WallClock {
    /// Tick `now` is wall-clock time `wall`.
    pub(crate) fn new(now: Tick, wall: SystemTime) -> Self {
        WallClock {
            base_tick: now,
            base_wall: wall,
        }
    }

    /// The tick of wall-clock time `t`; a time before the first tick is moved up to it.
    pub(crate) fn tick_of(&self, t: SystemTime) -> Tick {
        match t.duration_since(self.base_wall) {
            Ok(after) => self.base_tick.saturating_add(millis(after)),
            Err(before) => self.base_tick.saturating_sub(millis(before.duration())),
        }
    }

    pub(crate) fn at(&self, tick: Tick) -> SystemTime {
        if tick >= self.base_tick {
            self.base_wall + Duration::from_millis(tick - self.base_tick)
        } else {
            self.base_wall - Duration::from_millis(self.base_tick - tick)
        }
    }
}

/// Serializes a time as integer milliseconds since the Unix epoch.
#[cfg(feature = "serde")]
pub(crate) fn unix_millis<S: serde::Serializer>(
    t: &std::time::SystemTime,
    s: S,
) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    s.serialize_u64(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_clones_share_time_across_threads() {
        let clock = ManualClock::new();
        let other = clock.clone();
        std::thread::spawn(move || other.advance(Duration::from_millis(1500)))
            .join()
            .unwrap();
        assert_eq!(clock.now(), Duration::from_millis(1500));
        assert_eq!(TimeSource::Custom(Arc::new(clock)).now(), EPOCH + 1500);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = TimeSource::System(SystemClock::new());
        let a = clock.now();
        std::thread::sleep(Duration::from_millis(30));
        let b = clock.now();
        assert!(b >= a + 10, "{a} -> {b}");
    }

    #[test]
    fn wall_clock_follows_ticks() {
        let wall = WallClock::new(1_000, SystemTime::now());
        assert_eq!(
            wall.at(3_500).duration_since(wall.at(1_000)).unwrap(),
            Duration::from_millis(2_500)
        );
        assert!(wall.at(0) < wall.at(1_000));
        assert_eq!(wall.tick_of(wall.at(3_500)), 3_500);
        assert_eq!(wall.tick_of(wall.at(200)), 200);
        assert_eq!(
            wall.tick_of(SystemTime::UNIX_EPOCH),
            0,
            "before the first tick"
        );
    }

    #[test]
    fn a_manual_clock_started_at_a_wall_time_drives_the_tracker_wall_clock() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::starting_at(start);
        clock.advance(Duration::from_secs(5));
        let source = TimeSource::Custom(Arc::new(clock.clone()));
        assert_eq!(source.wall_now(), start + Duration::from_secs(5));
        let wall = WallClock::new(source.now(), source.wall_now());
        clock.advance(Duration::from_secs(60));
        assert_eq!(wall.at(source.now()), start + Duration::from_secs(65));
        assert!(ManualClock::new().wall_time().is_none());
    }
}
