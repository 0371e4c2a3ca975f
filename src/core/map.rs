//! The session map: sessions by [`SessionId`], sharded behind reader-writer locks, stored
//! compactly.
//!
//! Why not a `DashMap<SessionId, Session>`: its table stores key and value inline, so every
//! empty bucket costs a whole entry, and right after a resize (where 1 M entries land) half
//! the buckets are empty. Here each shard keeps its sessions in a slab of fixed-size chunks
//! (never reallocated, so no copy and no doubling slack) and the hash table holds only a
//! `u32` slot index: an empty bucket costs 5 bytes instead of an entry. A session's slot is
//! stable for its life, so the expiry index refers to it by a 4-byte [`SlotRef`] and the
//! reaper reaches it without hashing.
//!
//! A slot has two parts in parallel arrays: the *hot* part (the id and a value `H` of at
//! most 16 bytes: what a touch reads and writes) in 32 bytes aligned to 32, so it never
//! straddles two cache lines, and the *cold* part `C` (what only the slower paths read:
//! a session's start, end, changes and listing). Stored whole, a 56-byte session straddles
//! two lines three times in four, and at a million sessions a touch then waited on two
//! memory loads where one will do.
//!
//! The table is [`GroupTable`]: one 64-byte cache line holds 12 one-byte tags *and* their 12
//! slot indices, so a lookup costs one cache miss for the table and one for the slot. With a
//! SwissTable the tags and the indices live in separate arrays, three dependent misses in
//! all, and at a million sessions those misses are the whole cost of a touch.
//!
//! Measured against `hashbrown::HashTable<u32>` over the same slab (`cargo bench -p
//! presence-tracker-testbed --bench map`, 2-core VM, median of paired rounds): at 1M
//! sessions hashbrown's touch takes 1.23x the time of this table's on one thread (three
//! runs: 1.15x-1.28x) and 1.17x on two; at 10k, where both fit in the cache, hashbrown is
//! about 8% faster. Memory at 1M: 65.0 against 67.1 B/session (3%). The rule was to keep
//! this table only if it wins touch at 1M by 10% or memory by 5%: it wins touch, so it
//! stays, checked against `std`'s `HashMap` by a differential property test (below).
//!
//! Locking: one reader-writer lock per shard; nothing here takes any other lock. The closure
//! given to [`SessionMap::read`] runs, and an entry from [`SessionMap::entry`] lives, under
//! its shard's lock: do not call back into the map for a key of the same shard meanwhile.
//!
//! The lock is crossbeam's `ShardedLock`: a reader locks one of eight cache-padded locks,
//! chosen by thread, and a writer all eight. Touches are reads, and with a single lock word
//! per shard every read is a write to a cache line that all cores share: on two threads at
//! 10k sessions each touch then waits for that line to come back from the other core,
//! which made two threads no faster than one. Writers (new sessions, changes, the reaper)
//! pay eight uncontended locks instead of one, and the reaper takes them once per shard
//! for all of its due sessions ([`SessionMap::at_each`]).

// Public only for the same-run benchmark against another table (the hidden
// `__bench_internals` feature); otherwise private to the crate.
#![cfg_attr(not(feature = "__bench_internals"), allow(unreachable_pub))]

use std::fmt;
use std::hash::BuildHasher;
use std::ops::DerefMut;
use std::sync::PoisonError;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use crate::SessionId;

/// The hasher of session ids.
pub type Hasher = foldhash::fast::RandomState;

/// 64 shards: two threads touching random sessions meet on one shard 1 time in 64.
const SHARD_BITS: u32 = 6;
const SLOT_BITS: u32 = u32::BITS - SHARD_BITS;
/// Slots per chunk: small enough that the partly used last chunk of each shard is noise
/// (64 shards x 256 slots), large enough that the chunk list stays short.
const CHUNK: usize = 256;

/// Where a session lives: shard in the top bits, slot in the shard below.
pub type SlotRef = u32;

/// The hot part of a slot. With `H` of 16 bytes or less and a niche for `Option`'s `None`
/// (a `bool` or an enum in it) it is 32 bytes, and the slots of a chunk start 32 bytes apart
/// from a 32-byte boundary: each lies within one cache line.
#[repr(C, align(32))]
struct Slot<H> {
    id: SessionId,
    value: H,
}

/// `CHUNK` slots: their hot and cold parts.
struct Chunk<H, C> {
    hot: Box<[Option<Slot<H>>]>,
    cold: Box<[C]>,
}

impl<H, C: Default> Chunk<H, C> {
    fn new() -> Self {
        Chunk {
            hot: (0..CHUNK).map(|_| None).collect(),
            cold: (0..CHUNK).map(|_| C::default()).collect(),
        }
    }
}

pub struct Shard<H, C, T = GroupTable> {
    /// Slot indices, hashed by the id in the slot.
    table: T,
    chunks: Vec<Chunk<H, C>>,
    /// Slots freed by removals, reused first.
    free: Vec<u32>,
    /// Slots ever used (the high-water mark).
    used: u32,
}

impl<H, C, T: SlotIndex> Shard<H, C, T> {
    fn new() -> Self {
        Shard {
            table: T::new(),
            chunks: Vec::new(),
            free: Vec::new(),
            used: 0,
        }
    }

