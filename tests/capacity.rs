//! `max_sessions`: refusal, existing sessions keep working, recovery; ids and unknowns.

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
fn session_id_parses_the_hyphenated_form_in_either_case() {
    let lower = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    let id: SessionId = lower.parse().unwrap();
    assert_eq!(id.to_string(), lower);
    let upper: SessionId = lower.to_uppercase().parse().unwrap();
    assert_eq!(upper, id);
    // Any version: a v1 and a nil-like v0 id.
    assert!(
        "c232ab00-9414-11ec-b3c8-9f6bdeced846"
            .parse::<SessionId>()
            .is_ok()
    );
    assert!(
        "00000000-0000-0000-0000-000000000000"
            .parse::<SessionId>()
            .is_ok()
    );
}

#[test]
fn session_id_round_trips_through_display() {
    for _ in 0..50 {
        let id = SessionId::new_v4();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<SessionId>().unwrap(), id);
        assert_eq!(SessionId::from(*id.as_uuid()), id);
        assert_eq!(id.as_uuid().hyphenated().to_string(), text);
    }
}

#[test]
fn session_id_parsing_is_strict() {
    let bad = [
        "",
        "67e5504410b1426f9247bb680e5fe0c8",       // simple form
        "{67e55044-10b1-426f-9247-bb680e5fe0c8}", // braced
        "urn:uuid:67e55044-10b1-426f-9247-bb680e5fe0c8", // URN
        " 67e55044-10b1-426f-9247-bb680e5fe0c8",  // leading space
        "67e55044-10b1-426f-9247-bb680e5fe0c8 ",  // trailing space
        "67e55044-10b1-426f-9247-bb680e5fe0c",    // short
        "67e55044-10b1-426f-9247-bb680e5fe0c88",  // long
        "67e55044_10b1-426f-9247-bb680e5fe0c8",   // wrong separator
        "67e5504-410b1-426f-9247-bb680e5fe0c8",   // hyphen misplaced
        "67e55044-10b1-426f-9247-bb680e5fe0cg",   // not hex
        "+7e55044-10b1-426f-9247-bb680e5fe0c8",   // sign
        "67e55044-10b1-426f-9247-bb680e5fe0\u{e9}", // non-ASCII, 36 bytes
    ];
    for s in bad {
        let err = s.parse::<SessionId>().expect_err(s);
        assert!(err.to_string().starts_with("invalid session id"), "{err}");
    }
}
