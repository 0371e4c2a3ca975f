//! [`Kind`]: what sort of visitor a session is, and [`UserId`], a signed-in user's name.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A shared immutable string behind a *thin* pointer (8 bytes, not 16): the tracker keeps
/// one per user and one per page, and every session holding one costs a pointer.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub(crate) struct SharedStr(Arc<Box<str>>);

impl SharedStr {
    pub(crate) fn new(s: &str) -> Self {
        SharedStr(Arc::new(Box::from(s)))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for SharedStr {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A signed-in user's identity (a name or an account id): a cheap-to-clone shared string
/// (one pointer; cloning bumps a reference count).
///
/// Several sessions with the same `UserId` are one person: they count once in
/// [`Counts::members`](crate::Counts::members) and produce one
/// [`Event::UserOnline`](crate::Event::UserOnline).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(SharedStr);

impl UserId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl From<&str> for UserId {
    fn from(s: &str) -> Self {
        UserId(SharedStr::new(s))
    }
}

impl From<String> for UserId {
    fn from(s: String) -> Self {
        UserId(SharedStr(Arc::new(s.into_boxed_str())))
    }
}

impl From<Arc<str>> for UserId {
    fn from(s: Arc<str>) -> Self {
        UserId(SharedStr::new(&s))
    }
}

impl From<&UserId> for UserId {
    fn from(u: &UserId) -> Self {
        u.clone()
    }
}

impl Deref for UserId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for UserId {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A user ordered by name as people read a list: case-insensitively, ties (names that differ
/// only in case) by the exact string, so that two distinct users never compare equal.
///
/// The folded (lower-case) form is computed once, when the user enters a list, and kept only
/// when it differs from the name: comparisons are then plain byte comparisons. Folding
/// during every comparison was 70% of the time to expire 100k distinct members.
#[derive(Clone, Debug)]
pub(crate) struct ByName {
    user: UserId,
    folded: Option<Box<str>>,
}

impl ByName {
    pub(crate) fn new(user: UserId) -> Self {
        let name = user.as_str();
        let is_folded = if name.is_ascii() {
            !name.bytes().any(|b| b.is_ascii_uppercase())
        } else {
            name.chars().flat_map(char::to_lowercase).eq(name.chars())
        };
        let folded = (!is_folded).then(|| name.to_lowercase().into_boxed_str());
        ByName { user, folded }
    }

    pub(crate) fn user(&self) -> &UserId {
        &self.user
    }

    fn key(&self) -> &str {
        self.folded.as_deref().unwrap_or(self.user.as_str())
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.user == other.user
    }
}

impl Eq for ByName {}

impl Ord for ByName {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key()
            .cmp(other.key())
            .then_with(|| self.user.as_str().cmp(other.user.as_str()))
    }
}

impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What sort of visitor a session belongs to.
///
/// Counted as phpBB does: listed members and hidden members are distinct *people* (several
/// tabs of one user count once), guests and bots are *sessions*. Bots are not people: they
/// are not part of [`Counts::online`](crate::Counts::online).
///
/// A session's kind may change at any time (signing in or out, hiding); pass the new kind to
/// [`Presence::touch`](crate::Presence::touch) and the counts move atomically.
///
/// ```
/// use presence_tracker::Kind;
///
/// let alice = Kind::member("alice");
/// assert_eq!(alice.user().map(|u| u.as_str()), Some("alice"));
/// assert!(Kind::hidden_member("bob").is_hidden());
/// assert!(Kind::Guest.user().is_none());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Kind {
    /// An anonymous visitor.
    Guest,
    /// A crawler or other automated client; tracked, but not counted as a person online.
    Bot,
    /// A signed-in user who is listed as online.
    Member(UserId),
    /// A signed-in user who chose not to be listed: counted in
    /// [`Counts::hidden`](crate::Counts::hidden), never in `members`. Hiding the name from
    /// other visitors is the application's job; the tracker always knows the truth.
    HiddenMember(UserId),
}

impl Kind {
    /// A signed-in, listed user.
    pub fn member(user: impl Into<UserId>) -> Self {
        Kind::Member(user.into())
    }

    /// A signed-in user who chose not to be listed.
    pub fn hidden_member(user: impl Into<UserId>) -> Self {
        Kind::HiddenMember(user.into())
    }

    /// The signed-in user, for members and hidden members.
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Kind::Member(u) | Kind::HiddenMember(u) => Some(u),
            Kind::Guest | Kind::Bot => None,
        }
    }

    /// Whether this is a hidden member.
    pub fn is_hidden(&self) -> bool {
        matches!(self, Kind::HiddenMember(_))
    }

    /// Whether this is a signed-in user, listed or hidden.
    pub fn is_signed_in(&self) -> bool {
        self.user().is_some()
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Guest => f.write_str("guest"),
            Kind::Bot => f.write_str("bot"),
            Kind::Member(u) => write!(f, "member {u}"),
            Kind::HiddenMember(u) => write!(f, "hidden member {u}"),
        }
    }
}

/// A [`Kind`] without its user, which the session keeps beside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KindTag {
    Guest,
    Bot,
    Member,
    Hidden,
}

impl KindTag {
    /// The tag and the user a session keeps for `kind`.
    pub(crate) fn split(kind: Kind) -> (Self, Option<UserId>) {
        let tag = Self::of(&kind);
        let user = match kind {
            Kind::Member(u) | Kind::HiddenMember(u) => Some(u),
            Kind::Guest | Kind::Bot => None,
        };
        (tag, user)
    }

    pub(crate) fn of(kind: &Kind) -> Self {
        match kind {
            Kind::Guest => KindTag::Guest,
            Kind::Bot => KindTag::Bot,
            Kind::Member(_) => KindTag::Member,
            Kind::HiddenMember(_) => KindTag::Hidden,
        }
    }
}

#[cfg(feature = "serde")]
mod serde_impls {
    use super::{Kind, UserId};
    use serde::ser::{Serialize, SerializeStruct, Serializer};

    impl Serialize for UserId {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_str(self.as_str())
        }
    }

    /// `{"type":"guest"}`, `{"type":"bot"}`, `{"type":"member","user":"alice"}`,
    /// `{"type":"hidden_member","user":"bob"}`.
    impl Serialize for Kind {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let (tag, user) = match self {
                Kind::Guest => ("guest", None),
                Kind::Bot => ("bot", None),
                Kind::Member(u) => ("member", Some(u)),
                Kind::HiddenMember(u) => ("hidden_member", Some(u)),
            };
            let mut s = serializer.serialize_struct("Kind", 1 + usize::from(user.is_some()))?;
            s.serialize_field("type", tag)?;
            if let Some(u) = user {
                s.serialize_field("user", u)?;
            }
            s.end()
        }
    }
}
