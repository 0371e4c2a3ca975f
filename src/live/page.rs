//! [`PageWatch`] and [`PageDiff`]: one page's count and who joined or left it, pushed.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Weak};

use tokio::sync::watch;

use crate::UserId;
use crate::core::tracker::Tracker;
use crate::observe::publish::PageView;

/// What changed on a watched page since the previous [`PageWatch::changed`]: the net
/// change, so a reader that is slow loses nothing and queues nothing (a user who joined and
/// left in between is in neither list).
///
/// `joined` and `left` name *listed members*, as
/// [`Presence::page_members`](crate::Presence::page_members) does: users, not tabs (a
/// member's second tab on the page is no change), and never a hidden user. Guests, bots and
/// hidden members show only in `count`, the page's
/// [`page_count`](crate::Presence::page_count).
///
/// ```
/// use presence_tracker::PageDiff;
///
/// fn announce(diff: &PageDiff) -> String {
///     let mut lines: Vec<String> = diff.joined.iter().map(|u| format!("{u} joined")).collect();
///     lines.extend(diff.left.iter().map(|u| format!("{u} left")));
///     lines.push(format!("{} here", diff.count));
///     lines.join("\n")
/// }
/// assert_eq!(announce(&PageDiff::default()), "0 here");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct PageDiff {
    /// Live sessions on the page now (guests included).
    pub count: usize,
    /// Listed members who came to the page, by name (case-insensitive order).
    pub joined: Vec<UserId>,
    /// Listed members who are no longer on it, by name.
    pub left: Vec<UserId>,
}

impl PageDiff {
    /// Whether the diff has no names (the count alone may have changed).
    ///
    /// ```
    /// assert!(presence_tracker::PageDiff::default().no_names());
    /// ```
    pub fn no_names(&self) -> bool {
        self.joined.is_empty() && self.left.is_empty()
    }
}

/// One page watched: its count and the members who join or leave it, pushed at most every
/// `publish_interval` and only when they changed. From
/// [`Presence::watch_page`](crate::Presence::watch_page).
///
/// Watchers of one page share one channel; the page is unwatched (and frees its place
/// under `max_watched_pages`) when its last `PageWatch` is dropped. A `PageWatch` keeps only
/// a weak reference to the tracker.
///
/// ```
/// use std::time::Duration;
/// use presence_tracker::{Kind, Presence, Reaper, SessionId};
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let presence = Presence::builder().reaper(Reaper::Manual).build();
/// let mut room = presence.watch_page("/chat/rust")?;
///
/// let _alice = presence.hold(SessionId::new_v4(), Kind::member("alice"), "/chat/rust")?;
/// presence.visit(SessionId::new_v4(), Kind::Guest, "/chat/rust")?;
/// presence.reap(); // under `Reaper::Manual` a reap publishes; otherwise a ticker does
///
/// let diff = room.changed().await;
/// assert_eq!((diff.count, diff.joined.as_slice(), diff.left.len()), (2, &["alice".into()][..], 0));
/// assert_eq!(room.members(50), ["alice"]);
/// # Ok::<(), presence_tracker::PresenceError>(())
/// # }).unwrap();
/// ```
pub struct PageWatch {
    tracker: Weak<Tracker>,
    page: Box<str>,
    receiver: watch::Receiver<Arc<PageView>>,
    /// The state the next diff is taken from.
    seen: Arc<PageView>,
}

impl PageWatch {
    pub(crate) fn new(
        tracker: Weak<Tracker>,
        page: &str,
        receiver: watch::Receiver<Arc<PageView>>,
        seen: Arc<PageView>,
    ) -> Self {
        PageWatch {
            tracker,
            page: page.into(),
            receiver,
            seen,
        }
    }

