//! Page counts and page members: how many live sessions last visited each page, and which
//! listed users are there, by name.
//!
//! Page names are interned: every session on a page shares one [`SharedStr`], so a session
//! costs a pointer, and a page with no session left is dropped. Each page keeps its listed
//! members (users whose *listed* session is on it, with how many such sessions) in name
//! order, so listing them costs what is returned. The pages themselves are also kept in
//! order of their session counts, so the busiest `n` cost `n` too: no read copies every page
//! under the lock (the lock is taken on request paths, and a site can have a million
//! pages). Names are copied into `String`s after the lock is released. The table's lock is
//! taken only when a session changes page or listing, joins or leaves with a page, or a
//! reader asks; it nests inside a session's shard lock and takes no other lock.
//!
//! Each change stamps the pages it changes with a new version (one counter for the table,
//! readable without the lock), so that the publisher of page watches can tell in one load
//! whether any page changed, and per watched page whether that one did.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use crate::UserId;
use crate::kind::{ByName, SharedStr};

type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Page {
    sessions: usize,
    /// Listed users on this page and their listed sessions here.
    members: BTreeMap<ByName, u32>,
    /// The table's version at this page's last change.
    version: u64,
}

#[derive(Debug, Default)]
pub(crate) struct PageTable {
    pages: Mutex<Pages>,
    /// Bumped under the lock by every change: 0 until the first.
    version: AtomicU64,
}

/// A watched page as the publisher sends it: its version, its sessions and its listed
/// members in name order.
pub(crate) type PageState = (u64, usize, Vec<UserId>);

#[derive(Debug, Default)]
struct Pages {
    map: HashMap<SharedStr, Page, Hasher>,
    /// Every page by (sessions, busiest first; then name): `top` costs what it returns.
    busiest: BTreeSet<(Reverse<usize>, SharedStr)>,
}

/// Where a session is, as far as pages go: its page and, if it is a listed member's session,
/// its user.
pub(crate) type OnPage<'a> = (&'a SharedStr, Option<&'a UserId>);

impl PageTable {
    /// Moves one session from `from` (if any) to page `to` as `member` (its user if listed);
    /// returns the interned `to`.
    pub(crate) fn change(
        &self,
        from: Option<OnPage<'_>>,
        to: &str,
        member: Option<&UserId>,
    ) -> SharedStr {
        let mut guard = self.pages.lock();
        let pages = &mut *guard;
        let version = self.bump();
        if let Some((page, member)) = from {
            pages.release(page, member, version);
        }
        let name = match pages.map.get_key_value(to) {
            Some((name, _)) => name.clone(),
            None => SharedStr::new(to),
        };
        let page = pages.map.entry(name.clone()).or_default();
        page.version = version;
        page.sessions += 1;
        if let Some(user) = member {
            *page.members.entry(ByName::new(user.clone())).or_insert(0) += 1;
        }
        recount(&mut pages.busiest, &name, page.sessions - 1, page.sessions);
        name
    }

    /// Counts sessions restored from a snapshot in at once, under one hold of the lock:
    /// for each page, its sessions and the users of its listed sessions (one entry a
    /// session). Returns the interned pages, in order.
    pub(crate) fn restore(&self, pages: Vec<(&str, usize, Vec<UserId>)>) -> Vec<SharedStr> {
        let mut guard = self.pages.lock();
        let table = &mut *guard;
        let version = self.bump();
        pages
            .into_iter()
            .map(|(to, sessions, mut members)| {
                let name = match table.map.get_key_value(to) {
                    Some((name, _)) => name.clone(),
                    None => SharedStr::new(to),
                };
                let page = table.map.entry(name.clone()).or_default();
                page.version = version;
                recount(
                    &mut table.busiest,
                    &name,
                    page.sessions,
                    page.sessions + sessions,
                );
                page.sessions += sessions;
                // One entry per user with its number of sessions here.
                members.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
                let mut members = members.into_iter().peekable();
                while let Some(user) = members.next() {
                    let mut n = 1;
                    while members.next_if(|u| u == &user).is_some() {
                        n += 1;
                    }
                    *page.members.entry(ByName::new(user)).or_insert(0) += n;
                }
                name
            })
            .collect()
    }

