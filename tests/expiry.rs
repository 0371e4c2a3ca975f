//! When sessions go offline: never before `idle_timeout`, never after it for reads, within
//! `idle_timeout + reap_interval` for events; heartbeats and their limit; idle and active.

mod common;

use std::time::{Duration, Instant};

use common::{
    HEARTBEAT_LIMIT, IDLE_AFTER, IDLE_TIMEOUT, drain, joined, left, manual, ms, secs, user_offline,
    user_online,
};
use presence_tracker::{
    Event, Kind, LeaveReason, Presence, Reaper, SessionId, SessionState, Touch,
};
use tokio::sync::broadcast;

#[test]
fn session_is_online_one_second_before_idle_timeout() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT - secs(1));
    assert_eq!(presence.reap(), 0);
    assert_eq!(presence.counts().guests, 1);
    assert!(presence.session(id).is_some());
}

#[test]
fn session_is_online_one_millisecond_before_idle_timeout() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT - ms(1));
    assert_eq!(presence.reap(), 0);
    let c = presence.counts();
    assert_eq!((c.guests, c.sessions, c.online), (1, 1, 1));
    assert!(presence.session(id).is_some());
    assert_eq!(presence.sessions().len(), 1);
}

#[test]
fn reads_show_session_gone_at_exactly_idle_timeout_without_reap() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::member("alice"), "/a").unwrap();
    clock.advance(IDLE_TIMEOUT);
    assert!(presence.session(id).is_none());
    let c = presence.counts();
    assert_eq!(
        (c.online, c.members, c.sessions, c.active, c.idle),
        (0, 0, 0, 0, 0)
    );
    assert!(presence.sessions().is_empty());
    assert_eq!(presence.page_count("/a"), 0);
    assert!(matches!(
        presence.user("alice"),
        presence_tracker::UserStatus::Offline { .. }
    ));
}

#[test]
fn each_read_alone_settles_what_is_due() {
    // Every read on its own, first after the deadline, sees the session gone.
    type Read = fn(&Presence, SessionId) -> bool;
    let reads: [(&str, Read); 5] = [
        ("counts", |p, _| p.counts().sessions == 0),
        ("session", |p, id| p.session(id).is_none()),
        ("sessions", |p, _| p.sessions().is_empty()),
        ("page_count", |p, _| p.page_count("/a") == 0),
        ("top_pages", |p, _| p.top_pages(5).is_empty()),
    ];
    for (name, gone) in reads {
        let (presence, clock) = manual();
        let id = SessionId::new_v4();
        presence.visit(id, Kind::Guest, "/a").unwrap();
        clock.advance(IDLE_TIMEOUT);
        assert!(gone(&presence, id), "{name} still shows a due session");
    }
}

#[test]
fn reap_evicts_at_exactly_idle_timeout_with_expired_reason() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT - ms(1));
    assert_eq!(presence.reap(), 0);
    clock.advance(ms(1));
    assert_eq!(presence.reap(), 1);
    assert_eq!(
        drain(&mut rx),
        vec![
            joined(id, Kind::Guest),
            left(id, Kind::Guest, LeaveReason::Expired),
        ]
    );
    assert_eq!(presence.reap(), 0);
}

#[test]
fn touch_pushes_the_deadline_back() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(secs(7));
    assert_eq!(presence.touch(id, Kind::Guest).unwrap(), Touch::Refreshed);
    clock.advance(IDLE_TIMEOUT - ms(1));
    assert!(presence.session(id).is_some());
    assert_eq!(presence.counts().sessions, 1);
    clock.advance(ms(1));
    assert!(presence.session(id).is_none());
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn background_thread_reaper_sends_left_within_idle_timeout_plus_reap_interval() {
    let idle_timeout = ms(200);
    let reap_interval = ms(20);
    let presence = Presence::builder()
        .idle_timeout(idle_timeout)
        .reap_interval(reap_interval)
        .reaper(Reaper::Thread)
        .build();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    let touched = Instant::now();
    presence.touch(id, Kind::Guest).unwrap();
    assert!(matches!(rx.try_recv(), Ok(Event::Joined { .. })));
    // The coarse clock has a few ms of resolution; scheduling on a busy machine adds more.
    let slack = ms(400);
    let left = wait_for_left(&mut rx, idle_timeout + reap_interval + slack);
    let elapsed = touched.elapsed();
    assert_eq!(
        left,
        Some((id, LeaveReason::Expired)),
        "no Left after {elapsed:?}"
    );
    // Never early (minus the coarse clock's resolution).
    assert!(
        elapsed + ms(20) >= idle_timeout,
        "left after only {elapsed:?}"
    );
}

