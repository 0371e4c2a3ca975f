//! Holds: a session kept online by a connection (`Presence::hold`), its grace after the last
//! hold is dropped, reconnects, and the edges (explicit leaves, ended sessions, capacity,
//! bad input, restarts, months-long holds), on a manual clock.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{IDLE_AFTER, IDLE_TIMEOUT, builder, drain, joined, left, ms, secs};
use presence_tracker::{
    Event, Kind, LeaveReason, ManualClock, Presence, PresenceError, Reaper, SessionId,
    SessionState, Touch, UserStatus,
};

const GRACE: Duration = Duration::from_secs(5);

fn tracker() -> (Presence, ManualClock) {
    let clock = ManualClock::new();
    (builder(&clock).hold_grace(GRACE).build(), clock)
}

fn closed(session: SessionId, kind: Kind) -> Event {
    left(session, kind, LeaveReason::Closed)
}

#[test]
fn a_held_session_never_expires_and_reads_as_seen_now() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::member("alice"), "/chat").unwrap();
    for _ in 0..10 {
        clock.advance(IDLE_TIMEOUT * 3); // far past idle_timeout and heartbeat_limit
        presence.reap();
    }
    let info = presence.session(id).expect("held: still online");
    let now = presence.counts().peak.at + clock.now();
    assert_eq!(info.last_seen, now, "a held session is seen now");
    assert_eq!(
        info.state,
        SessionState::Idle,
        "no activity: idle, as any session"
    );
    assert_eq!(presence.page_members("/chat", 10), ["alice"]);
    assert!(matches!(
        presence.user("alice"),
        UserStatus::Online { idle: true, .. }
    ));
    drop(hold);
}

#[test]
fn the_last_hold_dropped_leaves_at_hold_grace_with_closed() {
    let (presence, clock) = tracker();
    let mut events = presence.subscribe();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::member("alice"), "/chat").unwrap();
    clock.advance(secs(60));
    drop(hold);
    clock.advance(GRACE - ms(1));
    presence.reap();
    assert!(presence.session(id).is_some(), "still within the grace");
    clock.advance(ms(1));
    assert_eq!(
        presence.counts().online,
        0,
        "gone at the grace, however long it was held"
    );
    assert_eq!(
        drain(&mut events),
        [
            joined(id, Kind::member("alice")),
            Event::UserOnline {
                user: "alice".into()
            },
            closed(id, Kind::member("alice")),
            Event::UserOffline {
                user: "alice".into()
            },
        ]
    );
}

#[test]
fn a_reconnect_within_the_grace_continues_the_session_without_left_or_joined() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let first = presence.hold(id, Kind::Guest, "/chat").unwrap();
    let mut events = presence.subscribe();
    drop(first);
    clock.advance(GRACE - ms(1));
    let again = presence.hold(id, Kind::Guest, "/chat").unwrap();
    clock.advance(secs(3600));
    presence.reap();
    assert!(presence.session(id).is_some());
    assert!(drain(&mut events).is_empty(), "no Left, no Joined");
    // The grace starts again from the new hold's drop, not the first's.
    drop(again);
    clock.advance(GRACE);
    presence.reap();
    assert_eq!(drain(&mut events), [closed(id, Kind::Guest)]);
}

