//! The counters [`Presence::counts`](crate::Presence::counts) reads, and the peak.
//!
//! Plain atomics: each is changed by the caller under the lock of the thing it counts (a
//! session's shard lock), so they are O(1) to read and never need a scan. This module takes
//! no other lock than the peak's own.

use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

use crate::clock::{Tick, WallClock};
use crate::counts::{Counts, Peak};

/// The counters `counts()` reads. Each is changed under the lock of the thing it counts.
#[derive(Debug)]
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
    pub(crate) occupied: AtomicUsize,
    /// The peak: (online, when).
    peak: Mutex<(usize, Tick)>,
    /// `peak.0`, readable without the lock: most changes need not take it.
    peak_online: AtomicUsize,
}

/// A change to the distinct-user counters, from the user table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct UserDelta {
    pub(crate) members: isize,
    pub(crate) hidden: isize,
}

impl Counters {
    pub(crate) fn new(now: Tick) -> Self {
        Counters {
            guests: AtomicUsize::new(0),
            bots: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            members: AtomicUsize::new(0),
            hidden: AtomicUsize::new(0),
            people: AtomicUsize::new(0),
            occupied: AtomicUsize::new(0),
            peak: Mutex::new((0, now)),
            peak_online: AtomicUsize::new(0),
        }
    }

    /// Applies a change in distinct users: increments before decrements, so a concurrent
    /// reader may see one person twice for an instant, never a counter below zero. Returns
    /// the change in people.
    pub(crate) fn apply_users(&self, d: UserDelta) -> isize {
        for (counter, delta) in [(&self.members, d.members), (&self.hidden, d.hidden)] {
            if delta > 0 {
                counter.fetch_add(delta.unsigned_abs(), Ordering::Relaxed);
            }
        }
        for (counter, delta) in [(&self.members, d.members), (&self.hidden, d.hidden)] {
            if delta < 0 {
                counter.fetch_sub(delta.unsigned_abs(), Ordering::Relaxed);
            }
        }
        d.members + d.hidden
    }

    /// Applies an operation's net change in people online and records a new peak.
    pub(crate) fn add_people(&self, delta: isize, now: Tick) {
        let people = &self.people;
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

    /// The peak as stored: (online, tick).
    pub(crate) fn peak(&self) -> (usize, Tick) {
        *self.peak.lock()
    }

    /// People online now, in one load (for the history and the gauges).
    pub(crate) fn online(&self) -> usize {
        self.people.load(Ordering::Relaxed)
    }

    /// Takes a peak restored from a snapshot if it is higher than the current one, or as
    /// high and reached earlier (the restored sessions themselves count as reaching it now).
    pub(crate) fn restore_peak(&self, online: usize, at: Tick) {
        let mut peak = self.peak.lock();
        if online > peak.0 || (online == peak.0 && at < peak.1) {
            *peak = (online, at);
            self.peak_online.store(online, Ordering::Relaxed);
        }
    }

    /// Reads every counter once; see [`Counts`] for what a concurrent reader can see.
    pub(crate) fn read(&self, wall: &WallClock) -> Counts {
        let members = self.members.load(Ordering::Relaxed);
        let hidden = self.hidden.load(Ordering::Relaxed);
        let guests = self.guests.load(Ordering::Relaxed);
        let active = self.active.load(Ordering::Relaxed);
        let idle = self.idle.load(Ordering::Relaxed);
        let (peak, at) = self.peak();
        Counts {
            online: members + hidden + guests,
            members,
            hidden,
            guests,
            bots: self.bots.load(Ordering::Relaxed),
            sessions: active + idle,
            active,
            idle,
            peak: Peak {
                online: peak,
                at: wall.at(at),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_change_between_listed_and_hidden_never_dips_below_zero() {
        let c = Counters::new(0);
        c.apply_users(UserDelta {
            members: 1,
            hidden: 0,
        });
        let people = c.apply_users(UserDelta {
            members: -1,
            hidden: 1,
        });
        assert_eq!(people, 0);
        assert_eq!(c.members.load(Ordering::Relaxed), 0);
        assert_eq!(c.hidden.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_peak_keeps_the_first_time_it_was_reached() {
        let c = Counters::new(0);
        c.add_people(2, 10);
        c.add_people(-1, 20);
        c.add_people(1, 30);
        assert_eq!(c.peak(), (2, 10));
        c.add_people(1, 40);
        assert_eq!(c.peak(), (3, 40));
    }
}
