//! Erasing a user (`Presence::erase_user`): their sessions end, their last-seen record goes
//! at once, and nothing of the name is left for the next snapshot; beside reaps and new
//! sessions, the counts stay exact.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{SystemTime, UNIX_EPOCH};

use common::{builder, drain, left, manual, secs, user_offline};
use presence_tracker::{
    Event, Kind, LeaveReason, MAX_USER_LEN, ManualClock, Presence, PresenceError, Reaper,
    SessionId, UserStatus,
};

/// The counts agree with a recount of the sessions, users included.
fn assert_recount(presence: &Presence) {
    let sessions = presence.sessions();
    let c = presence.counts();
    assert_eq!(c.sessions, sessions.len());
    let listed: HashSet<&str> = sessions
        .iter()
        .filter_map(|s| match &s.kind {
            Kind::Member(u) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    let hidden: HashSet<&str> = sessions
        .iter()
        .filter_map(|s| match &s.kind {
            Kind::HiddenMember(u) if !listed.contains(u.as_str()) => Some(u.as_str()),
            _ => None,
        })
        .collect();
    let guests = sessions.iter().filter(|s| s.kind == Kind::Guest).count();
    assert_eq!(
        (c.members, c.hidden, c.guests),
        (listed.len(), hidden.len(), guests)
    );
    assert_eq!(presence.online_members(usize::MAX).len(), listed.len());
}

#[test]
fn erase_ends_every_session_of_the_user_and_forgets_them_at_once() {
    let (presence, _clock) = manual();
    let (tab1, tab2, bob) = (
        SessionId::new_v4(),
        SessionId::new_v4(),
        SessionId::new_v4(),
    );
    presence
        .visit(tab1, Kind::member("alice"), "/forum/1")
        .unwrap();
    presence.touch(tab2, Kind::hidden_member("alice")).unwrap();
    presence
        .visit(bob, Kind::member("bob"), "/forum/1")
        .unwrap();
    let mut rx = presence.subscribe();

    assert_eq!(presence.erase_user("alice"), Ok(2));

    let events = drain(&mut rx);
    let lefts: HashSet<SessionId> = events
        .iter()
        .filter_map(|e| match e {
            Event::Left {
                session,
                reason: LeaveReason::Left,
                ..
            } => Some(*session),
            _ => None,
        })
        .collect();
    assert_eq!(lefts, HashSet::from([tab1, tab2]));
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events.last(), Some(&user_offline("alice")));
    // Not kept for `remember_users_for`: unknown at once.
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
    assert!(presence.session(tab1).is_none() && presence.session(tab2).is_none());
    assert_eq!(presence.online_members(10), ["bob"]);
    assert_eq!(presence.page_members("/forum/1", 10), ["bob"]);
    assert_eq!(presence.page_count("/forum/1"), 1);
    let c = presence.counts();
    assert_eq!((c.online, c.members, c.hidden, c.sessions), (1, 1, 0, 1));
    assert!(matches!(presence.user("bob"), UserStatus::Online { .. }));
    assert_recount(&presence);
}

#[test]
fn erasing_an_offline_user_forgets_their_last_seen_without_events() {
    let (presence, _clock) = manual();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("alice")).unwrap();
    presence.leave(tab);
    assert!(matches!(presence.user("alice"), UserStatus::Offline { .. }));
    let mut rx = presence.subscribe();

    assert_eq!(presence.erase_user("alice"), Ok(0));
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
    assert!(drain(&mut rx).is_empty());
}

#[test]
fn erasing_an_unknown_user_changes_nothing() {
    let (presence, _clock) = manual();
    let guest = SessionId::new_v4();
    presence.touch(guest, Kind::Guest).unwrap();
    let mut rx = presence.subscribe();
    assert_eq!(presence.erase_user("nobody"), Ok(0));
    assert_eq!(presence.erase_user(""), Ok(0));
    assert!(drain(&mut rx).is_empty());
    assert_eq!(presence.counts().guests, 1);
    assert!(presence.session(guest).is_some());
}

