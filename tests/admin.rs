//! The admin list in pages: `sessions_page` costs the page and, paged to the end, shows every
//! live session once.

mod common;

use std::collections::HashSet;

use common::{manual, secs};
use presence_tracker::{Kind, SessionCursor, SessionId};

#[test]
fn paging_to_the_end_shows_every_live_session_once() {
    let (presence, clock) = manual();
    let mut ids = HashSet::new();
    for i in 0..1_000 {
        let id = SessionId::new_v4();
        presence.touch(id, Kind::member(format!("u{i}"))).unwrap();
        ids.insert(id);
    }
    // Holes in the storage: some leave, a few are due.
    let gone: Vec<SessionId> = ids.iter().copied().take(100).collect();
    for id in &gone {
        presence.leave(*id);
        ids.remove(id);
    }
    let mut seen = HashSet::new();
    let mut cursor = Some(SessionCursor::START);
    let mut pages = 0;
    while let Some(from) = cursor {
        let (page, next) = presence.sessions_page(from, 64);
        assert!(page.len() <= 64);
        for s in page {
            assert!(seen.insert(s.id), "{} shown twice", s.id);
        }
        cursor = next;
        pages += 1;
    }
    assert_eq!(seen, ids);
    assert!(pages >= 900 / 64);
    // A due session is not listed even before the reaper runs.
    clock.advance(secs(60));
    assert!(
        presence
            .sessions_page(SessionCursor::START, 10)
            .0
            .is_empty()
    );
}

#[test]
fn a_cursor_from_a_url_round_trips_and_garbage_is_refused() {
    let (presence, _clock) = manual();
    for _ in 0..10 {
        presence.touch(SessionId::new_v4(), Kind::Guest).unwrap();
    }
    let (first, next) = presence.sessions_page(SessionCursor::START, 4);
    assert_eq!(first.len(), 4);
    let next = next.expect("more to come");
    let parsed: SessionCursor = next.to_string().parse().unwrap();
    assert_eq!(parsed, next);
    assert!("-1".parse::<SessionCursor>().is_err());
    assert!("x".parse::<SessionCursor>().is_err());
    // A cursor past the end (a stale or made-up URL) is an empty last page, not a panic.
    let far: SessionCursor = u64::MAX.to_string().parse().unwrap();
    assert_eq!(presence.sessions_page(far, 10), (Vec::new(), None));
    assert_eq!(presence.sessions_page(SessionCursor::START, 0).0.len(), 0);
}