    /// Waits until the page's count or members changed since the previous call (or since
    /// the watch began), then returns the net change. Cancel-safe: dropped before it
    /// returns (in a `select!`), it loses nothing.
    ///
    /// Once the tracker is gone (every [`Presence`](crate::Presence) handle dropped) it
    /// waits forever; [`is_closed`](Self::is_closed) tells.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, Reaper, SessionId};
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
    /// let presence = Presence::builder().reaper(Reaper::Manual).build();
    /// let bob = SessionId::new_v4();
    /// presence.visit(bob, Kind::member("bob"), "/t/1")?;
    /// let mut topic = presence.watch_page("/t/1")?;
    /// presence.visit(bob, Kind::member("bob"), "/t/2")?; // bob moves on
    /// presence.reap();
    /// let diff = topic.changed().await;
    /// assert_eq!((diff.count, diff.left.as_slice()), (0, &["bob".into()][..]));
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// # }).unwrap();
    /// ```
    pub async fn changed(&mut self) -> PageDiff {
        loop {
            if self.receiver.changed().await.is_err() {
                // The tracker is gone: nothing will change any more.
                std::future::pending::<()>().await;
            }
            let now = self.receiver.borrow_and_update().clone();
            let before = std::mem::replace(&mut self.seen, now);
            let diff = diff(&before, &self.seen);
            // Published changes that cancel out (a join and a leave between two reads, seen
            // by another watcher) are no change to this one.
            if diff.count != before.count || !diff.no_names() {
                return diff;
            }
        }
    }

    /// The first `limit` listed members on the page now, by name: as
    /// [`Presence::page_members`](crate::Presence::page_members), costing what it returns.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let room = presence.watch_page("/chat")?;
    /// presence.visit(SessionId::new_v4(), Kind::member("bob"), "/chat")?;
    /// assert_eq!(room.members(10), ["bob"]);
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn members(&self, limit: usize) -> Vec<UserId> {
        self.tracker
            .upgrade()
            .map_or_else(Vec::new, |t| t.page_members(&self.page, limit))
    }

    /// Live sessions on the page now, as [`Presence::page_count`](crate::Presence::page_count).
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let room = presence.watch_page("/chat")?;
    /// presence.visit(SessionId::new_v4(), Kind::Guest, "/chat")?;
    /// assert_eq!(room.count(), 1);
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn count(&self) -> usize {
        self.tracker
            .upgrade()
            .map_or(0, |t| t.page_count(&self.page))
    }

    /// The page watched.
    ///
    /// ```
    /// let presence = presence_tracker::Presence::new();
    /// assert_eq!(presence.watch_page("/chat")?.page(), "/chat");
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn page(&self) -> &str {
        &self.page
    }

    /// Whether the tracker is gone, so that [`changed`](Self::changed) would wait forever.
    ///
    /// ```
    /// let presence = presence_tracker::Presence::new();
    /// let room = presence.watch_page("/chat")?;
    /// assert!(!room.is_closed());
    /// drop(presence);
    /// assert!(room.is_closed());
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn is_closed(&self) -> bool {
        self.tracker.strong_count() == 0
    }
}

/// The net change from `before` to `after`: names in `after`'s order (by name).
fn diff(before: &PageView, after: &PageView) -> PageDiff {
    let was: HashSet<&UserId> = before.members.iter().collect();
    let is: HashSet<&UserId> = after.members.iter().collect();
    PageDiff {
        count: after.count,
        joined: after
            .members
            .iter()
            .filter(|u| !was.contains(u))
            .cloned()
            .collect(),
        left: before
            .members
            .iter()
            .filter(|u| !is.contains(u))
            .cloned()
            .collect(),
    }
}

impl Drop for PageWatch {
    fn drop(&mut self) {
        if let Some(tracker) = self.tracker.upgrade() {
            tracker.unwatch_page(&self.page);
        }
    }
}

impl fmt::Debug for PageWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PageWatch")
            .field("page", &self.page)
            .field("count", &self.seen.count)
            .finish_non_exhaustive()
    }
}
