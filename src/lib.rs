//! Who is online right now? An embeddable, in-process presence tracker for Rust servers,
//! with exact O(1) counts.
//!
//! A server calls [`Presence::touch`] (or [`Presence::visit`] with a page) on every request
//! with a [`SessionId`] and the visitor's [`Kind`]; a page's periodic
//! [`heartbeat`](Presence::heartbeat) keeps an open tab online. Anyone can then ask, in
//! constant time, "12 users online: 3 registered, 1 hidden and 8 guests" ([`Counts`]), who is
//! viewing a page ([`Presence::page_count`]), whether a user is online or when they were last
//! seen ([`Presence::user`]), and subscribe to [`Event`]s. A background [`Reaper`] evicts
//! sessions that went quiet.
//!
//! ```
//! use presence_tracker::{Kind, Presence, SessionId};
//!
//! fn main() -> Result<(), presence_tracker::PresenceError> {
//!     let presence = Presence::new();
//!     let (guest, alice_tab1, alice_tab2, bob) =
//!         (SessionId::new_v4(), SessionId::new_v4(), SessionId::new_v4(), SessionId::new_v4());
//!
//!     presence.visit(guest, Kind::Guest, "/")?;
//!     presence.visit(alice_tab1, Kind::member("alice"), "/forum/42")?;
//!     presence.visit(alice_tab2, Kind::member("alice"), "/forum/7")?; // one user, two tabs
//!     presence.touch(bob, Kind::hidden_member("bob"))?;              // signed in, not listed
//!
//!     let c = presence.counts();
//!     println!(
//!         "In total there are {} users online :: {} registered, {} hidden and {} guests",
//!         c.online, c.members, c.hidden, c.guests
//!     );
//!     assert_eq!((c.online, c.members, c.hidden, c.guests), (3, 1, 1, 1));
//!     assert_eq!(presence.page_count("/forum/42"), 1);
//!
//!     presence.leave(alice_tab1);                    // one tab closed: alice is still online
//!     assert_eq!(presence.counts().members, 1);
//!     Ok(())
//! }
//! ```
//!
//! # A tour
//! - [`Presence`]: the tracker handle (`Clone`, an `Arc` bump), built with
//!   [`Presence::builder`] ([`PresenceBuilder`]): timeouts, capacity, clock, reaper.
//! - [`SessionId`]: a UUID, strictly parsed; [`Kind`]: guest, bot, member, hidden member,
//!   with [`UserId`] a cheap-clone user name.
//! - [`Counts`] with its [`Peak`] ("most users ever online"), [`SessionInfo`] with its
//!   [`SessionState`] (active or idle), [`UserStatus`].
//! - Names: [`Presence::online_members`] and [`Presence::page_members`] list listed users by
//!   name ("Registered users: alice, bob"), each costing what it returns;
//!   [`Presence::sessions_page`] pages the admin list with a [`SessionCursor`].
//! - Bounds: names and pages longer than [`MAX_USER_LEN`] and [`MAX_PAGE_LEN`] are refused
//!   ([`PresenceError`]); offline users are remembered for last-seen up to
//!   [`PresenceBuilder::max_remembered_users`].
//! - [`Event`] and [`LeaveReason`] from [`Presence::subscribe`].
//! - Live: [`Presence::hold`] keeps a session online while its [`Hold`] (a WebSocket, a
//!   stream) lives, with no heartbeats; [`Presence::watch`] pushes the [`Counts`] and
//!   [`Presence::watch_page`] one page's count and who joined or left it ([`PageWatch`],
//!   [`PageDiff`]), at most every `publish_interval` and only when they changed.
//! - [`Clock`], [`SystemClock`] and [`ManualClock`] for tests that move time by hand.
//! - Restarts and operations: [`PresenceBuilder::snapshot_file`] keeps who is online (and
//!   last-seen times, the peak, the history) across a restart, [`Presence::save_snapshot`]
//!   writes it; [`Presence::history`] is `online` once per `history_interval` (a minute by
//!   default: the last 24 hours); [`Presence::erase_user`] ends a user's sessions and
//!   forgets their name at once (an account deletion, an erasure request).
//!
//! # Semantics
//! - A session is live while `now < deadline` and due from `now >= deadline`, where
//!   `deadline = min(last_seen + idle_timeout, last_active + heartbeat_limit)`: `last_seen`
//!   moves on touch, visit and heartbeat, `last_active` on touch and visit only. So a session
//!   with no call for `idle_timeout` goes offline, and a forgotten tab whose heartbeats keep
//!   beating goes offline `heartbeat_limit` after its last activity. These are the rules of
//!   sessions not held: a held session has no deadline, and leaves `hold_grace` after its
//!   last [`Hold`] is dropped ([`LeaveReason::Closed`]) unless continued.
//! - A due session is gone at once for every read, even before the reaper evicts it:
//!   [`heartbeat`](Presence::heartbeat) returns `false` and does not revive it; a touch starts
//!   a new session (`Joined`, after its `Left`). Reads settle what is due first (a bounded
//!   batch, so no request waits on a mass expiry: the reaper does the rest within a reap
//!   interval), so [`counts`](Presence::counts) equals a recount of
//!   [`sessions`](Presence::sessions) when no call is in flight.
//! - A user with several live sessions counts once. A user is *hidden* while all their live
//!   sessions are hidden; one listed session makes them a member. [`Presence::user`] is the
//!   server's truth: hiding a user from other visitors is the application's job.
//! - Events about one session, and about one user, arrive in the order the changes happened.
//!   No user code ever runs under an internal lock.
//! - At `max_sessions`, existing sessions keep working and new ones get
//!   [`PresenceError::Full`].
//!
//! # Features
//! - `serde`: `Serialize` for [`Counts`], [`SessionInfo`], [`UserStatus`], [`Event`] and the
//!   types they hold. Times serialize as integer milliseconds since the Unix epoch.
//! - `axum`: the `http` module: a tower layer issuing a UUID cookie, heartbeat / leave /
//!   counts routes, and the page script.
//! - `redis`: the `cluster` module: several server nodes share one cluster-wide view on
//!   Redis (or Redis Cluster), each keeping its local tracker and hot path.
//! - `metrics`: gauges (`presence_online`, `presence_members`, `presence_hidden`,
//!   `presence_guests`, `presence_bots`, `presence_sessions`, set on each reap pass),
//!   counters (`presence_joined_total`, `presence_left_total{reason}`,
//!   `presence_refused_total`) and a histogram (`presence_reap_seconds`) through the
//!   [`metrics`](https://docs.rs/metrics) facade; install the exporter you like.
//!
//! Warnings (an unusable snapshot, refused sessions, a slow reap pass) and each snapshot
//! save and restore are reported through [`tracing`](https://docs.rs/tracing).

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs, missing_debug_implementations)]

