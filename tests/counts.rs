//! `counts()`: people, sessions, signing in and out, hidden members, peak, identities.

mod common;

use std::time::SystemTime;

use common::{IDLE_AFTER, IDLE_TIMEOUT, builder, manual, ms, secs};
use presence_tracker::{Counts, Kind, ManualClock, Presence, SessionId};

fn assert_identities(c: &Counts) {
    assert_eq!(c.online, c.members + c.hidden + c.guests, "{c:?}");
    assert_eq!(c.active + c.idle, c.sessions, "{c:?}");
}

#[test]
fn empty_tracker_counts_nothing() {
    let (presence, _clock) = manual();
    let c = presence.counts();
    assert_eq!(
        (
            c.online, c.members, c.hidden, c.guests, c.bots, c.sessions, c.active, c.idle
        ),
        (0, 0, 0, 0, 0, 0, 0, 0)
    );
    assert_eq!(c.peak.online, 0);
}

#[test]
fn member_with_two_tabs_counts_once() {
    let (presence, _clock) = manual();
    presence
        .touch(SessionId::new_v4(), Kind::member("alice"))
        .unwrap();
    presence
        .touch(SessionId::new_v4(), Kind::member("alice"))
        .unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.sessions), (1, 1, 2));
    assert_identities(&c);
}

#[test]
fn bots_are_sessions_but_not_people() {
    let (presence, _clock) = manual();
    presence.touch(SessionId::new_v4(), Kind::Bot).unwrap();
    presence.touch(SessionId::new_v4(), Kind::Bot).unwrap();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.guests, c.bots, c.sessions), (1, 1, 2, 3));
    assert_identities(&c);
}

#[test]
fn guests_count_per_session() {
    let (presence, _clock) = manual();
    for _ in 0..3 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    }
    let c = presence.counts();
    assert_eq!((c.online, c.guests, c.sessions), (3, 3, 3));
}

#[test]
fn sign_in_and_sign_out_move_counts() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.guests, c.members), (1, 1, 0));
    presence.touch(id, Kind::member("alice")).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.guests, c.members, c.sessions), (1, 0, 1, 1));
    assert_eq!(presence.session(id).unwrap().kind, Kind::member("alice"));
    presence.touch(id, Kind::Guest).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.guests, c.members, c.sessions), (1, 1, 0, 1));
    assert_identities(&c);
}

#[test]
fn signing_in_does_not_raise_the_peak() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    presence.touch(id, Kind::member("alice")).unwrap();
    presence.touch(id, Kind::hidden_member("alice")).unwrap();
    presence.touch(id, Kind::Guest).unwrap();
    assert_eq!(presence.counts().peak.online, 1);
}

#[test]
fn hidden_member_counts_in_hidden_not_members() {
    let (presence, _clock) = manual();
    presence
        .touch(SessionId::new_v4(), Kind::hidden_member("bob"))
        .unwrap();
    presence
        .touch(SessionId::new_v4(), Kind::hidden_member("bob"))
        .unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.hidden, c.sessions), (1, 0, 1, 2));
    assert_identities(&c);
}

#[test]
fn user_with_one_listed_and_one_hidden_session_is_a_member() {
    let (presence, _clock) = manual();
    let listed = SessionId::new_v4();
    let hidden = SessionId::new_v4();
    presence.touch(hidden, Kind::hidden_member("bob")).unwrap();
    assert_eq!(
        (presence.counts().members, presence.counts().hidden),
        (0, 1)
    );
    presence.touch(listed, Kind::member("bob")).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.hidden), (1, 1, 0));
    presence.leave(listed);
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.hidden), (1, 0, 1));
}

#[test]
fn hiding_and_showing_a_session_moves_between_members_and_hidden() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("carol")).unwrap();
    presence.touch(id, Kind::hidden_member("carol")).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.hidden), (1, 0, 1));
    presence.touch(id, Kind::member("carol")).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.hidden), (1, 1, 0));
}

#[test]
fn switching_user_on_one_session_moves_the_member() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("alice")).unwrap();
    presence.touch(id, Kind::member("bob")).unwrap();
    let c = presence.counts();
    assert_eq!((c.online, c.members), (1, 1));
    assert!(matches!(
        presence.user("alice"),
        presence_tracker::UserStatus::Offline { .. }
    ));
    assert!(matches!(
        presence.user("bob"),
        presence_tracker::UserStatus::Online { sessions: 1, .. }
    ));
}

