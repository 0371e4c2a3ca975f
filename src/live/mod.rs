//! Live presence: sessions held by a connection, and counts and page members pushed to
//! whoever watches, on the same tracker.
//!
//! - [`Hold`] (from [`Presence::hold`](crate::Presence::hold)): a guard that keeps its
//!   session online while it lives, with no heartbeat; the last one dropped starts
//!   `hold_grace`, after which the session leaves with
//!   [`LeaveReason::Closed`](crate::LeaveReason::Closed) unless held or touched again.
//! - [`Presence::watch`](crate::Presence::watch): the latest [`Counts`](crate::Counts) on
//!   a tokio `watch` channel.
//! - [`PageWatch`] (from [`Presence::watch_page`](crate::Presence::watch_page)): one page's
//!   count and who joined or left it ([`PageDiff`]).
//!
//! Watches are published by a ticker every `publish_interval`, only when something changed,
//! and a slow receiver finds the latest value: nothing queues. Nothing is built on a touch:
//! with nobody watching a publish does nothing; with watchers it reads the counters and
//! the versions the page table stamps on page changes.
//!
//! The hold state itself lives in the core (the write path starts, holds, releases and ends
//! a session); this part owns the handles. The publisher's channels, which the tracker
//! feeds, sit below it in `observe::publish`.

pub(crate) mod hold;
pub(crate) mod page;

pub use self::hold::Hold;
pub use self::page::{PageDiff, PageWatch};
