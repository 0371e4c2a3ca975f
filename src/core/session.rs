//! One session's stored form: its hot part ([`Session`]: times, kind tag, idle flag, hold
//! state, expiry bookkeeping) and cold part ([`Details`]: user, page, first seen), the
//! [`Config`] limits in ticks, and the deadline arithmetic every path shares.
//!
//! Plain data: nothing here takes a lock or knows about the map, the counters or events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Tick;
use crate::events::LeaveReason;
pub(crate) use crate::kind::KindTag;
use crate::kind::SharedStr;
use crate::{Kind, UserId};

/// The settings in ticks, as sessions need them.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) idle_timeout: Tick,
    pub(crate) idle_after: Tick,
    pub(crate) heartbeat_limit: Tick,
    pub(crate) reap_interval: Duration,
    pub(crate) max_sessions: Option<usize>,
    pub(crate) remember_users_for: Tick,
    /// How long a session whose last hold was dropped stays.
    pub(crate) hold_grace: Tick,
}

/// Whether a connection holds the session (see `Presence::hold`). The number of holds and
/// which session they belong to are in the hold table; the session keeps only what its
/// deadline needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HoldState {
    /// An ordinary session, under `idle_timeout` and `heartbeat_limit`.
    Free,
    /// Held by at least one live hold: it never expires, and its last-seen reads as now.
    Held,
    /// Its last hold was dropped at its stored last-seen: it leaves `hold_grace` after
    /// (`LeaveReason::Closed`) unless held, touched or heartbeated again (then `Free`).
    Released,
}

/// A held session that went idle is still looked at once in this while, so that its stored
/// times stay within the 32-bit range they are widened from (see [`Session`]).
pub(crate) const HELD_RECHECK: Tick = 24 * 3600 * 1000;
/// How far back a held session's stored times are kept at most: past every timeout
/// (`MAX_TIMEOUT`, 7 days), so that moving them up to this changes no comparison.
const HELD_FLOOR: Tick = 8 * 24 * 3600 * 1000;

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
/// refreshed. A held session may keep old times for any length of time: the reaper looks at
/// it at least every [`HELD_RECHECK`] and moves them up to [`HELD_FLOOR`] before now, which
/// changes no comparison with a timeout.
#[derive(Debug)]
pub(crate) struct Session {
    /// Last seen in the low half, last active in the high half; see [`Times`].
    times: AtomicU64,
    pub(crate) tag: KindTag,
    /// Counted as idle (set by the reaper, cleared by activity).
    pub(crate) idle: bool,
    /// Held by a connection, or released and in its grace. Changed under the write lock.
    pub(crate) hold: HoldState,
    /// The low 32 bits of the time of this session's one current expiry item.
    pub(crate) next_check: u32,
}

/// One session's cold part, in 24 bytes: read when a session starts, ends, changes or is
/// listed, and by a touch only to compare a member's user.
#[derive(Debug, Default)]
pub(crate) struct Details {
    /// The session's user: `Some` exactly when its tag is `Member` or `Hidden`.
    pub(crate) user: Option<UserId>,
    pub(crate) page: Option<SharedStr>,
    pub(crate) first_seen: Tick,
}

/// The full tick of `t`, the low 32 bits of a tick within +-24 days of `now`.
#[inline]
pub(crate) fn widen(now: Tick, t: u32) -> Tick {
    // Truncation intended: both sides are the low 32 bits.
    let back = i64::from((now as u32).wrapping_sub(t) as i32);
    u64::try_from(i64::try_from(now).unwrap_or(i64::MAX) - back).unwrap_or(0)
}

/// The low 32 bits of a tick.
#[inline]
pub(crate) fn narrow(t: Tick) -> u32 {
    t as u32
}

impl Session {
    pub(crate) fn new(kind: Kind, page: Option<SharedStr>, now: Tick) -> (Self, Details) {
        let (tag, user) = KindTag::split(kind);
        let session = Session {
            times: AtomicU64::new(Times::both(narrow(now)).0),
            next_check: 0,
            tag,
            idle: false,
            hold: HoldState::Free,
        };
        let details = Details {
            user,
            page,
            first_seen: now,
        };
        (session, details)
    }

    /// Sets last seen and last active, as a restored session had them.
    pub(crate) fn set_times(&mut self, seen: Tick, active: Tick) {
        *self.times.get_mut() = Times::new(narrow(seen), narrow(active)).0;
    }

