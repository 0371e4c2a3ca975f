//! Users across sessions: `user()`, `UserOnline` / `UserOffline`, `remember_users_for`.

mod common;

use std::time::SystemTime;

use common::{
    HEARTBEAT_LIMIT, IDLE_AFTER, IDLE_TIMEOUT, builder, drain, kind_changed, manual, ms, secs,
    user_offline, user_online,
};
use presence_tracker::{Event, Kind, LeaveReason, ManualClock, SessionId, UserStatus};

fn online(status: UserStatus) -> (usize, SystemTime, bool, bool) {
    match status {
        UserStatus::Online {
            sessions,
            last_seen,
            idle,
            hidden,
            ..
        } => (sessions, last_seen, idle, hidden),
        other => panic!("expected Online, got {other:?}"),
    }
}

fn user_events(events: &[Event]) -> Vec<Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::UserOnline { .. } | Event::UserOffline { .. }))
        .cloned()
        .collect()
}

#[test]
fn unknown_user_is_unknown() {
    let (presence, _clock) = manual();
    assert_eq!(presence.user("nobody"), UserStatus::Unknown);
}

#[test]
fn user_offline_fires_only_when_the_last_tab_goes() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let tab1 = SessionId::new_v4();
    let tab2 = SessionId::new_v4();
    presence.touch(tab1, Kind::member("alice")).unwrap();
    presence.touch(tab2, Kind::member("alice")).unwrap();
    presence.leave(tab1);
    assert_eq!(user_events(&drain(&mut rx)), vec![user_online("alice")]);
    assert_eq!(online(presence.user("alice")).0, 1);
    presence.leave(tab2);
    assert_eq!(user_events(&drain(&mut rx)), vec![user_offline("alice")]);
}

#[test]
fn user_online_and_offline_alternate() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let tabs: Vec<SessionId> = (0..3).map(|_| SessionId::new_v4()).collect();
    for round in 0..4u64 {
        for (i, &tab) in tabs.iter().enumerate() {
            let kind = if (round + i as u64) % 2 == 0 {
                Kind::member("alice")
            } else {
                Kind::hidden_member("alice")
            };
            presence.touch(tab, kind).unwrap();
        }
        match round % 3 {
            0 => tabs.iter().for_each(|&t| drop(presence.leave(t))),
            1 => clock.advance(IDLE_TIMEOUT),
            _ => {
                presence.leave(tabs[0]);
                clock.advance(IDLE_TIMEOUT);
            }
        }
        presence.counts();
    }
    let events = user_events(&drain(&mut rx));
    assert_eq!(events.len(), 8, "{events:?}");
    for (i, e) in events.iter().enumerate() {
        let expected = if i % 2 == 0 {
            user_online("alice")
        } else {
            user_offline("alice")
        };
        assert_eq!(e, &expected);
    }
}

#[test]
fn user_online_reports_sessions_last_seen_idle_and_hidden() {
    let (presence, clock) = manual();
    let built = presence.counts().peak.at;
    let tab1 = SessionId::new_v4();
    let tab2 = SessionId::new_v4();
    presence.touch(tab1, Kind::hidden_member("alice")).unwrap();
    let (sessions, last_seen, idle, hidden) = online(presence.user("alice"));
    assert_eq!((sessions, idle, hidden), (1, false, true));
    assert_eq!(last_seen, built);

    clock.advance(secs(1));
    presence.touch(tab2, Kind::member("alice")).unwrap();
    let (sessions, last_seen, idle, hidden) = online(presence.user("alice"));
    assert_eq!((sessions, idle, hidden), (2, false, false));
    assert_eq!(last_seen.duration_since(built).unwrap(), secs(1));

    // Heartbeats move last_seen but not activity: after idle_after both tabs are idle.
    clock.advance(secs(2));
    assert!(presence.heartbeat(tab1));
    clock.advance(IDLE_AFTER - secs(2));
    let (sessions, last_seen, idle, hidden) = online(presence.user("alice"));
    assert_eq!((sessions, idle, hidden), (2, true, false));
    assert_eq!(last_seen.duration_since(built).unwrap(), secs(3));

    // One tab active again: the user is not idle.
    presence.touch(tab1, Kind::hidden_member("alice")).unwrap();
    let (_, _, idle, _) = online(presence.user("alice"));
    assert!(!idle);
}

#[test]
fn user_offline_keeps_last_seen_until_remember_users_for() {
    let clock = ManualClock::new();
    let presence = builder(&clock).remember_users_for(secs(60)).build();
    let built = presence.counts().peak.at;
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("alice")).unwrap();
    clock.advance(secs(3));
    assert!(presence.heartbeat(tab));
    clock.advance(secs(2));
    presence.leave(tab);
    let expected = UserStatus::offline(built + secs(3));
    assert_eq!(presence.user("alice"), expected);
    clock.advance(secs(60) - ms(1));
    assert_eq!(presence.user("alice"), expected);
    clock.advance(ms(1));
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
}