    /// A session on `page` changes listing (signs in or out, hides or shows itself).
    pub(crate) fn relist(&self, page: &SharedStr, from: Option<&UserId>, to: Option<&UserId>) {
        if from == to {
            return;
        }
        let mut pages = self.pages.lock();
        let Some(page) = pages.map.get_mut(page) else {
            return;
        };
        page.version = self.bump();
        if let Some(user) = from {
            unlist(page, user);
        }
        if let Some(user) = to {
            *page.members.entry(ByName::new(user.clone())).or_insert(0) += 1;
        }
    }

    /// A session on `page` (listed as `member`) ends.
    pub(crate) fn leave(&self, page: &SharedStr, member: Option<&UserId>) {
        let mut pages = self.pages.lock();
        let version = self.bump();
        pages.release(page, member, version);
    }

    /// A new version for a change made under the lock.
    fn bump(&self) -> u64 {
        self.version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The table's version: it moves whenever any page changes.
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// For each `(page, version)`, the page's state if its version is not `version` (a
    /// page with no session is at version 0, empty), under one hold of the lock. Costs the
    /// members of the pages that changed.
    pub(crate) fn changed_since(&self, asked: &[(&str, u64)]) -> Vec<Option<PageState>> {
        let pages = self.pages.lock();
        asked
            .iter()
            .map(|&(name, seen)| match pages.map.get(name) {
                Some(p) if p.version != seen => Some((
                    p.version,
                    p.sessions,
                    p.members.keys().map(|n| n.user().clone()).collect(),
                )),
                Some(_) => None,
                None => (seen != 0).then(|| (0, 0, Vec::new())),
            })
            .collect()
    }

    pub(crate) fn count(&self, page: &str) -> usize {
        self.pages.lock().map.get(page).map_or(0, |p| p.sessions)
    }

    /// The first `limit` listed users on `page`, by name: O(limit).
    pub(crate) fn members(&self, page: &str, limit: usize) -> Vec<UserId> {
        let pages = self.pages.lock();
        pages.map.get(page).map_or_else(Vec::new, |p| {
            p.members
                .keys()
                .take(limit)
                .map(|n| n.user().clone())
                .collect()
        })
    }

    /// The `n` busiest pages, busiest first, ties by name: O(n) under the lock (reference
    /// bumps), the names copied after it.
    pub(crate) fn top(&self, n: usize) -> Vec<(String, usize)> {
        let top: Vec<(SharedStr, usize)> = {
            let pages = self.pages.lock();
            pages
                .busiest
                .iter()
                .take(n)
                .map(|(Reverse(count), page)| (page.clone(), *count))
                .collect()
        };
        top.into_iter()
            .map(|(p, c)| (p.as_str().to_owned(), c))
            .collect()
    }
}

impl Pages {
    /// One session (listed as `member`) leaves `name`, a change of `version`.
    fn release(&mut self, name: &SharedStr, member: Option<&UserId>, version: u64) {
        if let Some(page) = self.map.get_mut(name) {
            page.version = version;
            if let Some(user) = member {
                unlist(page, user);
            }
            page.sessions -= 1;
            recount(&mut self.busiest, name, page.sessions + 1, page.sessions);
            if page.sessions == 0 {
                self.map.remove(name);
            }
        }
    }
}

/// A page's session count goes from `from` to `to`: its place in the busiest order follows.
fn recount(
    busiest: &mut BTreeSet<(Reverse<usize>, SharedStr)>,
    name: &SharedStr,
    from: usize,
    to: usize,
) {
    if from == to {
        return;
    }
    if from > 0 {
        busiest.remove(&(Reverse(from), name.clone()));
    }
    if to > 0 {
        busiest.insert((Reverse(to), name.clone()));
    }
}

fn unlist(page: &mut Page, user: &UserId) {
    let key = ByName::new(user.clone());
    if let Some(n) = page.members.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            page.members.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_listed_by_name_once_and_leave_with_their_last_session() {
        let pages = PageTable::default();
        let (bob, alice) = (UserId::from("bob"), UserId::from("Alice"));
        let p = pages.change(None, "/t/1", Some(&bob));
        pages.change(None, "/t/1", Some(&alice));
        pages.change(None, "/t/1", Some(&bob));
        pages.change(None, "/t/1", None);
        assert_eq!(pages.count("/t/1"), 4);
        assert_eq!(pages.members("/t/1", 10), vec![alice.clone(), bob.clone()]);
        assert_eq!(pages.members("/t/1", 1), vec![alice.clone()]);
        pages.leave(&p, Some(&bob));
        assert_eq!(pages.members("/t/1", 10), vec![alice.clone(), bob.clone()]);
        pages.leave(&p, Some(&bob));
        pages.relist(&p, Some(&alice), None);
        assert!(pages.members("/t/1", 10).is_empty());
        assert_eq!(pages.count("/t/1"), 2);
    }

    #[test]
    fn every_change_moves_the_version_of_the_pages_it_changes() {
        let pages = PageTable::default();
        let alice = UserId::from("alice");
        assert_eq!(pages.changed_since(&[("/a", 0)]), [None]);
        let a = pages.change(None, "/a", Some(&alice));
        let v1 = pages.version();
        let seen = pages.changed_since(&[("/a", 0), ("/b", 0)]);
        assert_eq!(seen, [Some((v1, 1, vec![alice.clone()])), None]);
        assert_eq!(
            pages.changed_since(&[("/a", v1)]),
            [None],
            "no change, no state"
        );
        pages.change(None, "/b", None);
        assert_eq!(
            pages.changed_since(&[("/a", v1)]),
            [None],
            "another page's change"
        );
        pages.relist(&a, Some(&alice), None);
        let v2 = pages.version();
        assert_eq!(pages.changed_since(&[("/a", v1)]), [Some((v2, 1, vec![]))]);
        pages.leave(&a, None);
        assert_eq!(
            pages.changed_since(&[("/a", v2)]),
            [Some((0, 0, vec![]))],
            "an emptied page reads as version 0"
        );
        assert_eq!(pages.changed_since(&[("/a", 0)]), [None]);
        pages.change(None, "/a", None);
        assert!(
            pages.changed_since(&[("/a", v2)])[0].is_some(),
            "versions are never reused"
        );
    }

    #[test]
    fn the_busiest_order_follows_every_count_change() {
        let pages = PageTable::default();
        let a = pages.change(None, "/a", None);
        let b = pages.change(None, "/b", None);
        pages.change(None, "/b", None);
        pages.change(None, "/c", None);
        let top = |n| pages.top(n);
        assert_eq!(
            top(10),
            [
                ("/b".to_owned(), 2),
                ("/a".to_owned(), 1),
                ("/c".to_owned(), 1)
            ]
        );
        assert_eq!(top(1), [("/b".to_owned(), 2)]);
        assert!(top(0).is_empty());
        pages.change(Some((&b, None)), "/a", None);
        pages.change(Some((&b, None)), "/a", None);
        assert_eq!(top(10), [("/a".to_owned(), 3), ("/c".to_owned(), 1)]);
        pages.leave(&a, None);
        pages.restore(vec![("/c", 4, Vec::new())]);
        assert_eq!(top(10), [("/c".to_owned(), 5), ("/a".to_owned(), 2)]);
        let inner = pages.pages.lock();
        assert_eq!(inner.busiest.len(), inner.map.len());
    }
}
