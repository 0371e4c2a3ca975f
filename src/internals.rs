//! Internal structures, reachable from outside only with the hidden `__bench_internals`
//! feature (or under `cfg(presence_loom)`), so that the fuzz targets (a separate crate) and
//! the model-checking tests can drive them directly. Not part of the API: no stability
//! promise, and nothing here is needed to use the tracker.
//!
//! It owns thin wrappers only; each call goes straight to the structure it wraps.

use crate::SessionId;
use crate::core::map::{Entry, SessionMap};

/// Where a session lives in a [`SessionMapHandle`]: stable for the session's life, and
/// possibly reused by another session after it is removed.
pub type SlotRef = crate::core::map::SlotRef;

/// The tracker's session map with a `u64` hot part and a `u64` cold part per session.
#[derive(Debug)]
pub struct SessionMapHandle {
    map: SessionMap<u64, u64>,
}

impl Default for SessionMapHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionMapHandle {
    /// An empty map.
    pub fn new() -> Self {
        SessionMapHandle {
            map: SessionMap::new(),
        }
    }

    /// The hot and cold parts of `id`.
    pub fn get(&self, id: SessionId) -> Option<(u64, u64)> {
        self.map.read(&id, |hot, cold| (*hot, *cold.get()))
    }

    /// Stores `id`, or replaces its parts in place. Returns its slot and its previous parts.
    /// `None` when the shard has no slot left.
    pub fn insert(
        &self,
        id: SessionId,
        hot: u64,
        cold: u64,
    ) -> Option<(SlotRef, Option<(u64, u64)>)> {
        match self.map.entry(id) {
            Entry::Occupied(mut entry) => {
                let at = entry.slot_ref();
                let (h, c) = entry.get_mut();
                let old = (std::mem::replace(h, hot), std::mem::replace(c, cold));
                Some((at, Some(old)))
            }
            Entry::Vacant(entry) => entry.insert(hot, cold).ok().map(|at| (at, None)),
        }
    }

    /// Removes `id`; returns its parts.
    pub fn remove(&self, id: SessionId) -> Option<(u64, u64)> {
        match self.map.entry(id) {
            Entry::Occupied(entry) => Some(entry.remove()),
            Entry::Vacant(_) => None,
        }
    }

    /// The reaper's path: visits every slot in use that `items` name (stale ones included),
    /// shard by shard; `guess` is the first pass's guess of whether `decide` removes the
    /// session, and `decide` (given the item, the slot, the id and the hot part) whether it
    /// does. Returns `(item, slot, id, removed)` for each visit, in visiting order.
    pub fn at_each(
        &self,
        items: &[(u64, SlotRef)],
        mut guess: impl FnMut(u64, u64) -> bool,
        mut decide: impl FnMut(u64, SlotRef, SessionId, u64) -> bool,
    ) -> Vec<(u64, SlotRef, SessionId, bool)> {
        let mut visits = Vec::new();
        self.map.at_each(
            items,
            |item, hot| guess(item, *hot),
            |item, at, entry| {
                let id = entry.id();
                assert_eq!(
                    entry.slot_ref(),
                    at,
                    "an entry reached by slot names that slot"
                );
                let hot = *entry.get().0;
                let remove = decide(item, at, id, hot);
                if remove {
                    entry.remove();
                }
                visits.push((item, at, id, remove));
            },
        );
        visits
    }

    /// Every session: id, hot part, cold part.
    pub fn all(&self) -> Vec<(SessionId, u64, u64)> {
        let mut all = Vec::new();
        self.map
            .for_each(|id, hot, cold| all.push((id, *hot, *cold)));
        all
    }

    /// Number of sessions stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The event queue: events pushed under the lock that orders a change, delivered to the
/// broadcast channel after every lock is released, by one thread at a time.
#[derive(Debug)]
pub struct EventQueueHandle {
    queue: crate::events::EventQueue,
}

impl EventQueueHandle {
    /// A queue feeding a broadcast channel of `capacity` events.
    pub fn new(capacity: usize) -> Self {
        EventQueueHandle {
            queue: crate::events::EventQueue::new(capacity),
        }
    }

    /// A receiver of every event delivered from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::Event> {
        self.queue.subscribe()
    }

    /// Whether anyone listens (pushes are skipped when not).
    pub fn wanted(&self) -> bool {
        self.queue.wanted()
    }

    /// Appends an event, as a change does under its lock.
    pub fn push(&self, event: crate::Event) {
        self.queue.push(event);
    }

    /// Delivers what is pending, as a change does once its locks are released.
    pub fn deliver(&self) {
        self.queue.deliver();
    }
}

/// The expiry index: items by due time, and the lock-free "may anything be due" bound.
#[derive(Debug)]
pub struct ExpiryIndexHandle {
    index: crate::core::expiry::ExpiryIndex,
}

impl Default for ExpiryIndexHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl ExpiryIndexHandle {
    /// An empty index.
    pub fn new() -> Self {
        ExpiryIndexHandle {
            index: crate::core::expiry::ExpiryIndex::new(),
        }
    }

    /// Whether something may be due at `now` (one atomic load).
    pub fn may_be_due(&self, now: u64) -> bool {
        self.index.may_be_due(now)
    }

    /// Adds an item due at `at`.
    pub fn schedule(&self, at: u64, slot: SlotRef) {
        self.index.schedule(at, slot);
    }

    /// Adds items, as a reap reschedules what it looked at and did not evict.
    pub fn schedule_all(&self, items: impl IntoIterator<Item = (u64, SlotRef)>) {
        self.index.schedule_all(items);
    }

    /// Moves up to `limit` items due at `now` into `out`; returns whether due items are left.
    pub fn take_due(&self, now: u64, out: &mut Vec<(u64, SlotRef)>, limit: usize) -> bool {
        self.index.take_due(now, out, limit)
    }

    /// Recomputes the bound once a reap is done with what it took.
    pub fn finish(&self) {
        self.index.finish();
    }
}

/// Decodes a snapshot file's bytes as the reader at build does: the numbers of sessions,
/// offline users and history samples it holds, or why it is refused.
pub fn decode_snapshot(file: &[u8]) -> Result<(usize, usize, usize), &'static str> {
    crate::persist::format::decode(file)
        .map(|d| d.len())
        .map_err(|e| e.0)
}

/// Restores a snapshot file's bytes into `presence` as `build()` would from its file;
/// returns whether the bytes were a snapshot.
pub fn restore_snapshot_bytes(presence: &crate::Presence, file: &[u8]) -> bool {
    match crate::persist::format::decode(file) {
        Ok(decoded) => {
            presence.tracker().restore_decoded(&decoded);
            true
        }
        Err(_) => false,
    }
}

/// `payload` with a valid header (magic, version, length, CRC): a fuzz target's way past the
/// checksum to the records.
pub fn snapshot_with_header(payload: &[u8]) -> Vec<u8> {
    crate::persist::format::with_header(payload)
}
