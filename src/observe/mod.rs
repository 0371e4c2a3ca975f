//! What operators and watchers see: the `metrics` facade's gauges and counters, `tracing`
//! words about slow reaps and refusals, the `online` history ring for charts, and the
//! channels that push the latest counts and watched pages (`publish`).
//!
//! It is told what happened (the core calls it) and never reads nor changes the tracker's
//! tables itself. It uses only the plain types at the crate root.

pub(crate) mod history;
pub(crate) mod metrics;
pub(crate) mod publish;
