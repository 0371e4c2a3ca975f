//! How fast is the hot path?
//!
//! Each group puts `presence-tracker` next to the structures a server would otherwise use
//! (a raw `DashMap`, a `moka` cache, a `Mutex<HashMap>`), fed the *same* pregenerated key
//! stream, so the ratios come from one run on one machine state.
//!
//! Groups (sizes shown for `cargo bench -p presence-tracker-testbed --bench touch`;
//! `cargo test -p presence-tracker-testbed --benches` runs each routine once on small sizes):
//! - `touch_existing/1M_sessions/1_thread`: `touch` of a known guest vs the baselines.
//! - `touch_existing/10k_sessions/1_thread`: the same on the two-thread group's set size.
//! - `touch_existing/10k_sessions/2_threads`: the same under two threads (wall time).
//! - `touch_new`: the insert path (a session the tracker has not seen yet).
//! - `visit_page_change`: `visit` where every call moves the session to another page.
//! - `heartbeat`: `heartbeat` of a live session.
//! - `memory_floor`: one random dependent load in working sets of 2, 8 and 48 MiB, the
//!   machine's floor under any lookup at a million sessions.
//!
//! Results are in elements per second: every iteration handles `BATCH` keys.
//!
//! Our tracker runs with its default (coarse, system) clock, because reading that clock is
//! part of what a `touch` costs in production; the timeouts are long enough that nothing
//! expires during a run, and the reaper is manual so no background thread competes.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement::WallTime};
use dashmap::DashMap;
use parking_lot::Mutex;
use presence_tracker::{Kind, Presence, SessionId};
use uuid::Uuid;

mod common;
use common::{SplitMix, full_scale, keys, tracker};

/// Keys handled per criterion iteration; throughput is reported per key.
const BATCH: usize = 1000;

/// Baseline entry: last-seen time plus a kind tag, the least a presence map must hold.
type RawEntry = (Instant, u8);

/// A key stream: `len` random picks (with replacement) from `keys`, materialised for both
/// key types so the timed loop reads keys sequentially and does no indexing of its own.
struct Stream {
    ids: Vec<SessionId>,
    uuids: Vec<Uuid>,
    pos: usize,
}

impl Stream {
    fn random(keys: &[Uuid], len: usize, seed: u64) -> Self {
        assert!(len % BATCH == 0 && len > 0);
        let mut rng = SplitMix(seed);
        let uuids: Vec<Uuid> = (0..len).map(|_| keys[rng.below(keys.len())]).collect();
        Self::from_uuids(uuids)
    }

    /// Every key exactly once, in a random order (Fisher–Yates).
    fn permutation(keys: &[Uuid], seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let mut uuids = keys.to_vec();
        for i in (1..uuids.len()).rev() {
            uuids.swap(i, rng.below(i + 1));
        }
        Self::from_uuids(uuids)
    }

    fn from_uuids(uuids: Vec<Uuid>) -> Self {
        assert!(uuids.len() % BATCH == 0);
        let ids = uuids.iter().copied().map(SessionId::from).collect();
        Self { ids, uuids, pos: 0 }
    }

    /// Advances to the next batch; returns its offset and whether the stream wrapped.
    fn advance(&mut self) -> (usize, bool) {
        let off = self.pos;
        self.pos += BATCH;
        let wrapped = self.pos == self.uuids.len();
        if wrapped {
            self.pos = 0;
        }
        (off, wrapped)
    }

    fn next_ids(&mut self) -> &[SessionId] {
        let (off, _) = self.advance();
        &self.ids[off..off + BATCH]
    }

    fn next_uuids(&mut self) -> &[Uuid] {
        let (off, _) = self.advance();
        &self.uuids[off..off + BATCH]
    }
}

fn ours_with(keys: &[Uuid]) -> Presence {
    let p = tracker();
    for &k in keys {
        p.touch(SessionId::from(k), Kind::Guest).expect("unbounded");
    }
    p
}

