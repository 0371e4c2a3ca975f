//! What operators see of a running tracker: the `metrics` facade's gauges, counters and
//! histogram (feature `metrics`), and the `tracing` events for slow reaps and refused
//! sessions.
//!
//! Nothing here is on the hot path: counters move on joins, leaves and refusals (the write
//! path), gauges and the histogram once per reap pass. Without the `metrics` feature the
//! metric calls compile to nothing; the `tracing` events stay.
//!
//! | name | type | when |
//! |---|---|---|
//! | `presence_online`, `presence_members`, `presence_hidden`, `presence_guests`, `presence_bots`, `presence_sessions` | gauge | each reap pass |
//! | `presence_joined_total` | counter | a session starts |
//! | `presence_left_total{reason="expired"\|"left"\|"heartbeat_limit"}` | counter | a session ends |
//! | `presence_refused_total` | counter | a new session is refused at `max_sessions` |
//! | `presence_reap_seconds` | histogram | each reap pass |

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::Tick;
use crate::counts::Counts;
use crate::events::LeaveReason;

/// A reap pass longer than this is reported through `tracing`.
const SLOW_REAP: Duration = Duration::from_millis(10);
/// At most one warning about refused sessions in this long (ms).
const REFUSAL_WARN_EVERY: Tick = 10_000;

/// A session started.
#[inline]
pub(crate) fn joined() {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("presence_joined_total").increment(1);
}

/// A session ended for `reason`.
#[inline]
pub(crate) fn left(reason: LeaveReason) {
    #[cfg(feature = "metrics")]
    ::metrics::counter!("presence_left_total", "reason" => reason_label(reason)).increment(1);
    #[cfg(not(feature = "metrics"))]
    let _ = reason;
}

/// The label value of a leave reason.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) fn reason_label(reason: LeaveReason) -> &'static str {
    match reason {
        LeaveReason::Expired => "expired",
        LeaveReason::Left => "left",
        LeaveReason::HeartbeatLimit => "heartbeat_limit",
        LeaveReason::Closed => "closed",
    }
}

/// A reap pass is over: sets the gauges from `counts` (read only with the feature on or
/// when the pass was slow), records its duration, and reports it if it was slow.
pub(crate) fn reap_pass(counts: impl FnOnce() -> Counts, took: Duration) {
    #[cfg(feature = "metrics")]
    let counts = {
        let c = counts();
        ::metrics::gauge!("presence_online").set(c.online as f64);
        ::metrics::gauge!("presence_members").set(c.members as f64);
        ::metrics::gauge!("presence_hidden").set(c.hidden as f64);
        ::metrics::gauge!("presence_guests").set(c.guests as f64);
        ::metrics::gauge!("presence_bots").set(c.bots as f64);
        ::metrics::gauge!("presence_sessions").set(c.sessions as f64);
        ::metrics::histogram!("presence_reap_seconds").record(took.as_secs_f64());
        move || c
    };
    if took > SLOW_REAP {
        let c = counts();
        tracing::info!(
            took_ms = took.as_millis() as u64,
            sessions = c.sessions,
            "presence: slow reap pass"
        );
    }
}

/// Refused sessions, reported at most once per [`REFUSAL_WARN_EVERY`] with how many were
/// refused since the last report: a flood of refusals is one line every ten seconds, not a
/// line a request.
#[derive(Debug)]
pub(crate) struct Refusals {
    since_warned: AtomicU64,
    last_warned: AtomicU64,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            since_warned: AtomicU64::new(0),
            // Ticks start far above zero, so the first refusal is reported at once.
            last_warned: AtomicU64::new(0),
        }
    }
}

impl Refusals {
    /// A new session was refused at `max_sessions`.
    pub(crate) fn refused(&self, max_sessions: usize, now: Tick) {
        #[cfg(feature = "metrics")]
        ::metrics::counter!("presence_refused_total").increment(1);
        self.since_warned.fetch_add(1, Ordering::Relaxed);
        let last = self.last_warned.load(Ordering::Relaxed);
        if now < last.saturating_add(REFUSAL_WARN_EVERY) {
            return;
        }
        if self
            .last_warned
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            let refused = self.since_warned.swap(0, Ordering::Relaxed);
            tracing::warn!(
                refused,
                max_sessions,
                "presence: new sessions refused, the tracker is full (max_sessions)"
            );
        }
    }
}
