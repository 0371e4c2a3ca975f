//! [`Event`]s and their ordered delivery.
//!
//! A change decides its events while it holds the lock that serialises it (the session's
//! shard lock, or the user table's lock) and appends them to [`EventQueue`] there, so the
//! queue's order is the order in which the changes became visible. Delivery to the broadcast
//! channel happens after every tracker lock is released, by whichever thread holds the
//! delivery token; the queue lock is a leaf and is held only to push or swap a `Vec`.

use std::mem;

use tokio::sync::broadcast;

use crate::sync::{AtomicBool, Mutex, Ordering};
use crate::{Kind, SessionId, UserId};

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum LeaveReason {
    /// No touch, visit or heartbeat for `idle_timeout`.
    Expired,
    /// [`Presence::leave`](crate::Presence::leave) was called (logout, tab closed, admin kill).
    Left,
    /// Heartbeats alone kept it for `heartbeat_limit` without any activity: a forgotten tab.
    HeartbeatLimit,
    /// Its last [`Hold`](crate::Hold) was dropped (a connection closed) and nothing held,
    /// touched or heartbeated it within `hold_grace`.
    Closed,
}

/// A change in who is online, from [`Presence::subscribe`](crate::Presence::subscribe).
///
/// Events about one session, and about one user, arrive in the order the changes happened:
/// never a `Left` before its `Joined`, and `UserOnline` / `UserOffline` alternate. A receiver
/// that lags behind the channel's capacity misses events (`RecvError::Lagged`); counts are
/// exact regardless, so re-read [`Presence::counts`](crate::Presence::counts) after a lag.
///
/// `UserOnline` and `UserOffline` are emitted for hidden members too: events are the server's
/// truth, and keeping a hidden user's name from other visitors is the application's job.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(tag = "event", rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Event {
    /// A new session started.
    Joined {
        /// The session.
        session: SessionId,
        /// Its kind when it started.
        kind: Kind,
    },
    /// A session ended.
    Left {
        /// The session.
        session: SessionId,
        /// Its kind when it ended.
        kind: Kind,
        /// Why it ended.
        reason: LeaveReason,
    },
    /// A user's first live session started: the user came online.
    UserOnline {
        /// The user.
        user: UserId,
    },
    /// A user's last live session ended: the user went offline.
    UserOffline {
        /// The user.
        user: UserId,
    },
    /// A live session changed kind (signed in, signed out, hid or showed itself).
    KindChanged {
        /// The session.
        session: SessionId,
        /// The previous kind.
        from: Kind,
        /// The new kind.
        to: Kind,
    },
}

/// Ordered, lock-free-for-the-caller delivery of events to a broadcast channel.
#[derive(Debug)]
pub(crate) struct EventQueue {
    sender: broadcast::Sender<Event>,
    /// Someone called `subscribe`: until then every check is one relaxed load, not the
    /// channel's mutex.
    subscribed: AtomicBool,
    pending: Mutex<Vec<Event>>,
    /// Held by the one thread delivering; others leave their events to it.
    delivering: Mutex<()>,
}

impl EventQueue {
    pub(crate) fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        EventQueue {
            sender,
            subscribed: AtomicBool::new(false),
            pending: Mutex::new(Vec::new()),
            delivering: Mutex::new(()),
        }
    }

    /// Whether anyone listens; when not, changes skip building events at all.
    #[inline]
    pub(crate) fn wanted(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.sender.receiver_count() > 0
    }

    /// Appends an event. Call under the lock that serialises the change it describes.
    pub(crate) fn push(&self, event: Event) {
        self.pending.lock().push(event);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        let receiver = self.sender.subscribe();
        self.subscribed.store(true, Ordering::Relaxed);
        receiver
    }

    /// Sends what is pending, in order. Call with no tracker lock held.
    pub(crate) fn deliver(&self) {
        if !self.subscribed.load(Ordering::Relaxed) {
            return; // nothing is ever pushed before the first subscription
        }
        loop {
            if self.pending.lock().is_empty() {
                return;
            }
            // Another thread is delivering and will also send what we pushed: it re-checks
            // `pending` after releasing `delivering`, so nothing is stranded.
            let Some(token) = self.delivering.try_lock() else {
                return;
            };
            loop {
                let batch = mem::take(&mut *self.pending.lock());
                if batch.is_empty() {
                    break;
                }
                for event in batch {
                    // No receiver is not an error: events are best effort, counts are exact.
                    let _ = self.sender.send(event);
                }
            }
            drop(token);
        }
    }
}