#[test]
fn leaving_moves_counts_down() {
    let (presence, _clock) = manual();
    let a = SessionId::new_v4();
    let b = SessionId::new_v4();
    presence.touch(a, Kind::member("alice")).unwrap();
    presence.touch(b, Kind::Guest).unwrap();
    presence.leave(a);
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.guests, c.sessions), (1, 0, 1, 1));
    presence.leave(b);
    let c = presence.counts();
    assert_eq!((c.online, c.sessions, c.active), (0, 0, 0));
}

#[test]
fn peak_starts_at_zero_at_build_time() {
    let before = SystemTime::now();
    let (presence, _clock) = manual();
    let after = SystemTime::now();
    let peak = presence.counts().peak;
    assert_eq!(peak.online, 0);
    assert!(before <= peak.at && peak.at <= after, "{peak:?}");
}

#[test]
fn peak_records_when_exceeded_not_when_equalled() {
    let (presence, clock) = manual();
    let built = presence.counts().peak.at;
    let a = SessionId::new_v4();
    let b = SessionId::new_v4();
    clock.advance(secs(1));
    presence.touch(a, Kind::Guest).unwrap();
    let c = presence.counts();
    assert_eq!(c.peak.online, 1);
    assert_eq!(c.peak.at.duration_since(built).unwrap(), secs(1));

    clock.advance(secs(1));
    presence.touch(b, Kind::member("alice")).unwrap();
    let peak2 = presence.counts().peak;
    assert_eq!(peak2.online, 2);
    assert_eq!(peak2.at.duration_since(built).unwrap(), secs(2));

    // Down to 1, then back to 2: equalled, not exceeded: peak.at stays.
    clock.advance(secs(1));
    presence.leave(b);
    assert_eq!(presence.counts().online, 1);
    clock.advance(secs(1));
    presence.touch(b, Kind::member("alice")).unwrap();
    assert_eq!(presence.counts().peak, peak2);

    // A second tab of alice and a bot are not more people.
    presence
        .touch(SessionId::new_v4(), Kind::member("alice"))
        .unwrap();
    presence.touch(SessionId::new_v4(), Kind::Bot).unwrap();
    assert_eq!(presence.counts().peak, peak2);

    clock.advance(secs(1));
    presence
        .touch(SessionId::new_v4(), Kind::hidden_member("bob"))
        .unwrap();
    let peak3 = presence.counts().peak;
    assert_eq!(peak3.online, 3);
    assert_eq!(peak3.at.duration_since(built).unwrap(), secs(5));

    // Everyone leaves: the peak stays.
    clock.advance(IDLE_TIMEOUT * 2);
    let c = presence.counts();
    assert_eq!((c.online, c.peak), (0, peak3));
}

#[test]
fn peak_does_not_count_a_session_that_was_already_due() {
    // A session past its deadline is logically gone even if nothing has reaped it yet: a
    // newcomer arriving after that deadline is not a second person online at once.
    let (presence, clock) = manual();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT);
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let c = presence.counts();
    assert_eq!(c.online, 1);
    assert_eq!(
        c.peak.online, 1,
        "peak counted the expired guest and the newcomer together"
    );
}

#[test]
fn counts_identities_hold_through_a_mixed_day() {
    let clock = ManualClock::new();
    let presence: Presence = builder(&clock).build();
    let kinds = [
        Kind::Guest,
        Kind::Bot,
        Kind::member("a"),
        Kind::member("b"),
        Kind::hidden_member("a"),
        Kind::hidden_member("c"),
    ];
    let ids: Vec<SessionId> = (0..12).map(|_| SessionId::new_v4()).collect();
    for step in 0..300usize {
        let id = ids[step * 7 % ids.len()];
        let kind = kinds[step * 5 % kinds.len()].clone();
        match step % 5 {
            0 | 1 => {
                presence.touch(id, kind).unwrap();
            }
            2 => {
                presence.heartbeat(id);
            }
            3 => {
                presence.leave(id);
            }
            _ => clock.advance(ms(700 * (step as u64 % 4))),
        }
        let c = presence.counts();
        assert_identities(&c);
        assert_eq!(c.sessions, presence.sessions().len());
        assert!(c.peak.online >= c.online);
    }
}

#[test]
fn counts_are_stable_without_time_passing() {
    let (presence, clock) = manual();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    clock.advance(IDLE_AFTER);
    assert_eq!(presence.counts(), presence.counts());
}
