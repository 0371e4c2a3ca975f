//! The longest user name and page the tracker stores, and the check every write makes.

use crate::Kind;
use crate::error::PresenceError;

/// Longest user name the tracker accepts, in bytes; a longer one is refused with
/// [`PresenceError::UserTooLong`]. Names are kept while online and remembered for last-seen,
/// so they are bounded.
pub const MAX_USER_LEN: usize = 256;

/// Longest page the tracker accepts, in bytes; a longer one is refused with
/// [`PresenceError::PageTooLong`]. The HTTP layer truncates request paths to this before
/// calling.
pub const MAX_PAGE_LEN: usize = 1024;

/// Refuses a user name or page longer than the tracker stores.
pub(crate) fn check_lengths(kind: &Kind, page: Option<&str>) -> Result<(), PresenceError> {
    if let Some(user) = kind.user() {
        check_user(user)?;
    }
    if let Some(page) = page.filter(|p| p.len() > MAX_PAGE_LEN) {
        return Err(PresenceError::PageTooLong {
            len: page.len(),
            max: MAX_PAGE_LEN,
        });
    }
    Ok(())
}

/// Refuses a user name longer than the tracker stores.
pub(crate) fn check_user(user: &str) -> Result<(), PresenceError> {
    if user.len() > MAX_USER_LEN {
        return Err(PresenceError::UserTooLong {
            len: user.len(),
            max: MAX_USER_LEN,
        });
    }
    Ok(())
}
