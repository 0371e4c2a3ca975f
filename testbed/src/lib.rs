//! Benchmarks and end-to-end tests of `presence-tracker`; see `benches/` and `tests/`.
