//! Page counts and page members: how many live sessions last visited each page, and which
//! listed users are there, by name.
//!
//! Page names are interned: every session on a page shares one [`SharedStr`], so a session
//! costs a pointer, and a page with no session left is dropped. Each page keeps its listed
//! members (users whose *listed* session is on it, with how many such sessions) in name
//! order, so listing them costs what is returned. The table's lock is taken only when a
//! session changes page or listing, joins or leaves with a page, or a reader asks; it nests
//! inside a session's shard lock and takes no other lock.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;

use crate::UserId;
use crate::kind::{ByName, SharedStr};

type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Page {
    sessions: usize,
    /// Listed users on this page and their listed sessions here.
    members: BTreeMap<ByName, u32>,
}

#[derive(Debug, Default)]
pub(crate) struct PageTable {
    pages: Mutex<HashMap<SharedStr, Page, Hasher>>,
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
        let mut pages = self.pages.lock();
        if let Some((page, member)) = from {
            release(&mut pages, page, member);
        }
        let name = match pages.get_key_value(to) {
            Some((name, _)) => name.clone(),
            None => SharedStr::new(to),
        };
        let page = pages.entry(name.clone()).or_default();
        page.sessions += 1;
        if let Some(user) = member {
            *page.members.entry(ByName::new(user.clone())).or_insert(0) += 1;
        }
        name
    }

    /// Counts sessions restored from a snapshot in at once, under one hold of the lock:
    /// for each page, its sessions and the users of its listed sessions (one entry a
    /// session). Returns the interned pages, in order.
    pub(crate) fn restore(&self, pages: Vec<(&str, usize, Vec<UserId>)>) -> Vec<SharedStr> {
        let mut table = self.pages.lock();
        pages
            .into_iter()
            .map(|(to, sessions, mut members)| {
                let name = match table.get_key_value(to) {
                    Some((name, _)) => name.clone(),
                    None => SharedStr::new(to),
                };
                let page = table.entry(name.clone()).or_default();
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
        let Some(page) = pages.get_mut(page) else {
            return;
        };
        if let Some(user) = from {
            unlist(page, user);
        }
        if let Some(user) = to {
            *page.members.entry(ByName::new(user.clone())).or_insert(0) += 1;
        }
    }

    /// A session on `page` (listed as `member`) ends.
    pub(crate) fn leave(&self, page: &SharedStr, member: Option<&UserId>) {
        release(&mut self.pages.lock(), page, member);
    }

    pub(crate) fn count(&self, page: &str) -> usize {
        self.pages.lock().get(page).map_or(0, |p| p.sessions)
    }

    /// The first `limit` listed users on `page`, by name: O(limit).
    pub(crate) fn members(&self, page: &str, limit: usize) -> Vec<UserId> {
        let pages = self.pages.lock();
        pages.get(page).map_or_else(Vec::new, |p| {
            p.members
                .keys()
                .take(limit)
                .map(|n| n.user().clone())
                .collect()
        })
    }

    pub(crate) fn top(&self, n: usize) -> Vec<(String, usize)> {
        let mut top: Vec<(SharedStr, usize)> = {
            let pages = self.pages.lock();
            pages.iter().map(|(p, c)| (p.clone(), c.sessions)).collect()
        };
        let by_count =
            |a: &(SharedStr, usize), b: &(SharedStr, usize)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
        if top.len() > n {
            if n == 0 {
                return Vec::new();
            }
            top.select_nth_unstable_by(n - 1, by_count);
            top.truncate(n);
        }
        top.sort_unstable_by(by_count);
        top.into_iter()
            .map(|(p, c)| (p.as_str().to_owned(), c))
            .collect()
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

fn release(
    pages: &mut HashMap<SharedStr, Page, Hasher>,
    name: &SharedStr,
    member: Option<&UserId>,
) {
    if let Some(page) = pages.get_mut(name) {
        if let Some(user) = member {
            unlist(page, user);
        }
        page.sessions -= 1;
        if page.sessions == 0 {
            pages.remove(name);
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
}
