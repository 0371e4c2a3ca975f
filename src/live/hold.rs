//! [`Hold`]: a session kept online by a connection for as long as the guard lives.

use std::fmt;
use std::sync::Weak;
use std::time::Duration;

use crate::SessionId;
use crate::core::tracker::Tracker;
use crate::error::PresenceError;

/// A session held online by a connection (a WebSocket, a server-sent event stream): from
/// [`Presence::hold`](crate::Presence::hold).
///
/// While any hold of a session lives, the session never expires by `idle_timeout` or
/// `heartbeat_limit`, needs no heartbeat, and its `last_seen` reads as now; it still goes
/// idle ([`SessionState::Idle`](crate::SessionState::Idle)) after `idle_after` without
/// [`activity`](Self::activity), as any session. Several holds of one session (two
/// sockets of one browser) keep it until the last is dropped.
///
/// Dropping the last hold starts `hold_grace`
/// ([`PresenceBuilder::hold_grace`](crate::PresenceBuilder::hold_grace), 5 s by default):
/// unless the session is held, touched, visited or heartbeated again within it (a
/// reconnect), it then leaves with [`LeaveReason::Closed`](crate::LeaveReason::Closed). A
/// reconnect within the grace continues the same session: no `Left`, no `Joined`.
///
/// A hold belongs to the session it started on: if that session ends meanwhile
/// ([`Presence::leave`](crate::Presence::leave), an admin's kill), the hold keeps nothing
/// online, its [`visit`](Self::visit) fails with [`PresenceError::HoldEnded`], and its drop
/// never touches a newer session of the same id.
///
/// A hold is not `Clone`. It keeps only a weak reference to the tracker, so dropping the
/// last [`Presence`](crate::Presence) handle still shuts the tracker down and saves it.
///
/// # Keeping it honest
/// A hold trusts its connection: a half-open TCP connection (a laptop closed without a
/// goodbye) looks open until a write fails. Keep your protocol's ping/pong, and drop the
/// hold when pongs stop coming. The HTTP layer's streams do this for you: a stream's hold is
/// trusted for `idle_timeout` after the browser's last request, and its page script sends a
/// heartbeat every `idle_timeout / 2`.
///
/// ```
/// use std::time::Duration;
/// use presence_tracker::{Kind, LeaveReason, ManualClock, Presence, Reaper, SessionId};
///
/// let clock = ManualClock::new();
/// let presence = Presence::builder()
///     .clock(clock.clone())
///     .reaper(Reaper::Manual)
///     .idle_timeout(Duration::from_secs(60))
///     .hold_grace(Duration::from_secs(5))
///     .build();
/// let id = SessionId::new_v4();
///
/// let socket = presence.hold(id, Kind::member("alice"), "/chat/rust")?;
/// clock.advance(Duration::from_secs(3600)); // an hour without a heartbeat
/// presence.reap();
/// assert_eq!(presence.page_members("/chat/rust", 10), ["alice"]);
///
/// drop(socket); // the connection closed: the grace starts
/// let again = presence.hold(id, Kind::member("alice"), "/chat/rust")?; // a reconnect
/// drop(again);
/// clock.advance(Duration::from_secs(5));
/// let mut events = presence.subscribe();
/// presence.reap();
/// assert!(matches!(
///     events.try_recv(),
///     Ok(presence_tracker::Event::Left { reason: LeaveReason::Closed, .. })
/// ));
/// # Ok::<(), presence_tracker::PresenceError>(())
/// ```
#[must_use = "a hold keeps its session online only while it lives"]
pub struct Hold {
    tracker: Weak<Tracker>,
    id: SessionId,
    /// Which session of this id it holds; 0 once released.
    generation: u64,
}

impl Hold {
    pub(crate) fn new(tracker: Weak<Tracker>, id: SessionId, generation: u64) -> Self {
        Hold {
            tracker,
            id,
            generation,
        }
    }