#[test]
fn user_who_comes_back_is_not_forgotten_by_an_old_offline_spell() {
    let clock = ManualClock::new();
    let presence = builder(&clock).remember_users_for(secs(60)).build();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("alice")).unwrap();
    presence.leave(tab);
    clock.advance(secs(30));
    presence.touch(tab, Kind::member("alice")).unwrap();
    presence.leave(tab);
    clock.advance(secs(30)); // 60 s after the first spell, 30 s after the second
    assert!(matches!(presence.user("alice"), UserStatus::Offline { .. }));
    clock.advance(secs(30));
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
}

#[test]
fn user_is_forgotten_remember_users_for_after_going_offline_even_if_reaped_late() {
    // Alice's only session is due at 10 s: she went offline then, whenever the tracker
    // notices. With nothing read in between, at 10 s + remember_users_for she is Unknown.
    let clock = ManualClock::new();
    let presence = builder(&clock).remember_users_for(secs(60)).build();
    presence
        .touch(SessionId::new_v4(), Kind::member("alice"))
        .unwrap();
    clock.advance(IDLE_TIMEOUT + secs(60));
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
}

#[test]
fn remember_users_for_zero_forgets_at_once() {
    let clock = ManualClock::new();
    let presence = builder(&clock).remember_users_for(secs(0)).build();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("alice")).unwrap();
    presence.leave(tab);
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
}

#[test]
fn hidden_user_is_reported_hidden_by_user() {
    let (presence, _clock) = manual();
    presence
        .touch(SessionId::new_v4(), Kind::hidden_member("bob"))
        .unwrap();
    let (_, _, _, hidden) = online(presence.user("bob"));
    assert!(hidden);
}

#[test]
fn hidden_member_events_are_emitted_too() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::hidden_member("bob")).unwrap();
    presence.leave(tab);
    assert_eq!(
        user_events(&drain(&mut rx)),
        vec![user_online("bob"), user_offline("bob")]
    );
}

#[test]
fn hiding_a_session_does_not_take_the_user_offline() {
    let (presence, _clock) = manual();
    let mut rx = presence.subscribe();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("carol")).unwrap();
    drain(&mut rx);
    presence.touch(tab, Kind::hidden_member("carol")).unwrap();
    assert_eq!(
        drain(&mut rx),
        vec![kind_changed(
            tab,
            Kind::member("carol"),
            Kind::hidden_member("carol")
        )]
    );
}

#[test]
fn user_goes_offline_at_heartbeat_limit_with_two_beating_tabs() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let tab1 = SessionId::new_v4();
    let tab2 = SessionId::new_v4();
    presence.touch(tab1, Kind::member("alice")).unwrap();
    clock.advance(secs(5));
    presence.touch(tab2, Kind::member("alice")).unwrap();
    let mut t = secs(5);
    while t < HEARTBEAT_LIMIT + secs(5) {
        clock.advance(secs(1));
        t += secs(1);
        presence.heartbeat(tab1);
        presence.heartbeat(tab2);
        let c = presence.counts();
        let expected =
            usize::from(t < HEARTBEAT_LIMIT) + usize::from(t < HEARTBEAT_LIMIT + secs(5));
        assert_eq!(c.sessions, expected, "at {t:?}");
        assert_eq!(c.members, usize::from(expected > 0), "at {t:?}");
    }
    let events = drain(&mut rx);
    let lefts = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Left {
                    reason: LeaveReason::HeartbeatLimit,
                    ..
                }
            )
        })
        .count();
    assert_eq!(lefts, 2);
    assert_eq!(events.last(), Some(&user_offline("alice")));
}

#[test]
fn user_offline_since_is_the_last_deadline_when_two_tabs_expire_in_one_reap() {
    // Tab 1 is due at 10 s, tab 2 (kept by a heartbeat) at 19.999 s; both are evicted by one
    // late reap. Alice went offline at 19.999 s: she is remembered until 79.999 s.
    let clock = ManualClock::new();
    let presence = builder(&clock).remember_users_for(secs(60)).build();
    let (tab1, tab2) = (SessionId::new_v4(), SessionId::new_v4());
    presence.touch(tab1, Kind::member("alice")).unwrap();
    presence.touch(tab2, Kind::member("alice")).unwrap();
    clock.advance(IDLE_TIMEOUT - ms(1));
    assert!(presence.heartbeat(tab2));
    clock.advance(secs(30));
    assert_eq!(presence.reap(), 2);
    clock.advance(secs(40) - ms(1)); // 79.998 s
    assert!(matches!(presence.user("alice"), UserStatus::Offline { .. }));
    clock.advance(ms(1));
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
}