    pub(crate) fn kind(&self, details: &Details) -> Kind {
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
    pub(crate) fn is<'d>(&self, details: impl FnOnce() -> &'d Details, kind: &Kind) -> bool {
        self.tag == KindTag::of(kind)
            && kind
                .user()
                .is_none_or(|user| details().user.as_ref() == Some(user))
    }

    /// Last seen: now while held (a held session is seen all the time), else its last
    /// touch, visit or heartbeat (or, released, when its last hold was dropped).
    #[inline]
    pub(crate) fn last_seen(&self, now: Tick) -> Tick {
        if self.hold == HoldState::Held {
            return now;
        }
        self.last_call(now)
    }

    /// The time stored as last seen: the last touch, visit or heartbeat (or a hold's
    /// release), even while held.
    #[inline]
    pub(crate) fn last_call(&self, now: Tick) -> Tick {
        widen(now, Times(self.times.load(Ordering::Relaxed)).seen())
    }

    #[inline]
    pub(crate) fn last_active(&self, now: Tick) -> Tick {
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

    /// When it is due: never while held; `hold_grace` after its release while released;
    /// else when either limit is reached.
    #[inline]
    pub(crate) fn deadline(&self, cfg: &Config, now: Tick) -> Tick {
        match self.hold {
            HoldState::Free => {
                let (seen, active) = self.limits(cfg, now);
                seen.min(active)
            }
            HoldState::Held => Tick::MAX,
            HoldState::Released => self.last_call(now) + cfg.hold_grace,
        }
    }

    /// The deadline as the cluster view sends it: a held session as if touched now.
    pub(crate) fn lease_deadline(&self, cfg: &Config, now: Tick) -> Tick {
        match self.hold {
            HoldState::Held => now + cfg.idle_timeout,
            _ => self.deadline(cfg, now),
        }
    }

    pub(crate) fn leave_reason(&self, cfg: &Config, now: Tick) -> LeaveReason {
        if self.hold == HoldState::Released {
            return LeaveReason::Closed;
        }
        let (seen, active) = self.limits(cfg, now);
        if active < seen {
            LeaveReason::HeartbeatLimit
        } else {
            LeaveReason::Expired
        }
    }

    pub(crate) fn idle_at(&self, cfg: &Config, now: Tick) -> Tick {
        self.last_active(now) + cfg.idle_after
    }

    /// When its state may next change: it expires, or (while counted active) goes idle. A
    /// held session never expires: it is looked at again within [`HELD_RECHECK`].
    pub(crate) fn next_change(&self, cfg: &Config, now: Tick) -> Tick {
        let deadline = match self.hold {
            HoldState::Held => now + HELD_RECHECK,
            _ => self.deadline(cfg, now),
        };
        if self.idle {
            deadline
        } else {
            deadline.min(self.idle_at(cfg, now))
        }
    }

    /// Stores `now` as last seen, whatever was stored (a hold's release: its grace starts
    /// now). Under the write lock.
    pub(crate) fn set_seen(&mut self, now: Tick) {
        let times = Times(*self.times.get_mut());
        *self.times.get_mut() = Times::new(narrow(now), times.active()).0;
    }

    /// Moves a held session's stored times up to [`HELD_FLOOR`] before now, so that they
    /// stay within the range they are widened from however long it is held. Every timeout
    /// is shorter than that, so no comparison changes. Under the write lock.
    pub(crate) fn keep_times_in_range(&mut self, now: Tick) {
        let floor = now.saturating_sub(HELD_FLOOR);
        let (seen, active) = (self.last_call(now), self.last_active(now));
        if seen < floor || active < floor {
            *self.times.get_mut() =
                Times::new(narrow(seen.max(floor)), narrow(active.max(floor))).0;
        }
    }

    /// Moves `last_seen` (and with `active`, `last_active`) forward to `now`. Concurrent
    /// callers read the clock at slightly different times; only a later time is stored.
    /// The load first: repeated touches within one clock tick write nothing at all.
    #[inline]
    pub(crate) fn refresh(&self, now: Tick, active: bool) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_stays_small() {
        // Memory per session is a tracked figure: 16 + 24 bytes here, 56 with its id in the
        // map, whose hot part (id and `Session`) must fit its 32 bytes.
        assert_eq!(crate::core::map::hot_slot_bytes::<Session>(), 32);
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