    /// The slot `idx` names, if `idx` is in range and the slot in use (a [`SlotRef`] from
    /// the expiry index may be stale).
    fn slot_in_use(&self, idx: u32) -> Option<&Slot<H>> {
        if idx < self.used {
            self.slot(idx)
        } else {
            None
        }
    }

    fn slot(&self, idx: u32) -> Option<&Slot<H>> {
        hot_slot(&self.chunks, idx)
    }

    /// The slot's hot part, and its cold part found only when asked for.
    #[inline]
    fn parts(&self, idx: u32) -> (Option<&Slot<H>>, Cold<'_, C>) {
        let idx = idx as usize;
        let chunk = &self.chunks[idx / CHUNK];
        let cold = Cold {
            chunk: &chunk.cold,
            at: idx % CHUNK,
        };
        (chunk.hot[idx % CHUNK].as_ref(), cold)
    }

    fn parts_mut(&mut self, idx: u32) -> (&mut Option<Slot<H>>, &mut C) {
        let idx = idx as usize;
        let chunk = &mut self.chunks[idx / CHUNK];
        (&mut chunk.hot[idx % CHUNK], &mut chunk.cold[idx % CHUNK])
    }

    #[inline]
    fn find(&self, hash: u64, id: &SessionId) -> Option<(Position, u32)> {
        let chunks = &self.chunks;
        self.table.find(hash, |idx| {
            hot_slot(chunks, idx).is_some_and(|slot| slot.id == *id)
        })
    }
}

/// The hot part of slot `idx`, if in use. A free function, so that it borrows only the
/// chunks while the table is borrowed beside them.
#[inline]
fn hot_slot<H, C>(chunks: &[Chunk<H, C>], idx: u32) -> Option<&Slot<H>> {
    let idx = idx as usize;
    chunks[idx / CHUNK].hot[idx % CHUNK].as_ref()
}

/// A slot's cold part, not yet loaded: [`get`](Self::get) finds it. A closure that never
/// calls it never touches the cold part's cache line. (A plain `&C` would not do: the
/// compiler may load through a reference before the branch that needs it.)
pub struct Cold<'a, C> {
    chunk: &'a [C],
    at: usize,
}

impl<'a, C> Cold<'a, C> {
    #[inline]
    pub fn get(&self) -> &'a C {
        &self.chunk[self.at]
    }
}

/// Sessions by id; see the module docs. `T` is the table of slot indices and `S` the
/// hasher of ids: only tests and benchmarks choose others than the defaults.
pub struct SessionMap<H, C, T = GroupTable, S = Hasher> {
    shards: Box<[ShardedLock<Shard<H, C, T>>]>,
    hasher: S,
}

impl<H, C, T, S> fmt::Debug for SessionMap<H, C, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionMap")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<H, C: Default, T: SlotIndex> SessionMap<H, C, T> {
    pub fn new() -> Self {
        Self::with_hasher(Hasher::default())
    }
}

impl<H, C: Default, T: SlotIndex, S: BuildHasher> SessionMap<H, C, T, S> {
    /// A map hashing ids with `hasher` (tests force collisions with a degenerate one).
    pub fn with_hasher(hasher: S) -> Self {
        SessionMap {
            shards: (0..1 << SHARD_BITS)
                .map(|_| ShardedLock::new(Shard::new()))
                .collect(),
            hasher,
        }
    }

    #[inline]
    fn locate(&self, id: &SessionId) -> (u64, usize) {
        let hash = self.hasher.hash_one(id);
        // Skip the top 7 bits: the table uses them as its in-bucket tag, and keys sharing a
        // shard must not share their tags.
        let shard = ((hash << 7) >> (u64::BITS - SHARD_BITS)) as usize;
        (hash, shard)
    }

    /// `f` of the session `id` (its hot and cold parts), under its shard's read lock. The
    /// cold part's cache line is loaded only if `f` asks for it.
    #[inline]
    pub fn read<R>(&self, id: &SessionId, f: impl FnOnce(&H, Cold<'_, C>) -> R) -> Option<R> {
        let (hash, shard) = self.locate(id);
        let shard = read(&self.shards[shard]);
        let (_, idx) = shard.find(hash, id)?;
        match shard.parts(idx) {
            (Some(slot), cold) => Some(f(&slot.value, cold)),
            (None, _) => None,
        }
    }

    /// The place of `id`, under its shard's write lock.
    pub fn entry(&self, id: SessionId) -> Entry<'_, H, C, T, S> {
        let (hash, shard_no) = self.locate(&id);
        let shard = write(&self.shards[shard_no]);
        match shard.find(hash, &id) {
            Some((position, idx)) => Entry::Occupied(OccupiedEntry {
                shard,
                hasher: &self.hasher,
                shard_no,
                idx,
                position: Some(position),
            }),
            None => Entry::Vacant(VacantEntry {
                shard,
                shard_no,
                hash,
                id,
                hasher: &self.hasher,
            }),
        }
    }

