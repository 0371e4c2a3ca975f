//! What does expiry cost?
//!
//! - `reap/1M_sessions/1pct_due`: `reap()` when 1 % of a million sessions is due, against the
//!   obvious alternative, a `DashMap::retain` over every entry that evicts the same 1 %.
//! - `reap/<n>_sessions/nothing_due`: `reap()` when nothing is due, at 10k and 1M sessions;
//!   this is what the background reaper pays every `reap_interval` in the common case.
//!
//! # Keeping exactly 1 % due, iteration after iteration
//! A reap consumes what it evicts, and rebuilding a million sessions per iteration would
//! cost a second each. Instead the sessions form 100 cohorts touched `idle_timeout / 100`
//! apart, like a steady stream of arrivals: each iteration advances a [`ManualClock`] by
//! that step, so exactly the oldest cohort (1 %) falls due, times the reap, checks that it
//! evicted exactly that cohort, then (untimed) touches the cohort again as new arrivals.
//! The map stays at 1M sessions with the same age profile forever, and the baseline runs
//! the same schedule on its own virtual clock.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, measurement::WallTime};
use dashmap::DashMap;
use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId};
use uuid::Uuid;

mod common;
use common::{full_scale, keys};

/// Sessions are spread over this many cohorts, so one cohort is 1 %.
const COHORTS: usize = 100;
/// `idle_timeout` in the 1 % benchmark (the crate's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How far the clock moves per iteration: one cohort's worth.
const STEP: Duration = Duration::from_secs(3);

fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, full: bool) {
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if full { 500 } else { 50 }))
        .measurement_time(Duration::from_millis(if full { 1500 } else { 100 }));
}

/// Our tracker in the cohort steady state (see the module docs).
struct OursCohorts {
    presence: Presence,
    clock: ManualClock,
    cohorts: Vec<Vec<SessionId>>,
    /// The cohort that falls due next.
    oldest: usize,
}

impl OursCohorts {
    fn new(keys: &[Uuid]) -> Self {
        let clock = ManualClock::new();
        let presence = Presence::builder()
            .idle_timeout(IDLE_TIMEOUT)
            .idle_after(IDLE_TIMEOUT)
            .clock(clock.clone())
            .reaper(Reaper::Manual)
            .build();
        let cohorts: Vec<Vec<SessionId>> = keys
            .chunks(keys.len() / COHORTS)
            .map(|c| c.iter().copied().map(SessionId::from).collect())
            .collect();
        assert_eq!(cohorts.len(), COHORTS);
        for (i, cohort) in cohorts.iter().enumerate() {
            if i > 0 {
                clock.advance(STEP);
            }
            for &id in cohort {
                presence.touch(id, Kind::Guest).expect("unbounded");
            }
        }
        Self {
            presence,
            clock,
            cohorts,
            oldest: 0,
        }
    }

    /// One step: returns the time the reap took.
    fn step(&mut self) -> Duration {
        self.clock.advance(STEP);
        let start = Instant::now();
        let evicted = self.presence.reap();
        let elapsed = start.elapsed();
        let cohort = &self.cohorts[self.oldest];
        assert_eq!(
            evicted,
            cohort.len(),
            "exactly the oldest cohort should be due"
        );
        for &id in cohort {
            self.presence.touch(id, Kind::Guest).expect("unbounded");
        }
        self.oldest = (self.oldest + 1) % COHORTS;
        elapsed
    }
}

/// The baseline in the same steady state, on a virtual clock (`base + offset`).
struct RetainCohorts {
    map: DashMap<Uuid, (Instant, u8)>,
    base: Instant,
    offset: Duration,
    cohorts: Vec<Vec<Uuid>>,
    oldest: usize,
}

impl RetainCohorts {
    fn new(keys: &[Uuid]) -> Self {
        let base = Instant::now();
        let map = DashMap::new();
        let cohorts: Vec<Vec<Uuid>> = keys
            .chunks(keys.len() / COHORTS)
            .map(<[Uuid]>::to_vec)
            .collect();
        let mut offset = Duration::ZERO;
        for (i, cohort) in cohorts.iter().enumerate() {
            if i > 0 {
                offset += STEP;
            }
            for &k in cohort {
                map.insert(k, (base + offset, 0));
            }
        }
        Self {
            map,
            base,
            offset,
            cohorts,
            oldest: 0,
        }
    }

