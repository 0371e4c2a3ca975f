//! Pushed presence: `Presence::watch` (the counts) and `Presence::watch_page` (a page's
//! count and who joined or left it), coalesced per publish, sent only on change, bounded.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{manual, ms};
use presence_tracker::{Kind, PageDiff, PageWatch, Presence, PresenceError, Reaper, SessionId};

/// The diff if one is ready now (the publish already happened), else `None`.
fn ready(watch: &mut PageWatch) -> Option<PageDiff> {
    let mut changed = pin!(watch.changed());
    match changed
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(diff) => Some(diff),
        Poll::Pending => None,
    }
}

fn names(v: &[presence_tracker::UserId]) -> Vec<&str> {
    v.iter().map(|u| u.as_str()).collect()
}

#[test]
fn watch_starts_from_the_counts_of_now_and_is_sent_only_on_change() {
    let (presence, _clock) = manual();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let mut counts = presence.watch();
    assert_eq!(counts.borrow_and_update().guests, 1);
    presence.reap();
    assert!(
        !counts.has_changed().unwrap(),
        "nothing changed: nothing sent"
    );
    presence
        .touch(SessionId::new_v4(), Kind::member("a"))
        .unwrap();
    presence
        .touch(SessionId::new_v4(), Kind::member("b"))
        .unwrap();
    assert!(!counts.has_changed().unwrap(), "not before a publish");
    presence.reap();
    presence.reap();
    assert!(counts.has_changed().unwrap());
    let c = *counts.borrow_and_update();
    assert_eq!((c.guests, c.members), (1, 2), "both joins in one value");
    assert!(
        !counts.has_changed().unwrap(),
        "a slow receiver finds one latest value"
    );
}

#[test]
fn a_page_diff_names_users_not_tabs_and_never_hidden_ones() {
    let (presence, _clock) = manual();
    let mut room = presence.watch_page("/room").unwrap();
    let alice_tab = SessionId::new_v4();
    presence
        .visit(alice_tab, Kind::member("alice"), "/room")
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::hidden_member("hugo"), "/room")
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::Guest, "/room")
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::member("zed"), "/elsewhere")
        .unwrap();
    assert!(ready(&mut room).is_none(), "nothing before a publish");
    presence.reap();
    let diff = ready(&mut room).expect("published");
    assert_eq!(
        (diff.count, names(&diff.joined), names(&diff.left)),
        (3, vec!["alice"], vec![])
    );

    // alice's second tab: a count, no name.
    let second = SessionId::new_v4();
    presence
        .visit(second, Kind::member("alice"), "/room")
        .unwrap();
    presence.reap();
    let diff = ready(&mut room).unwrap();
    assert_eq!((diff.count, diff.no_names()), (4, true));
    // One tab closes: still there.
    presence.leave(alice_tab);
    presence.reap();
    let diff = ready(&mut room).unwrap();
    assert_eq!((diff.count, diff.no_names()), (3, true));
    // The last: she left.
    presence.leave(second);
    presence.reap();
    let diff = ready(&mut room).unwrap();
    assert_eq!((diff.count, names(&diff.left)), (2, vec!["alice"]));
    assert_eq!(room.members(10), Vec::<presence_tracker::UserId>::new());
}

#[test]
fn a_slow_watcher_gets_the_net_change_and_loses_nothing() {
    let (presence, _clock) = manual();
    let (bob, carol) = (SessionId::new_v4(), SessionId::new_v4());
    presence.visit(bob, Kind::member("bob"), "/t").unwrap();
    let mut slow = presence.watch_page("/t").unwrap();
    let mut fast = presence.watch_page("/t").unwrap();
    // carol joins, bob leaves, a guest comes; carol leaves again: four publishes.
    presence.visit(carol, Kind::member("carol"), "/t").unwrap();
    presence.reap();
    assert_eq!(names(&ready(&mut fast).unwrap().joined), ["carol"]);
    presence.leave(bob);
    presence.reap();
    assert_eq!(names(&ready(&mut fast).unwrap().left), ["bob"]);
    presence
        .visit(SessionId::new_v4(), Kind::Guest, "/t")
        .unwrap();
    presence.reap();
    assert_eq!(ready(&mut fast).unwrap().count, 2);
    presence.leave(carol);
    presence.reap();
    assert_eq!(names(&ready(&mut fast).unwrap().left), ["carol"]);
    // The slow one reads once: bob left; carol came and went, so she is in neither list.
    let diff = ready(&mut slow).unwrap();
    assert_eq!(
        (diff.count, names(&diff.joined), names(&diff.left)),
        (1, vec![], vec!["bob"])
    );
    assert!(ready(&mut slow).is_none(), "nothing queued behind it");
}