#[test]
fn a_touch_or_heartbeat_within_the_grace_continues_as_an_ordinary_session() {
    let (presence, clock) = tracker();
    let (a, b) = (SessionId::new_v4(), SessionId::new_v4());
    let holds = (
        presence.hold(a, Kind::Guest, "/").unwrap(),
        presence.hold(b, Kind::Guest, "/").unwrap(),
    );
    let mut events = presence.subscribe();
    drop(holds);
    clock.advance(GRACE - ms(1));
    assert_eq!(presence.touch(a, Kind::Guest), Ok(Touch::Refreshed));
    assert!(presence.heartbeat(b));
    // Past the grace: they go on under idle_timeout, from the touch and the heartbeat.
    clock.advance(IDLE_TIMEOUT - ms(1));
    presence.reap();
    assert_eq!(presence.counts().sessions, 2);
    assert!(drain(&mut events).is_empty());
    clock.advance(ms(1));
    presence.reap();
    let mut reasons: Vec<_> = drain(&mut events)
        .into_iter()
        .filter_map(|e| match e {
            Event::Left { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    reasons.sort_by_key(|r| format!("{r:?}"));
    assert_eq!(reasons, [LeaveReason::Expired, LeaveReason::Expired]);
}

#[test]
fn a_heartbeat_in_the_grace_of_a_session_idle_past_its_heartbeat_limit_ends_it() {
    // Held for an hour without activity, then released: as an ordinary session it is past
    // heartbeat_limit, so a heartbeat does not keep it (a forgotten tab stays forgotten).
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::Guest, "/").unwrap();
    clock.advance(secs(3600));
    drop(hold);
    let mut events = presence.subscribe();
    assert!(!presence.heartbeat(id));
    assert_eq!(presence.counts().sessions, 0);
    assert_eq!(
        drain(&mut events),
        [left(id, Kind::Guest, LeaveReason::HeartbeatLimit)]
    );
}

#[test]
fn several_holds_keep_the_session_until_the_last_is_dropped() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let tabs: Vec<_> = (0..3)
        .map(|_| presence.hold(id, Kind::member("bob"), "/t/1").unwrap())
        .collect();
    assert_eq!(presence.counts().sessions, 1, "one session, three holds");
    let mut tabs = tabs.into_iter();
    drop(tabs.next());
    drop(tabs.next());
    clock.advance(GRACE * 10);
    presence.reap();
    assert!(presence.session(id).is_some(), "one hold left");
    drop(tabs.next());
    clock.advance(GRACE);
    presence.reap();
    assert!(presence.session(id).is_none());
}

#[test]
fn leave_ends_a_held_session_at_once_and_its_holds_keep_nothing() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::member("carol"), "/").unwrap();
    let mut events = presence.subscribe();
    assert!(presence.leave(id).is_some(), "an admin's kill");
    assert_eq!(presence.counts().online, 0);
    assert!(!hold.activity());
    assert_eq!(hold.visit("/x"), Err(PresenceError::HoldEnded));
    assert_eq!(presence.counts().online, 0, "a stale hold revives nothing");
    clock.advance(secs(1));
    drop(hold);
    presence.reap();
    assert_eq!(
        drain(&mut events),
        [
            left(id, Kind::member("carol"), LeaveReason::Left),
            Event::UserOffline {
                user: "carol".into()
            }
        ]
    );
}

#[test]
fn a_hold_of_an_ended_session_never_releases_a_newer_one() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let old = presence.hold(id, Kind::Guest, "/").unwrap();
    presence.leave(id);
    let new = presence.hold(id, Kind::Guest, "/").unwrap();
    drop(old);
    clock.advance(secs(3600));
    presence.reap();
    assert!(
        presence.session(id).is_some(),
        "the new session is still held"
    );
    assert!(new.activity());
    // And an ordinary (unheld) newer session is not put into a grace by a stale drop.
    presence.leave(id);
    let stale = presence.hold(id, Kind::Guest, "/").unwrap();
    presence.leave(id);
    presence.touch(id, Kind::Guest).unwrap();
    drop(stale);
    clock.advance(IDLE_TIMEOUT - ms(1));
    presence.reap();
    assert!(
        presence.session(id).is_some(),
        "no grace for an ordinary session"
    );
    drop(new);
}

#[test]
fn hold_activity_keeps_the_session_active_and_visit_moves_it() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let hold = presence
        .hold(id, Kind::member("dave"), "/chat/rust")
        .unwrap();
    clock.advance(IDLE_AFTER);
    presence.reap();
    assert_eq!(presence.session(id).unwrap().state, SessionState::Idle);
    assert!(hold.activity());
    assert_eq!(presence.session(id).unwrap().state, SessionState::Active);
    assert_eq!(presence.counts().idle, 0);
    hold.visit("/chat/async").unwrap();
    assert_eq!(presence.page_count("/chat/rust"), 0);
    assert_eq!(presence.page_members("/chat/async", 10), ["dave"]);
    let long = "/".repeat(presence_tracker::MAX_PAGE_LEN + 1);
    assert!(matches!(
        hold.visit(&long),
        Err(PresenceError::PageTooLong { .. })
    ));
    assert_eq!(
        presence.session(id).unwrap().page.as_deref(),
        Some("/chat/async")
    );
}

