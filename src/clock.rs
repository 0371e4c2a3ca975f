//! Time: the [`Clock`] trait, the default coarse [`SystemClock`] and the [`ManualClock`] tests
//! drive by hand.
//!
//! The tracker reads its clock once per call and keeps times as integer milliseconds since
//! the clock's origin (`Tick`), so entries stay small and comparisons are integer compares.
//! Wall-clock values ([`SystemTime`]) are derived from a monotonic tick plus a base taken
//! when the tracker is built, so a wall-clock jump never expires anyone.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// Milliseconds since the clock's origin.
pub(crate) type Tick = u64;

/// A monotonic time source.
///
/// Implement it to drive a tracker from your own notion of time; most code uses the default
/// [`SystemClock`], and tests use [`ManualClock`]. The tracker works in whole milliseconds.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Time elapsed since an arbitrary fixed origin; must never go backwards.
    fn now(&self) -> Duration;
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
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock standing at zero.
    pub fn new() -> Self {
        Self::default()
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
            .finish()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        ManualClock::now(self)
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
        match self {
            TimeSource::System(c) => c.now_ms(),
            TimeSource::Custom(c) => millis(c.now()),
        }
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
    pub(crate) fn new(now: Tick) -> Self {
        WallClock {
            base_tick: now,
            base_wall: SystemTime::now(),
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
        assert_eq!(TimeSource::Custom(Arc::new(clock)).now(), 1500);
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
        let wall = WallClock::new(1_000);
        assert_eq!(
            wall.at(3_500).duration_since(wall.at(1_000)).unwrap(),
            Duration::from_millis(2_500)
        );
        assert!(wall.at(0) < wall.at(1_000));
    }
}
