//! What do names cost? `online_members(50)` and `page_members(page, 20)` against the scan
//! they replace: copy the admin list with `sessions()`, keep the listed members (of the
//! page), sort by name and dedup, take the first N.
//!
//! 1M sessions (10k of them listed members, one session each; 2k hidden members; the rest
//! guests), spread over 1k pages. Both sides run in one group, so their ratio comes from
//! one run. `cargo bench -p presence-tracker-testbed --bench members`

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use presence_tracker::{Kind, Presence, SessionId, SessionInfo};

mod common;
use common::{SplitMix, full_scale, tracker};

const PAGES: usize = 1_000;
const MEMBERS: usize = 10_000;
const HIDDEN: usize = 2_000;

fn populate(sessions: usize) -> Presence {
    let presence = tracker();
    let mut rng = SplitMix(7);
    let pages: Vec<String> = (0..PAGES).map(|p| format!("/forum/topic/{p}")).collect();
    for i in 0..sessions {
        let kind = if i < MEMBERS {
            Kind::member(format!("user{:05}", rng.below(1 << 20)))
        } else if i < MEMBERS + HIDDEN {
            Kind::hidden_member(format!("hidden{i}"))
        } else {
            Kind::Guest
        };
        let page = &pages[rng.below(PAGES)];
        presence
            .visit(SessionId::from(rng.uuid()), kind, page)
            .expect("room for every session");
    }
    presence
}

/// The scan: what a server without member lists does on every page view.
fn scan(presence: &Presence, page: Option<&str>, limit: usize) -> Vec<String> {
    let mut names: Vec<String> = presence
        .sessions()
        .into_iter()
        .filter(|s: &SessionInfo| page.is_none_or(|p| s.page.as_deref() == Some(p)))
        .filter_map(|s| match s.kind {
            Kind::Member(u) => Some(u.to_string()),
            _ => None,
        })
        .collect();
    names.sort_by_key(|n| n.to_lowercase());
    names.dedup();
    names.truncate(limit);
    names
}

fn members(c: &mut Criterion) {
    let n = if full_scale() { 1_000_000 } else { 20_000 };
    let presence = populate(n);
    let page = presence.top_pages(1)[0].0.clone();
    assert_eq!(
        presence
            .online_members(50)
            .iter()
            .map(|u| u.to_string())
            .collect::<Vec<_>>(),
        scan(&presence, None, 50),
        "both sides list the same names"
    );
    let label = if n >= 1_000_000 { "1M" } else { "20k" };
    let mut group = c.benchmark_group(format!("members/{label}_sessions"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("presence_online_members_50", |b| {
        b.iter(|| black_box(presence.online_members(black_box(50))))
    });
    group.bench_function("scan_online_members_50", |b| {
        b.iter(|| black_box(scan(&presence, None, 50)))
    });
    group.bench_function("presence_page_members_20", |b| {
        b.iter(|| black_box(presence.page_members(black_box(&page), 20)))
    });
    group.bench_function("scan_page_members_20", |b| {
        b.iter(|| black_box(scan(&presence, Some(&page), 20)))
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    members(&mut c);
    c.final_summary();
}