#[test]
fn a_name_longer_than_any_stored_is_refused_with_a_clear_error() {
    let (presence, _clock) = manual();
    let longest = "a".repeat(MAX_USER_LEN);
    presence
        .touch(SessionId::new_v4(), Kind::member(longest.as_str()))
        .unwrap();
    assert_eq!(presence.erase_user(&longest), Ok(1));

    let huge = "a".repeat(1 << 20);
    let err = presence.erase_user(&huge).unwrap_err();
    assert_eq!(
        err,
        PresenceError::UserTooLong {
            len: 1 << 20,
            max: MAX_USER_LEN
        }
    );
    assert!(err.to_string().contains("MAX_USER_LEN"), "{err}");
}

#[test]
fn a_due_session_not_yet_reaped_ends_for_the_reason_it_was_due() {
    let (presence, clock) = manual();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("alice")).unwrap();
    clock.advance(common::IDLE_TIMEOUT);
    let mut rx = presence.subscribe();

    assert_eq!(presence.erase_user("alice"), Ok(0), "it was gone already");
    assert_eq!(
        drain(&mut rx),
        [
            left(tab, Kind::member("alice"), LeaveReason::Expired),
            user_offline("alice")
        ]
    );
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
    assert_eq!(presence.reap(), 0, "nothing left for the reaper");
}

/// Erasing a user at the bound of remembered users must not make room by forgetting
/// someone else: the erased user is never remembered.
#[test]
fn erasing_does_not_push_another_user_out_of_the_remembered_ones() {
    let clock = ManualClock::new();
    let presence = builder(&clock).max_remembered_users(2).build();
    for user in ["bob", "carol"] {
        let tab = SessionId::new_v4();
        presence.touch(tab, Kind::member(user)).unwrap();
        presence.leave(tab);
    }
    presence
        .touch(SessionId::new_v4(), Kind::member("alice"))
        .unwrap();

    assert_eq!(presence.erase_user("alice"), Ok(1));
    for user in ["bob", "carol"] {
        assert!(
            matches!(presence.user(user), UserStatus::Offline { .. }),
            "{user} is still remembered"
        );
    }
}

/// A fresh empty directory for one test, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "presence-erase-{}-{nanos}-{name}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn the_erased_names_bytes_are_absent_from_the_next_snapshot() {
    let dir = TempDir::new("snapshot");
    let path = dir.0.join("presence.snapshot");
    let clock = ManualClock::starting_at(UNIX_EPOCH + secs(1_800_000_000));
    let build = |clock: &ManualClock| {
        Presence::builder()
            .clock(clock.clone())
            .reaper(Reaper::Manual)
            .idle_timeout(secs(300))
            .snapshot_file(&path)
            .build()
    };
    let presence = build(&clock);
    // Names that appear nowhere else in the file: one online on two tabs (one of them
    // hidden, on a page another user also views), one only remembered as offline.
    let (online, offline) = ("erasure-canary-online", "erasure-canary-offline");
    presence
        .visit(SessionId::new_v4(), Kind::member(online), "/topic/7")
        .unwrap();
    presence
        .touch(SessionId::new_v4(), Kind::hidden_member(online))
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::member("keeper"), "/topic/7")
        .unwrap();
    let gone = SessionId::new_v4();
    presence.touch(gone, Kind::member(offline)).unwrap();
    presence.leave(gone);

    presence.save_snapshot().unwrap();
    let before = fs::read(&path).unwrap();
    assert!(holds(&before, online) && holds(&before, offline));

    assert_eq!(presence.erase_user(online), Ok(2));
    assert_eq!(presence.erase_user(offline), Ok(0));
    presence.save_snapshot().unwrap();
    let after = fs::read(&path).unwrap();
    assert!(!holds(&after, online), "the online user's name is gone");
    assert!(!holds(&after, offline), "the offline user's name is gone");
    assert!(holds(&after, "keeper") && holds(&after, "/topic/7"));
    drop(presence); // saves once more, as at shutdown

    let restarted = build(&ManualClock::starting_at(UNIX_EPOCH + secs(1_800_000_010)));
    assert_eq!(restarted.user(online), UserStatus::Unknown);
    assert_eq!(restarted.user(offline), UserStatus::Unknown);
    assert_eq!(restarted.online_members(10), ["keeper"]);
    assert_eq!(restarted.page_count("/topic/7"), 1);
    restarted.shutdown();
}

