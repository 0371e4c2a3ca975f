//! Which table should index the session map's slab? The crate's own `GroupTable` (tags and
//! slot indices in one cache line) against `hashbrown::HashTable<u32>` (the SwissTable
//! layout `indexmap` uses: control bytes and indices in separate arrays), both over the
//! same sharded slab, fed the same keys in the same run.
//!
//! Groups (`cargo bench -p presence-tracker-testbed --bench map`; each has both tables):
//! - `map_touch/{10k,1M}/{1,2}_threads`: a touch's map work: find a known session under
//!   the shard's read lock and store a time into its atomic (wall time per touch).
//! - `map_insert/{10k,1M}`: insert new sessions into a map holding that many.
//! - `map_remove/{10k,1M}`: remove sessions from a map holding that many.
//!
//! Before the timed groups it prints the memory per session of each map at 10k and 1M,
//! counted by a global allocator that tracks the bytes allocated, not by the resident set,
//! and a paired comparison of the touch: the two maps take turns in short rounds (the
//! first one alternating), and the figure is the median of the rounds' ratios. On a
//! shared machine whose load drifts over seconds, that pairing keeps the drift out of
//! the ratio, which criterion's one-after-the-other groups cannot.
//!
//! The values are shaped like the tracker's: a 16-byte hot part with an atomic time (so a
//! slot is 32 bytes) and a 24-byte cold part.

use std::hint::black_box;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use presence_tracker::SessionId;
use presence_tracker::map::{Entry, GroupTable, SessionMap, SlotIndex, SwissTable};

mod common;
use common::{Counting, SplitMix, full_scale, keys};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Keys handled per criterion iteration; throughput is reported per key.
const BATCH: usize = 1000;

/// Shaped like the tracker's hot part: an atomic time and a flag (the niche that keeps
/// `Option<Slot>` at 32 bytes).
struct Hot {
    seen: AtomicU64,
    _flag: bool,
}

impl Hot {
    fn new(now: u64) -> Self {
        Hot {
            seen: AtomicU64::new(now),
            _flag: true,
        }
    }
}

/// Shaped like the tracker's cold part: 24 bytes.
type Cold = [u64; 3];

type Map<T> = SessionMap<Hot, Cold, T>;

fn ids_of(keys: &[uuid::Uuid]) -> Vec<SessionId> {
    keys.iter().copied().map(SessionId::from).collect()
}

fn filled<T: SlotIndex>(ids: &[SessionId]) -> Map<T> {
    let map = Map::<T>::new();
    for &id in ids {
        insert(&map, id);
    }
    map
}

fn insert<T: SlotIndex>(map: &Map<T>, id: SessionId) {
    match map.entry(id) {
        Entry::Vacant(v) => {
            v.insert(Hot::new(0), [0; 3]).ok().expect("room");
        }
        Entry::Occupied(_) => panic!("keys are distinct"),
    }
}

fn remove<T: SlotIndex>(map: &Map<T>, id: SessionId) {
    match map.entry(id) {
        Entry::Occupied(o) => {
            black_box(o.remove());
        }
        Entry::Vacant(_) => panic!("present"),
    }
}

/// A touch's map work: the read path and a store when the (coarse) time moved.
#[inline]
fn touch<T: SlotIndex>(map: &Map<T>, id: &SessionId, now: u64) {
    let found = map.read(id, |hot, _| {
        if hot.seen.load(Ordering::Relaxed) != now {
            hot.seen.store(now, Ordering::Relaxed);
        }
    });
    debug_assert!(found.is_some());
    black_box(found);
}

/// `len` random picks (with replacement) of `ids`.
fn stream(ids: &[SessionId], len: usize, seed: u64) -> Vec<SessionId> {
    let mut rng = SplitMix(seed);
    (0..len).map(|_| ids[rng.below(ids.len())]).collect()
}

fn label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

