//! The background reaper: it evicts, stops on shutdown and when the last handle drops, runs
//! as a thread or a tokio task; handles are clones of one tracker.

mod common;

use std::time::{Duration, Instant};

use common::{drain, manual, ms};
use presence_tracker::{Event, Kind, LeaveReason, ManualClock, Presence, Reaper, SessionId};

fn threaded(idle_timeout: Duration) -> Presence {
    Presence::builder()
        .idle_timeout(idle_timeout)
        .reap_interval(ms(5))
        .reaper(Reaper::Thread)
        .build()
}

/// Waits up to `within` for `cond`.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(ms(5));
    }
}

/// Threads of this process named like the reaper, or `None` without `/proc`.
fn reaper_threads() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(Result::ok)
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .filter(|name| name.trim_end() == "presence-reaper")
            .count(),
    )
}

#[test]
fn thread_reaper_evicts_in_the_background() {
    let presence = threaded(ms(50));
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    // Nothing is read: only the reaper can produce the Left event.
    let left = eventually(Duration::from_secs(2), || {
        drain(&mut rx)
            .iter()
            .any(|e| matches!(e, Event::Left { session, reason: LeaveReason::Expired, .. } if *session == id))
    });
    assert!(left, "the reaper thread did not evict the session");
}

#[test]
fn dropping_the_last_handle_stops_the_reaper_thread() {
    // Threads are shared by the whole test binary: other tests here also start reapers, so
    // compare against a baseline taken with this test's trackers dropped, and only require
    // that the 50 this test started are gone.
    if reaper_threads().is_none() {
        eprintln!("no /proc: skipped");
        return;
    }
    let trackers: Vec<Presence> = (0..50).map(|_| threaded(Duration::from_secs(60))).collect();
    let clones: Vec<Presence> = trackers.iter().map(Presence::clone).collect();
    // A thread names itself once it runs: wait until all 50 show.
    assert!(
        eventually(Duration::from_secs(5), || reaper_threads().unwrap() >= 50),
        "expected at least 50 reaper threads, found {:?}",
        reaper_threads()
    );
    let with = reaper_threads().unwrap();
    drop(trackers);
    // Clones still hold the trackers: the threads keep running.
    std::thread::sleep(ms(20));
    assert!(
        reaper_threads().unwrap() + 50 > with,
        "reapers stopped while clones were alive"
    );
    drop(clones);
    let stopped = eventually(Duration::from_secs(5), || {
        reaper_threads().unwrap() + 50 <= with
    });
    assert!(
        stopped,
        "reaper threads left: {:?} (were {with})",
        reaper_threads()
    );
}

#[test]
fn shutdown_stops_the_reaper_but_reads_stay_exact() {
    let presence = threaded(ms(30));
    presence.shutdown();
    presence.shutdown(); // idempotent
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    std::thread::sleep(ms(150));
    let events = drain(&mut rx);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Left { .. })),
        "a stopped reaper evicted: {events:?}"
    );
    // Reads settle what is due anyway.
    assert_eq!(presence.counts().sessions, 0);
    assert!(
        drain(&mut rx)
            .iter()
            .any(|e| matches!(e, Event::Left { .. }))
    );
}

#[test]
fn shutdown_stops_the_reaper_thread() {
    if reaper_threads().is_none() {
        eprintln!("no /proc: skipped");
        return;
    }
    let trackers: Vec<Presence> = (0..20).map(|_| threaded(Duration::from_secs(60))).collect();
    assert!(eventually(Duration::from_secs(5), || reaper_threads()
        .unwrap()
        >= 20));
    let with = reaper_threads().unwrap();
    trackers.iter().for_each(Presence::shutdown);
    let stopped = eventually(Duration::from_secs(5), || {
        reaper_threads().unwrap() + 20 <= with
    });
    assert!(
        stopped,
        "reaper threads left after shutdown: {:?} (were {with})",
        reaper_threads()
    );
    // The trackers still work.
    trackers[0].touch(SessionId::new_v4(), Kind::Guest).unwrap();
    assert_eq!(trackers[0].counts().guests, 1);
}