#[test]
fn a_touch_of_a_held_session_with_another_kind_moves_its_counts_and_keeps_it_held() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::Guest, "/").unwrap();
    presence.touch(id, Kind::member("erin")).unwrap(); // signs in on another request
    assert_eq!(
        (presence.counts().guests, presence.counts().members),
        (0, 1)
    );
    clock.advance(IDLE_TIMEOUT * 5);
    presence.reap();
    assert!(presence.session(id).is_some(), "still held");
    drop(hold);
}

#[test]
fn a_hold_is_a_session_and_counts_against_max_sessions() {
    let clock = ManualClock::new();
    let presence = builder(&clock).max_sessions(2).build();
    let _a = presence
        .hold(SessionId::new_v4(), Kind::Guest, "/")
        .unwrap();
    let _b = presence
        .hold(SessionId::new_v4(), Kind::Guest, "/")
        .unwrap();
    assert_eq!(
        presence
            .hold(SessionId::new_v4(), Kind::Guest, "/")
            .map(|_| ()),
        Err(PresenceError::Full { max_sessions: 2 })
    );
    // Held sessions never expire, so they keep their places whatever the time.
    clock.advance(secs(3600));
    assert!(presence.touch(SessionId::new_v4(), Kind::Guest).is_err());
}

#[test]
fn a_refused_hold_records_nothing() {
    let (presence, _clock) = tracker();
    let id = SessionId::new_v4();
    let long_page = "/".repeat(presence_tracker::MAX_PAGE_LEN + 1);
    let long_user = "u".repeat(presence_tracker::MAX_USER_LEN + 1);
    assert!(matches!(
        presence.hold(id, Kind::Guest, &long_page),
        Err(PresenceError::PageTooLong { .. })
    ));
    assert!(matches!(
        presence.hold(id, Kind::member(long_user.as_str()), "/"),
        Err(PresenceError::UserTooLong { .. })
    ));
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn one_session_with_a_thousand_holds_is_one_session_until_the_last() {
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let mut holds: Vec<_> = (0..1000)
        .map(|_| presence.hold(id, Kind::member("frank"), "/").unwrap())
        .collect();
    assert_eq!(
        (presence.counts().sessions, presence.counts().members),
        (1, 1)
    );
    while holds.len() > 1 {
        holds.pop();
    }
    clock.advance(GRACE * 2);
    presence.reap();
    assert_eq!(presence.counts().sessions, 1);
    holds.clear();
    clock.advance(GRACE);
    presence.reap();
    assert_eq!(presence.counts().sessions, 0);
}

#[test]
fn a_session_held_for_months_stays_online_and_leaves_after_its_grace() {
    // Times are stored in 32 bits of milliseconds (about 24 days each way): a hold far
    // longer than that must neither expire nor misread its times.
    let (presence, clock) = tracker();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::member("gus"), "/").unwrap();
    let day = secs(24 * 3600);
    for _ in 0..40 {
        clock.advance(day * 3);
        presence.reap();
        let info = presence.session(id).expect("held for months");
        assert_eq!(info.state, SessionState::Idle);
        assert!(info.last_active <= info.last_seen);
    }
    assert!(hold.activity());
    assert_eq!(presence.session(id).unwrap().state, SessionState::Active);
    drop(hold);
    clock.advance(GRACE - ms(1));
    presence.reap();
    assert!(presence.session(id).is_some());
    clock.advance(ms(1));
    presence.reap();
    assert!(presence.session(id).is_none());
}