fn sizes(full: bool) -> [usize; 2] {
    if full {
        [10_000, 1_000_000]
    } else {
        [10_000, 20_000]
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, full: bool) {
    group.throughput(Throughput::Elements(BATCH as u64));
    if !full {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(10))
            .measurement_time(Duration::from_millis(50));
    }
}

/// Bytes per session each map allocated, at each size; printed, not timed.
fn memory(full: bool) {
    println!("map memory, counted by allocation (bytes per session):");
    println!(
        "{:>10} {:>14} {:>14} {:>8}",
        "sessions", "group_table", "hashbrown", "ratio"
    );
    for n in sizes(full) {
        let ids = ids_of(&keys(11, n));
        let measure = |build: &dyn Fn() -> Box<dyn std::any::Any>| {
            let before = common::live_bytes();
            let map = build();
            let bytes = common::live_bytes() - before;
            drop(map);
            bytes as f64 / n as f64
        };
        let ours = measure(&|| Box::new(filled::<GroupTable>(&ids)));
        let swiss = measure(&|| Box::new(filled::<SwissTable>(&ids)));
        println!(
            "{:>10} {ours:>14.1} {swiss:>14.1} {:>8.3}",
            label(n),
            swiss / ours
        );
    }
}

/// Wall time to touch every id of each stream, one thread per stream.
fn touch_run<T: SlotIndex + Send + Sync>(
    map: &Map<T>,
    streams: &[&[SessionId]],
    now: u64,
) -> Duration {
    let start = Instant::now();
    if let [only] = streams {
        for id in *only {
            touch(map, id, now);
        }
    } else {
        std::thread::scope(|s| {
            for stream in streams {
                s.spawn(move || {
                    for id in *stream {
                        touch(map, id, now);
                    }
                });
            }
        });
    }
    start.elapsed()
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The paired comparison of the touch; see the module docs.
fn paired_touch(full: bool) {
    let rounds = if full { 41 } else { 5 };
    let per_round = if full { 200_000 } else { 10_000 };
    println!(
        "paired touch, {rounds} alternating rounds of {per_round} touches (ns per touch, wall time):"
    );
    println!(
        "{:>10} {:>8} {:>12} {:>12} {:>22}",
        "sessions", "threads", "group_table", "hashbrown", "hashbrown/group_table"
    );
    for n in sizes(full) {
        let ids = ids_of(&keys(13, n));
        let ours = filled::<GroupTable>(&ids);
        let swiss = filled::<SwissTable>(&ids);
        let keys = stream(&ids, 2 * per_round, 14);
        for threads in [1, 2] {
            let streams: Vec<&[SessionId]> =
                keys[..per_round].chunks(per_round / threads).collect();
            let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let now = round as u64 + 1;
                // Warm both, then time them in alternating order.
                let (ta, tb) = if round % 2 == 0 {
                    let ta = touch_run(&ours, &streams, now);
                    (ta, touch_run(&swiss, &streams, now))
                } else {
                    let tb = touch_run(&swiss, &streams, now);
                    (touch_run(&ours, &streams, now), tb)
                };
                if round == 0 {
                    continue;
                }
                let per = |t: Duration| t.as_nanos() as f64 / per_round as f64;
                a.push(per(ta));
                b.push(per(tb));
                ratio.push(per(tb) / per(ta));
            }
            println!(
                "{:>10} {threads:>8} {:>12.1} {:>12.1} {:>22.3}",
                label(n),
                median(a),
                median(b),
                median(ratio)
            );
        }
    }
}

fn touch_one_thread(c: &mut Criterion) {
    let full = full_scale();
    for n in sizes(full) {
        let ids = ids_of(&keys(3, n));
        let keys = stream(&ids, if full { 1_000_000 } else { 10_000 }, 4);
        let mut group = c.benchmark_group(format!("map_touch/{}/1_thread", label(n)));
        configure(&mut group, full);
        bench_touch_1(
            &mut group,
            "group_table",
            &filled::<GroupTable>(&ids),
            &keys,
        );
        bench_touch_1(&mut group, "hashbrown", &filled::<SwissTable>(&ids), &keys);
        group.finish();
    }
}