// The parts: `core/` the tracker (the session map and the tables kept in step with it, the
// write path, reads, reaping, save and restore), `persist/` the snapshot file's format and
// I/O, `observe/` metrics and history, `http/` (feature "axum") and `cluster/` (feature
// "redis") over the API; the plain types at the root.
//
// The layers, top first. A module uses only modules of its own layer or below, and no two
// use each other (no cycle); `tests/layers.rs` checks both against the code:
//   http cluster __internals  the optional parts and the internals' surface, over the API
//   presence  the API: each operation a few lines over the tracker
//   builder  the settings, validated
//   live live::hold live::page  holds and page watches: handles over the tracker
//   core::snapshot  the tracker's save and restore
//   core::tracker  the tracker: state, reads, reaping
//   core::lifecycle  the write path: starts, changes and ends a session
//   core::users core::pages core::holds core::expiry core::counters core::reaper  the tables
//   core::map core::session core::changes  the map, a session's stored form, the change log
//   persist observe  the snapshot file's format and I/O; metrics, history and the watches' channels
//   events info limits counts  plain types: events, read results, bounds, counts
//   error clock kind id sync  plain types: errors, time, kinds, ids, the sync primitives
mod builder;
mod clock;
mod core;
mod counts;
mod error;
mod events;
mod id;
mod info;
mod kind;
mod limits;
mod live;
mod observe;
mod persist;
mod presence;
mod sync;

/// The session map, for the workspace's benchmarks; not part of the API.
#[cfg(feature = "__bench_internals")]
#[doc(hidden)]
pub use crate::core::map;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod cluster;

/// Internal structures for the fuzz targets and the model-checking tests; not part of the
/// API.
#[cfg(any(feature = "__bench_internals", presence_loom))]
#[doc(hidden)]
#[path = "internals.rs"]
pub mod __internals;

pub use crate::builder::{MAX_REAP_INTERVAL, MAX_REMEMBER, MAX_TIMEOUT, PresenceBuilder};
pub use crate::core::reaper::Reaper;
pub use crate::counts::{Counts, Peak};
pub use crate::limits::{MAX_PAGE_LEN, MAX_USER_LEN};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::PresenceError;
pub use events::{Event, LeaveReason};
pub use id::{ParseSessionIdError, SessionId};
pub use info::{SessionCursor, SessionInfo, SessionState, Touch, UserStatus};
pub use kind::{Kind, UserId};
pub use live::{Hold, PageDiff, PageWatch};
pub use presence::Presence;

#[cfg(feature = "redis")]
pub use cluster::{Cluster, ClusterBuilder, ClusterCounts, ClusterError};

// The cluster view's serialized times, by their old path.
#[cfg(all(feature = "serde", feature = "redis"))]
use crate::clock::unix_millis;

const _: () = {
    const fn handle<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    handle::<Presence>();
    handle::<ManualClock>();
    handle::<SessionId>();
    handle::<Kind>();
    handle::<Event>();
    handle::<PageDiff>();
    const fn guard<T: Send + Sync + std::fmt::Debug + 'static>() {}
    guard::<Hold>();
    guard::<PageWatch>();
};

// The README's web and cluster examples need the `axum` and `redis` features, which the
// README's test command enables.
#[doc = include_str!("../README.md")]
#[cfg(all(doctest, feature = "axum", feature = "redis"))]
pub struct ReadmeDoctests;
