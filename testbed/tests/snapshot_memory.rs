//! What the snapshot reader allocates, counted by a global allocator: bounded by the file's
//! size, whatever the file claims. Crafted files with a valid checksum: a million empty
//! strings, half a million offline entries, half a million history samples, a hundred
//! thousand sessions past `max_sessions`. Each would make a reader that reserves by the
//! counts it reads take many times the file (24 bytes a `String` for a 1-byte string).
//!
//! One test in this binary, so that nothing else allocates while it measures.

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use presence_tracker::{ManualClock, Presence, Reaper};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = CURRENT.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's arguments.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const T0: u64 = 1_800_000_000;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn file(strings: &[(usize, &str)], sessions: usize, offline: usize, history: usize) -> Vec<u8> {
    let mut p = Vec::new();
    put_varint(&mut p, T0 * 1000 * 2); // saved at T0 (zigzag)
    p.extend_from_slice(&[0, 0]); // peak 0 at the epoch
    put_varint(&mut p, strings.iter().map(|(n, _)| *n as u64).sum());
    for (n, s) in strings {
        for _ in 0..*n {
            put_varint(&mut p, s.len() as u64);
            p.extend_from_slice(s.as_bytes());
        }
    }
    put_varint(&mut p, sessions as u64);
    for i in 0..sessions {
        p.extend_from_slice(&(i as u128 + 1).to_le_bytes());
        p.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // a guest, no page, seen just now
    }
    put_varint(&mut p, offline as u64);
    for _ in 0..offline {
        p.extend_from_slice(&[1, 0, 0]); // the first string, offline since just now
    }
    put_varint(&mut p, history as u64);
    for i in 0..history {
        put_varint(&mut p, (i as u64) << 1);
        p.push(0);
    }
    let mut out = b"PRESENCE".to_vec();
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(p.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    out.extend_from_slice(&p);
    out
}

/// The most bytes allocated at once while a tracker is built on `bytes`, above what was
/// allocated before, and the sessions it restored.
fn peak_of_build(path: &Path, bytes: &[u8]) -> (usize, usize) {
    fs::write(path, bytes).unwrap();
    let clock = ManualClock::starting_at(UNIX_EPOCH + Duration::from_secs(T0));
    let builder = Presence::builder()
        .clock(clock)
        .reaper(Reaper::Manual)
        .max_sessions(10)
        .snapshot_file(path);
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let presence = builder.build();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let sessions = presence.counts().sessions;
    drop(presence);
    fs::remove_file(path).unwrap();
    (peak, sessions)
}

#[test]
fn the_reader_allocates_in_proportion_to_the_file_whatever_it_claims() {
    let dir = std::env::temp_dir().join(format!(
        "presence-snapshot-memory-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    fs::create_dir_all(&dir).unwrap();
    let path = dir.join("presence.snapshot");
    let (base, _) = peak_of_build(&path, &file(&[], 0, 0, 0));
    let cases = [
        ("a million empty strings", file(&[(1_000_000, "")], 0, 0, 0)),
        (
            "half a million offline entries",
            file(&[(1, "alice")], 0, 500_000, 0),
        ),
        ("half a million history samples", file(&[], 0, 0, 500_000)),
        ("100k sessions past max_sessions", file(&[], 100_000, 0, 0)),
    ];
    for (what, bytes) in cases {
        let (peak, sessions) = peak_of_build(&path, &bytes);
        let over = peak.saturating_sub(base);
        println!(
            "{what}: file {} bytes, peak {over} bytes above an empty start ({:.1}x)",
            bytes.len(),
            over as f64 / bytes.len() as f64
        );
        // The file itself, plus at most 4 bytes a string (each at least 1 byte on disk)
        // and the restore's own bounded tables: within 6 times the file.
        assert!(
            over <= 6 * bytes.len(),
            "{what}: {over} bytes for a file of {}",
            bytes.len()
        );
        assert!(sessions <= 10);
    }
    fs::remove_dir_all(dir).unwrap();
}