    /// Calls `f` with every item of `items` whose slot is in use, taking each shard's write
    /// lock once for all of its items (the reaper's many removals cost one lock per shard,
    /// not one per session). Items of one shard are visited in their order in `items`.
    ///
    /// `will_remove` tells, from a first look at each session's hot part, whether `f` is
    /// going to remove it. That first pass only reads (the slot, then the table line of
    /// each session to remove), so the cache misses of many sessions overlap instead of
    /// queueing behind the atomic updates `f` makes; `f` then finds both lines in the cache.
    /// A wrong guess costs only that advantage.
    pub fn at_each<I: Copy>(
        &self,
        items: &[(I, SlotRef)],
        mut will_remove: impl FnMut(I, &H) -> bool,
        mut f: impl FnMut(I, SlotRef, OccupiedEntry<'_, &mut Shard<H, C, T>, S>),
    ) {
        if items.is_empty() {
            return;
        }
        // A counting sort of the items by shard.
        let mut ends = [0usize; 1 << SHARD_BITS];
        for &(_, at) in items {
            ends[shard_of(at)] += 1;
        }
        let mut total = 0;
        for end in &mut ends {
            total += *end;
            *end = total;
        }
        let mut order = vec![0u32; items.len()];
        let mut next = ends;
        for (i, &(_, at)) in items.iter().enumerate().rev() {
            let slot = &mut next[shard_of(at)];
            *slot -= 1;
            // Fits: the expiry index holds fewer than 2^32 items.
            order[*slot] = i as u32;
        }
        // Per item of the current shard: its index in `items`, slot and table position.
        let mut found: Vec<(u32, u32, Option<Position>)> = Vec::new();
        let mut start = 0;
        for (shard_no, &end) in ends.iter().enumerate() {
            if start == end {
                continue;
            }
            let mut shard = write(&self.shards[shard_no]);
            found.clear();
            for &i in &order[start..end] {
                let (item, at) = items[i as usize];
                debug_assert_eq!(shard_of(at), shard_no);
                let idx = at & ((1 << SLOT_BITS) - 1);
                let Some(slot) = shard.slot_in_use(idx) else {
                    continue;
                };
                let position = if will_remove(item, &slot.value) {
                    let hash = self.hasher.hash_one(slot.id);
                    shard.table.find(hash, |i| i == idx).map(|(p, _)| p)
                } else {
                    None
                };
                found.push((i, idx, position));
            }
            for &(i, idx, position) in &found {
                // Two items may name one slot (a stale one and the current one): the first
                // may have removed the session.
                if shard.slot(idx).is_none() {
                    continue;
                }
                let (item, at) = items[i as usize];
                let entry = OccupiedEntry {
                    shard: &mut *shard,
                    hasher: &self.hasher,
                    shard_no,
                    idx,
                    position,
                };
                f(item, at, entry);
            }
            start = end;
        }
    }

    /// Calls `f` for every session, one shard at a time under its read lock.
    pub fn for_each(&self, mut f: impl FnMut(SessionId, &H, &C)) {
        for shard in self.shards.iter() {
            let shard = read(shard);
            for chunk in &shard.chunks {
                for (slot, cold) in chunk.hot.iter().zip(chunk.cold.iter()) {
                    if let Some(slot) = slot {
                        f(slot.id, &slot.value, cold);
                    }
                }
            }
        }
    }

    /// Calls `f` for up to `limit` sessions in storage order, starting at position `from`
    /// (0 for the start); returns the position to go on from, or `None` at the end. Holds
    /// one shard's read lock at a time, and costs the sessions visited plus the empty slots
    /// skipped, not the whole map. Sessions added or removed meanwhile may or may not be
    /// seen; none is seen twice unless it left and came back into a later slot.
    pub(crate) fn for_each_from(
        &self,
        from: u64,
        limit: usize,
        mut f: impl FnMut(SessionId, &H, &C),
    ) -> Option<u64> {
        let (mut shard_idx, mut slot_idx) = ((from >> 32) as usize, (from & 0xFFFF_FFFF) as usize);
        let mut seen = 0;
        while let Some(lock) = self.shards.get(shard_idx) {
            let shard = read(lock);
            let end = shard.chunks.len() * CHUNK;
            while slot_idx < end {
                if seen == limit {
                    return Some(((shard_idx as u64) << 32) | slot_idx as u64);
                }
                let chunk = &shard.chunks[slot_idx / CHUNK];
                if let Some(slot) = &chunk.hot[slot_idx % CHUNK] {
                    f(slot.id, &slot.value, &chunk.cold[slot_idx % CHUNK]);
                    seen += 1;
                }
                slot_idx += 1;
            }
            shard_idx += 1;
            slot_idx = 0;
        }
        None
    }

    /// Number of sessions stored.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).table.len()).sum()
    }
}

/// A shard's read lock. Nothing here panics while holding a lock, and every change under
/// a write lock leaves the shard consistent, so a poisoned lock is safe to use.
fn read<T>(lock: &ShardedLock<T>) -> ShardedLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// A shard's write lock; see [`read`] on poisoning.
fn write<T>(lock: &ShardedLock<T>) -> ShardedLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

pub enum Entry<'a, H, C, T = GroupTable, S = Hasher> {
    Occupied(OccupiedEntry<'a, ShardedLockWriteGuard<'a, Shard<H, C, T>>, S>),
    Vacant(VacantEntry<'a, H, C, T, S>),
}

