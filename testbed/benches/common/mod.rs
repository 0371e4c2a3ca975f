//! What the benchmarks share: the scale switch, the tracker under test and one
//! deterministic key generator, so that every structure in a group sees the same keys and
//! streams.

// Each bench binary uses a subset of these.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use presence_tracker::{Presence, Reaper};
use uuid::Uuid;

/// The tracker the benches measure: timeouts far beyond any run (nothing expires under
/// the timed loop), a manual reaper (no background thread competes) and the default
/// system clock (reading it is part of what a touch costs in production).
pub(crate) fn tracker() -> Presence {
    Presence::builder()
        .idle_timeout(Duration::from_secs(3600))
        .idle_after(Duration::from_secs(3600))
        .heartbeat_limit(Duration::from_secs(7200))
        .reaper(Reaper::Manual)
        .build()
}

/// `cargo bench` passes `--bench`; anything else (`cargo test --benches`, `--list`) only
/// needs the routines to run once, so it gets small sizes and starts fast.
/// `PRESENCE_BENCH_SCALE=full|small` overrides the guess.
pub(crate) fn full_scale() -> bool {
    match std::env::var("PRESENCE_BENCH_SCALE").as_deref() {
        Ok("full") => return true,
        Ok("small") => return false,
        _ => {}
    }
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    has("--bench") && !has("--test") && !has("--list")
}

/// A tiny deterministic generator (splitmix64).
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        // Lemire's multiply-shift; the bias is irrelevant here.
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }

    pub(crate) fn uuid(&mut self) -> Uuid {
        let bytes = ((u128::from(self.next()) << 64) | u128::from(self.next())).to_le_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

/// `n` distinct random keys, the same for a given seed.
pub(crate) fn keys(seed: u64, n: usize) -> Vec<Uuid> {
    let mut rng = SplitMix(seed);
    (0..n).map(|_| rng.uuid()).collect()
}

/// Counts the bytes live on the heap, from every thread, so a structure's cost is what it
/// allocated. A bench registers it with `#[global_allocator]` and reads [`live_bytes`].
pub(crate) struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; only a counter is
// updated beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System.alloc`, with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `System.alloc_zeroed`, with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the caller upholds the rest.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

/// Bytes live on the heap now, as [`Counting`] counts them.
pub(crate) fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}
