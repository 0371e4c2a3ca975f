//! Pages: "currently viewing" counts and the busiest pages.

mod common;

use common::{IDLE_TIMEOUT, manual, secs};
use presence_tracker::{Kind, SessionId};

#[test]
fn visit_counts_a_session_on_its_page() {
    let (presence, _clock) = manual();
    presence
        .visit(SessionId::new_v4(), Kind::Guest, "/a")
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::member("alice"), "/a")
        .unwrap();
    presence
        .visit(SessionId::new_v4(), Kind::Bot, "/b")
        .unwrap();
    assert_eq!(presence.page_count("/a"), 2);
    assert_eq!(presence.page_count("/b"), 1);
    assert_eq!(presence.page_count("/c"), 0);
}

#[test]
fn pages_are_exact_strings() {
    let (presence, _clock) = manual();
    presence
        .visit(SessionId::new_v4(), Kind::Guest, "/a")
        .unwrap();
    assert_eq!(presence.page_count("/a/"), 0);
    assert_eq!(presence.page_count("/A"), 0);
}

#[test]
fn visit_moves_a_session_to_its_new_page() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::Guest, "/a").unwrap();
    presence.visit(id, Kind::Guest, "/b").unwrap();
    assert_eq!(presence.page_count("/a"), 0);
    assert_eq!(presence.page_count("/b"), 1);
    assert_eq!(presence.session(id).unwrap().page.as_deref(), Some("/b"));
    assert_eq!(presence.top_pages(10), vec![("/b".to_string(), 1)]);
}

#[test]
fn touch_keeps_the_page() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::Guest, "/a").unwrap();
    presence.touch(id, Kind::Guest).unwrap();
    presence.touch(id, Kind::member("alice")).unwrap();
    assert_eq!(presence.page_count("/a"), 1);
    assert_eq!(presence.session(id).unwrap().page.as_deref(), Some("/a"));
}

#[test]
fn touch_only_session_has_no_page() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.touch(id, Kind::Guest).unwrap();
    assert_eq!(presence.session(id).unwrap().page, None);
    assert!(presence.top_pages(10).is_empty());
}

#[test]
fn leave_and_expiry_decrement_page_counts() {
    let (presence, clock) = manual();
    let a = SessionId::new_v4();
    let b = SessionId::new_v4();
    presence.visit(a, Kind::Guest, "/a").unwrap();
    clock.advance(secs(5));
    presence.visit(b, Kind::Guest, "/a").unwrap();
    assert_eq!(presence.page_count("/a"), 2);
    presence.leave(b);
    assert_eq!(presence.page_count("/a"), 1);
    clock.advance(IDLE_TIMEOUT - secs(5));
    assert_eq!(presence.page_count("/a"), 0);
    assert!(presence.top_pages(10).is_empty());
}

#[test]
fn heartbeat_keeps_a_page_counted() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::Guest, "/a").unwrap();
    for _ in 0..3 {
        clock.advance(secs(8));
        assert!(presence.heartbeat(id));
    }
    assert_eq!(presence.page_count("/a"), 1);
}

#[test]
fn top_pages_are_busiest_first_with_ties_by_name() {
    let (presence, _clock) = manual();
    let visits = [("/b", 2), ("/a", 2), ("/c", 3), ("/d", 1), ("/e", 2)];
    for (page, n) in visits {
        for _ in 0..n {
            presence
                .visit(SessionId::new_v4(), Kind::Guest, page)
                .unwrap();
        }
    }
    let pairs = |v: &[(&str, usize)]| {
        v.iter()
            .map(|&(p, n)| (p.to_string(), n))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        presence.top_pages(10),
        pairs(&[("/c", 3), ("/a", 2), ("/b", 2), ("/e", 2), ("/d", 1)])
    );
    assert_eq!(
        presence.top_pages(3),
        pairs(&[("/c", 3), ("/a", 2), ("/b", 2)])
    );
    assert_eq!(presence.top_pages(1), pairs(&[("/c", 3)]));
    assert!(presence.top_pages(0).is_empty());
}

#[test]
fn top_pages_follow_moves() {
    let (presence, _clock) = manual();
    let ids: Vec<SessionId> = (0..3).map(|_| SessionId::new_v4()).collect();
    for &id in &ids {
        presence.visit(id, Kind::Guest, "/a").unwrap();
    }
    presence
        .visit(SessionId::new_v4(), Kind::Guest, "/b")
        .unwrap();
    for &id in &ids[..2] {
        presence.visit(id, Kind::Guest, "/b").unwrap();
    }
    assert_eq!(
        presence.top_pages(2),
        vec![("/b".to_string(), 3), ("/a".to_string(), 1)]
    );
}

#[test]
fn page_of_a_session_replaced_after_expiry_is_released() {
    let (presence, clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::Guest, "/a").unwrap();
    clock.advance(IDLE_TIMEOUT);
    presence.visit(id, Kind::Guest, "/b").unwrap();
    assert_eq!(presence.page_count("/a"), 0);
    assert_eq!(presence.page_count("/b"), 1);
}
