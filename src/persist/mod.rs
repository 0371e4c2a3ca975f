//! Persistence: the snapshot file's format (encode, checked decode) and the file itself
//! (atomic write, bounded read, moving an unusable file aside, the advisory lock).
//!
//! It knows nothing of the tracker: it turns records into bytes and bytes into records. The
//! tracker's save and restore, which walk its tables, live beside the write path in
//! `core::snapshot`. It uses only the plain types at the crate root.

pub(crate) mod format;
