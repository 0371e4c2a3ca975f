//! The expiry index: which session to look at when, so that reaping costs in proportion to
//! what falls due rather than to the number of sessions.
//!
//! Each live session has exactly one *current* item here, at the time its state may next
//! change (it may expire or go idle). Touches do not move it: the hot path never comes here.
//! When an item falls due the tracker checks the session under its shard lock, evicts it if
//! it is really due, and otherwise schedules it again at its real next time, so a session
//! that stays active is looked at about once per `idle_timeout`. An item names the session's
//! slot in the map (4 bytes, reached without hashing), not its id. Items left behind by a
//! session that has been rescheduled or has left, or whose slot another session now holds,
//! are recognised by their time (the session remembers its current one) and dropped.
//!
//! Items live in coarse buckets of [`BUCKET_MS`] in a `BTreeMap`; only the one bucket that
//! straddles "now" is ever sorted, which keeps scheduling O(log buckets) and taking what is
//! due exact to the millisecond. This module takes no other lock than its own, and callers
//! never hold it while they take a shard lock.

use std::collections::BTreeMap;

use crate::clock::Tick;
use crate::core::map::SlotRef;
use crate::sync::{AtomicU64, Mutex, Ordering};

/// Width of a bucket. A power of two so that bucket and offset are a shift and a mask.
const BUCKET_MS: Tick = 1 << 10;

#[derive(Debug, Default)]
struct Bucket {
    /// (offset in the bucket, the session's slot): 8 bytes an item. Sorted latest-first once the bucket straddles now.
    items: Vec<(u32, SlotRef)>,
    sorted: bool,
}

#[derive(Debug)]
pub(crate) struct ExpiryIndex {
    buckets: Mutex<BTreeMap<Tick, Bucket>>,
    /// A lower bound on the earliest item (`Tick::MAX` when empty), readable without the
    /// lock, so that reads can tell in one load whether anything may be due. It is lowered on
    /// schedule and raised only by [`ExpiryIndex::finish`], after a reap has dealt with what
    /// it took: while a reap is in flight it stays at or below now.
    next_due: AtomicU64,
}

impl ExpiryIndex {
    pub(crate) fn new() -> Self {
        ExpiryIndex {
            buckets: Mutex::new(BTreeMap::new()),
            next_due: AtomicU64::new(Tick::MAX),
        }
    }

    /// Whether something may be due at `now`.
    #[inline]
    pub(crate) fn may_be_due(&self, now: Tick) -> bool {
        self.next_due.load(Ordering::Acquire) <= now
    }

    pub(crate) fn schedule(&self, at: Tick, id: SlotRef) {
        let mut buckets = self.buckets.lock();
        insert(&mut buckets, at, id);
        self.next_due.fetch_min(at, Ordering::AcqRel);
    }

    pub(crate) fn schedule_all(&self, items: impl IntoIterator<Item = (Tick, SlotRef)>) {
        let mut buckets = self.buckets.lock();
        let mut earliest = Tick::MAX;
        for (at, id) in items {
            insert(&mut buckets, at, id);
            earliest = earliest.min(at);
        }
        self.next_due.fetch_min(earliest, Ordering::AcqRel);
    }

    /// Removes up to `limit` items scheduled at or before `now` into `out`, earliest buckets
    /// first; returns whether due items are left.
    pub(crate) fn take_due(&self, now: Tick, out: &mut Vec<(Tick, SlotRef)>, limit: usize) -> bool {
        let mut buckets = self.buckets.lock();
        let mut room = limit;
        while let Some(mut first) = buckets.first_entry() {
            let start = *first.key() * BUCKET_MS;
            if start > now {
                return false;
            }
            if room == 0 {
                return true;
            }
            if start + (BUCKET_MS - 1) <= now {
                // Wholly due: take it all, or its last `room` items (their order does not
                // matter, every one is due).
                let bucket = first.get_mut();
                let n = bucket.items.len().min(room);
                let from = bucket.items.len() - n;
                out.extend(
                    bucket
                        .items
                        .drain(from..)
                        .map(|(off, id)| (start + Tick::from(off), id)),
                );
                room -= n;
                if bucket.items.is_empty() {
                    first.remove();
                }
                continue;
            }
            // The bucket straddles now: sort it once, then take from the end.
            let bucket = first.get_mut();
            if !bucket.sorted {
                bucket
                    .items
                    .sort_unstable_by_key(|&(off, _)| std::cmp::Reverse(off));
                bucket.sorted = true;
            }
            while let Some(&(off, id)) = bucket.items.last() {
                let at = start + Tick::from(off);
                if at > now {
                    break;
                }
                if room == 0 {
                    return true;
                }
                out.push((at, id));
                bucket.items.pop();
                room -= 1;
            }
            if bucket.items.is_empty() {
                first.remove();
            }
            return false;
        }
        false
    }

