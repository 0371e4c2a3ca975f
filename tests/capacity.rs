//! `max_sessions`: refusal, existing sessions keep working, recovery; leaving and unknown
//! sessions.

mod common;

use common::{IDLE_TIMEOUT, builder, manual, ms, secs};
use presence_tracker::{Kind, ManualClock, Presence, PresenceError, SessionId, Touch};

fn full_of(max: usize) -> (Presence, ManualClock, Vec<SessionId>) {
    let clock = ManualClock::new();
    let presence = builder(&clock).max_sessions(max).build();
    let ids: Vec<SessionId> = (0..max).map(|_| SessionId::new_v4()).collect();
    for &id in &ids {
        presence.touch(id, Kind::Guest).unwrap();
    }
    (presence, clock, ids)
}

#[test]
fn new_session_past_max_sessions_is_refused() {
    let (presence, _clock, _ids) = full_of(3);
    let err = presence
        .touch(SessionId::new_v4(), Kind::Guest)
        .unwrap_err();
    assert_eq!(err, PresenceError::Full { max_sessions: 3 });
    let err = presence
        .visit(SessionId::new_v4(), Kind::member("a"), "/")
        .unwrap_err();
    assert_eq!(err, PresenceError::Full { max_sessions: 3 });
    let c = presence.counts();
    assert_eq!((c.sessions, c.guests, c.members), (3, 3, 0));
    assert_eq!(presence.page_count("/"), 0);
}

#[test]
fn existing_sessions_keep_working_at_capacity() {
    let (presence, clock, ids) = full_of(2);
    clock.advance(secs(5));
    assert_eq!(presence.touch(ids[0], Kind::Guest), Ok(Touch::Refreshed));
    assert_eq!(
        presence.touch(ids[1], Kind::member("alice")),
        Ok(Touch::Refreshed)
    );
    assert_eq!(
        presence.visit(ids[0], Kind::Guest, "/a"),
        Ok(Touch::Refreshed)
    );
    assert!(presence.heartbeat(ids[1]));
    let c = presence.counts();
    assert_eq!((c.sessions, c.guests, c.members), (2, 1, 1));
}

#[test]
fn capacity_recovers_after_leave() {
    let (presence, _clock, ids) = full_of(2);
    assert!(presence.touch(SessionId::new_v4(), Kind::Guest).is_err());
    presence.leave(ids[0]);
    assert_eq!(
        presence.touch(SessionId::new_v4(), Kind::Guest),
        Ok(Touch::Joined)
    );
    assert!(presence.touch(SessionId::new_v4(), Kind::Guest).is_err());
}

#[test]
fn capacity_recovers_when_a_session_falls_due_without_a_reap() {
    let (presence, clock, ids) = full_of(2);
    clock.advance(secs(5));
    presence.touch(ids[1], Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT - secs(5) - ms(1));
    assert!(presence.touch(SessionId::new_v4(), Kind::Guest).is_err());
    clock.advance(ms(1));
    // ids[0] is due (not reaped): the newcomer takes its place.
    assert_eq!(
        presence.touch(SessionId::new_v4(), Kind::Guest),
        Ok(Touch::Joined)
    );
    assert!(presence.session(ids[0]).is_none());
    assert!(presence.touch(SessionId::new_v4(), Kind::Guest).is_err());
    assert_eq!(presence.counts().sessions, 2);
}

#[test]
fn due_session_can_rejoin_at_capacity() {
    let (presence, clock, ids) = full_of(1);
    clock.advance(IDLE_TIMEOUT);
    assert_eq!(presence.touch(ids[0], Kind::Guest), Ok(Touch::Joined));
    assert_eq!(presence.counts().sessions, 1);
}

#[test]
fn full_error_message_says_what_to_do() {
    let err = PresenceError::Full {
        max_sessions: 1_000_000,
    };
    let msg = err.to_string();
    assert!(msg.contains("presence is full"), "{msg}");
    assert!(msg.contains("1000000"), "{msg}");
    assert!(msg.contains("max_sessions"), "{msg}");
    let _: &dyn std::error::Error = &err;
}

#[test]
fn leaving_twice_returns_none_the_second_time() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::member("alice"), "/a").unwrap();
    clock.advance(secs(1));
    let info = presence.leave(id).unwrap();
    assert_eq!(
        (info.id, info.kind, info.page.as_deref()),
        (id, Kind::member("alice"), Some("/a"))
    );
    assert!(presence.leave(id).is_none());
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn leaving_a_due_session_returns_none() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT);
    assert!(presence.leave(id).is_none());
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn unknown_session_is_unknown_everywhere() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    assert!(!presence.heartbeat(id));
    assert!(presence.leave(id).is_none());
    assert!(presence.session(id).is_none());
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn a_new_session_at_capacity_settles_a_batch_not_the_whole_backlog() {
    // 5000 sessions all due at once, nobody reaping: a newcomer gets in after evicting a
    // bounded batch, and leaves the rest to the reaper (no request waits on a storm).
    let (presence, clock, _ids) = full_of(5000);
    clock.advance(IDLE_TIMEOUT);
    assert_eq!(
        presence.touch(SessionId::new_v4(), Kind::Guest),
        Ok(Touch::Joined)
    );
    let rest = presence.reap();
    assert!(
        rest > 4000,
        "the newcomer should have evicted one batch, the reap the rest: reap evicted {rest}"
    );
    assert_eq!(presence.counts().sessions, 1);
}