#[test]
fn zero_grace_ends_the_session_when_its_last_hold_is_dropped() {
    let clock = ManualClock::new();
    let presence = builder(&clock).hold_grace(Duration::ZERO).build();
    let id = SessionId::new_v4();
    drop(presence.hold(id, Kind::Guest, "/").unwrap());
    assert_eq!(presence.counts().sessions, 0);
}

/// A fresh path for a snapshot file.
fn snapshot_path(name: &str) -> std::path::PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    std::env::temp_dir().join(format!(
        "presence-holds-{}-{nanos}-{name}.snapshot",
        std::process::id()
    ))
}

#[test]
fn a_snapshot_saves_a_held_session_as_seen_at_the_save_and_restores_it_quietly() {
    let path = snapshot_path("held");
    let start = UNIX_EPOCH + secs(1_800_000_000);
    let clock = ManualClock::starting_at(start);
    let presence = builder(&clock).snapshot_file(&path).build();
    let id = SessionId::new_v4();
    let hold = presence.hold(id, Kind::member("hana"), "/chat").unwrap();
    clock.advance(secs(3600));
    presence.save_snapshot().unwrap();
    drop((hold, presence));

    // Restarted 2 s later: the session is online as an ordinary one, seen at the save.
    let clock = ManualClock::starting_at(start + secs(3602));
    let restarted = builder(&clock).snapshot_file(&path).build();
    let mut events = restarted.subscribe();
    let info = restarted.session(id).expect("restored");
    assert_eq!(info.last_seen, start + secs(3600));
    clock.advance(IDLE_TIMEOUT - secs(3));
    restarted.reap();
    assert!(
        drain(&mut events).is_empty(),
        "no Closed storm after a restart"
    );
    clock.advance(secs(1));
    restarted.reap();
    assert!(
        restarted.session(id).is_none(),
        "then it expires as an ordinary session"
    );
    drop(restarted);

    // Shut down the other way round: the connections close first (the holds drop), then
    // the last handle's save. Those sessions come back too, for their connections to
    // reconnect.
    let clock = ManualClock::starting_at(start);
    let presence = builder(&clock).snapshot_file(&path).build();
    let hold = presence.hold(id, Kind::member("hana"), "/chat").unwrap();
    clock.advance(secs(3600));
    drop(hold);
    drop(presence);
    let clock = ManualClock::starting_at(start + secs(3602));
    let restarted = builder(&clock).snapshot_file(&path).build();
    assert!(
        restarted.session(id).is_some(),
        "released within its grace: restored"
    );
    let again = restarted.hold(id, Kind::member("hana"), "/chat").unwrap();
    assert_eq!(restarted.counts().members, 1);
    drop((again, restarted));
    remove(&path);
}

fn remove(path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(format!("{}.lock", path.display()));
}

#[test]
fn dropping_the_last_handle_with_a_hold_alive_still_shuts_down_and_saves() {
    let path = snapshot_path("weak");
    let clock = ManualClock::new();
    let presence = builder(&clock).snapshot_file(&path).build();
    let hold = presence
        .hold(SessionId::new_v4(), Kind::Guest, "/")
        .unwrap();
    let watch = presence.watch_page("/").unwrap();
    drop(presence);
    assert!(
        path.exists(),
        "the hold and the watch kept no strong reference"
    );
    assert!(!hold.activity());
    assert!(watch.is_closed());
    drop((hold, watch)); // nothing to release, no panic
    remove(&path);
}

#[test]
fn holds_work_under_every_reaper() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    for reaper in [Reaper::Thread, Reaper::Tokio(runtime.handle().clone())] {
        let presence = Presence::builder()
            .reaper(reaper)
            .idle_timeout(ms(20))
            .reap_interval(ms(5))
            .hold_grace(ms(20))
            .build();
        let id = SessionId::new_v4();
        let hold = presence.hold(id, Kind::Guest, "/").unwrap();
        std::thread::sleep(ms(100));
        assert!(presence.session(id).is_some(), "held past idle_timeout");
        drop(hold);
        let gone = (0..200).any(|_| {
            std::thread::sleep(ms(10));
            presence.counts().sessions == 0
        });
        assert!(gone, "left after its grace");
    }
}