fn wait_for_left(
    rx: &mut broadcast::Receiver<Event>,
    within: Duration,
) -> Option<(SessionId, LeaveReason)> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        match rx.try_recv() {
            Ok(Event::Left {
                session, reason, ..
            }) => return Some((session, reason)),
            Ok(_) => {}
            Err(_) => std::thread::sleep(ms(2)),
        }
    }
    None
}

#[test]
fn heartbeats_keep_a_session_until_heartbeat_limit_after_last_activity() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::member("alice")).unwrap();
    // Beat every 5 s (under idle_timeout) for longer than the limit.
    let beat = secs(5);
    let mut elapsed = Duration::ZERO;
    while elapsed + beat < HEARTBEAT_LIMIT {
        clock.advance(beat);
        elapsed += beat;
        assert!(presence.heartbeat(id), "heartbeat refused at {elapsed:?}");
        assert_eq!(presence.counts().sessions, 1);
    }
    // 20 s: one more beat at 25 s - 1 ms is still accepted...
    clock.advance(HEARTBEAT_LIMIT - elapsed - ms(1));
    assert!(presence.heartbeat(id));
    assert!(presence.session(id).is_some());
    // ...and at exactly 25 s the session is gone whatever its heartbeats.
    clock.advance(ms(1));
    assert!(presence.session(id).is_none());
    assert!(!presence.heartbeat(id));
    assert_eq!(presence.counts().sessions, 0);
    let events = drain(&mut rx);
    assert!(
        events.contains(&left(
            id,
            Kind::member("alice"),
            LeaveReason::HeartbeatLimit
        )),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&user_offline("alice")));
}

#[test]
fn activity_restarts_the_heartbeat_limit() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    for _ in 0..4 {
        clock.advance(secs(5));
        assert!(presence.heartbeat(id));
    }
    presence.touch(id, Kind::Guest).unwrap(); // at 20 s
    for _ in 0..4 {
        clock.advance(secs(5));
        assert!(presence.heartbeat(id));
    }
    clock.advance(secs(5) - ms(1)); // 45 s - 1 ms: 25 s after the touch minus 1 ms
    assert!(presence.session(id).is_some());
    clock.advance(ms(1));
    assert!(presence.session(id).is_none());
}

#[test]
fn heartbeat_on_a_due_session_returns_false_and_does_not_revive_it() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_TIMEOUT);
    assert!(!presence.heartbeat(id));
    clock.advance(ms(1));
    assert!(!presence.heartbeat(id));
    assert!(presence.session(id).is_none());
    assert_eq!(presence.counts().sessions, 0);
    assert_eq!(presence.reap(), 0, "the read already settled it");
    let events = drain(&mut rx);
    assert_eq!(
        events.last(),
        Some(&left(id, Kind::Guest, LeaveReason::Expired))
    );
}

#[test]
fn heartbeat_on_an_unknown_session_returns_false() {
    let (presence, _clock) = manual();
    assert!(!presence.heartbeat(SessionId::new_v4()));
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn touch_on_a_due_unreaped_session_joins_again_after_its_left() {
    let (presence, clock) = manual();
    let mut rx = presence.subscribe();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::member("alice"), "/a").unwrap();
    clock.advance(IDLE_TIMEOUT);
    assert_eq!(
        presence.touch(id, Kind::member("alice")).unwrap(),
        Touch::Joined
    );
    let alice = Kind::member("alice");
    assert_eq!(
        drain(&mut rx),
        vec![
            joined(id, alice.clone()),
            user_online("alice"),
            left(id, alice.clone(), LeaveReason::Expired),
            user_offline("alice"),
            joined(id, alice.clone()),
            user_online("alice"),
        ]
    );
    let info = presence.session(id).unwrap();
    assert_eq!(info.first_seen, info.last_seen, "a new session starts now");
    assert_eq!(info.page, None, "the new session has not visited a page");
    assert_eq!(presence.page_count("/a"), 0);
    let c = presence.counts();
    assert_eq!((c.members, c.sessions), (1, 1));
}

