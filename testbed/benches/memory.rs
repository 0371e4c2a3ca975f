//! Resident memory per session, for our tracker and the baselines.
//!
//! Each structure is measured in a fresh process: this binary runs itself again with
//! `PRESENCE_MEMORY_CHILD=<structure>` set, and the child reads its resident set size
//! (`VmRSS` in `/proc/self/status`) before and after building the structure, then prints
//! the growth. Keys are generated on the fly, never stored, so only the structure counts;
//! for ours that is everything it owns (session map, expiry index, counters, user and page
//! tables).
//!
//! - `cargo bench -p presence-tracker-testbed --bench memory`: one million sessions per
//!   structure.
//! - `cargo test -p presence-tracker-testbed --benches` (no `--bench` flag): a quick smoke
//!   run at 20k sessions.
//! - A positional argument filters structures by name, as criterion does
//!   (`cargo bench -p presence-tracker-testbed --bench memory -- presence`);
//!   `PRESENCE_MEMORY_SESSIONS=N` sets the size.
//!
//! Linux only (it reads `/proc`); elsewhere it says so and exits successfully.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use parking_lot::Mutex;
use presence_tracker::{Kind, SessionId};
use uuid::Uuid;

mod common;
use common::{SplitMix, tracker};

const CHILD_ENV: &str = "PRESENCE_MEMORY_CHILD";
const SESSIONS_ENV: &str = "PRESENCE_MEMORY_SESSIONS";

/// Structures, in report order, with what each one holds.
const STRUCTURES: [(&str, &str); 5] = [
    ("presence_guests", "presence-tracker, all guests"),
    (
        "presence_mixed",
        "presence-tracker, 1/4 members over 10k users, 1k pages",
    ),
    ("dashmap", "DashMap<Uuid, (Instant, u8)>"),
    ("mutex_hashmap", "Mutex<HashMap<Uuid, (Instant, u8)>>"),
    ("moka", "moka::sync::Cache<Uuid, u8>, time_to_idle"),
];

/// Resident set size in bytes, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Child side: build `structure` with `n` entries and print `bytes_per_session=<f64>`.
fn child(structure: &str, n: usize) {
    let mut rng = SplitMix(31);
    // Everything the build needs besides the structure is allocated before the first
    // reading: the user names and page names of the mixed load.
    let users: Vec<String> = (0..10_000).map(|u| format!("user{u}")).collect();
    let pages: Vec<String> = (0..1_000).map(|p| format!("/forum/{p}")).collect();
    let before = rss_bytes().expect("/proc/self/status has VmRSS");
    let start = Instant::now();
    // Each arm keeps its structure alive until after the second reading.
    let (after, len) = match structure {
        "presence_guests" => {
            let p = tracker();
            for _ in 0..n {
                p.touch(SessionId::from(rng.uuid()), Kind::Guest)
                    .expect("unbounded");
            }
            (rss_bytes(), p.counts().sessions)
        }
        "presence_mixed" => {
            let p = tracker();
            for i in 0..n {
                let id = SessionId::from(rng.uuid());
                let kind = if i % 4 == 0 {
                    Kind::member(users[(rng.next() % 10_000) as usize].as_str())
                } else {
                    Kind::Guest
                };
                let page = &pages[(rng.next() % 1_000) as usize];
                p.visit(id, kind, page).expect("unbounded");
            }
            (rss_bytes(), p.counts().sessions)
        }
        "dashmap" => {
            let now = Instant::now();
            let m: DashMap<Uuid, (Instant, u8)> = DashMap::new();
            for _ in 0..n {
                m.insert(rng.uuid(), (now, 0));
            }
            (rss_bytes(), m.len())
        }
        "mutex_hashmap" => {
            let now = Instant::now();
            let m: Mutex<HashMap<Uuid, (Instant, u8)>> = Mutex::new(HashMap::new());
            for _ in 0..n {
                m.lock().insert(rng.uuid(), (now, 0));
            }
            let len = m.lock().len();
            (rss_bytes(), len)
        }
        "moka" => {
            let c: moka::sync::Cache<Uuid, u8> = moka::sync::Cache::builder()
                .time_to_idle(Duration::from_secs(3600))
                .build();
            for _ in 0..n {
                c.insert(rng.uuid(), 0);
            }
            // Apply the buffered writes, so the count and the memory are the settled ones.
            c.run_pending_tasks();
            (rss_bytes(), c.entry_count() as usize)
        }
        other => panic!("unknown structure {other:?}"),
    };
    let after = after.expect("/proc/self/status has VmRSS");
    assert_eq!(len, n, "{structure}: every key should be held");
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!(
        "bytes_per_session={per:.1} rss_before={before} rss_after={after} build_ms={}",
        start.elapsed().as_millis()
    );
}

fn main() {
    if let Ok(structure) = std::env::var(CHILD_ENV) {
        let n = std::env::var(SESSIONS_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .expect("the parent passes the session count");
        child(&structure, n);
        return;
    }

    // Parent side. `cargo bench` passes `--bench` and possibly a filter; `cargo test
    // --benches` passes neither (or `--test`). Unknown flags are criterion's and ignored.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    if has("--list") {
        for (name, _) in STRUCTURES {
            println!("memory/{name}: benchmark");
        }
        return;
    }
    let full = has("--bench") && !has("--test");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let n: usize = std::env::var(SESSIONS_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if full { 1_000_000 } else { 20_000 });

    if rss_bytes().is_none() {
        println!("memory: /proc/self/status is not readable here; skipping");
        return;
    }
    let exe = std::env::current_exe().expect("own executable path");
    let selected: Vec<_> = STRUCTURES
        .iter()
        .filter(|(name, _)| filter.is_none_or(|f| format!("memory/{name}").contains(f.as_str())))
        .collect();
    if selected.is_empty() {
        return;
    }
    println!("memory: resident bytes per session at {n} sessions (one fresh process each)");
    for (name, what) in selected {
        let out = Command::new(&exe)
            .env(CHILD_ENV, name)
            .env(SESSIONS_ENV, n.to_string())
            .output()
            .expect("run self as a child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout.lines().find(|l| l.starts_with("bytes_per_session="));
        match (out.status.success(), line) {
            (true, Some(line)) => {
                let per = line
                    .split_whitespace()
                    .next()
                    .and_then(|f| f.strip_prefix("bytes_per_session="))
                    .unwrap_or("?");
                println!("memory/{name:<16} {per:>8} B/session   {what}   [{line}]");
            }
            _ => {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                panic!("memory/{name}: child failed ({})", out.status);
            }
        }
    }
}