/// The shard a [`SlotRef`] points into.
pub fn shard_of(at: SlotRef) -> usize {
    (at >> SLOT_BITS) as usize
}

/// A session in use; `G` is the shard's write guard, or a borrow of one.
pub struct OccupiedEntry<'h, G, S = Hasher> {
    shard: G,
    hasher: &'h S,
    shard_no: usize,
    idx: u32,
    /// Where the table holds `idx`, when the lookup that led here found it.
    position: Option<Position>,
}

impl<H, C: Default, T: SlotIndex, S: BuildHasher, G: DerefMut<Target = Shard<H, C, T>>>
    OccupiedEntry<'_, G, S>
{
    pub fn id(&self) -> SessionId {
        self.shard
            .slot(self.idx)
            .expect("an occupied entry's slot is in use")
            .id
    }

    pub fn slot_ref(&self) -> SlotRef {
        slot_ref(self.shard_no, self.idx)
    }

    /// The session's hot and cold parts.
    pub fn get(&self) -> (&H, &C) {
        let (slot, cold) = self.shard.parts(self.idx);
        let slot = slot.expect("an occupied entry's slot is in use");
        (&slot.value, cold.get())
    }

    pub fn get_mut(&mut self) -> (&mut H, &mut C) {
        let (slot, cold) = self.shard.parts_mut(self.idx);
        let slot = slot.as_mut().expect("an occupied entry's slot is in use");
        (&mut slot.value, cold)
    }

    /// Empties the slot and returns what it held.
    pub fn remove(mut self) -> (H, C) {
        let idx = self.idx;
        let position = match self.position {
            // Still right: nothing inserts while this entry holds the write lock, and
            // removals only empty entries in place.
            Some(position) if self.shard.table.holds(position, idx) => Some(position),
            _ => {
                let hash = self.hasher.hash_one(self.id());
                self.shard.table.find(hash, |i| i == idx).map(|(p, _)| p)
            }
        };
        if let Some(position) = position {
            self.shard.table.remove(position);
        }
        self.shard.free.push(idx);
        let (slot, cold) = self.shard.parts_mut(idx);
        let slot = slot.take().expect("an occupied entry's slot is in use");
        (slot.value, std::mem::take(cold))
    }
}

pub struct VacantEntry<'a, H, C, T = GroupTable, S = Hasher> {
    shard: ShardedLockWriteGuard<'a, Shard<H, C, T>>,
    shard_no: usize,
    hash: u64,
    id: SessionId,
    hasher: &'a S,
}

impl<H, C: Default, T: SlotIndex, S: BuildHasher> VacantEntry<'_, H, C, T, S> {
    /// Stores a session of hot part `value` and cold part `cold`; `Err` gives them back when
    /// the shard has no slot index left (2^26 sessions in one shard, far beyond any memory
    /// this could run in).
    pub fn insert(mut self, value: H, cold: C) -> Result<SlotRef, (H, C)> {
        let shard = &mut *self.shard;
        let idx = match shard.free.pop() {
            Some(idx) => idx,
            None => {
                if shard.used >= 1 << SLOT_BITS {
                    return Err((value, cold));
                }
                let idx = shard.used;
                if idx as usize % CHUNK == 0 {
                    shard.chunks.push(Chunk::new());
                }
                shard.used += 1;
                idx
            }
        };
        let (slot, cold_part) = shard.parts_mut(idx);
        *slot = Some(Slot { id: self.id, value });
        *cold_part = cold;
        let Shard { table, chunks, .. } = shard;
        let hasher = self.hasher;
        table.insert(self.hash, idx, |i| {
            // Every index in the table names a slot in use.
            hot_slot(chunks, i).map_or(0, |slot| hasher.hash_one(slot.id))
        });
        Ok(slot_ref(self.shard_no, idx))
    }
}

/// Where a table holds an entry: an index into its storage, valid until the next insert.
pub type Position = usize;

/// A shard's table of slot indices, hashed by the ids in the slots. The table keeps only
/// the `u32`s: it is told each entry's hash, and on growth recomputes them with `hash_of`.
/// [`GroupTable`] is the one the tracker uses; the trait exists so that the benchmark can
/// put hashbrown's table under the same map and keep the comparison reproducible.
pub trait SlotIndex: Sized + 'static {
    fn new() -> Self;
    fn len(&self) -> usize;
    /// The position and value of the entry of hash `hash` for which `eq` holds.
    fn find(&self, hash: u64, eq: impl FnMut(u32) -> bool) -> Option<(Position, u32)>;
    /// Whether the entry at `at` is in use and holds `value`.
    fn holds(&self, at: Position, value: u32) -> bool;
    fn remove(&mut self, at: Position);
    /// Adds `value`, known to be absent; `hash_of` recomputes the hash of any stored value.
    fn insert(&mut self, hash: u64, value: u32, hash_of: impl Fn(u32) -> u64);
}

/// `hashbrown`'s SwissTable of `u32`s, the layout `indexmap` uses: the other table of
/// the same-run benchmark that keeps [`GroupTable`] (see the module docs).
#[cfg(feature = "__bench_internals")]
pub type SwissTable = hashbrown::HashTable<u32>;

