//! What the read operations return: [`Touch`], [`SessionInfo`] with its [`SessionState`], and
//! [`UserStatus`]. Plain data; times are wall-clock [`SystemTime`]s.

use std::time::SystemTime;

use crate::{Kind, SessionId};

/// Whether a call started a session or refreshed a live one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Touch {
    /// A new session started (it was unknown, or had already expired).
    Joined,
    /// A live session was refreshed.
    Refreshed,
}

/// Whether a live session shows activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum SessionState {
    /// Touched or visited within `idle_after`.
    Active,
    /// No activity for `idle_after` (heartbeats may still keep it online).
    Idle,
}

/// One live session, as the admin list shows it.
///
/// `#[non_exhaustive]`: fields may be added. Outside this crate, build one with
/// [`SessionInfo::new`] and set the public fields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct SessionInfo {
    /// The session.
    pub id: SessionId,
    /// Its current kind.
    pub kind: Kind,
    /// The page of its last [`visit`](crate::Presence::visit), if any.
    pub page: Option<String>,
    /// When it started.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::clock::unix_millis"))]
    pub first_seen: SystemTime,
    /// Its last touch, visit or heartbeat.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::clock::unix_millis"))]
    pub last_seen: SystemTime,
    /// Its last touch or visit (activity; heartbeats do not count).
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::clock::unix_millis"))]
    pub last_active: SystemTime,
    /// Active or idle, now.
    pub state: SessionState,
}

/// Where a signed-in user stands: the server's truth, hidden users included.
///
/// Keeping a hidden user's status from other visitors is the application's job: check
/// `hidden` before showing it.
///
/// `#[non_exhaustive]`, and so are its variants: states and fields may be added, so match
/// with a `_` arm and `..`; build one with [`UserStatus::online`] or
/// [`UserStatus::offline`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "status", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum UserStatus {
    /// At least one live session.
    #[non_exhaustive]
    Online {
        /// How many live sessions (tabs, browsers, devices).
        sessions: usize,
        /// The latest touch, visit or heartbeat of any of them.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::clock::unix_millis"))]
        last_seen: SystemTime,
        /// Whether every session is idle.
        idle: bool,
        /// Whether every session is hidden (then the user counts in `hidden`).
        hidden: bool,
    },
    /// No live session; seen within `remember_users_for`.
    #[non_exhaustive]
    Offline {
        /// The last touch, visit or heartbeat of their last session.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::clock::unix_millis"))]
        last_seen: SystemTime,
    },
    /// Never seen, or offline for longer than `remember_users_for`.
    Unknown,
}

impl SessionInfo {
    /// A session of `kind` seen first, last and last active at `at`, on no page, active:
    /// for code that builds one itself (a test, another store); set the other fields after.
    pub fn new(id: SessionId, kind: Kind, at: SystemTime) -> Self {
        SessionInfo {
            id,
            kind,
            page: None,
            first_seen: at,
            last_seen: at,
            last_active: at,
            state: SessionState::Active,
        }
    }
}

impl UserStatus {
    /// [`UserStatus::Online`] with these values.
    pub fn online(sessions: usize, last_seen: SystemTime, idle: bool, hidden: bool) -> Self {
        UserStatus::Online {
            sessions,
            last_seen,
            idle,
            hidden,
        }
    }

    /// [`UserStatus::Offline`], last seen at `last_seen`.
    pub fn offline(last_seen: SystemTime) -> Self {
        UserStatus::Offline { last_seen }
    }
}

/// A position in the admin list, for paging it with
/// [`Presence::sessions_page`](crate::Presence::sessions_page): the storage order, so a page
/// costs what it holds. Shown and parsed as a decimal number, for use in a URL
/// (`/admin?from=4294967296`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SessionCursor(pub(crate) u64);

impl SessionCursor {
    /// The start of the list.
    pub const START: SessionCursor = SessionCursor(0);
}

impl std::fmt::Display for SessionCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for SessionCursor {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(SessionCursor)
    }
}