/// Erase and reap racing over the same user's sessions: every session ends once (one `Left`
/// each, whoever ends it), the counts
/// agree with a recount, and the user is forgotten whoever ended their last session (in
/// odd rounds all of them are due, so the reaper often ends the last one).
#[test]
fn erase_during_a_reap_ends_each_session_once_and_forgets_the_user() {
    for round in 0..40 {
        let clock = ManualClock::new();
        let presence = builder(&clock).event_capacity(4096).build();
        let mut rx = presence.subscribe();
        for _ in 0..500 {
            presence
                .touch(SessionId::new_v4(), Kind::member("alice"))
                .unwrap();
        }
        clock.advance(secs(5));
        let live_alice = if round % 2 == 0 { 250 } else { 0 };
        for i in 0..500 {
            let kind = if i < live_alice {
                Kind::member("alice")
            } else {
                Kind::Guest
            };
            presence.touch(SessionId::new_v4(), kind).unwrap();
        }
        clock.advance(secs(6)); // the first 500 are due, the rest live
        let barrier = Arc::new(Barrier::new(2));
        let reaper = {
            let (presence, barrier) = (presence.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                presence.reap()
            })
        };
        barrier.wait();
        let erased = presence.erase_user("alice").unwrap();
        let reaped = reaper.join().unwrap();
        assert_eq!(
            erased, live_alice,
            "round {round}: the reaper ends no live one"
        );
        assert!(reaped <= 500, "round {round}");

        assert_eq!(presence.user("alice"), UserStatus::Unknown, "round {round}");
        let c = presence.counts();
        let guests = 500 - live_alice;
        assert_eq!((c.members, c.guests, c.sessions), (0, guests, guests));
        assert_recount(&presence);
        let events = drain(&mut rx);
        let lefts = events
            .iter()
            .filter(|e| matches!(e, Event::Left { .. }))
            .count();
        let offline = events
            .iter()
            .filter(|e| matches!(e, Event::UserOffline { .. }))
            .count();
        assert_eq!((lefts, offline), (500 + live_alice, 1), "round {round}");
    }
}

/// A session the application lets in for the user while the erase runs is not ended, and
/// the user's record, theirs again, stays consistent with the counts.
#[test]
fn a_session_started_during_the_erase_stays_counted() {
    for round in 0..20 {
        let (presence, _clock) = manual();
        for _ in 0..300 {
            presence
                .touch(SessionId::new_v4(), Kind::member("alice"))
                .unwrap();
        }
        let barrier = Arc::new(Barrier::new(2));
        let newcomer = {
            let (presence, barrier) = (presence.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut ids = Vec::new();
                for _ in 0..50 {
                    let id = SessionId::new_v4();
                    presence.touch(id, Kind::member("alice")).unwrap();
                    ids.push(id);
                }
                ids
            })
        };
        barrier.wait();
        let erased = presence.erase_user("alice").unwrap();
        let newcomers = newcomer.join().unwrap();
        let live = newcomers
            .iter()
            .filter(|id| presence.session(**id).is_some())
            .count();
        assert_eq!(erased + live, 350, "round {round}");
        assert_recount(&presence);
        match presence.user("alice") {
            UserStatus::Online { sessions, .. } => assert_eq!(sessions, live),
            UserStatus::Unknown => assert_eq!(live, 0, "round {round}"),
            other => panic!("round {round}: {other:?}"),
        }
        // Erasing again, with nobody racing, erases the rest.
        assert_eq!(presence.erase_user("alice"), Ok(live));
        assert_eq!(presence.user("alice"), UserStatus::Unknown);
        assert_recount(&presence);
    }
}

#[test]
fn an_id_erased_can_start_again_as_a_new_session() {
    let (presence, _clock) = manual();
    let tab = SessionId::new_v4();
    presence.touch(tab, Kind::member("alice")).unwrap();
    presence.erase_user("alice").unwrap();
    // The application signed alice out; the browser comes back as a guest.
    assert_eq!(
        presence.touch(tab, Kind::Guest),
        Ok(presence_tracker::Touch::Joined)
    );
    assert_eq!(presence.user("alice"), UserStatus::Unknown);
    let c = presence.counts();
    assert_eq!((c.online, c.guests), (1, 1));
}