    /// The held session's id.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let id = SessionId::new_v4();
    /// let hold = presence.hold(id, Kind::Guest, "/")?;
    /// assert_eq!(hold.session(), id);
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn session(&self) -> SessionId {
        self.id
    }

    /// Moves the held session to `page` (activity there): "currently viewing" follows the
    /// connection, as [`Presence::visit`](crate::Presence::visit) with the session's kind.
    ///
    /// # Errors
    /// - [`PresenceError::PageTooLong`] when `page` is longer than
    ///   [`MAX_PAGE_LEN`](crate::MAX_PAGE_LEN) bytes (nothing changes);
    /// - [`PresenceError::HoldEnded`] when the session this hold started on has ended.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let hold = presence.hold(SessionId::new_v4(), Kind::member("alice"), "/chat/rust")?;
    /// hold.visit("/chat/async")?;
    /// assert_eq!(presence.page_count("/chat/rust"), 0);
    /// assert_eq!(presence.page_members("/chat/async", 10), ["alice"]);
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn visit(&self, page: &str) -> Result<(), PresenceError> {
        let tracker = self.tracker.upgrade().ok_or(PresenceError::HoldEnded)?;
        tracker.hold_activity(self.id, self.generation, Some(page))
    }

    /// Records user input on the connection (a message typed): the session is active, not
    /// idle, as after a [`touch`](crate::Presence::touch). Returns `false` when the
    /// session this hold started on has ended.
    ///
    /// A read lock and an atomic store while the session is counted active, as a touch.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let id = SessionId::new_v4();
    /// let hold = presence.hold(id, Kind::Guest, "/chat")?;
    /// assert!(hold.activity());
    /// presence.leave(id); // an admin's kill
    /// assert!(!hold.activity());
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn activity(&self) -> bool {
        self.tracker
            .upgrade()
            .is_some_and(|t| t.hold_activity(self.id, self.generation, None).is_ok())
    }

    /// Whether the session this hold started on is still live and held (it was not ended
    /// by an explicit [`leave`](crate::Presence::leave)): a connection whose hold is no
    /// longer live may close, or take a new hold.
    ///
    /// ```
    /// use presence_tracker::{Kind, Presence, SessionId};
    ///
    /// let presence = Presence::new();
    /// let id = SessionId::new_v4();
    /// let hold = presence.hold(id, Kind::Guest, "/")?;
    /// assert!(hold.is_live());
    /// presence.leave(id);
    /// presence.touch(id, Kind::Guest)?; // a new session of the same id
    /// assert!(!hold.is_live(), "not the session it started on");
    /// # Ok::<(), presence_tracker::PresenceError>(())
    /// ```
    pub fn is_live(&self) -> bool {
        self.generation != 0
            && self
                .tracker
                .upgrade()
                .is_some_and(|t| t.is_held_by(self.id, self.generation))
    }

    /// Ends this hold without a grace: if it was the last, the session goes on as an
    /// ordinary one from its last touch, visit or heartbeat (so it may be due at once).
    /// A stream that stopped being trusted, or that the page released.
    #[allow(dead_code)] // used by the optional HTTP layer
    pub(crate) fn release(mut self) {
        let generation = std::mem::take(&mut self.generation);
        if let Some(tracker) = self.tracker.upgrade() {
            tracker.release(self.id, generation, false);
        }
    }

    /// How long ago the session was last touched, visited or heartbeated, holds aside:
    /// the age of the client's last request. `None` if the session is gone.
    #[allow(dead_code)] // used by the optional HTTP layer
    pub(crate) fn quiet_for(&self) -> Option<Duration> {
        self.tracker.upgrade()?.quiet_for(self.id)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.generation == 0 {
            return;
        }
        if let Some(tracker) = self.tracker.upgrade() {
            tracker.release(self.id, self.generation, true);
        }
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("session", &self.id)
            .field("generation", &self.generation)
            .finish()
    }
}