fn bench_touch_1<T: SlotIndex>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    map: &Map<T>,
    keys: &[SessionId],
) {
    let mut pos = 0;
    let mut now = 1;
    group.bench_function(name, |b| {
        b.iter(|| {
            now += 1;
            for id in &keys[pos..pos + BATCH] {
                touch(map, id, now);
            }
            pos = (pos + BATCH) % keys.len();
        });
    });
}

fn touch_two_threads(c: &mut Criterion) {
    let full = full_scale();
    for n in sizes(full) {
        let ids = ids_of(&keys(5, n));
        let len = if full { 200_000 } else { 10_000 };
        let streams = [stream(&ids, len, 6), stream(&ids, len, 7)];
        let mut group = c.benchmark_group(format!("map_touch/{}/2_threads", label(n)));
        configure(&mut group, full);
        group.sampling_mode(SamplingMode::Flat);
        bench_touch_2(
            &mut group,
            "group_table",
            &filled::<GroupTable>(&ids),
            &streams,
        );
        bench_touch_2(
            &mut group,
            "hashbrown",
            &filled::<SwissTable>(&ids),
            &streams,
        );
        group.finish();
    }
}

/// Wall time of two threads, each touching `iters` batches of its own stream.
fn bench_touch_2<T: SlotIndex + Send + Sync>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    map: &Map<T>,
    streams: &[Vec<SessionId>; 2],
) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
                let workers: Vec<_> = streams
                    .iter()
                    .map(|stream| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            let batches = stream.len() / BATCH;
                            barrier.wait();
                            let start = Instant::now();
                            for i in 0..iters as usize {
                                let off = (i % batches) * BATCH;
                                for id in &stream[off..off + BATCH] {
                                    touch(map, id, i as u64 + 1);
                                }
                            }
                            (start, Instant::now())
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("worker"))
                    .collect()
            });
            let start = spans.iter().map(|s| s.0).min().expect("two spans");
            let end = spans.iter().map(|s| s.1).max().expect("two spans");
            // Two threads did `2 * iters` batches: wall time per touch, as in `touch.rs`.
            (end - start) / 2
        });
    });
}

/// Insert and remove at a stable size: each iteration inserts a batch of new sessions and
/// removes them again; only the insert (or only the remove) is timed.
fn insert_and_remove(c: &mut Criterion) {
    let full = full_scale();
    for n in sizes(full) {
        let ids = ids_of(&keys(8, n));
        // Fresh ids, used one batch at a time and removed again.
        let fresh = ids_of(&keys(9, if full { 100 * BATCH } else { 10 * BATCH }));
        for (what, timed_insert) in [("map_insert", true), ("map_remove", false)] {
            let mut group = c.benchmark_group(format!("{what}/{}", label(n)));
            configure(&mut group, full);
            bench_churn(
                &mut group,
                "group_table",
                &filled::<GroupTable>(&ids),
                &fresh,
                timed_insert,
            );
            bench_churn(
                &mut group,
                "hashbrown",
                &filled::<SwissTable>(&ids),
                &fresh,
                timed_insert,
            );
            group.finish();
        }
    }
}

fn bench_churn<T: SlotIndex>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    map: &Map<T>,
    fresh: &[SessionId],
    timed_insert: bool,
) {
    let mut pos = 0;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let batch = &fresh[pos..pos + BATCH];
                pos = (pos + BATCH) % fresh.len();
                let start = Instant::now();
                batch.iter().for_each(|&id| insert(map, id));
                let inserted = Instant::now();
                batch.iter().for_each(|&id| remove(map, id));
                timed += if timed_insert {
                    inserted - start
                } else {
                    inserted.elapsed()
                };
            }
            timed
        });
    });
}

fn main() {
    let full = full_scale();
    memory(full);
    paired_touch(full);
    let mut c = Criterion::default().configure_from_args();
    touch_one_thread(&mut c);
    touch_two_threads(&mut c);
    insert_and_remove(&mut c);
    c.final_summary();
}
