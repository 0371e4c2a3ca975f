//! One user with many sessions (a shared account, a logged-in bot): expiring 100k or 200k
//! sessions of one member against the same number of distinct members, in one group so the
//! ratio comes from one run. Every leave used to scan the user's session list (17 s for
//! 200k tabs, while every reader waited); a join and a leave are now O(1) whatever the
//! sessions per user. `cargo bench -p presence-tracker-testbed --bench lopsided`

use std::time::Duration;

use criterion::{BatchSize, Criterion};
use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId};

mod common;
use common::full_scale;

fn populated(n: usize, one_user: bool) -> (Presence, ManualClock) {
    let clock = ManualClock::new();
    let presence = Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(60))
        .build();
    for i in 0..n {
        let user = if one_user {
            "shared".to_string()
        } else {
            format!("user{i}")
        };
        presence
            .touch(SessionId::new_v4(), Kind::member(user))
            .expect("room");
    }
    (presence, clock)
}

fn lopsided(c: &mut Criterion) {
    let sizes: &[usize] = if full_scale() {
        &[100_000, 200_000]
    } else {
        &[2_000]
    };
    let mut group = c.benchmark_group("expire_all");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(200));
    group.measurement_time(Duration::from_secs(5));
    for &n in sizes {
        for (name, one_user) in [("one_user", true), ("distinct_users", false)] {
            group.bench_function(format!("{name}/{n}"), |b| {
                b.iter_batched(
                    || populated(n, one_user),
                    |(presence, clock)| {
                        clock.advance(Duration::from_secs(61));
                        assert_eq!(presence.reap(), n);
                        (presence, clock) // dropped outside the timing
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    lopsided(&mut c);
    c.final_summary();
}
