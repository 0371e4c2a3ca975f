//! Names, not only numbers: `online_members` and `page_members` list listed users by name,
//! each once, never hidden ones, and follow kind and page changes.

mod common;

use common::{manual, secs};
use presence_tracker::{Kind, Presence, SessionId, UserId};

fn names(v: Vec<UserId>) -> Vec<String> {
    v.into_iter().map(|u| u.to_string()).collect()
}

fn online(presence: &Presence) -> Vec<String> {
    names(presence.online_members(100))
}

fn on_page(presence: &Presence, page: &str) -> Vec<String> {
    names(presence.page_members(page, 100))
}

#[test]
fn members_are_sorted_by_name_case_insensitively() {
    let (presence, _clock) = manual();
    for name in ["carol", "Bob", "alice", "bob", "Émile", "dave"] {
        presence
            .touch(SessionId::new_v4(), Kind::member(name))
            .unwrap();
    }
    assert_eq!(
        online(&presence),
        ["alice", "Bob", "bob", "carol", "dave", "Émile"]
    );
}

#[test]
fn member_with_three_tabs_is_listed_once_until_the_last_goes() {
    let (presence, _clock) = manual();
    let tabs: Vec<SessionId> = (0..3).map(|_| SessionId::new_v4()).collect();
    for &tab in &tabs {
        presence.visit(tab, Kind::member("alice"), "/t/1").unwrap();
    }
    assert_eq!(online(&presence), ["alice"]);
    assert_eq!(on_page(&presence, "/t/1"), ["alice"]);
    presence.leave(tabs[0]);
    presence.leave(tabs[1]);
    assert_eq!(online(&presence), ["alice"]);
    presence.leave(tabs[2]);
    assert!(online(&presence).is_empty());
    assert!(on_page(&presence, "/t/1").is_empty());
}

#[test]
fn hidden_users_are_never_listed_but_one_listed_tab_lists_them() {
    let (presence, _clock) = manual();
    let (hidden_tab, listed_tab) = (SessionId::new_v4(), SessionId::new_v4());
    presence
        .visit(hidden_tab, Kind::hidden_member("eve"), "/t/1")
        .unwrap();
    assert!(online(&presence).is_empty());
    assert!(on_page(&presence, "/t/1").is_empty());
    assert_eq!(presence.page_count("/t/1"), 1, "still counted as a session");
    presence
        .visit(listed_tab, Kind::member("eve"), "/t/2")
        .unwrap();
    assert_eq!(online(&presence), ["eve"]);
    assert!(
        on_page(&presence, "/t/1").is_empty(),
        "her hidden tab does not show her on its page"
    );
    assert_eq!(on_page(&presence, "/t/2"), ["eve"]);
    presence.leave(listed_tab);
    assert!(online(&presence).is_empty());
}

#[test]
fn a_member_moving_page_leaves_one_list_and_joins_the_other() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::member("alice"), "/t/1").unwrap();
    presence.visit(id, Kind::member("alice"), "/t/2").unwrap();
    assert!(on_page(&presence, "/t/1").is_empty());
    assert_eq!(on_page(&presence, "/t/2"), ["alice"]);
    assert_eq!(presence.page_count("/t/1"), 0);
}

#[test]
fn signing_in_hiding_and_signing_out_move_the_lists() {
    let (presence, _clock) = manual();
    let id = SessionId::new_v4();
    presence.visit(id, Kind::Guest, "/t/1").unwrap();
    assert!(on_page(&presence, "/t/1").is_empty());
    presence.touch(id, Kind::member("alice")).unwrap();
    assert_eq!(online(&presence), ["alice"]);
    assert_eq!(
        on_page(&presence, "/t/1"),
        ["alice"],
        "kind change keeps the page"
    );
    presence.touch(id, Kind::hidden_member("alice")).unwrap();
    assert!(online(&presence).is_empty());
    assert!(on_page(&presence, "/t/1").is_empty());
    presence.touch(id, Kind::member("bob")).unwrap();
    assert_eq!(online(&presence), ["bob"]);
    assert_eq!(on_page(&presence, "/t/1"), ["bob"]);
    presence.touch(id, Kind::Guest).unwrap();
    assert!(online(&presence).is_empty());
    assert!(on_page(&presence, "/t/1").is_empty());
    assert_eq!(presence.page_count("/t/1"), 1);
}

#[test]
fn expired_members_leave_the_lists() {
    let (presence, clock) = manual();
    presence
        .visit(SessionId::new_v4(), Kind::member("alice"), "/t/1")
        .unwrap();
    clock.advance(secs(60));
    assert!(
        online(&presence).is_empty(),
        "a due session is gone for reads"
    );
    assert!(on_page(&presence, "/t/1").is_empty());
}

#[test]
fn limits_are_respected_and_the_rest_is_a_count() {
    let (presence, _clock) = manual();
    for i in 0..30 {
        presence
            .visit(
                SessionId::new_v4(),
                Kind::member(format!("user{i:02}")),
                "/t/1",
            )
            .unwrap();
    }
    for _ in 0..5 {
        presence
            .visit(SessionId::new_v4(), Kind::Guest, "/t/1")
            .unwrap();
    }
    let shown = names(presence.page_members("/t/1", 3));
    assert_eq!(shown, ["user00", "user01", "user02"]);
    assert_eq!(
        presence.page_count("/t/1") - shown.len(),
        32,
        "\"and 32 more\""
    );
    assert_eq!(presence.online_members(0).len(), 0);
    assert_eq!(presence.online_members(usize::MAX).len(), 30);
    assert!(presence.page_members("/nowhere", 10).is_empty());
}

#[test]
fn hostile_names_are_listed_as_given() {
    // The tracker stores names as they are; showing them as text is the page's job (the
    // page script sets textContent).
    let (presence, _clock) = manual();
    let name = "<script>alert(1)</script>";
    presence
        .touch(SessionId::new_v4(), Kind::member(name))
        .unwrap();
    assert_eq!(online(&presence), [name]);
}
