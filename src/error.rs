//! [`PresenceError`]: why a call was refused.

use std::fmt;

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceError {
    /// The tracker holds `max_sessions` live sessions: a new one is refused (existing ones
    /// keep working). Presence is best effort; a web server should serve the request anyway.
    Full {
        /// The configured limit.
        max_sessions: usize,
    },
    /// The user name is longer than [`MAX_USER_LEN`](crate::MAX_USER_LEN) bytes.
    UserTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The page is longer than [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes.
    PageTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The session a [`Hold`](crate::Hold) was taken on has ended (an admin's
    /// [`leave`](crate::Presence::leave)); the hold keeps nothing online. Take a new one
    /// to come back.
    HoldEnded,
    /// `max_watched_pages` pages are watched already: a watch of another page is refused
    /// until one is dropped.
    TooManyWatchedPages {
        /// The configured limit.
        max: usize,
    },
}

impl fmt::Display for PresenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PresenceError::Full { max_sessions } => write!(
                f,
                "presence is full: {max_sessions} live sessions (max_sessions); \
                 new sessions are refused until some leave or expire"
            ),
            PresenceError::UserTooLong { len, max } => write!(
                f,
                "user name of {len} bytes refused: at most {max} (MAX_USER_LEN)"
            ),
            PresenceError::PageTooLong { len, max } => write!(
                f,
                "page of {len} bytes refused: at most {max} (MAX_PAGE_LEN); \
                 truncate paths and drop query strings before calling"
            ),
            PresenceError::HoldEnded => f.write_str(
                "the held session has ended (an explicit leave); take a new hold to come back",
            ),
            PresenceError::TooManyWatchedPages { max } => write!(
                f,
                "{max} pages are watched already (max_watched_pages); \
                 drop a PageWatch before watching another page"
            ),
        }
    }
}

impl std::error::Error for PresenceError {}
