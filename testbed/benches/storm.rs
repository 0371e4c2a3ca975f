//! Latency during an expiry storm: 1M sessions, 100k of them falling due at one instant, and
//! how long a `counts()` and a `touch` from other threads take while the background reaper
//! evicts the storm.
//!
//! ```text
//! cargo bench -p presence-tracker-testbed --bench storm
//! STORM_ROUNDS=5 cargo bench -p presence-tracker-testbed --bench storm
//! ```
//!
//! A custom harness rather than criterion: criterion times one routine repeated many times
//! and reports its typical cost, while what matters here is the tail of a latency
//! distribution (p99, worst) around a one-off event, the storm, which cannot be repeated
//! inside a timing loop: each round needs 1M sessions built afresh. So each round builds the
//! tracker, starts two measuring threads (one calling `counts()` in a loop, one touching
//! random live sessions), moves the manual clock past the deadline of the 100k, and records
//! every call's latency until `counts()` reports the 100k gone; then it prints the
//! percentiles of the calls made during the storm. The same file builds against older
//! versions of the crate (it uses only `Presence`, its builder and `ManualClock`), which is
//! how a before/after table is made.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use presence_tracker::{Kind, ManualClock, Presence, Reaper, SessionId};

const SESSIONS: usize = 1_000_000;
const STORM: usize = 100_000;
const IDLE: Duration = Duration::from_secs(300);
/// The two ways a storm gets evicted: by the reads themselves (a reader in a tight loop
/// settles a bounded batch per call, and the reaper's next turn is far off), and by the
/// background reaper (it wakes often, the reader calls once a millisecond).
const SCENARIOS: [Scenario; 2] = [
    Scenario {
        name: "reads settle",
        reap_interval: Duration::from_millis(250),
        pace: None,
    },
    Scenario {
        name: "reaper evicts",
        reap_interval: Duration::from_millis(10),
        pace: Some(Duration::from_millis(1)),
    },
];

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    reap_interval: Duration,
    /// Pause between two `counts()` calls.
    pace: Option<Duration>,
}
/// A round that has not cleared the storm by then reports it and stops waiting.
const GIVE_UP: Duration = Duration::from_secs(60);

fn main() {
    // `cargo bench` passes `--bench` (and any filter); with `cargo test --benches` this runs
    // one tiny round so the harness itself is checked without a million sessions.
    let testing =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let rounds: usize = std::env::var("STORM_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (sessions, storm, rounds) = if testing {
        (20_000, 2_000, 1)
    } else {
        (SESSIONS, STORM, rounds)
    };
    for scenario in SCENARIOS {
        run(scenario, sessions, storm, rounds);
    }
}

fn run(scenario: Scenario, sessions: usize, storm: usize, rounds: usize) {
    println!(
        "storm, {}: {sessions} sessions, {storm} due at one instant, reaper every {:?}, counts() {}",
        scenario.name,
        scenario.reap_interval,
        match scenario.pace {
            None => "in a loop".to_owned(),
            Some(p) => format!("every {p:?}"),
        }
    );
    let mut all = Vec::new();
    for round in 1..=rounds {
        let r = round_once(scenario, sessions, storm);
        println!(
            "round {round}: storm cleared in {:>8.1} ms | counts() first {:>8} n={:>7} p50 {:>8} p99 {:>8} p99.9 {:>8} worst {:>8} | touch n={:>8} p50 {:>8} p99 {:>8} p99.9 {:>8} worst {:>8}",
            r.cleared.as_secs_f64() * 1e3,
            us(Some(r.first)),
            r.counts.len(),
            us(pct(&r.counts, 50.0)),
            us(pct(&r.counts, 99.0)),
            us(pct(&r.counts, 99.9)),
            us(r.counts.last().copied()),
            r.touch.len(),
            us(pct(&r.touch, 50.0)),
            us(pct(&r.touch, 99.0)),
            us(pct(&r.touch, 99.9)),
            us(r.touch.last().copied()),
        );
        all.push(r);
    }
    let merged = |f: fn(&Round) -> &Vec<Duration>| {
        let mut v: Vec<Duration> = all.iter().flat_map(|r| f(r).iter().copied()).collect();
        v.sort_unstable();
        v
    };
    let (counts, touch) = (merged(|r| &r.counts), merged(|r| &r.touch));
    println!(
        "all rounds: counts() p99 {} worst {} | touch p99 {} worst {}",
        us(pct(&counts, 99.0)),
        us(counts.last().copied()),
        us(pct(&touch, 99.0)),
        us(touch.last().copied()),
    );
}