#[test]
fn changes_that_cancel_out_are_no_diff() {
    let (presence, _clock) = manual();
    let mut room = presence.watch_page("/r").unwrap();
    let other = presence.watch_page("/r").unwrap();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::member("dan"), "/r").unwrap();
    presence.leave(id);
    presence.reap(); // the page's version moved, its state did not
    assert!(ready(&mut room).is_none());
    drop(other);
}

#[test]
fn watched_pages_are_bounded_and_a_dropped_watch_frees_its_page() {
    let presence = Presence::builder()
        .reaper(Reaper::Manual)
        .max_watched_pages(2)
        .build();
    let a = presence.watch_page("/a").unwrap();
    let a2 = presence.watch_page("/a").unwrap();
    let _b = presence.watch_page("/b").unwrap();
    assert_eq!(
        presence.watch_page("/c").map(|_| ()),
        Err(PresenceError::TooManyWatchedPages { max: 2 })
    );
    drop(a);
    assert!(presence.watch_page("/c").is_err(), "a2 still watches /a");
    drop(a2);
    assert!(presence.watch_page("/c").is_ok());
    let long = "/".repeat(presence_tracker::MAX_PAGE_LEN + 1);
    assert!(matches!(
        presence.watch_page(&long),
        Err(PresenceError::PageTooLong { .. })
    ));
}

#[test]
fn a_held_session_shows_in_its_room_and_leaves_it_at_the_grace() {
    let (presence, clock) = manual();
    let mut room = presence.watch_page("/chat").unwrap();
    let hold = presence
        .hold(SessionId::new_v4(), Kind::member("eve"), "/chat")
        .unwrap();
    presence.reap();
    assert_eq!(names(&ready(&mut room).unwrap().joined), ["eve"]);
    drop(hold);
    clock.advance(presence.hold_grace());
    presence.reap();
    assert_eq!(names(&ready(&mut room).unwrap().left), ["eve"]);
}

#[test]
fn the_ticker_publishes_on_its_own() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    runtime.block_on(async {
        let presence = Presence::builder().publish_interval(ms(20)).build(); // a tokio task: built inside the runtime
        let mut counts = presence.watch();
        let mut room = presence.watch_page("/live").unwrap();
        presence
            .visit(SessionId::new_v4(), Kind::member("fay"), "/live")
            .unwrap();
        // Generous bounds: this checks that it comes, not how fast.
        tokio::time::timeout(Duration::from_secs(10), counts.changed())
            .await
            .expect("counts published")
            .unwrap();
        let diff = tokio::time::timeout(Duration::from_secs(10), room.changed())
            .await
            .expect("page published");
        assert_eq!(names(&diff.joined), ["fay"]);
    });
}

#[test]
fn a_thread_ticker_publishes_too_and_stops_at_shutdown() {
    let presence = Presence::builder()
        .reaper(Reaper::Thread)
        .publish_interval(ms(10))
        .build();
    let mut counts = presence.watch();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    let published = (0..1000).any(|_| {
        std::thread::sleep(ms(5));
        counts.has_changed().unwrap()
    });
    assert!(published);
    counts.borrow_and_update();
    presence.shutdown();
    std::thread::sleep(ms(50)); // a tick in flight at the shutdown may still land
    counts.borrow_and_update();
    presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    std::thread::sleep(ms(100));
    assert!(!counts.has_changed().unwrap(), "no ticker after shutdown");
    presence.reap(); // a reap still publishes
    assert!(counts.has_changed().unwrap());
}

#[test]
fn watch_receivers_close_when_the_tracker_is_gone() {
    let (presence, _clock) = manual();
    let counts = presence.watch();
    drop(presence);
    assert!(counts.has_changed().is_err());
}
