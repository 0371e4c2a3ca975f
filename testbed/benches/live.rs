//! What do live watchers cost the hot path, and what does a publish cost?
//!
//! - `touch_with_watchers/100k_sessions`: `touch` of a known guest on a tracker with nobody
//!   watching, against the same on a tracker with 1000 watched pages, 10 000 held sessions
//!   and 10 000 counts receivers (what 10 000 open HTTP streams leave on the tracker: a
//!   hold and a receiver each), both with their background reaper and, for the watched
//!   one, the publish ticker at its default 500 ms, and a thread making 100 joins and
//!   leaves a second on the watched pages (on both, so that both publish work). The
//!   ratio is the question: `touch` must stay at 0.95x or better.
//!   After the criterion groups, the same comparison paired: both trackers exist at once
//!   and take turns in short rounds (the first alternating); the figure is the median of
//!   the rounds' ratios, which a shared machine's drift between two criterion runs does not
//!   move.
//! - `publish`: one publish (`reap` under `Reaper::Manual`, which publishes) with nobody
//!   watching, with 1000 watched pages of which none changed, and with 100 changed.
//!
//! `cargo bench -p presence-tracker-testbed --bench live`;
//! `cargo test -p presence-tracker-testbed --benches` runs each routine once on small sizes.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use criterion::{BenchmarkGroup, Criterion, Throughput, measurement::WallTime};
use presence_tracker::{Hold, Kind, PageWatch, Presence, Reaper, SessionId};
use tokio::sync::watch;
use uuid::Uuid;

mod common;
use common::{SplitMix, full_scale, keys};

/// Keys touched per criterion iteration; throughput is reported per key.
const BATCH: usize = 1000;
const PAGES: usize = 1000;

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, full: bool) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if full { 700 } else { 100 }))
        .measurement_time(Duration::from_millis(if full { 3000 } else { 200 }));
}

/// A tracker like the benches' usual one, but with a background reaper (the ticker runs as
/// the reaper does).
fn tracker(reaper: Reaper) -> Presence {
    Presence::builder()
        .idle_timeout(Duration::from_secs(3600))
        .idle_after(Duration::from_secs(3600))
        .heartbeat_limit(Duration::from_secs(7200))
        .reaper(reaper)
        .build()
}

/// What 10k streams and 1k room watchers leave on a tracker.
struct Watchers {
    _pages: Vec<PageWatch>,
    _holds: Vec<Hold>,
    _receivers: Vec<watch::Receiver<presence_tracker::Counts>>,
}

fn watch(p: &Presence, streams: usize) -> Watchers {
    let pages = (0..PAGES)
        .map(|n| p.watch_page(&format!("/p/{n}")).unwrap())
        .collect();
    let holds = (0..streams)
        .map(|n| {
            p.hold(
                SessionId::new_v4(),
                Kind::Guest,
                &format!("/p/{}", n % PAGES),
            )
            .unwrap()
        })
        .collect();
    let receivers = (0..streams).map(|_| p.watch()).collect();
    Watchers {
        _pages: pages,
        _holds: holds,
        _receivers: receivers,
    }
}