struct Round {
    cleared: Duration,
    /// The first `counts()` after the clock moved: it meets the storm first.
    first: Duration,
    /// Latencies of the calls made during the storm, sorted.
    counts: Vec<Duration>,
    touch: Vec<Duration>,
}

fn round_once(scenario: Scenario, sessions: usize, storm: usize) -> Round {
    let clock = ManualClock::new();
    let presence = Presence::builder()
        .idle_timeout(IDLE)
        .idle_after(IDLE)
        .heartbeat_limit(IDLE * 4)
        .reap_interval(scenario.reap_interval)
        .clock(clock.clone())
        .reaper(Reaper::Thread)
        .build();
    let ids: Vec<SessionId> = (0..sessions).map(|_| SessionId::new_v4()).collect();
    // The storm's sessions start first; the rest half a timeout later, so that when the
    // first fall due the others have half a timeout to go.
    for id in &ids[..storm] {
        presence.touch(*id, Kind::Guest).expect("room");
    }
    clock.advance(IDLE / 2);
    for id in &ids[storm..] {
        presence.touch(*id, Kind::Guest).expect("room");
    }
    let live = Arc::new(ids[storm..].to_vec());
    assert_eq!(presence.counts().sessions, sessions);

    let storming = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (presence, storming, done) = (presence.clone(), storming.clone(), done.clone());
        let left = sessions - storm;
        thread::spawn(move || {
            let mut lat = Vec::with_capacity(1 << 20);
            while !storming.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            let start = Instant::now();
            loop {
                let t = Instant::now();
                let c = presence.counts();
                lat.push(t.elapsed());
                if c.sessions == left {
                    break;
                }
                if start.elapsed() > GIVE_UP {
                    eprintln!(
                        "storm not cleared after {GIVE_UP:?}: {} sessions",
                        c.sessions
                    );
                    break;
                }
            }
            done.store(true, Ordering::Release);
            lat
        })
    };
    let toucher = {
        let (presence, storming, done, live) = (
            presence.clone(),
            storming.clone(),
            done.clone(),
            live.clone(),
        );
        thread::spawn(move || {
            let mut lat = Vec::with_capacity(1 << 22);
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            while !storming.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            while !done.load(Ordering::Acquire) {
                // xorshift: a random live session, not the same few cache lines each time.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = live[(x % live.len() as u64) as usize];
                let t = Instant::now();
                let touched = presence.touch(id, Kind::Guest);
                lat.push(t.elapsed());
                assert!(touched.is_ok());
            }
            lat
        })
    };

    // The storm: the first `storm` sessions are due now, the rest in half a timeout.
    clock.advance(IDLE / 2 + Duration::from_millis(1));
    let started = Instant::now();
    storming.store(true, Ordering::Release);
    let mut counts = reader.join().expect("reader");
    let first = counts.first().copied().unwrap_or_default();
    let cleared = started.elapsed();
    let mut touch = toucher.join().expect("toucher");
    assert_eq!(presence.counts().sessions, sessions - storm);
    presence.shutdown();
    counts.sort_unstable();
    touch.sort_unstable();
    Round {
        cleared,
        first,
        counts,
        touch,
    }
}

fn pct(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn us(d: Option<Duration>) -> String {
    match d {
        Some(d) if d >= Duration::from_millis(1) => format!("{:.2}ms", d.as_secs_f64() * 1e3),
        Some(d) => format!("{:.1}us", d.as_secs_f64() * 1e6),
        None => "-".into(),
    }
}
