//! How much does "who is online?" cost?
//!
//! `counts()` is meant to be O(1): it reads counters kept up to date by every change. The
//! baseline is what a server without them does: scan every entry of a `DashMap` of the same
//! size and tally the kinds. At 10k sessions the group also recounts from `sessions()` (the
//! admin list), the only way to count from our public API without `counts()`; at 1M that
//! copies a million `SessionInfo`s per call and is left out.
//!
//! Both structures hold the same mix: 70 % guests, 5 % bots, 20 % listed members and 5 %
//! hidden members, drawn over 10k user names.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};
use dashmap::DashMap;
use presence_tracker::{Kind, Presence, SessionId};
use uuid::Uuid;

mod common;
use common::{SplitMix, full_scale, tracker};

const USERS: usize = 10_000;

const GUEST: u8 = 0;
const BOT: u8 = 1;
const MEMBER: u8 = 2;
const HIDDEN: u8 = 3;

/// The i-th session of the mix: its kind tag and, for signed-in kinds, the user.
fn mix(rng: &mut SplitMix) -> (u8, usize) {
    let user = (rng.next() % USERS as u64) as usize;
    match rng.next() % 20 {
        0..=13 => (GUEST, user),
        14 => (BOT, user),
        15..=18 => (MEMBER, user),
        _ => (HIDDEN, user),
    }
}

fn population(n: usize) -> Vec<(Uuid, u8, usize)> {
    let mut rng = SplitMix(11);
    (0..n)
        .map(|_| {
            let id = rng.uuid();
            let (tag, user) = mix(&mut rng);
            (id, tag, user)
        })
        .collect()
}

fn ours_with(population: &[(Uuid, u8, usize)]) -> Presence {
    let users: Vec<String> = (0..USERS).map(|u| format!("user{u}")).collect();
    let p = tracker();
    for &(id, tag, user) in population {
        let kind = match tag {
            GUEST => Kind::Guest,
            BOT => Kind::Bot,
            MEMBER => Kind::member(users[user].as_str()),
            _ => Kind::hidden_member(users[user].as_str()),
        };
        p.touch(SessionId::from(id), kind).expect("unbounded");
    }
    p
}

fn dashmap_with(population: &[(Uuid, u8, usize)]) -> DashMap<Uuid, (Instant, u8)> {
    let now = Instant::now();
    let m = DashMap::new();
    for &(id, tag, _) in population {
        m.insert(id, (now, tag));
    }
    m
}

/// The baseline: one pass over every shard, tallying kinds.
fn scan(m: &DashMap<Uuid, (Instant, u8)>) -> [usize; 4] {
    let mut tally = [0; 4];
    for entry in m.iter() {
        tally[usize::from(entry.value().1)] += 1;
    }
    tally
}

/// Recount from the admin list, the public-API equivalent of the scan.
fn recount(p: &Presence) -> [usize; 4] {
    let mut tally = [0; 4];
    for info in p.sessions() {
        let slot = match info.kind {
            Kind::Guest => GUEST,
            Kind::Bot => BOT,
            Kind::Member(_) => MEMBER,
            Kind::HiddenMember(_) => HIDDEN,
        };
        tally[usize::from(slot)] += 1;
    }
    tally
}

fn configure(group: &mut BenchmarkGroup<'_, WallTime>, full: bool) {
    group
        .sample_size(if full { 20 } else { 10 })
        .warm_up_time(Duration::from_millis(if full { 500 } else { 100 }))
        .measurement_time(Duration::from_millis(if full { 1500 } else { 200 }));
}

fn size_label(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn counts_at(c: &mut Criterion, n: usize, with_recount: bool) {
    let full = full_scale();
    // Small runs (tests) shrink the big case so it still differs from the 10k one.
    let n = if full { n } else { n / 100 };
    let label = size_label(n);
    let population = population(n);
    let mut group = c.benchmark_group(format!("counts/{label}_sessions"));
    configure(&mut group, full);

    let mut state = None;
    group.bench_function("presence_counts", |b| {
        let p = state.get_or_insert_with(|| ours_with(&population));
        b.iter(|| black_box(p.counts()));
    });
    if with_recount {
        group.bench_function("presence_sessions_recount", |b| {
            let p = state.get_or_insert_with(|| ours_with(&population));
            b.iter(|| black_box(recount(p)));
        });
    }
    if let Some(p) = state.take() {
        // Sanity: both ways of counting agree, so the benchmark measures the same answer.
        let c = p.counts();
        let r = recount(&p);
        assert_eq!([c.guests, c.bots], [r[0], r[1]]);
        assert_eq!(c.sessions, r.iter().sum::<usize>());
    }

    let mut state = None;
    group.bench_function("dashmap_full_scan", |b| {
        let m = state.get_or_insert_with(|| dashmap_with(&population));
        b.iter(|| black_box(scan(m)));
    });
    drop(state.take());
    group.finish();
}

// A hand-written main rather than `criterion_group!`, which generates an undocumented
// `pub fn` that the crate's `missing_docs` lint rejects.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    counts_at(&mut c, 10_000, true);
    counts_at(&mut c, 1_000_000, false);
    c.final_summary();
}
