//! What the integration tests share: a tracker on a manual clock, event draining,
//! and short constructors of the events a test expects.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use presence_tracker::{
    Event, Kind, LeaveReason, ManualClock, Presence, PresenceBuilder, Reaper, SessionId,
};
use tokio::sync::broadcast;

pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
pub const IDLE_AFTER: Duration = Duration::from_secs(4);
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(25);

/// A builder on `clock` with no background reaper and the small test timeouts.
pub fn builder(clock: &ManualClock) -> PresenceBuilder {
    Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(IDLE_TIMEOUT)
        .idle_after(IDLE_AFTER)
        .heartbeat_limit(HEARTBEAT_LIMIT)
}

/// A tracker on a fresh manual clock with the small test timeouts.
pub fn manual() -> (Presence, ManualClock) {
    let clock = ManualClock::new();
    (builder(&clock).build(), clock)
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Every event received so far, without waiting.
pub fn drain(rx: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(event) => out.push(event),
            Err(broadcast::error::TryRecvError::Empty) => return out,
            Err(err) => panic!("event receiver failed: {err:?}"),
        }
    }
}

/// `Event::Joined` of `session` as `kind`.
pub fn joined(session: SessionId, kind: Kind) -> Event {
    Event::Joined { session, kind }
}

/// `Event::Left` of `session`, last seen as `kind`, for `reason`.
pub fn left(session: SessionId, kind: Kind, reason: LeaveReason) -> Event {
    Event::Left {
        session,
        kind,
        reason,
    }
}

/// `Event::KindChanged` of `session`.
pub fn kind_changed(session: SessionId, from: Kind, to: Kind) -> Event {
    Event::KindChanged { session, from, to }
}

/// `Event::UserOnline` of `user`.
pub fn user_online(user: &str) -> Event {
    Event::UserOnline { user: user.into() }
}

/// `Event::UserOffline` of `user`.
pub fn user_offline(user: &str) -> Event {
    Event::UserOffline { user: user.into() }
}