#[cfg(feature = "__bench_internals")]
impl SlotIndex for SwissTable {
    fn new() -> Self {
        hashbrown::HashTable::new()
    }

    fn len(&self) -> usize {
        hashbrown::HashTable::len(self)
    }

    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(Position, u32)> {
        let at = self.find_bucket_index(hash, |&v| eq(v))?;
        self.get_bucket(at).map(|&v| (at, v))
    }

    fn holds(&self, at: Position, value: u32) -> bool {
        self.get_bucket(at) == Some(&value)
    }

    fn remove(&mut self, at: Position) {
        if let Ok(entry) = self.get_bucket_entry(at) {
            entry.remove();
        }
    }

    fn insert(&mut self, hash: u64, value: u32, hash_of: impl Fn(u32) -> u64) {
        self.insert_unique(hash, value, |&v| hash_of(v));
    }
}

/// Entries per group: one cache line of 12 tags, 4 bytes of bookkeeping, 12 indices.
const GROUP: usize = 12;

/// Tag of an empty entry; a used entry's tag has its top bit set.
const EMPTY: u8 = 0;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Group {
    tags: [u8; GROUP],
    /// An insert probed past this group because it was full: a lookup that misses here must
    /// go on to the next group. Cleared only by a rebuild.
    overflowed: bool,
    _pad: [u8; 3],
    slots: [u32; GROUP],
}

impl Group {
    /// The entries whose tag is `tag`, as a mask with the top bit of byte `i` set for entry
    /// `i`: all twelve compared at once (SWAR), so a lookup takes one predictable branch
    /// per match instead of a data-dependent branch per entry.
    #[inline]
    fn matches(&self, tag: u8) -> u128 {
        const LOW7: u128 = u128::from_le_bytes([0x7F; 16]);
        const HIGH: u128 = u128::from_le_bytes([0x80; 16]);
        let mut bytes = [0u8; 16];
        bytes[..GROUP].copy_from_slice(&self.tags);
        // Bytes past the tags are 0, which never equals a tag (tags have the top bit set).
        let x = u128::from_le_bytes(bytes) ^ (u128::from(tag) * u128::from_le_bytes([1; 16]));
        // A byte of `x` is zero exactly where the tag matched; this zero test is exact
        // (masking the top bit first keeps the addition from carrying into the next byte).
        !(((x & LOW7) + LOW7) | x) & HIGH
    }
}

const EMPTY_GROUP: Group = Group {
    tags: [EMPTY; GROUP],
    overflowed: false,
    _pad: [0; 3],
    slots: [0; GROUP],
};

/// An open-addressing table of `u32`s in cache-line groups, probed group by group.
///
/// The caller keeps the hashes (it recomputes them from the slab on growth): the table
/// stores a 7-bit tag of each and the value. Removal empties an entry in place; a group
/// that ever overflowed keeps sending lookups on until the next rebuild. A rebuild happens
/// on growth, or in place once half the groups gained an overflow mark since the last
/// rebuild (marks left stale by removals), which amortises to O(1) per insert.
pub struct GroupTable {
    groups: Vec<Group>,
    len: usize,
    overflowed: usize,
    /// `overflowed` right after the last rebuild: marks that a fresh layout needs anyway.
    overflowed_fresh: usize,
}

impl SlotIndex for GroupTable {
    fn new() -> Self {
        GroupTable {
            groups: vec![EMPTY_GROUP],
            len: 0,
            overflowed: 0,
            overflowed_fresh: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32) -> bool) -> Option<(Position, u32)> {
        let tag = Self::tag(hash);
        let mask = self.groups.len() - 1;
        let mut g = hash as usize & mask;
        for _ in 0..self.groups.len() {
            let group = &self.groups[g];
            let mut matches = group.matches(tag);
            while matches != 0 {
                let i = (matches.trailing_zeros() / 8) as usize;
                if eq(group.slots[i]) {
                    return Some((g * GROUP + i, group.slots[i]));
                }
                matches &= matches - 1;
            }
            if !group.overflowed {
                return None;
            }
            g = (g + 1) & mask;
        }
        None
    }

    fn holds(&self, at: Position, value: u32) -> bool {
        let group = &self.groups[at / GROUP];
        group.tags[at % GROUP] != EMPTY && group.slots[at % GROUP] == value
    }

    fn remove(&mut self, at: Position) {
        self.groups[at / GROUP].tags[at % GROUP] = EMPTY;
        self.len -= 1;
    }

    fn insert(&mut self, hash: u64, value: u32, hash_of: impl Fn(u32) -> u64) {
        // Keep at least 1/8 of the entries free, and rebuild when stale overflow marks would
        // lengthen lookups.
        let capacity = self.groups.len() * GROUP;
        if (self.len + 1) * 8 > capacity * 7 {
            self.rebuild(self.groups.len() * 2, &hash_of);
        } else if self.overflowed > self.overflowed_fresh + self.groups.len() / 2 {
            self.rebuild(self.groups.len(), &hash_of);
        }
        self.place(hash, value);
        self.len += 1;
    }
}

impl GroupTable {
    #[inline]
    fn tag(hash: u64) -> u8 {
        // The top 7 bits; the shard was chosen from the bits below them, the group from
        // the lowest ones.
        0x80 | (hash >> 57) as u8
    }

