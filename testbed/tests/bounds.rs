//! Lopsided and hostile traffic: one user with 100k sessions, names and pages past their
//! limits, floods of distinct names. Memory is measured by counting allocations (a counting
//! global allocator), not by RSS; so this file holds one test, which runs alone in its binary.
//! (It lives in the testbed because the crate forbids `unsafe`, which an allocator needs.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use std::time::Duration;

use presence_tracker::{
    Event, Kind, MAX_PAGE_LEN, MAX_USER_LEN, ManualClock, Presence, PresenceBuilder, PresenceError,
    Reaper, SessionId, UserStatus,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator; it only counts bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn builder(clock: &ManualClock) -> PresenceBuilder {
    Presence::builder()
        .clock(clock.clone())
        .reaper(Reaper::Manual)
        .idle_timeout(Duration::from_secs(10))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// Each name online, then offline: remembered for last-seen.
fn flood(presence: &Presence, prefix: &str, n: usize) {
    for i in 0..n {
        let id = SessionId::new_v4();
        presence
            .touch(id, Kind::member(format!("{prefix}-{i}")))
            .unwrap();
        presence.leave(id);
    }
}

#[test]
fn lopsided_and_hostile_traffic_stays_bounded() {
    one_member_with_100k_sessions_joins_and_expires_in_one_reap();
    names_and_pages_past_the_limits_are_refused_not_stored();
    flipping_one_session_between_member_and_guest_remembers_one_entry();
    remembered_offline_users_are_bounded_oldest_first();
    forgotten_names_give_their_memory_back();
}

fn one_member_with_100k_sessions_joins_and_expires_in_one_reap() {
    // Each leave used to scan the user's session list: 100k tabs took seconds to expire (a
    // minute and more in a debug build) while every reader waited.
    let clock = ManualClock::new();
    let presence = builder(&clock).build();
    let mut rx = presence.subscribe();
    let n = 100_000;
    for _ in 0..n {
        presence
            .touch(SessionId::new_v4(), Kind::member("shared"))
            .unwrap();
    }
    assert_eq!(presence.counts().members, 1);
    assert!(matches!(
        presence.user("shared"),
        UserStatus::Online { sessions, .. } if sessions == n
    ));
    clock.advance(secs(60));
    assert_eq!(presence.reap(), n);
    let c = presence.counts();
    assert_eq!((c.members, c.sessions), (0, 0));
    // 100k `Left` events overflow the channel; the lagging receiver keeps the latest.
    let mut offline = 0;
    loop {
        match rx.try_recv() {
            Ok(event) => offline += usize::from(matches!(event, Event::UserOffline { .. })),
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(offline, 1, "one UserOffline for the last of 100k tabs");
}

fn names_and_pages_past_the_limits_are_refused_not_stored() {
    let clock = ManualClock::new();
    let presence = builder(&clock).build();
    let id = SessionId::new_v4();
    let long_name = "n".repeat(MAX_USER_LEN + 1);
    assert_eq!(
        presence.touch(id, Kind::member(long_name.as_str())),
        Err(PresenceError::UserTooLong {
            len: MAX_USER_LEN + 1,
            max: MAX_USER_LEN
        })
    );
    let huge_page = "/".repeat(1 << 20);
    let err = presence.visit(id, Kind::Guest, &huge_page).unwrap_err();
    assert_eq!(
        err,
        PresenceError::PageTooLong {
            len: 1 << 20,
            max: MAX_PAGE_LEN
        }
    );
    assert!(err.to_string().contains("MAX_PAGE_LEN"), "{err}");
    assert_eq!(presence.counts().sessions, 0, "nothing stored");
    // At the limits exactly, accepted.
    let name = "n".repeat(MAX_USER_LEN);
    let page = "p".repeat(MAX_PAGE_LEN);
    presence
        .visit(id, Kind::member(name.as_str()), &page)
        .unwrap();
    assert_eq!(presence.page_count(&page), 1);
    // A live session keeps working when a later call is refused.
    assert!(presence.visit(id, Kind::Guest, &huge_page).is_err());
    assert_eq!(
        presence.session(id).unwrap().page.as_deref(),
        Some(page.as_str())
    );
}

fn flipping_one_session_between_member_and_guest_remembers_one_entry() {
    // Every flip took the user offline; each went into the forget queue with its own copy
    // of the name (5M flips: 458 MiB).
    let clock = ManualClock::new();
    let presence = builder(&clock).build();
    let id = SessionId::new_v4();
    for _ in 0..1_000 {
        presence.touch(id, Kind::member("flipper")).unwrap();
        presence.touch(id, Kind::Guest).unwrap();
    }
    let before = live();
    for _ in 0..100_000 {
        presence.touch(id, Kind::member("flipper")).unwrap();
        presence.touch(id, Kind::Guest).unwrap();
    }
    let grown = live() - before;
    eprintln!("100k member/guest flips of one session kept {grown} bytes");
    assert!(grown < 16 * 1024, "100k flips kept {grown} bytes");
    assert!(matches!(
        presence.user("flipper"),
        UserStatus::Offline { .. }
    ));
}

fn remembered_offline_users_are_bounded_oldest_first() {
    let clock = ManualClock::new();
    let presence = builder(&clock).max_remembered_users(1_000).build();
    flood(&presence, "warm", 5_000);
    // Left sessions' expiry items stay until their check time: let them fall due.
    clock.advance(secs(11));
    presence.reap();
    let before = live();
    flood(&presence, "bounded", 100_000);
    clock.advance(secs(11));
    presence.reap();
    let grown = live() - before;
    // 1 000 remembered users of ~200 bytes each, whatever the flood's size.
    eprintln!("100k distinct names gone offline, 1 000 remembered: {grown} bytes kept");
    assert!(
        grown < 512 * 1024,
        "a flood of 100k names kept {grown} bytes"
    );
    assert_eq!(
        presence.user("bounded-0"),
        UserStatus::Unknown,
        "oldest forgotten"
    );
    assert!(matches!(
        presence.user("bounded-99999"),
        UserStatus::Offline { .. }
    ));
}

fn forgotten_names_give_their_memory_back() {
    let clock = ManualClock::new();
    let presence = builder(&clock).build();
    // A first flood grows the session map and queues to their working size; what a second
    // flood leaves once forgotten is then what the user table keeps.
    flood(&presence, "first", 100_000);
    clock.advance(secs(25 * 3600));
    presence.reap();
    let baseline = live();
    flood(&presence, "second", 100_000);
    let flooded = live() - baseline;
    eprintln!("100k remembered offline users: {flooded} bytes");
    assert!(flooded > 5 << 20, "100k remembered users take memory");
    clock.advance(secs(25 * 3600));
    presence.reap();
    assert_eq!(presence.user("second-7"), UserStatus::Unknown);
    let left = live() - baseline;
    eprintln!("100k remembered names forgotten: {left} bytes left of the flood");
    assert!(left < 64 * 1024, "forgotten names left {left} bytes behind");
}