/// The common baseline: a raw `DashMap` insert of existing keys with a precomputed time,
/// over the same key stream.
fn dashmap_insert_baseline(
    group: &mut BenchmarkGroup<'_, WallTime>,
    keys: &[Uuid],
    stream: &mut Stream,
) {
    // Built lazily, as elsewhere: criterion calls the routine only if the filter selects it.
    let mut state = None;
    group.bench_function("dashmap_insert_precomputed_time", |b| {
        let m = state.get_or_insert_with(|| dashmap_with(keys));
        let now = Instant::now();
        b.iter(|| {
            for &k in stream.next_uuids() {
                black_box(m.insert(k, (now, 0)));
            }
        });
    });
}

fn dashmap_with(keys: &[Uuid]) -> DashMap<Uuid, RawEntry> {
    let now = Instant::now();
    let m = DashMap::new();
    for &k in keys {
        m.insert(k, (now, 0));
    }
    m
}

fn moka_with(keys: &[Uuid]) -> moka::sync::Cache<Uuid, u8> {
    let c = moka::sync::Cache::builder()
        .time_to_idle(Duration::from_secs(3600))
        .build();
    for &k in keys {
        c.insert(k, 0);
    }
    c.run_pending_tasks();
    c
}

fn mutex_map_with(keys: &[Uuid]) -> Mutex<HashMap<Uuid, RawEntry>> {
    let now = Instant::now();
    Mutex::new(keys.iter().map(|&k| (k, (now, 0))).collect())
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, full: bool) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if full { 700 } else { 100 }))
        .measurement_time(Duration::from_millis(if full { 2000 } else { 200 }));
}

fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// `touch` of an existing guest session, one thread, against every baseline, on `n`
/// sessions (`small_n` when not at full scale).
fn touch_existing_one_thread(c: &mut Criterion, n: usize, small_n: usize) {
    let full = full_scale();
    let n = if full { n } else { small_n };
    let keys = keys(1, n);
    let stream_len = if full { 262_000 } else { 10_000 };
    let mut stream = Stream::random(&keys, stream_len, 2);

    let mut group = c.benchmark_group(format!(
        "touch_existing/{}_sessions/1_thread",
        size_label(n)
    ));
    configure(&mut group, full);
    group.throughput(Throughput::Elements(BATCH as u64));

    // Each structure is built lazily inside its routine (criterion only calls the routine
    // when the filter selects it) and dropped before the next one is built, so at most one
    // million-entry structure is resident at a time.
    let mut state = None;
    group.bench_function("presence_touch", |b| {
        let p = state.get_or_insert_with(|| ours_with(&keys));
        b.iter(|| {
            for &id in stream.next_ids() {
                black_box(p.touch(id, Kind::Guest).expect("unbounded"));
            }
        });
    });
    drop(state.take());

    let mut state = None;
    group.bench_function("dashmap_insert_precomputed_time", |b| {
        let m = state.get_or_insert_with(|| dashmap_with(&keys));
        let now = Instant::now();
        b.iter(|| {
            for &k in stream.next_uuids() {
                black_box(m.insert(k, (now, 0)));
            }
        });
    });
    // Same map, so no rebuild: the entries only get newer times.
    group.bench_function("dashmap_insert_instant_now", |b| {
        let m = state.get_or_insert_with(|| dashmap_with(&keys));
        b.iter(|| {
            for &k in stream.next_uuids() {
                black_box(m.insert(k, (Instant::now(), 0)));
            }
        });
    });
    drop(state.take());

    let mut state = None;
    group.bench_function("moka_get", |b| {
        let m = state.get_or_insert_with(|| moka_with(&keys));
        b.iter(|| {
            for k in stream.next_uuids() {
                black_box(m.get(k));
            }
        });
    });
    group.bench_function("moka_insert", |b| {
        let m = state.get_or_insert_with(|| moka_with(&keys));
        b.iter(|| {
            for &k in stream.next_uuids() {
                m.insert(k, 0);
            }
        });
    });
    drop(state.take());

    let mut state = None;
    group.bench_function("mutex_hashmap_insert_precomputed_time", |b| {
        let m = state.get_or_insert_with(|| mutex_map_with(&keys));
        let now = Instant::now();
        b.iter(|| {
            for &k in stream.next_uuids() {
                black_box(m.lock().insert(k, (now, 0)));
            }
        });
    });
    drop(state.take());
    group.finish();
}

