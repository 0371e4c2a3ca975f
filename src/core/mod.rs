//! The core: the tracker and the tables it keeps in step. The session map (shards, slab,
//! table), each session's stored form, the expiry index, the user, page and hold tables, the
//! counters, the change log; the write path (one place starts, changes and ends a session);
//! the tracker (state, reads, reaping), its background reaper, and the tracker's save to and
//! restore from the snapshot file.
//!
//! It owns every table about sessions; nothing outside this folder changes one. It does not
//! know the public handle (`Presence`), the builder, the HTTP layer or the cluster view; it
//! uses the plain types at the crate root, `persist` for the file format, and `observe` for
//! metrics, history and the watches' channels it feeds.

pub(crate) mod changes;
pub(crate) mod counters;
pub(crate) mod expiry;
pub(crate) mod holds;
pub(crate) mod lifecycle;
#[cfg(feature = "__bench_internals")]
#[doc(hidden)]
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::new_without_default,
    clippy::len_without_is_empty
)]
pub mod map;
#[cfg(not(feature = "__bench_internals"))]
pub(crate) mod map;
pub(crate) mod pages;
pub(crate) mod reaper;
pub(crate) mod session;
pub(crate) mod snapshot;
pub(crate) mod tracker;
pub(crate) mod users;