    fn step(&mut self) -> Duration {
        self.offset += STEP;
        let now = self.base + self.offset;
        let start = Instant::now();
        let before = self.map.len();
        // Due from `last_seen + idle_timeout <= now`, as in the tracker.
        self.map
            .retain(|_, (last_seen, _)| *last_seen + IDLE_TIMEOUT > now);
        let evicted = before - self.map.len();
        let elapsed = start.elapsed();
        let cohort = &self.cohorts[self.oldest];
        assert_eq!(
            evicted,
            cohort.len(),
            "exactly the oldest cohort should be due"
        );
        for &k in cohort {
            self.map.insert(k, (now, 0));
        }
        self.oldest = (self.oldest + 1) % COHORTS;
        elapsed
    }
}

fn reap_one_percent_due(c: &mut Criterion) {
    let full = full_scale();
    let n = if full { 1_000_000 } else { 10_000 };
    let keys = keys(21, n);
    let mut group = c.benchmark_group(format!("reap/{}_sessions/1pct_due", size_label(n)));
    configure(&mut group, full);
    // Every iteration carries an untimed re-touch of a cohort; flat sampling keeps the
    // number of iterations (and so that hidden cost) small and predictable.
    group.sampling_mode(SamplingMode::Flat);

    let mut state = None;
    group.bench_function("presence_reap", |b| {
        let s = state.get_or_insert_with(|| OursCohorts::new(&keys));
        b.iter_custom(|iters| (0..iters).map(|_| s.step()).sum());
    });
    drop(state.take());

    let mut state = None;
    group.bench_function("dashmap_retain", |b| {
        let s = state.get_or_insert_with(|| RetainCohorts::new(&keys));
        b.iter_custom(|iters| (0..iters).map(|_| s.step()).sum());
    });
    drop(state.take());
    group.finish();
}

/// A tracker whose sessions stay live for days of virtual time while the clock advances
/// by `reap_interval` per reap, as under the background reaper.
struct NothingDue {
    presence: Presence,
    clock: ManualClock,
    advanced: Duration,
}

/// Longest timeout the builder accepts (a week); the clock may run this far, less a margin,
/// before the tracker is rebuilt.
const LONG: Duration = Duration::from_secs(7 * 24 * 3600);
const REAP_INTERVAL: Duration = Duration::from_secs(1);

impl NothingDue {
    fn new(keys: &[Uuid]) -> Self {
        let clock = ManualClock::new();
        let presence = Presence::builder()
            .idle_timeout(LONG)
            .idle_after(LONG)
            .heartbeat_limit(LONG)
            .reap_interval(REAP_INTERVAL)
            .clock(clock.clone())
            .reaper(Reaper::Manual)
            .build();
        for &k in keys {
            presence
                .touch(SessionId::from(k), Kind::Guest)
                .expect("unbounded");
        }
        Self {
            presence,
            clock,
            advanced: Duration::ZERO,
        }
    }
}

fn reap_nothing_due(c: &mut Criterion, n: usize) {
    let full = full_scale();
    let n = if full { n } else { n / 100 };
    let keys = keys(22, n);
    let mut group = c.benchmark_group(format!("reap/{}_sessions/nothing_due", size_label(n)));
    configure(&mut group, full);

    let mut state = None;
    group.bench_function("presence_reap", |b| {
        b.iter_custom(|iters| {
            let budget = LONG - Duration::from_secs(3600);
            // One reap per `reap_interval` as the reaper does, unless criterion asks for so
            // many iterations that a week of virtual time would not last: then smaller steps.
            let step = REAP_INTERVAL.min(budget / u32::try_from(iters).unwrap_or(u32::MAX));
            let s = state.get_or_insert_with(|| NothingDue::new(&keys));
            if s.advanced + step * u32::try_from(iters).unwrap_or(u32::MAX) >= budget {
                // Untimed, and rare: only after days of virtual time.
                *s = NothingDue::new(&keys);
            }
            let start = Instant::now();
            for _ in 0..iters {
                s.clock.advance(step);
                black_box(s.presence.reap());
            }
            let elapsed = start.elapsed();
            s.advanced += step * u32::try_from(iters).unwrap_or(u32::MAX);
            elapsed
        });
    });
    if let Some(s) = state.take() {
        assert_eq!(
            s.presence.counts().sessions,
            n,
            "nothing should have expired"
        );
    }
    group.finish();
}

// A hand-written main rather than `criterion_group!`, which generates an undocumented
// `pub fn` that the crate's `missing_docs` lint rejects.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    reap_one_percent_due(&mut c);
    reap_nothing_due(&mut c, 10_000);
    reap_nothing_due(&mut c, 1_000_000);
    c.final_summary();
}