/// 100 joins and leaves a second on the watched pages, until `stop`.
fn churn(p: Presence, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = SplitMix(9);
        let mut live = std::collections::VecDeque::new();
        while !stop.load(Ordering::Relaxed) {
            let id = SessionId::new_v4();
            let page = format!("/p/{}", rng.below(PAGES));
            p.visit(id, Kind::member(format!("u{}", rng.below(5000))), &page)
                .unwrap();
            live.push_back(id);
            if live.len() > 50 {
                p.leave(live.pop_front().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

fn touch_with_watchers(c: &mut Criterion) {
    let full = full_scale();
    let n = if full { 100_000 } else { 5_000 };
    let streams = if full { 10_000 } else { 500 };
    let keys = keys(11, n);
    let mut rng = SplitMix(12);
    let stream: Vec<SessionId> = (0..262_000)
        .map(|_| SessionId::from(keys[rng.below(n)]))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group(format!("touch_with_watchers/{}k_sessions", n / 1000));
    configure(&mut group, full);
    group.throughput(Throughput::Elements(BATCH as u64));
    let with = |watched: bool| {
        let p = tracker(Reaper::Tokio(runtime.handle().clone()));
        for &k in &keys {
            p.touch(SessionId::from(k), Kind::Guest).unwrap();
        }
        let watchers = watched.then(|| watch(&p, streams));
        let stop = Arc::new(AtomicBool::new(false));
        let churn = churn(p.clone(), stop.clone());
        (p, watchers, stop, churn)
    };
    for (name, watched) in [("no_watchers", false), ("1k_pages_10k_streams", true)] {
        let (p, watchers, stop, churn) = with(watched);
        let mut pos = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                for &id in &stream[pos..pos + BATCH] {
                    black_box(p.touch(id, Kind::Guest).unwrap());
                }
                pos = (pos + BATCH) % (stream.len() - BATCH);
            });
        });
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        drop((watchers, p));
    }
    group.finish();
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The paired comparison of `touch`; see the module docs.
fn paired_touch(full: bool) {
    let n = if full { 100_000 } else { 5_000 };
    let streams = if full { 10_000 } else { 500 };
    let (rounds, per_round) = if full { (41, 200_000) } else { (5, 5_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keys = keys(11, n);
    let mut rng = SplitMix(15);
    let stream: Vec<SessionId> = (0..per_round)
        .map(|_| SessionId::from(keys[rng.below(n)]))
        .collect();
    let build = |watched: bool| {
        let p = tracker(Reaper::Tokio(runtime.handle().clone()));
        for &k in &keys {
            p.touch(SessionId::from(k), Kind::Guest).unwrap();
        }
        let watchers = watched.then(|| watch(&p, streams));
        (p, watchers)
    };
    let (plain, _none) = build(false);
    let (watched, _watchers) = build(true);
    let stop = Arc::new(AtomicBool::new(false));
    let churns = [
        churn(plain.clone(), stop.clone()),
        churn(watched.clone(), stop.clone()),
    ];
    let time = |p: &Presence| {
        let started = std::time::Instant::now();
        for &id in &stream {
            black_box(p.touch(id, Kind::Guest).unwrap());
        }
        started.elapsed().as_nanos() as f64 / per_round as f64
    };
    let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (x, y) = if round % 2 == 0 {
            let x = time(&plain);
            (x, time(&watched))
        } else {
            let y = time(&watched);
            (time(&plain), y)
        };
        a.push(x);
        b.push(y);
        ratio.push(x / y);
    }
    stop.store(true, Ordering::Relaxed);
    for churn in churns {
        churn.join().unwrap();
    }
    println!(
        "paired touch, {n} sessions, {rounds} alternating rounds of {per_round} touches: \
         no watchers {:.1} ns, 1k pages + {streams} streams {:.1} ns; median ratio {:.3} \
         (above 1: watched is faster)",
        median(a),
        median(b),
        median(ratio)
    );
}

fn publish(c: &mut Criterion) {
    let full = full_scale();
    let mut group = c.benchmark_group("publish");
    configure(&mut group, full);
    let p = tracker(Reaper::Manual);
    for k in keys(13, 10_000) {
        p.touch(SessionId::from(k), Kind::Guest).unwrap();
    }
    group.bench_function("nobody_watching", |b| b.iter(|| black_box(p.reap())));
    let _watchers = watch(&p, 1000);
    p.reap();
    group.bench_function("1k_pages_none_changed", |b| b.iter(|| black_box(p.reap())));
    let ids: Vec<Uuid> = keys(14, 100);
    let mut flip = false;
    group.bench_function("1k_pages_100_changed", |b| {
        b.iter(|| {
            flip = !flip;
            for (n, &k) in ids.iter().enumerate() {
                let page = format!("/p/{}", n * 10 + usize::from(flip));
                p.visit(SessionId::from(k), Kind::member(format!("m{n}")), &page)
                    .unwrap();
            }
            black_box(p.reap())
        });
    });
    group.bench_function("baseline_100_page_changes_alone", |b| {
        b.iter(|| {
            flip = !flip;
            for (n, &k) in ids.iter().enumerate() {
                let page = format!("/p/{}", n * 10 + usize::from(flip));
                black_box(
                    p.visit(SessionId::from(k), Kind::member(format!("m{n}")), &page)
                        .unwrap(),
                );
            }
        });
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    touch_with_watchers(&mut c);
    publish(&mut c);
    c.final_summary();
    // Not with a filter that names other groups: `-- publish` runs only those.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if args.is_empty() || args.iter().any(|a| "paired".contains(a.as_str())) {
        paired_touch(full_scale());
    }
}
