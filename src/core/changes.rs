//! Which sessions changed since a consumer last looked: the cluster view's flush reads this to
//! send what changed, never scanning all sessions.
//!
//! Recording is off until a consumer enables it, and only the write paths record (a session
//! starts or ends, changes kind or page); a plain touch or heartbeat never does, so the hot
//! path pays nothing. The set holds each id once, so it is bounded by the sessions that changed
//! since the last [`drain`](ChangeLog::drain), whatever the number of requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use crate::{SessionId, UserId};

type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    enabled: AtomicBool,
    ids: Mutex<HashSet<SessionId, Hasher>>,
    /// Of those, the sessions that ended by an explicit leave (not by expiry), with their
    /// user: the cluster view routes a leave to where the session's user is kept.
    left: Mutex<HashMap<SessionId, Option<UserId>, Hasher>>,
}

#[allow(dead_code)] // the consumer is the optional cluster view
impl ChangeLog {
    /// Starts recording. Sessions that existed before are not in the log: the consumer reads
    /// them once itself (e.g. from `Presence::sessions`).
    pub(crate) fn enable(&self) {
        self.enabled.store(true, Ordering::Release);
    }

    /// Stops recording and forgets what was recorded.
    pub(crate) fn disable(&self) {
        self.enabled.store(false, Ordering::Release);
        // Freed outside the locks, as in `drain`.
        let ids = std::mem::take(&mut *self.ids.lock());
        let left = std::mem::take(&mut *self.left.lock());
        drop((ids, left));
    }

    /// Notes that session `id` changed. Called under the session's shard write lock.
    #[inline]
    pub(crate) fn record(&self, id: SessionId) {
        if self.enabled.load(Ordering::Relaxed) {
            self.ids.lock().insert(id);
        }
    }

    /// Notes that session `id` ended by an explicit leave (`Presence::leave`, or an erasure,
    /// `Presence::erase_user`, which leaves each of the user's sessions): for the cluster
    /// view, such a session ends on every node, not only this one.
    #[inline]
    pub(crate) fn record_left(&self, id: SessionId, user: Option<&UserId>) {
        if self.enabled.load(Ordering::Relaxed) {
            self.left.lock().insert(id, user.cloned());
        }
    }

    /// The sessions that left explicitly since the last call, each once, with the user
    /// they had. They are also in [`drain`](Self::drain)'s ids; a session that left and
    /// then started again is in both, and its current state (live again) is what counts.
    pub(crate) fn drain_left(&self) -> Vec<(SessionId, Option<UserId>)> {
        let taken = std::mem::take(&mut *self.left.lock());
        taken.into_iter().collect()
    }

    /// The ids recorded since the last drain, each once, in no particular order.
    pub(crate) fn drain(&self) -> Vec<SessionId> {
        swap_out(&self.ids)
    }

    /// How many ids wait to be drained.
    pub(crate) fn len(&self) -> usize {
        self.ids.lock().len()
    }
}

/// Takes a set's contents by swapping it with an empty one: O(1) under the lock, which
/// writers take under a shard lock, so a drain after a burst (a mass expiry, 100k ids) never
/// holds them up; the copy and the free happen outside. The fresh set starts small: a burst
/// does not pin its memory until the next one.
fn swap_out(set: &Mutex<HashSet<SessionId, Hasher>>) -> Vec<SessionId> {
    let taken = std::mem::take(&mut *set.lock());
    taken.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_only_while_enabled_and_each_id_once() {
        let log = ChangeLog::default();
        let id = SessionId::new_v4();
        log.record(id);
        assert_eq!(log.len(), 0, "off by default");
        log.enable();
        log.record(id);
        log.record(id);
        assert_eq!(log.drain(), vec![id]);
        assert!(log.drain().is_empty());
        log.record(id);
        let ann = UserId::from("ann");
        log.record_left(id, Some(&ann));
        assert_eq!(log.drain_left(), vec![(id, Some(ann))]);
        assert!(log.drain_left().is_empty());
        log.record_left(id, None);
        log.disable();
        assert_eq!(log.len(), 0);
        assert!(log.drain_left().is_empty());
    }
}
