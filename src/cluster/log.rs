//! What an operator sees: Redis errors, stalls, the view going stale, refills and recoveries,
//! through `tracing`, rate-limited so that a Redis down for an hour writes a few lines, not
//! one per flush. The first of each kind is written at once; repeats at most once a minute,
//! with the number left out.

use std::time::{Duration, Instant};

use super::ClusterError;

/// How often a repeated warning of one kind is written at most.
const REPEAT_EVERY: Duration = Duration::from_secs(60);

/// The kinds of trouble, each rate-limited on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Trouble {
    /// Unreachable, refused, connection lost.
    Connection,
    /// Redis did not answer in time (stalled, overloaded).
    Timeout,
    /// Wrong or missing password.
    Auth,
    /// Redis is out of memory (`maxmemory` reached under `noeviction`).
    OutOfMemory,
    /// A script failed, or answered something unexpected.
    Script,
    /// Another live process uses this node id.
    NodeIdInUse,
}

impl Trouble {
    pub(super) fn of(e: &ClusterError) -> Trouble {
        match e {
            ClusterError::Timeout(_) => Trouble::Timeout,
            ClusterError::NodeIdInUse(_) => Trouble::NodeIdInUse,
            ClusterError::Redis(e) => {
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
                {
                    Trouble::Auth
                } else if e.code() == Some("OOM") {
                    Trouble::OutOfMemory
                } else if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                {
                    Trouble::Connection
                } else {
                    Trouble::Script
                }
            }
            ClusterError::Unavailable => Trouble::Connection,
            _ => Trouble::Script,
        }
    }
}

#[derive(Debug)]
struct Seen {
    trouble: Trouble,
    last_written: Instant,
    left_out: u64,
}

/// The node's diagnostics: which troubles were written when, and since when it is failing.
#[derive(Debug, Default)]
pub(super) struct Diagnostics {
    seen: Vec<Seen>,
    failing_since: Option<Instant>,
    stale: bool,
}

impl Diagnostics {
    /// A flush failed with `e`.
    pub(super) fn failed(&mut self, node: &str, e: &ClusterError) {
        let now = Instant::now();
        self.failing_since.get_or_insert(now);
        let trouble = Trouble::of(e);
        match self.seen.iter_mut().find(|s| s.trouble == trouble) {
            None => {
                write(node, trouble, e, 0);
                self.seen.push(Seen {
                    trouble,
                    last_written: now,
                    left_out: 0,
                });
            }
            Some(s) if now.duration_since(s.last_written) >= REPEAT_EVERY => {
                write(node, trouble, e, s.left_out);
                s.last_written = now;
                s.left_out = 0;
            }
            Some(s) => s.left_out += 1,
        }
        self.mark_stale(node);
    }

    /// A flush succeeded; `stale` says whether the view it read is incomplete.
    pub(super) fn succeeded(&mut self, node: &str, stale: bool) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                node,
                after = ?since.elapsed(),
                "presence cluster: Redis answers again"
            );
            // A new episode writes its first warning at once again.
            self.seen.clear();
        }
        if stale {
            self.mark_stale(node);
        } else if self.stale {
            self.stale = false;
            tracing::info!(node, "presence cluster: the view is complete again");
        }
    }

    fn mark_stale(&mut self, node: &str) {
        if !self.stale {
            self.stale = true;
            tracing::info!(
                node,
                "presence cluster: the view is stale; reads answer the last complete view"
            );
        }
    }
}

fn write(node: &str, trouble: Trouble, e: &ClusterError, left_out: u64) {
    match trouble {
        Trouble::NodeIdInUse => tracing::error!(
            node,
            repeats = left_out,
            "presence cluster: {e}; this node sends nothing until the other one stops"
        ),
        Trouble::Auth => tracing::error!(node, repeats = left_out, "presence cluster: {e}"),
        _ => tracing::warn!(
            node,
            repeats = left_out,
            "presence cluster: flush failed: {e}; changes are kept and sent once Redis answers"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn troubles_are_told_apart() {
        let io =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(Trouble::of(&ClusterError::Redis(io)), Trouble::Connection);
        assert_eq!(
            Trouble::of(&ClusterError::Timeout(Duration::from_secs(1))),
            Trouble::Timeout
        );
        assert_eq!(
            Trouble::of(&ClusterError::NodeIdInUse("web-1".into())),
            Trouble::NodeIdInUse
        );
    }

    #[test]
    fn a_repeated_trouble_is_counted_not_written() {
        let mut d = Diagnostics::default();
        let e = ClusterError::Timeout(Duration::from_secs(1));
        for _ in 0..100 {
            d.failed("n", &e);
        }
        assert_eq!(d.seen.len(), 1);
        assert_eq!(d.seen[0].left_out, 99);
        d.succeeded("n", false);
        assert!(d.seen.is_empty() && d.failing_since.is_none() && !d.stale);
    }
}
