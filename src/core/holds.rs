//! The hold table: how many live holds each held session has, and which session they belong
//! to (a generation, so that a hold taken on a session that then ended never releases a
//! newer session of the same id).
//!
//! The table holds an entry exactly while its session's state is `Held`; both change under
//! the session's shard write lock. Its lock is a leaf: it nests inside a shard lock and takes
//! no other lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::SessionId;

type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct Held {
    generation: u64,
    holds: usize,
}

/// What dropping one hold did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The hold was not of this session (it ended, and maybe another started since).
    Stale,
    /// Other holds remain.
    Others,
    /// It was the last one.
    Last,
}

#[derive(Debug, Default)]
pub(crate) struct HoldTable {
    held: Mutex<HashMap<SessionId, Held, Hasher>>,
    /// The last generation handed out.
    last: AtomicU64,
}

impl HoldTable {
    /// One more hold of session `id`: its generation (a new one if it was not held).
    pub(crate) fn take(&self, id: SessionId) -> u64 {
        let mut held = self.held.lock();
        let entry = held.entry(id).or_insert_with(|| Held {
            generation: self.last.fetch_add(1, Ordering::Relaxed) + 1,
            holds: 0,
        });
        entry.holds += 1;
        entry.generation
    }

    /// Whether `generation` is the current one of held session `id`.
    pub(crate) fn is_current(&self, id: SessionId, generation: u64) -> bool {
        self.held
            .lock()
            .get(&id)
            .is_some_and(|h| h.generation == generation)
    }

    /// Drops one hold of generation `generation` of session `id`.
    pub(crate) fn drop_one(&self, id: SessionId, generation: u64) -> Dropped {
        let mut held = self.held.lock();
        let Some(entry) = held.get_mut(&id).filter(|h| h.generation == generation) else {
            return Dropped::Stale;
        };
        entry.holds -= 1;
        if entry.holds > 0 {
            return Dropped::Others;
        }
        held.remove(&id);
        Dropped::Last
    }

    /// Forgets session `id`'s holds: it ended.
    pub(crate) fn remove(&self, id: SessionId) {
        self.held.lock().remove(&id);
    }

    /// Holds of session `id` (0 when not held).
    pub(crate) fn holds(&self, id: SessionId) -> usize {
        self.held.lock().get(&id).map_or(0, |h| h.holds)
    }

    /// Sessions held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.held.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_of_an_ended_session_never_releases_the_next_one() {
        let table = HoldTable::default();
        let id = SessionId::new_v4();
        let first = table.take(id);
        assert_eq!(table.take(id), first, "two holds of one session share it");
        assert_eq!(table.drop_one(id, first), Dropped::Others);
        table.remove(id); // the session ended (an admin's leave)
        let second = table.take(id);
        assert_ne!(first, second);
        assert_eq!(table.drop_one(id, first), Dropped::Stale);
        assert_eq!(table.holds(id), 1);
        assert_eq!(table.drop_one(id, second), Dropped::Last);
        assert_eq!(table.len(), 0);
        assert_eq!(table.drop_one(id, second), Dropped::Stale);
    }
}