/// A runtime as `#[tokio::test]` builds one (the attribute would cost every build of the
/// examples a proc-macro), on one thread or on `workers` threads.
fn runtime(workers: Option<usize>) -> tokio::runtime::Runtime {
    let mut builder = match workers {
        None => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_time().build().expect("a tokio runtime")
}

#[test]
fn tokio_reaper_evicts_in_the_background() {
    runtime(Some(2)).block_on(async {
        let presence = Presence::builder()
            .idle_timeout(ms(50))
            .reap_interval(ms(5))
            .reaper(Reaper::Tokio(tokio::runtime::Handle::current()))
            .build();
        assert_tokio_reaper_evicts(presence).await;
    });
}

#[test]
fn auto_reaper_inside_a_runtime_is_a_task_that_evicts() {
    // A current-thread runtime: the task only runs while this test awaits.
    runtime(None).block_on(async {
        let presence = Presence::builder()
            .idle_timeout(ms(50))
            .reap_interval(ms(5))
            .reaper(Reaper::Auto)
            .build();
        assert_tokio_reaper_evicts(presence).await;
    });
}

async fn assert_tokio_reaper_evicts(presence: Presence) {
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("alice")).unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match rx.recv().await {
                Ok(Event::UserOffline { user }) => return user,
                Ok(_) => {}
                Err(err) => panic!("{err:?}"),
            }
        }
    })
    .await;
    assert_eq!(
        got.expect("the tokio reaper did not evict").as_str(),
        "alice"
    );
    presence.shutdown();
}

#[test]
fn dropping_the_last_handle_ends_the_tokio_task() {
    runtime(None).block_on(async {
        let presence = Presence::builder()
            .reap_interval(Duration::from_secs(3600))
            .reaper(Reaper::Tokio(tokio::runtime::Handle::current()))
            .build();
        let metrics = tokio::runtime::Handle::current().metrics();
        tokio::task::yield_now().await;
        let alive = metrics.num_alive_tasks();
        assert!(alive >= 1);
        drop(presence);
        let mut ended = false;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if metrics.num_alive_tasks() < alive {
                ended = true;
                break;
            }
            tokio::time::sleep(ms(1)).await;
        }
        assert!(ended, "the reaper task outlived its tracker");
    });
}

#[test]
fn clones_share_one_tracker() {
    let (presence, clock) = manual();
    let other = presence.clone();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("alice")).unwrap();
    assert_eq!(other.counts().members, 1);
    assert!(other.heartbeat(id));
    let mut rx = other.subscribe();
    assert!(presence.leave(id).is_some());
    assert!(other.session(id).is_none());
    assert_eq!(drain(&mut rx).len(), 2);
    clock.advance(ms(1));
    let moved = std::thread::spawn(move || {
        other.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    });
    moved.join().unwrap();
    assert_eq!(presence.counts().guests, 1);
}

#[test]
fn manual_reaper_starts_no_thread() {
    // Other tests start reaper threads concurrently, so a manual tracker is checked by its
    // effect: with a 5 ms interval, any background reaper would evict a due session within
    // a few intervals; a manual one leaves it until a read or `reap()` settles it.
    let clock = ManualClock::new();
    let presence = common::builder(&clock)
        .reap_interval(ms(5))
        .reaper(Reaper::Manual)
        .build();
    let mut rx = presence.subscribe();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    clock.advance(common::IDLE_TIMEOUT);
    // Forty intervals; a reaper thread only has to be scheduled once in them.
    std::thread::sleep(ms(200));
    let events = drain(&mut rx);
    assert!(
        !events.iter().any(|e| matches!(e, Event::Left { .. })),
        "something reaped in the background: {events:?}"
    );
    assert_eq!(presence.reap(), 1);
}

#[test]
#[should_panic(expected = "has no time driver")]
fn a_tokio_reaper_on_a_runtime_without_timers_is_refused_at_build() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _presence = presence_tracker::Presence::builder()
        .reaper(presence_tracker::Reaper::Tokio(runtime.handle().clone()))
        .build();
}

#[test]
#[should_panic(expected = "enable_time()")]
fn the_auto_reaper_inside_a_runtime_without_timers_is_refused_at_build() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _context = runtime.enter();
    let _presence = presence_tracker::Presence::builder().build();
}

#[test]
fn a_tokio_reaper_with_timers_builds() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let presence = presence_tracker::Presence::builder()
        .reaper(presence_tracker::Reaper::Tokio(runtime.handle().clone()))
        .build();
    presence.shutdown();
}