#[test]
fn session_goes_idle_after_idle_after_without_activity() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_AFTER - ms(1));
    assert_eq!(presence.session(id).unwrap().state, SessionState::Active);
    let c = presence.counts();
    assert_eq!((c.active, c.idle), (1, 0));
    clock.advance(ms(1));
    assert_eq!(presence.session(id).unwrap().state, SessionState::Idle);
    let c = presence.counts();
    assert_eq!((c.active, c.idle, c.sessions), (0, 1, 1));
}

#[test]
fn activity_makes_an_idle_session_active_again() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(IDLE_AFTER);
    assert_eq!(presence.counts().idle, 1);
    assert_eq!(presence.touch(id, Kind::Guest).unwrap(), Touch::Refreshed);
    assert_eq!(presence.session(id).unwrap().state, SessionState::Active);
    let c = presence.counts();
    assert_eq!((c.active, c.idle), (1, 0));
}

#[test]
fn heartbeats_do_not_count_as_activity() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    clock.advance(secs(2));
    assert!(presence.heartbeat(id));
    clock.advance(IDLE_AFTER - secs(2));
    assert_eq!(presence.session(id).unwrap().state, SessionState::Idle);
    assert_eq!(presence.counts().idle, 1);
    let info = presence.session(id).unwrap();
    assert!(info.last_seen > info.last_active);
}

#[test]
fn session_goes_idle_again_after_activity_while_heartbeats_continue() {
    // Regression: idle_after < idle_timeout, the session goes idle, heartbeats keep it
    // online, activity makes it active, and it must go idle again idle_after later.
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    let other = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    presence.touch(other, Kind::Bot).unwrap();
    for round in 0..3 {
        // 4 s without activity, beating every second: idle.
        for _ in 0..4 {
            clock.advance(secs(1));
            assert!(presence.heartbeat(id));
            assert!(presence.heartbeat(other));
        }
        assert_eq!(presence.counts().idle, 2, "round {round}: both idle");
        assert_eq!(presence.session(id).unwrap().state, SessionState::Idle);
        presence.touch(id, Kind::Guest).unwrap();
        let c = presence.counts();
        assert_eq!((c.active, c.idle), (1, 1), "round {round}: activity");
        clock.advance(IDLE_AFTER - ms(1));
        assert!(presence.heartbeat(id));
        assert!(presence.heartbeat(other));
        assert_eq!(
            presence.counts().idle,
            1,
            "round {round}: idle_after - 1 ms"
        );
        clock.advance(ms(1));
        let c = presence.counts();
        assert_eq!((c.active, c.idle), (0, 2), "round {round}: idle again");
        assert_eq!(presence.session(id).unwrap().state, SessionState::Idle);
        // Start the next round from "both active": its beats alone make them idle.
        presence.touch(other, Kind::Bot).unwrap();
        presence.touch(id, Kind::Guest).unwrap();
        assert_eq!(presence.counts().active, 2);
    }
}

#[test]
fn activity_on_a_page_keeps_idle_counting_exact() {
    // The hot path (same kind, same page) refreshes without rescheduling; idle must still
    // come exactly idle_after after the last activity.
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::Guest, "/a").unwrap();
    for _ in 0..5 {
        clock.advance(secs(3));
        presence.visit(id, Kind::Guest, "/a").unwrap();
        assert_eq!(presence.counts().idle, 0);
    }
    clock.advance(IDLE_AFTER - ms(1));
    assert_eq!(presence.counts().idle, 0);
    clock.advance(ms(1));
    assert_eq!(presence.counts().idle, 1);
    clock.advance(IDLE_TIMEOUT - IDLE_AFTER - ms(1));
    assert_eq!(presence.counts().sessions, 1);
    clock.advance(ms(1));
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn idle_session_expires_at_idle_timeout_with_counts_exact() {
    let (presence, clock) = manual();
    let a = SessionId::new_v4();
    let b = SessionId::new_v4();
    presence.touch(a, Kind::Guest).unwrap();
    clock.advance(secs(6));
    presence.touch(b, Kind::Guest).unwrap();
    let c = presence.counts();
    assert_eq!((c.active, c.idle), (1, 1));
    clock.advance(secs(4));
    let c = presence.counts();
    assert_eq!((c.sessions, c.active, c.idle), (1, 0, 1));
    clock.advance(secs(6));
    let c = presence.counts();
    assert_eq!((c.sessions, c.active, c.idle), (0, 0, 0));
}
