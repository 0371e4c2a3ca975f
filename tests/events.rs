//! Events: what is sent, in which order, and only while someone listens.

mod common;

use common::{IDLE_TIMEOUT, drain, joined, kind_changed, left, manual, user_offline, user_online};
use presence_tracker::{Event, Kind, LeaveReason, SessionId, Touch};

#[test]
fn join_and_leave_send_joined_and_left() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    presence.touch(id, Kind::Guest).unwrap();
    presence.heartbeat(id);
    presence.leave(id);
    assert_eq!(
        drain(&mut rx),
        vec![
            joined(id, Kind::Guest),
            left(id, Kind::Guest, LeaveReason::Left),
        ]
    );
}

#[test]
fn member_join_sends_joined_then_user_online() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("alice")).unwrap();
    presence.leave(id);
    assert_eq!(
        drain(&mut rx),
        vec![
            joined(id, Kind::member("alice")),
            user_online("alice"),
            left(id, Kind::member("alice"), LeaveReason::Left),
            user_offline("alice"),
        ]
    );
}

#[test]
fn sign_in_and_out_send_kind_changed_and_user_events() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    assert_eq!(
        presence.touch(id, Kind::member("alice")).unwrap(),
        Touch::Refreshed
    );
    presence.touch(id, Kind::Guest).unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![
            joined(id, Kind::Guest),
            kind_changed(id, Kind::Guest, Kind::member("alice")),
            user_online("alice"),
            kind_changed(id, Kind::member("alice"), Kind::Guest),
            user_offline("alice"),
        ]
    );
}

#[test]
fn switching_user_sends_offline_for_the_old_and_online_for_the_new() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("alice")).unwrap();
    drain(&mut rx);
    presence.touch(id, Kind::hidden_member("bob")).unwrap();
    let events = drain(&mut rx);
    assert_eq!(
        events[0],
        kind_changed(id, Kind::member("alice"), Kind::hidden_member("bob"))
    );
    let mut users = events[1..].to_vec();
    users.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(users, vec![user_offline("alice"), user_online("bob")]);
}

#[test]
fn no_events_before_subscribing() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    let mut rx = presence.subscribe();
    assert!(drain(&mut rx).is_empty());
    presence.leave(id);
    assert_eq!(drain(&mut rx).len(), 1);
}

#[test]
fn every_subscriber_gets_every_event() {
    let (presence, _clock) = manual();
    let mut a = presence.subscribe();
    let mut b = presence.clone().subscribe();
    presence
        .touch(SessionId::new_v4(), Kind::member("alice"))
        .unwrap();
    let ea = drain(&mut a);
    assert_eq!(ea.len(), 2);
    assert_eq!(ea, drain(&mut b));
}

#[test]
fn expiry_sends_left_then_user_offline() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let a = SessionId::new_v4();
    presence.touch(a, Kind::hidden_member("bob")).unwrap();
    drain(&mut rx);
    clock.advance(IDLE_TIMEOUT);
    assert_eq!(presence.reap(), 1);
    assert_eq!(
        drain(&mut rx),
        vec![
            left(a, Kind::hidden_member("bob"), LeaveReason::Expired),
            user_offline("bob"),
        ]
    );
}

#[test]
fn new_tab_after_the_last_one_expired_unreaped_sends_user_offline_then_online() {
    // Alice's only tab is due at 10 s (logically gone: she is offline). A new tab at 10 s is
    // her first live session: subscribers must see her go offline and come back, in order.
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let old = SessionId::new_v4();
    let new = SessionId::new_v4();
    presence.touch(old, Kind::member("alice")).unwrap();
    drain(&mut rx);
    clock.advance(IDLE_TIMEOUT);
    presence.touch(new, Kind::member("alice")).unwrap();
    presence.reap();
    let events = drain(&mut rx);
    let users: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::UserOnline { .. } | Event::UserOffline { .. }))
        .collect();
    assert_eq!(
        users,
        vec![&user_offline("alice"), &user_online("alice")],
        "all events: {events:?}"
    );
}

#[test]
fn leave_twice_sends_one_left() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    assert!(presence.leave(id).is_some());
    assert!(presence.leave(id).is_none());
    let lefts = drain(&mut rx)
        .iter()
        .filter(|e| matches!(e, Event::Left { .. }))
        .count();
    assert_eq!(lefts, 1);
}

// `serde_json` comes with the `axum` feature: as a dev-dependency it would be built before
// every `cargo run --example`, which these tests are not worth.
#[cfg(all(feature = "serde", feature = "axum"))]
#[test]
fn events_serialize_with_a_tag() {
    let id: SessionId = "67e55044-10b1-426f-9247-bb680e5fe0c8".parse().unwrap();
    let json = serde_json::to_value(left(id, Kind::Guest, LeaveReason::HeartbeatLimit)).unwrap();
    assert_eq!(json["event"], "left");
    assert_eq!(json["session"], "67e55044-10b1-426f-9247-bb680e5fe0c8");
    assert_eq!(json["reason"], "heartbeat_limit");
}
