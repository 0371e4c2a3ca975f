//! The history of `online`: one sample per interval (a minute by default) over the last
//! [`SAMPLES`] intervals (24 hours), in fixed memory, for charts ("users online today").
//!
//! Samples are taken by the reaper after each pass and by reads (`counts`, `history`): the
//! check is one atomic load against the tick of the next sample, and a sample reads one
//! counter, never the sessions. Sample times are wall-clock times rounded down to the
//! interval, so samples from before a restart (restored from a snapshot) and after it line
//! up. An interval in which nothing ran (no reaper, no read) has no sample: a chart shows a
//! gap rather than a made-up value.
//!
//! This module takes only its own lock, and nothing is called under it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use crate::clock::{Tick, WallClock};

/// Samples kept: 24 hours of minutes.
pub(crate) const SAMPLES: usize = 1440;

/// The history ring: (wall-clock ms since the Unix epoch at the start of the interval,
/// online), oldest first.
#[derive(Debug)]
pub(crate) struct History {
    interval: u64,
    ring: Mutex<VecDeque<(i64, u64)>>,
    /// The tick from which the next sample is due.
    next: AtomicU64,
}

impl History {
    /// An empty history sampled every `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        History {
            interval: u64::try_from(interval.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            ring: Mutex::new(VecDeque::with_capacity(SAMPLES)),
            next: AtomicU64::new(0),
        }
    }

    /// Takes a sample of `online()` if one is due at `now`. One atomic load when not.
    #[inline]
    pub(crate) fn sample(&self, now: Tick, wall: &WallClock, online: impl FnOnce() -> usize) {
        if now < self.next.load(Ordering::Relaxed) {
            return;
        }
        self.sample_slow(now, wall, online);
    }

    #[cold]
    fn sample_slow(&self, now: Tick, wall: &WallClock, online: impl FnOnce() -> usize) {
        let mut ring = self.ring.lock();
        let at = unix_ms(wall.at(now));
        let interval = i64::try_from(self.interval).unwrap_or(i64::MAX);
        let slot = at.div_euclid(interval) * interval;
        if ring.back().is_none_or(|&(last, _)| last < slot) {
            if ring.len() == SAMPLES {
                ring.pop_front();
            }
            ring.push_back((slot, online() as u64));
        }
        let wait = u64::try_from(slot + interval - at).unwrap_or(self.interval);
        self.next.store(now.saturating_add(wait), Ordering::Relaxed);
    }

    /// The samples of the last [`SAMPLES`] intervals before `now`, oldest first.
    pub(crate) fn read(&self, now: SystemTime) -> Vec<(SystemTime, usize)> {
        let window = self.interval.saturating_mul(SAMPLES as u64);
        let from = unix_ms(now).saturating_sub(i64::try_from(window).unwrap_or(i64::MAX));
        let ring = self.ring.lock();
        ring.iter()
            .filter(|&&(at, _)| at > from)
            .map(|&(at, online)| {
                (
                    from_unix_ms(at),
                    usize::try_from(online).unwrap_or(usize::MAX),
                )
            })
            .collect()
    }

    /// Every sample as stored (for the snapshot).
    pub(crate) fn export(&self) -> Vec<(i64, u64)> {
        self.ring.lock().iter().copied().collect()
    }

    /// Puts samples restored from a snapshot before the ones taken since: sorted, one per
    /// interval, at most [`SAMPLES`] (the newest kept).
    pub(crate) fn restore(&self, mut samples: Vec<(i64, u64)>) {
        let mut ring = self.ring.lock();
        samples.extend(ring.drain(..));
        samples.sort_by_key(|&(at, _)| at);
        // One per interval: on a tie the later one (taken since the restart) wins.
        samples.reverse();
        samples.dedup_by_key(|&mut (at, _)| at);
        samples.reverse();
        let skip = samples.len().saturating_sub(SAMPLES);
        ring.extend(samples.into_iter().skip(skip));
    }
}

/// Milliseconds since the Unix epoch (negative before it).
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The time `ms` milliseconds after the Unix epoch.
pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_sample_per_interval_in_a_ring_of_a_day() {
        let start = UNIX_EPOCH + Duration::from_secs(1_700_000_020);
        let wall = WallClock::new(0, start);
        let history = History::new(Duration::from_secs(60));
        let mut online = 0;
        for second in 0..(2 * 24 * 3600) {
            let now = second * 1000;
            history.sample(now, &wall, || {
                online += 1;
                online
            });
        }
        let samples = history.read(wall.at(2 * 24 * 3600 * 1000));
        assert_eq!(samples.len(), SAMPLES);
        assert_eq!(history.export().len(), SAMPLES, "fixed memory");
        assert!(
            samples
                .windows(2)
                .all(|w| w[1].0.duration_since(w[0].0).unwrap() == Duration::from_secs(60))
        );
        // Every minute sampled once: 2 days of minutes (plus the partial first minute).
        assert_eq!(online, 2 * SAMPLES + 1);
        assert_eq!(unix_ms(samples[0].0) % 60_000, 0, "aligned to the minute");
    }

    #[test]
    fn restored_samples_go_before_new_ones_once_each() {
        let history = History::new(Duration::from_secs(60));
        let wall = WallClock::new(0, from_unix_ms(600_000));
        history.sample(0, &wall, || 7);
        history.restore(vec![(480_000, 1), (540_000, 2), (600_000, 3)]);
        assert_eq!(
            history.export(),
            vec![(480_000, 1), (540_000, 2), (600_000, 7)]
        );
    }
}
