//! What does a new visitor wait at `max_sessions`, with 100k sessions due and nobody having
//! reaped them yet?
//!
//! ```text
//! cargo bench -p presence-tracker-testbed --bench capacity
//! ```
//!
//! The tracker is full (`max_sessions` 100k) and every one of its sessions is due: the
//! worst moment for a newcomer, an expiry storm at capacity. A newcomer settles one bounded
//! batch of what is due (or, when a reap is in flight, waits for nothing) and then joins or
//! is refused; the backlog is the reaper's. In the same group:
//!
//! - `join_with_room`: a new session in a tracker with room (100k live): the baseline;
//! - `refused_nothing_due`: at capacity, 100k live sessions: the plain refusal;
//! - `newcomer_100k_due`: at capacity, 100k due, no reap in flight;
//! - `newcomer_100k_due_reap_in_flight`: the same while another thread runs `reap()`;
//! - `reap_all_then_join` (the previous behaviour, as a baseline): a refused newcomer used
//!   to evict every due session itself before trying again.
//!
//! Criterion reports each routine's typical cost; the figure that matters is the tail, so
//! every timed call is also recorded and the percentiles (p50, p99, worst) are printed at the
//! end.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId};

mod common;
use common::full_scale;

const IDLE: Duration = Duration::from_secs(300);

/// Every timed call, by benchmark, for the percentiles.
static LATENCIES: Mutex<BTreeMap<&'static str, Vec<Duration>>> = Mutex::new(BTreeMap::new());

fn record(name: &'static str, d: Duration) {
    LATENCIES.lock().unwrap().entry(name).or_default().push(d);
}

/// A full tracker (Reaper::Manual) with its clock.
fn full(max: usize) -> (Presence, ManualClock) {
    let clock = ManualClock::new();
    let presence = Presence::builder()
        .idle_timeout(IDLE)
        .idle_after(IDLE)
        .heartbeat_limit(IDLE * 4)
        .max_sessions(max)
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .build();
    fill(&presence);
    (presence, clock)
}

/// Fills the tracker up to `max_sessions` with new guests.
fn fill(presence: &Presence) {
    while presence.touch(SessionId::new_v4(), Kind::Guest).is_ok() {}
}

fn bench(c: &mut Criterion) {
    let max = if full_scale() { 100_000 } else { 5_000 };
    let mut group = c.benchmark_group(format!("capacity/{}k_due", max / 1000));
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(if full_scale() { 3 } else { 1 }));
    // The storm cases rebuild their storm between two timed calls (about 0.1 s each), so
    // they get flat sampling and a longer run, for a few hundred timed calls.
    let heavy = |group: &mut criterion::BenchmarkGroup<'_, _>| {
        group
            .sampling_mode(criterion::SamplingMode::Flat)
            .measurement_time(Duration::from_secs(if full_scale() { 25 } else { 1 }));
    };

    // Baseline: a join with room left.
    {
        let clock = ManualClock::new();
        let presence = Presence::builder()
            .idle_timeout(IDLE)
            .clock(clock)
            .reaper(Reaper::Manual)
            .build();
        for _ in 0..max {
            presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
        }
        group.bench_function("join_with_room", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let id = SessionId::new_v4();
                    let t = Instant::now();
                    black_box(presence.touch(id, Kind::Guest)).unwrap();
                    let d = t.elapsed();
                    record("join_with_room", d);
                    total += d;
                    presence.leave(id);
                }
                total
            });
        });
    }

    // At capacity, nothing due: refused at once.
    {
        let (presence, _clock) = full(max);
        group.bench_function("refused_nothing_due", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let id = SessionId::new_v4();
                    let t = Instant::now();
                    let refused = black_box(presence.touch(id, Kind::Guest)).is_err();
                    let d = t.elapsed();
                    assert!(refused);
                    record("refused_nothing_due", d);
                    total += d;
                }
                total
            });
        });
    }

    heavy(&mut group);
    // At capacity, everything due, nobody reaping: the newcomer settles one batch and
    // joins. Between two timed calls (untimed) the room it made is filled again and the
    // clock moves a timeout on, so every timed call meets a full tracker with all due.
    {
        let (presence, clock) = full(max);
        clock.advance(IDLE);
        group.bench_function("newcomer_100k_due", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let id = SessionId::new_v4();
                    let t = Instant::now();
                    let joined = black_box(presence.touch(id, Kind::Guest)).is_ok();
                    let d = t.elapsed();
                    assert!(joined, "a due session makes room");
                    record("newcomer_100k_due", d);
                    total += d;
                    fill(&presence);
                    clock.advance(IDLE);
                }
                total
            });
        });
    }

    // The same while another thread runs a full `reap()` of the 100k: the newcomer does not
    // wait for it (it is refused, or joins in the room the reap has made so far).
    {
        let (presence, clock) = full(max);
        group.bench_function("newcomer_100k_due_reap_in_flight", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    clock.advance(IDLE);
                    let start = Arc::new(Barrier::new(2));
                    let reaper = {
                        let (presence, start) = (presence.clone(), start.clone());
                        thread::spawn(move || {
                            start.wait();
                            presence.reap()
                        })
                    };
                    start.wait();
                    // Let the reap take its lock and start its first batch.
                    let spin = Instant::now();
                    while spin.elapsed() < Duration::from_micros(50) {
                        std::hint::spin_loop();
                    }
                    let t = Instant::now();
                    let _ = black_box(presence.touch(SessionId::new_v4(), Kind::Guest));
                    let d = t.elapsed();
                    record("newcomer_100k_due_reap_in_flight", d);
                    total += d;
                    reaper.join().unwrap();
                    fill(&presence);
                }
                total
            });
        });
    }

    // The previous behaviour, emulated with the public API: evict everything due, then join.
    {
        let (presence, clock) = full(max);
        group.bench_function("reap_all_then_join", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    clock.advance(IDLE);
                    let t = Instant::now();
                    presence.reap();
                    let joined = black_box(presence.touch(SessionId::new_v4(), Kind::Guest));
                    let d = t.elapsed();
                    assert!(joined.is_ok());
                    record("reap_all_then_join", d);
                    total += d;
                    fill(&presence);
                }
                total
            });
        });
    }
    group.finish();
}

fn report() {
    let latencies = LATENCIES.lock().unwrap();
    println!("\nper call, every timed call of the runs above (warm-up included):");
    for (name, v) in latencies.iter() {
        let mut v = v.clone();
        v.sort_unstable();
        let pct = |p: f64| {
            let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[rank.clamp(1, v.len()) - 1]
        };
        println!(
            "{name:<34} n={:>6} p50 {:>10.1?} p99 {:>10.1?} worst {:>10.1?}",
            v.len(),
            pct(50.0),
            pct(99.0),
            v[v.len() - 1],
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