    fn place(&mut self, hash: u64, value: u32) {
        let tag = Self::tag(hash);
        let mask = self.groups.len() - 1;
        let mut g = hash as usize & mask;
        loop {
            let group = &mut self.groups[g];
            if let Some(i) = group.tags.iter().position(|&t| t == EMPTY) {
                group.tags[i] = tag;
                group.slots[i] = value;
                return;
            }
            if !group.overflowed {
                group.overflowed = true;
                self.overflowed += 1;
            }
            g = (g + 1) & mask;
        }
    }

    fn rebuild(&mut self, groups: usize, hash_of: &impl Fn(u32) -> u64) {
        let old = std::mem::replace(&mut self.groups, vec![EMPTY_GROUP; groups]);
        self.overflowed = 0;
        for group in &old {
            for i in 0..GROUP {
                if group.tags[i] != EMPTY {
                    self.place(hash_of(group.slots[i]), group.slots[i]);
                }
            }
        }
        self.overflowed_fresh = self.overflowed;
    }
}

/// What a slot's hot part costs for a value `H`: 32 bytes keeps it in one cache line.
#[cfg(test)]
pub(crate) const fn hot_slot_bytes<H>() -> usize {
    std::mem::size_of::<Option<Slot<H>>>()
}

fn slot_ref(shard_no: usize, idx: u32) -> SlotRef {
    // Fits: shard_no < 2^SHARD_BITS and idx < 2^SLOT_BITS.
    ((shard_no as u32) << SLOT_BITS) | idx
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn behaves_like_a_map() {
        // A hot number and a cold string per session, changed and removed together.
        let map = SessionMap::<u64, String>::new();
        let mut model: HashMap<SessionId, (u64, String)> = HashMap::new();
        let ids: Vec<SessionId> = (0..2000).map(|_| SessionId::new_v4()).collect();
        let mut refs = HashMap::new();
        for round in 0..3u64 {
            for (i, &id) in ids.iter().enumerate() {
                let i = i as u64;
                match map.entry(id) {
                    Entry::Occupied(mut e) if (i + round) % 3 == 0 => {
                        assert_eq!(e.id(), id);
                        assert_eq!(refs[&id], e.slot_ref());
                        let (hot, cold) = e.get_mut();
                        *hot += 1;
                        cold.push('+');
                        let (hot, cold) = model.get_mut(&id).unwrap();
                        *hot += 1;
                        cold.push('+');
                    }
                    Entry::Occupied(e) => {
                        assert_eq!(e.remove(), model.remove(&id).unwrap());
                    }
                    Entry::Vacant(v) => {
                        let at = v.insert(i, format!("{i}")).unwrap();
                        refs.insert(id, at);
                        model.insert(id, (i, format!("{i}")));
                    }
                }
            }
            assert_eq!(map.len(), model.len());
            for (id, (hot, cold)) in &model {
                let read = map.read(id, |h, c| (*h, c.get().clone()));
                assert_eq!(read.unwrap(), (*hot, cold.clone()));
                let mut visited = 0;
                map.at_each(
                    &[((), refs[id])],
                    |(), h| {
                        assert_eq!(h, hot);
                        false
                    },
                    |(), at, entry| {
                        assert_eq!(at, refs[id]);
                        assert_eq!((entry.id(), entry.get()), (*id, (hot, cold)));
                        visited += 1;
                    },
                );
                assert_eq!(visited, 1);
            }
            let mut seen = 0;
            map.for_each(|id, hot, cold| {
                assert_eq!(model[&id], (*hot, cold.clone()));
                seen += 1;
            });
            assert_eq!(seen, model.len());
        }
        assert!(map.read(&SessionId::new_v4(), |_, _| ()).is_none());
    }

    /// How the differential test hashes ids: for real, or degenerately so that ids share
    /// shards, groups and tags, and groups overflow.
    #[derive(Clone, Copy, Debug)]
    enum Hashing {
        Real,
        /// Every id hashes to 0: one shard, one home group, one tag.
        Constant,
        /// Only the lowest `n` bits survive: shard 0, tag 0, a few home groups.
        LowBits(u32),
        /// Only the top 7 bits (the tag) survive: distinct tags in one home group.
        TagOnly,
    }

    struct Degenerate(Hashing);

    struct DegenerateHasher(Hashing, foldhash::fast::FoldHasher);

    impl BuildHasher for Degenerate {
        type Hasher = DegenerateHasher;
        fn build_hasher(&self) -> DegenerateHasher {
            // A fixed seed: the real mode must vary from case to case only with the ids.
            DegenerateHasher(
                self.0,
                foldhash::fast::FixedState::with_seed(7).build_hasher(),
            )
        }
    }

    impl std::hash::Hasher for DegenerateHasher {
        fn write(&mut self, bytes: &[u8]) {
            self.1.write(bytes);
        }
        fn finish(&self) -> u64 {
            let h = self.1.finish();
            match self.0 {
                Hashing::Real => h,
                Hashing::Constant => 0,
                Hashing::LowBits(n) => h & ((1 << n) - 1),
                Hashing::TagOnly => h & !((1 << 57) - 1),
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert, or update the hot and cold parts of a present id.
        Upsert(usize, u64),
        Remove(usize),
        Read(usize),
        /// The reaper's path over the slot refs (current or stale) of these ids, removing
        /// those whose hot value is odd.
        AtEach(Vec<usize>),
        Iterate,
    }

    fn op(ids: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..ids, any::<u64>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            2 => (0..ids).prop_map(Op::Remove),
            2 => (0..ids).prop_map(Op::Read),
            1 => proptest::collection::vec(0..ids, 0..40).prop_map(Op::AtEach),
            1 => Just(Op::Iterate),
        ]
    }

    fn hashing() -> impl Strategy<Value = Hashing> {
        prop_oneof![
            Just(Hashing::Real),
            Just(Hashing::Constant),
            (1..6u32).prop_map(Hashing::LowBits),
            Just(Hashing::TagOnly),
        ]
    }

    /// Runs `ops` on a map with table `T` and on a `HashMap`, comparing every answer.
    fn differential<T: SlotIndex>(hashing: Hashing, ops: &[Op]) -> Result<(), TestCaseError> {
        let map = SessionMap::<u64, String, T, _>::with_hasher(Degenerate(hashing));
        let mut model: HashMap<SessionId, (u64, String)> = HashMap::new();
        // The slot each id was last given (kept after removal, as the expiry index keeps
        // stale refs), and which id each slot holds now.
        let mut refs: HashMap<SessionId, SlotRef> = HashMap::new();
        let mut holder: HashMap<SlotRef, SessionId> = HashMap::new();
        let id =
            |k: usize| SessionId::from(uuid::Uuid::from_u128(k as u128 * 0x9E37_79B9_7F4A_7C15));
        for op in ops {
            match *op {
                Op::Upsert(k, v) => match map.entry(id(k)) {
                    Entry::Occupied(mut e) => {
                        prop_assert_eq!(e.id(), id(k));
                        prop_assert_eq!(e.slot_ref(), refs[&id(k)]);
                        let (hot, cold) = e.get_mut();
                        *hot = v;
                        cold.push('+');
                        let (mhot, mcold) = model.get_mut(&id(k)).expect("present in the model");
                        *mhot = v;
                        mcold.push('+');
                    }
                    Entry::Vacant(e) => {
                        prop_assert!(!model.contains_key(&id(k)), "{} lost", k);
                        let at = e.insert(v, k.to_string()).expect("room");
                        prop_assert!(!holder.contains_key(&at), "slot {} given twice", at);
                        refs.insert(id(k), at);
                        holder.insert(at, id(k));
                        model.insert(id(k), (v, k.to_string()));
                    }
                },
                Op::Remove(k) => match map.entry(id(k)) {
                    Entry::Occupied(e) => {
                        let at = e.slot_ref();
                        prop_assert_eq!(Some(e.remove()), model.remove(&id(k)));
                        holder.remove(&at);
                    }
                    Entry::Vacant(_) => prop_assert!(!model.contains_key(&id(k)), "{} lost", k),
                },
                Op::Read(k) => {
                    let got = map.read(&id(k), |h, c| (*h, c.get().clone()));
                    prop_assert_eq!(got.as_ref(), model.get(&id(k)));
                }
                Op::AtEach(ref ks) => {
                    let items: Vec<(usize, SlotRef)> = ks
                        .iter()
                        .filter_map(|&k| refs.get(&id(k)).map(|&at| (k, at)))
                        .collect();
                    let mut visited = Vec::new();
                    let mut failures = Vec::new();
                    map.at_each(
                        &items,
                        |_, hot| hot % 2 == 1,
                        |_, at, entry| {
                            let (hot, cold) = entry.get();
                            let (id, value) = (entry.id(), (*hot, cold.clone()));
                            if holder.get(&at) != Some(&id) || model.get(&id) != Some(&value) {
                                failures.push(format!("slot {at} holds {id:?} {value:?}"));
                            }
                            visited.push(at);
                            if value.0 % 2 == 1 {
                                let removed = entry.remove();
                                if removed != value {
                                    failures.push(format!("removed {removed:?}, not {value:?}"));
                                }
                                model.remove(&id);
                                holder.remove(&at);
                            }
                        },
                    );
                    prop_assert!(failures.is_empty(), "{:?}", failures);
                    // Each slot in use that an item named is visited, once per item naming
                    // it, unless an earlier item removed it.
                    for &(_, at) in &items {
                        if holder.contains_key(&at) {
                            prop_assert!(visited.contains(&at), "slot {} skipped", at);
                        }
                    }
                }
                Op::Iterate => {
                    let mut seen = HashMap::new();
                    map.for_each(|id, hot, cold| {
                        seen.insert(id, (*hot, cold.clone()));
                    });
                    prop_assert_eq!(&seen, &model);
                }
            }
            prop_assert_eq!(map.len(), model.len());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        /// The map against `std`'s `HashMap`, with real and degenerate hashes, on up to 300
        /// ids (25 full groups sharing one home under a constant hash).
        #[test]
        fn agrees_with_a_std_hash_map(
            hashing in hashing(),
            ops in (2..300usize).prop_flat_map(|ids| proptest::collection::vec(op(ids), 1..600)),
        ) {
            differential::<GroupTable>(hashing, &ops)?;
            #[cfg(feature = "__bench_internals")]
            differential::<SwissTable>(hashing, &ops)?;
        }
    }

    #[test]
    fn a_hot_part_of_16_bytes_keeps_the_slot_in_one_cache_line() {
        // With a niche in the value (as the tracker's session has: a bool, an enum), the
        // slot's `None` costs nothing; without one it costs another 32 bytes.
        assert_eq!(hot_slot_bytes::<(u64, u32, bool)>(), 32);
        assert_eq!(hot_slot_bytes::<[u64; 2]>(), 64);
        assert_eq!(std::mem::align_of::<Slot<u8>>(), 32);
    }

    #[test]
    fn group_matches_exactly_the_equal_tags() {
        let mut group = EMPTY_GROUP;
        group.tags = [
            0x81,
            0x80,
            0x81,
            0xFF,
            0,
            0x81,
            0x7F | 0x80,
            0x01 | 0x80,
            0,
            0,
            0x81,
            0x82,
        ];
        let positions = |mask: u128| {
            (0..16)
                .filter(|i| mask & (0x80 << (8 * i)) != 0)
                .collect::<Vec<_>>()
        };
        assert_eq!(positions(group.matches(0x81)), [0, 2, 5, 7, 10]);
        assert_eq!(positions(group.matches(0x80)), [1]);
        assert_eq!(positions(group.matches(0xFF)), [3, 6]);
        assert_eq!(positions(group.matches(0x83)), Vec::<usize>::new());
    }

    #[test]
    fn a_group_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Group>(), 64);
        assert_eq!(std::mem::align_of::<Group>(), 64);
    }

    #[test]
    fn group_table_survives_collisions_and_churn() {
        // Every value hashes to group 0 with one tag: the worst case, all probing.
        let mut table = GroupTable::new();
        let hash_of = |_: u32| 0u64;
        for v in 0..200 {
            table.insert(0, v, hash_of);
        }
        for v in (0..200).step_by(2) {
            let (at, found) = table.find(0, |x| x == v).unwrap();
            assert_eq!(found, v);
            table.remove(at);
        }
        for v in 0..200 {
            assert_eq!(table.find(0, |x| x == v).is_some(), v % 2 == 1, "{v}");
        }
        // Churn at a stable size: stale overflow marks trigger rebuilds, nothing is lost.
        let hash_of = |v: u32| u64::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut table = GroupTable::new();
        for v in 0..1000 {
            table.insert(hash_of(v), v, hash_of);
        }
        for round in 0..20u32 {
            for v in 0..1000 {
                let old = round * 1000 + v;
                let (at, _) = table.find(hash_of(old), |x| x == old).unwrap();
                table.remove(at);
                let new = old + 1000;
                table.insert(hash_of(new), new, hash_of);
            }
        }
        assert_eq!(table.len, 1000);
        for v in 20_000..21_000 {
            assert!(table.find(hash_of(v), |x| x == v).is_some());
        }
        assert!(table.groups.len() <= 256, "{}", table.groups.len());
    }

    #[test]
    fn at_each_removes_whatever_the_first_pass_guessed() {
        let map = SessionMap::<u32, ()>::new();
        let mut items = Vec::new();
        let ids: Vec<SessionId> = (0..3000).map(|_| SessionId::new_v4()).collect();
        for (v, &id) in ids.iter().enumerate() {
            let Entry::Vacant(e) = map.entry(id) else {
                panic!("fresh id")
            };
            let v = v as u32;
            items.push((v, e.insert(v, ()).unwrap()));
        }
        // Guess "multiple of 3", remove the even ones: right, wrong both ways, and many
        // removals from one shard under one lock. Every slot is named twice, as the expiry
        // index may: the second item of a removed session is skipped.
        let items: Vec<(u32, SlotRef)> = items.iter().chain(&items).copied().collect();
        let mut removed = 0;
        map.at_each(
            &items,
            |v, value| {
                assert_eq!(v, *value);
                v % 3 == 0
            },
            |v, _, entry| {
                if v % 2 == 0 {
                    assert_eq!(entry.remove(), (v, ()));
                    removed += 1;
                }
            },
        );
        assert_eq!(removed, 1500);
        assert_eq!(map.len(), 1500);
        for (v, id) in ids.iter().enumerate() {
            assert_eq!(map.read(id, |v, _| *v), (v % 2 == 1).then_some(v as u32));
        }
    }

    #[test]
    fn freed_slots_are_reused() {
        let map = SessionMap::<u8, ()>::new();
        let id = SessionId::new_v4();
        let Entry::Vacant(v) = map.entry(id) else {
            panic!("empty map")
        };
        let first = v.insert(1, ()).unwrap();
        let Entry::Occupied(e) = map.entry(id) else {
            panic!("just inserted")
        };
        e.remove();
        let mut visited = 0;
        map.at_each(&[((), first)], |(), _| true, |(), _, _| visited += 1);
        assert_eq!(visited, 0, "a free slot is skipped");
        let Entry::Vacant(v) = map.entry(id) else {
            panic!("just removed")
        };
        assert_eq!(v.insert(2, ()).unwrap(), first);
    }
}
