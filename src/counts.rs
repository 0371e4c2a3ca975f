//! [`Counts`] and [`Peak`]: who is online, as [`Presence::counts`](crate::Presence::counts)
//! returns it. Plain data.

use std::time::SystemTime;

/// The most people ever online at once, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Peak {
    /// The highest [`Counts::online`] seen since the tracker was built.
    pub online: usize,
    /// When it was first reached (the build time while `online` is 0).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::clock::unix_millis"))]
    pub at: SystemTime,
}

/// Who is online, as phpBB puts it: "12 users online: 3 registered, 1 hidden and 8 guests".
///
/// `online == members + hidden + guests` and `active + idle == sessions` hold in every value
/// returned (the sums are computed from the fields read).
///
/// # Under concurrency
/// Each field is read once, one after the other, without a lock: with no call in flight the
/// value equals a recount of [`Presence::sessions`](crate::Presence::sessions). While other
/// threads change sessions, each field is exact at the instant it was read, and one change
/// in flight may be seen half done: a guest signing in may show in neither `guests` nor
/// `members`, or in both, for that one read; a counter never goes below zero, and the next
/// read after the change completes sees it whole.
///
/// `#[non_exhaustive]`: fields may be added. Outside this crate, start from
/// [`Counts::default`] (all zero, the peak at the Unix epoch) and set the fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Counts {
    /// People online: `members + hidden + guests` (bots are not people).
    pub online: usize,
    /// Distinct listed users (two tabs of one user count once).
    pub members: usize,
    /// Distinct users all of whose sessions are hidden.
    pub hidden: usize,
    /// Guest sessions.
    pub guests: usize,
    /// Bot sessions.
    pub bots: usize,
    /// All live sessions, of every kind.
    pub sessions: usize,
    /// Live sessions with activity within `idle_after`.
    pub active: usize,
    /// Live sessions without activity for `idle_after` ("away").
    pub idle: usize,
    /// The most people ever online at once.
    pub peak: Peak,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            online: 0,
            members: 0,
            hidden: 0,
            guests: 0,
            bots: 0,
            sessions: 0,
            active: 0,
            idle: 0,
            peak: Peak {
                online: 0,
                at: SystemTime::UNIX_EPOCH,
            },
        }
    }
}
