//! The session map against `std::collections::HashMap`: random inserts, replacements, reads,
//! removals, bulk growth (table rebuilds, slab chunks) and the reaper's removal by slot
//! (stale slots, a slot named twice, right and wrong first-pass guesses). After every operation the
//! map's answer equals the model's; slots are stable while a session lives and name it.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use presence_tracker::__internals::{SessionMapHandle, SlotRef};
use presence_tracker::SessionId;

#[derive(Arbitrary, Debug)]
enum Key {
    /// One of 256 fixed ids, so that operations meet the same sessions.
    Small(u8),
    Any(u128),
}

impl Key {
    fn id(&self) -> SessionId {
        match *self {
            Key::Small(i) => small(u128::from(i)),
            Key::Any(v) => uuid::Uuid::from_u128(v).into(),
        }
    }
}

fn small(i: u128) -> SessionId {
    uuid::Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ 0x5555).into()
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert {
        key: Key,
        hot: u64,
        cold: u64,
    },
    Get(Key),
    Remove(Key),
    /// Inserts `n % 2048` ids derived from `seed` (at most [`BULK_BUDGET`] in a run), then
    /// removes every `keep`-th of them.
    Bulk {
        seed: u16,
        n: u16,
        keep: u8,
    },
    /// Removal by slot: items name slots seen so far (or any value), `guess` picks how the
    /// first pass guesses, and a session is removed when its hot part's low bit equals the
    /// item's.
    Reap {
        items: Vec<(u16, u64, bool)>,
        guess: u8,
    },
    Scan,
}

/// Sessions that `Bulk` may insert in one run: enough for several table rebuilds and slab
/// chunks per shard, few enough that a run stays fast (without a bound, one input of many
/// bulk operations took seconds).
const BULK_BUDGET: u128 = 4096;

#[derive(Default)]
struct Model {
    by_id: HashMap<SessionId, (u64, u64, SlotRef)>,
    by_slot: HashMap<SlotRef, SessionId>,
    /// Every slot handed out, live or not: items for `Reap`.
    seen: Vec<SlotRef>,
}

impl Model {
    fn insert(&mut self, map: &SessionMapHandle, id: SessionId, hot: u64, cold: u64) {
        let (at, old) = map.insert(id, hot, cold).expect("a slot is free");
        match self.by_id.get(&id).copied() {
            Some((h, c, was)) => {
                assert_eq!(old, Some((h, c)), "replaced the wrong parts of {id}");
                assert_eq!(at, was, "a live session moved slots");
            }
            None => {
                assert_eq!(old, None, "{id} was not there");
                if let Some(other) = self.by_slot.get(&at) {
                    panic!("{id} got slot {at:#x}, which {other} holds");
                }
                self.by_slot.insert(at, id);
                self.seen.push(at);
            }
        }
        self.by_id.insert(id, (hot, cold, at));
    }

    fn remove(&mut self, id: SessionId) -> Option<(u64, u64)> {
        let (h, c, at) = self.by_id.remove(&id)?;
        self.by_slot.remove(&at);
        Some((h, c))
    }

    fn check_all(&self, map: &SessionMapHandle) {
        assert_eq!(map.len(), self.by_id.len());
        let all = map.all();
        assert_eq!(all.len(), self.by_id.len());
        // Every stored session is in the model with its parts, once: with equal lengths,
        // the two hold the same sessions.
        let mut seen = std::collections::HashSet::with_capacity(all.len());
        for (id, hot, cold) in all {
            assert!(seen.insert(id), "{id} is stored twice");
            let Some(&(h, c, _)) = self.by_id.get(&id) else {
                panic!("{id} is in the map, not in the model");
            };
            assert_eq!((hot, cold), (h, c), "{id}");
        }
    }
}

/// Shard of a slot, as the map numbers them: the top 6 bits.
fn shard(at: SlotRef) -> u32 {
    at >> 26
}

fuzz_target!(|ops: Vec<Op>| {
    let map = SessionMapHandle::new();
    let mut model = Model::default();
    let mut budget = BULK_BUDGET;
    for op in ops.iter().take(512) {
        match op {
            Op::Insert { key, hot, cold } => model.insert(&map, key.id(), *hot, *cold),
            Op::Get(key) => {
                let id = key.id();
                let want = model.by_id.get(&id).map(|&(h, c, _)| (h, c));
                assert_eq!(map.get(id), want, "{id}");
            }
            Op::Remove(key) => {
                let id = key.id();
                let want = model.remove(id);
                assert_eq!(map.remove(id), want, "{id}");
                assert_eq!(map.get(id), None);
            }
            Op::Bulk { seed, n, keep } => {
                let base = u128::from(*seed) << 64 | 1 << 100;
                let n = u128::from(*n % 2048).min(budget);
                budget -= n;
                for i in 0..n {
                    model.insert(&map, small(base + i), i as u64, !(i as u64));
                }
                let keep = u128::from(*keep).max(1);
                for i in (0..n).step_by(keep as usize) {
                    let id = small(base + i);
                    assert_eq!(map.remove(id), model.remove(id), "{id}");
                }
            }
            Op::Reap { items, guess } => {
                let items: Vec<(u64, SlotRef)> = items
                    .iter()
                    .take(256)
                    .map(|&(pick, bit, any)| {
                        let at = if any || model.seen.is_empty() {
                            // Any slot value, in range or not.
                            (u32::from(pick) << 16) ^ u32::from(pick).rotate_left(26)
                        } else {
                            model.seen[usize::from(pick) % model.seen.len()]
                        };
                        (bit, at)
                    })
                    .collect();
                // What the map must visit: per shard in order, the items in their order, each
                // while its slot holds a session.
                let mut order: Vec<usize> = (0..items.len()).collect();
                order.sort_by_key(|&i| shard(items[i].1));
                let mut want = Vec::new();
                for i in order {
                    let (item, at) = items[i];
                    let Some(&id) = model.by_slot.get(&at) else {
                        continue;
                    };
                    let hot = model.by_id[&id].0;
                    let remove = hot & 1 == item & 1;
                    if remove {
                        model.remove(id);
                    }
                    want.push((item, at, id, remove));
                }
                let got = map.at_each(
                    &items,
                    |item, hot| match guess % 4 {
                        0 => hot & 1 == item & 1,
                        1 => hot & 1 != item & 1,
                        2 => true,
                        _ => false,
                    },
                    |item, _, _, hot| hot & 1 == item & 1,
                );
                assert_eq!(got, want);
            }
            Op::Scan => model.check_all(&map),
        }
    }
    model.check_all(&map);
});
