//! What the benchmarks share: the scale switch, the tracker under test and one
//! deterministic key generator, so that every structure in a group sees the same keys and
//! streams.

// Each bench binary uses a subset of these.
#![allow(dead_code)]

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
