//! What does a restart cost? Saving and restoring a snapshot of a million sessions.
//!
//! - `snapshot/1M_sessions/save`: `save_snapshot()` (encode, write, fsync, rename, fsync of
//!   the directory), against `write_same_bytes`: writing a buffer of the snapshot's size the
//!   same atomic way, the floor any format pays for its bytes.
//! - `snapshot/1M_sessions/load`: building a tracker from the snapshot (read, check, decode,
//!   restore every session with its user and page), against `read_same_bytes` (reading the
//!   file, the floor) and `touch_same_sessions` (filling an empty tracker with the same
//!   million sessions by `visit`, what the tracker pays without a snapshot).
//!
//! The sessions are a forum's mix: 70 % guests, 25 % members (200k distinct names, some on
//! two tabs), 5 % bots, on 5 000 pages. The size on disk is printed once per run, in bytes
//! and bytes per session; so is the CPU time of three more saves and loads (the thread's
//! own time from `/proc/thread-self/schedstat` on Linux), a figure that other processes
//! competing for the CPUs do not inflate the way they inflate wall-clock times.
//!
//! Run: `cargo bench -p presence-tracker-testbed --bench snapshot -- --warm-up-time 1 --measurement-time 3`

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode};
use presence_tracker::{Kind, Presence, PresenceBuilder, Reaper, SessionId};

mod common;
use common::{SplitMix, full_scale};

fn builder() -> PresenceBuilder {
    Presence::builder()
        .idle_timeout(Duration::from_secs(3600))
        .idle_after(Duration::from_secs(3600))
        .heartbeat_limit(Duration::from_secs(7200))
        .reaper(Reaper::Manual)
}

/// The sessions: (id, kind, page).
fn sessions(n: usize) -> Vec<(SessionId, Kind, String)> {
    let mut rng = SplitMix(0x5EED);
    let users = (n / 5).max(1);
    (0..n)
        .map(|_| {
            let id = SessionId::from(rng.uuid());
            let kind = match rng.below(100) {
                0..70 => Kind::Guest,
                70..95 => Kind::member(format!("member{}", rng.below(users))),
                _ => Kind::Bot,
            };
            let page = format!("/forum/t/{}", rng.below(5_000));
            (id, kind, page)
        })
        .collect()
}

fn fill(presence: &Presence, sessions: &[(SessionId, Kind, String)]) {
    for (id, kind, page) in sessions {
        presence.visit(*id, kind.clone(), page).unwrap();
    }
}

/// Writes `bytes` to `path` as the snapshot does: temporary file, fsync, rename, fsync of
/// the directory.
fn write_atomic(path: &Path, bytes: &[u8]) {
    let dir = path.parent().unwrap();
    let tmp = dir.join("baseline.tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::rename(&tmp, path).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
}

/// CPU time of this thread so far (Linux), or `None`.
fn thread_cpu() -> Option<Duration> {
    let stat = fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Median CPU time of `f` over three runs (what it returns is dropped untimed), if the
/// platform tells.
fn cpu_median<T>(mut f: impl FnMut() -> T) -> Option<Duration> {
    let mut runs = Vec::new();
    for _ in 0..3 {
        let before = thread_cpu()?;
        let made = f();
        runs.push(thread_cpu()? - before);
        drop(made);
    }
    runs.sort();
    Some(runs[1])
}

fn label(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{}M", n / 1_000_000)
    } else {
        format!("{}k", n / 1_000)
    }
}

fn bench(c: &mut Criterion) {
    let n = if full_scale() { 1_000_000 } else { 10_000 };
    let dir: PathBuf = std::env::temp_dir().join(format!("presence-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    let saved = dir.join("saved.snapshot");
    let list = sessions(n);
    let presence = builder().snapshot_file(&saved).build();
    fill(&presence, &list);
    presence.save_snapshot().unwrap();
    let size = fs::metadata(&saved).unwrap().len();
    eprintln!(
        "snapshot of {n} sessions ({} online): {size} bytes, {:.1} bytes/session",
        presence.counts().online,
        size as f64 / n as f64
    );

    let mut group = c.benchmark_group(format!("snapshot/{}_sessions", label(n)));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);

    group.bench_function("save", |b| b.iter(|| presence.save_snapshot().unwrap()));
    let bytes = fs::read(&saved).unwrap();
    let baseline = dir.join("baseline.snapshot");
    group.bench_function("write_same_bytes", |b| {
        b.iter(|| write_atomic(&baseline, &bytes))
    });

    // Each load's tracker saves again when dropped (untimed), to a file of its own.
    let loaded = dir.join("load.snapshot");
    fs::copy(&saved, &loaded).unwrap();
    group.bench_function("load", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let restored = builder().snapshot_file(&loaded).build();
                took += started.elapsed();
                assert_eq!(restored.counts().sessions, n);
            }
            took
        })
    });
    group.bench_function("read_same_bytes", |b| {
        b.iter(|| fs::read(&loaded).unwrap().len())
    });
    group.bench_function("touch_same_sessions", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                let fresh = builder().build();
                let started = Instant::now();
                fill(&fresh, &list);
                took += started.elapsed();
            }
            took
        })
    });
    group.finish();
    let save_cpu = cpu_median(|| presence.save_snapshot().unwrap());
    let load_cpu = cpu_median(|| builder().snapshot_file(&loaded).build());
    if let (Some(save), Some(load)) = (save_cpu, load_cpu) {
        eprintln!("CPU time of this thread (median of 3): save {save:.2?}, load {load:.2?}");
    }
    drop(presence);
    fs::remove_dir_all(&dir).unwrap();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