    /// Recomputes the earliest-item bound once a reap is done with what it took.
    pub(crate) fn finish(&self) {
        let buckets = self.buckets.lock();
        let next = match buckets.first_key_value() {
            None => Tick::MAX,
            Some((&key, bucket)) => {
                let start = key * BUCKET_MS;
                match (bucket.sorted, bucket.items.last()) {
                    (true, Some(&(off, _))) => start + Tick::from(off),
                    _ => start,
                }
            }
        };
        self.next_due.store(next, Ordering::Release);
    }

    /// Number of items, stale ones included (for tests and memory accounting).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.lock().values().map(|b| b.items.len()).sum()
    }
}

fn insert(buckets: &mut BTreeMap<Tick, Bucket>, at: Tick, id: SlotRef) {
    let key = at / BUCKET_MS;
    // Fits: the offset is below BUCKET_MS.
    let off = (at % BUCKET_MS) as u32;
    let bucket = buckets.entry(key).or_default();
    if bucket.sorted {
        let pos = bucket.items.partition_point(|&(o, _)| o > off);
        bucket.items.insert(pos, (off, id));
    } else {
        bucket.items.push((off, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<SlotRef> {
        (0..n as SlotRef).map(|i| i * 7 + 1).collect()
    }

    #[test]
    fn takes_exactly_what_is_due() {
        let index = ExpiryIndex::new();
        let ids = ids(5);
        for (i, &id) in ids.iter().enumerate() {
            index.schedule(1000 + 700 * i as Tick, id); // 1000, 1700, 2400, 3100, 3800
        }
        index.finish();
        let mut out = Vec::new();
        index.take_due(999, &mut out, usize::MAX);
        assert!(out.is_empty());
        index.take_due(1700, &mut out, usize::MAX);
        assert_eq!(out, vec![(1000, ids[0]), (1700, ids[1])]);
        out.clear();
        index.finish();
        // Until the next bucket straddles now, its start is the bound...
        assert!(!index.may_be_due(2047));
        assert!(index.may_be_due(2048));
        index.take_due(2100, &mut out, usize::MAX);
        assert!(out.is_empty());
        // ...then it is sorted and the bound is exact.
        index.finish();
        assert!(!index.may_be_due(2399));
        assert!(index.may_be_due(2400));
        // Inserting into the straddling (sorted) bucket keeps it sorted.
        index.schedule(2100, ids[4]);
        index.take_due(2400, &mut out, usize::MAX);
        assert_eq!(out, vec![(2100, ids[4]), (2400, ids[2])]);
        out.clear();
        index.take_due(Tick::MAX - BUCKET_MS, &mut out, usize::MAX);
        assert_eq!(out.len(), 2);
        index.finish();
        assert_eq!(index.len(), 0);
        assert!(!index.may_be_due(Tick::MAX - 1));
    }

    #[test]
    fn nothing_due_is_cheap_and_leaves_items() {
        let index = ExpiryIndex::new();
        index.schedule_all(ids(1000).into_iter().map(|id| (300_000, id)));
        let mut out = Vec::new();
        index.take_due(299_999, &mut out, usize::MAX);
        assert!(out.is_empty());
        assert_eq!(index.len(), 1000);
    }

    #[test]
    fn a_limited_take_leaves_the_rest_due_and_takes_each_item_once() {
        let index = ExpiryIndex::new();
        // Three wholly due buckets and one straddling now.
        let ids = ids(4000);
        index.schedule_all(ids.iter().enumerate().map(|(i, &id)| (i as Tick, id)));
        let (mut out, mut batches) = (Vec::new(), 0);
        loop {
            let before = out.len();
            let more = index.take_due(3500, &mut out, 600);
            assert!(out.len() - before <= 600);
            batches += 1;
            index.finish();
            if !more {
                break;
            }
            assert!(
                index.may_be_due(3500),
                "a partial take leaves the bound at or below now"
            );
        }
        assert_eq!(out.len(), 3501);
        assert_eq!(batches, 6);
        let mut taken: Vec<SlotRef> = out.iter().map(|&(_, id)| id).collect();
        taken.sort_unstable();
        taken.dedup();
        assert_eq!(taken.len(), 3501);
        assert!(out.iter().all(|&(at, _)| at <= 3500));
        assert_eq!(index.len(), 499);
    }
}