/// Runs `op` over two threads, each on its own stream, released together by a barrier;
/// returns the wall time from the first start to the last finish.
fn two_threads<K: Sync>(iters: u64, streams: &[Vec<K>; 2], op: impl Fn(&K) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let workers: Vec<_> = streams
            .iter()
            .map(|stream| {
                let (barrier, op) = (&barrier, &op);
                s.spawn(move || {
                    let batches = stream.len() / BATCH;
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters as usize {
                        let off = (i % batches) * BATCH;
                        for k in &stream[off..off + BATCH] {
                            op(k);
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
    end - start
}

/// `touch` of existing sessions from two threads over a small, hot set: this is where a
/// shard *write* lock per touch (the raw DashMap) contends and a read lock does not.
fn touch_existing_two_threads(c: &mut Criterion) {
    let full = full_scale();
    let n = 10_000;
    let keys = keys(3, n);
    let stream_len = if full { 100_000 } else { 10_000 };
    let a = Stream::random(&keys, stream_len, 4);
    let b = Stream::random(&keys, stream_len, 5);
    let ids = [a.ids, b.ids];
    let uuids = [a.uuids, b.uuids];

    let mut group = c.benchmark_group(format!(
        "touch_existing/{}_sessions/2_threads",
        size_label(n)
    ));
    configure(&mut group, full);
    group.sampling_mode(SamplingMode::Flat);
    // Each iteration is BATCH keys on *each* thread.
    group.throughput(Throughput::Elements(2 * BATCH as u64));

    let mut state = None;
    group.bench_function("presence_touch", |bench| {
        let p = state.get_or_insert_with(|| ours_with(&keys));
        bench.iter_custom(|iters| {
            two_threads(iters, &ids, |&id| {
                black_box(p.touch(id, Kind::Guest).expect("unbounded"));
            })
        });
    });
    drop(state.take());

    let mut state = None;
    group.bench_function("dashmap_insert_precomputed_time", |bench| {
        let m = state.get_or_insert_with(|| dashmap_with(&keys));
        let now = Instant::now();
        bench.iter_custom(|iters| {
            two_threads(iters, &uuids, |&k| {
                black_box(m.insert(k, (now, 0)));
            })
        });
    });
    drop(state.take());

    let mut state = None;
    group.bench_function("moka_get", |bench| {
        let m = state.get_or_insert_with(|| moka_with(&keys));
        bench.iter_custom(|iters| {
            two_threads(iters, &uuids, |k| {
                black_box(m.get(k));
            })
        });
    });
    drop(state.take());
    group.finish();
}

/// `touch` of sessions never seen before (the insert path), into a tracker that already
/// holds `prefill` sessions; each sample starts from a fresh structure so the map size, and
/// with it the cost of growing, is the same for ours and the baseline.
fn touch_new(c: &mut Criterion) {
    let full = full_scale();
    let prefill = if full { 100_000 } else { 1_000 };
    let base = keys(6, prefill);
    let mut group = c.benchmark_group(format!("touch_new/{}_prefilled", size_label(prefill)));
    configure(&mut group, full);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut seed = 1_000;
    group.bench_function("presence_touch_new", |b| {
        b.iter_custom(|iters| {
            seed += 1;
            let fresh: Vec<SessionId> = keys(seed, iters as usize * BATCH)
                .into_iter()
                .map(SessionId::from)
                .collect();
            let p = ours_with(&base);
            let start = Instant::now();
            for &id in &fresh {
                black_box(p.touch(id, Kind::Guest).expect("unbounded"));
            }
            let elapsed = start.elapsed();
            drop(p);
            elapsed
        });
    });
    group.bench_function("dashmap_insert_new_key", |b| {
        b.iter_custom(|iters| {
            seed += 1;
            let fresh = keys(seed, iters as usize * BATCH);
            let m = dashmap_with(&base);
            let now = Instant::now();
            let start = Instant::now();
            for &k in &fresh {
                black_box(m.insert(k, (now, 0)));
            }
            let elapsed = start.elapsed();
            drop(m);
            elapsed
        });
    });
    group.finish();
}

/// `visit` where every call changes the session's page. The stream is a permutation of all
/// sessions and the page flips between two names at the end of each pass, so each visit
/// lands on a session that is on the other page.
fn visit_page_change(c: &mut Criterion) {
    const PAGES: [&str; 2] = ["/forum/1", "/forum/2"];
    let full = full_scale();
    let n = if full { 1_000_000 } else { 10_000 };
    let keys = keys(7, n);
    let mut stream = Stream::permutation(&keys, 8);

    let mut group = c.benchmark_group(format!("visit_page_change/{}_sessions", size_label(n)));
    configure(&mut group, full);
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut state = None;
    group.bench_function("presence_visit", |b| {
        let (p, page) = state.get_or_insert_with(|| {
            let p = tracker();
            for &k in &keys {
                p.visit(SessionId::from(k), Kind::Guest, PAGES[0])
                    .expect("unbounded");
            }
            (p, 1)
        });
        b.iter(|| {
            let (off, wrapped) = stream.advance();
            for &id in &stream.ids[off..off + BATCH] {
                black_box(p.visit(id, Kind::Guest, PAGES[*page]).expect("unbounded"));
            }
            if wrapped {
                *page ^= 1;
            }
        });
    });
    drop(state.take());
    stream.pos = 0;

    dashmap_insert_baseline(&mut group, &keys, &mut stream);
    group.finish();
}

/// `heartbeat` of live sessions (random picks), against a raw DashMap insert.
fn heartbeat(c: &mut Criterion) {
    let full = full_scale();
    let n = if full { 1_000_000 } else { 10_000 };
    let keys = keys(9, n);
    let stream_len = if full { 262_000 } else { 10_000 };
    let mut stream = Stream::random(&keys, stream_len, 10);

    let mut group = c.benchmark_group(format!("heartbeat/{}_sessions", size_label(n)));
    configure(&mut group, full);
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut state = None;
    group.bench_function("presence_heartbeat", |b| {
        let p = state.get_or_insert_with(|| ours_with(&keys));
        b.iter(|| {
            for &id in stream.next_ids() {
                assert!(p.heartbeat(id), "session should be live");
            }
        });
    });
    drop(state.take());

    dashmap_insert_baseline(&mut group, &keys, &mut stream);
    group.finish();
}

/// The floor under any lookup: one random *dependent* load (a pointer chase, one cache line
/// per step) in working sets of the sizes that matter at a million sessions: 2 MiB (a
/// `DashMap`'s control bytes), 8 MiB (our table) and 48 MiB (beyond our 32 MiB of hot slots
/// and 24 MiB of cold ones; a `DashMap`'s buckets are larger still). A touch of a session
/// whose id lives in a structure of tens of MiB cannot cost much less than the last figure,
/// whatever its layout.
fn memory_floor(c: &mut Criterion) {
    /// `usize`s per 64-byte line: each step of the chase reads one word of its own line.
    const WORDS: usize = 64 / std::mem::size_of::<usize>();
    let full = full_scale();
    let sizes_mib: &[usize] = if full { &[2, 8, 48] } else { &[1] };

    let mut group = c.benchmark_group("memory_floor/1_thread");
    configure(&mut group, full);
    group.throughput(Throughput::Elements(BATCH as u64));
    for &mib in sizes_mib {
        let lines = mib * 1024 * 1024 / 64;
        // One random cycle through every line (Sattolo's algorithm), so the chase visits the
        // whole working set and no step can be predicted from the previous ones.
        let mut order: Vec<usize> = (0..lines).collect();
        let mut rng = SplitMix(11);
        for i in (1..lines).rev() {
            order.swap(i, rng.below(i));
        }
        let mut next = vec![0usize; lines * WORDS];
        for (i, &line) in order.iter().enumerate() {
            next[line * WORDS] = order[(i + 1) % lines] * WORDS;
        }
        drop(order);
        let mut at = 0;
        group.bench_function(format!("dependent_load_{mib}MiB"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    at = next[at];
                }
                black_box(at)
            });
        });
    }
    group.finish();
}

// A hand-written main rather than `criterion_group!`, which generates an undocumented
// `pub fn` that the crate's `missing_docs` lint rejects.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    touch_existing_one_thread(&mut c, 1_000_000, 10_000);
    // The same set as the two-thread group, on one thread: what the second thread adds.
    touch_existing_one_thread(&mut c, 10_000, 1_000);
    touch_existing_two_threads(&mut c);
    touch_new(&mut c);
    visit_page_change(&mut c);
    heartbeat(&mut c);
    memory_floor(&mut c);
    c.final_summary();
}
