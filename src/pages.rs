//! Page counts: how many live sessions last visited each page.
//!
//! Page names are interned: every session on a page shares one [`SharedStr`], so a session
//! costs a pointer, and a page with no session left is dropped. The table's lock is taken
//! only when a session changes page, joins or leaves with a page, or a reader asks; it
//! nests inside a session's shard lock and takes no other lock.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::kind::SharedStr;

type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
pub(crate) struct PageTable {
    pages: Mutex<HashMap<SharedStr, usize, Hasher>>,
}

impl PageTable {
    /// Moves one session from `from` (if any) to `to`; returns the interned `to`.
    pub(crate) fn change(&self, from: Option<&SharedStr>, to: &str) -> SharedStr {
        let mut pages = self.pages.lock();
        if let Some(from) = from {
            release(&mut pages, from);
        }
        let name = match pages.get_key_value(to) {
            Some((name, _)) => name.clone(),
            None => SharedStr::new(to),
        };
        *pages.entry(name.clone()).or_insert(0) += 1;
        name
    }

    pub(crate) fn leave(&self, page: &SharedStr) {
        release(&mut self.pages.lock(), page);
    }

    pub(crate) fn count(&self, page: &str) -> usize {
        self.pages.lock().get(page).copied().unwrap_or(0)
    }

    pub(crate) fn top(&self, n: usize) -> Vec<(String, usize)> {
        let mut top: Vec<(SharedStr, usize)> = {
            let pages = self.pages.lock();
            pages.iter().map(|(p, &c)| (p.clone(), c)).collect()
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

fn release(pages: &mut HashMap<SharedStr, usize, Hasher>, page: &SharedStr) {
    if let Some(count) = pages.get_mut(page) {
        *count -= 1;
        if *count == 0 {
            pages.remove(page);
        }
    }
}
