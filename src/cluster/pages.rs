//! What this node counts on pages, for all its tags: the sessions it is the page owner of,
//! per page, and the page entries of its listed ones.
//!
//! Which sessions a node counts is decided in each session's tag (the page owner is written
//! on the session's record), but the counts themselves are kept in the *page's* tag (a hash
//! of the page): a node's page count is one number per page however many tags its sessions
//! are in, so a flush sends one absolute count per page that changed, as with one tag, and a
//! page count or member list is read from one tag. The tags' flushes add and remove
//! sessions here; each sends the counts and entries of the pages of its own tag.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// The tag that keeps page `page`'s counts and member lists, among `k`.
pub(super) fn tag_of(page: &str, k: usize) -> usize {
    if k <= 1 {
        return 0;
    }
    super::tags::of_user(page, k)
}

#[derive(Debug, Default)]
pub(super) struct PageBook {
    tags: usize,
    /// Sessions this node counts on each page.
    pub(super) pages: HashMap<Arc<str>, u32>,
    /// Every page entry this node has now: its member bucket and its page's tag.
    entries: HashMap<Vec<u8>, (u16, usize)>,
    /// By tag: pages whose count, and page entries whose presence (bucket, added), Redis
    /// may not have as they are here, sent until acknowledged as they still are.
    pub(super) dirty_pages: Vec<HashSet<Arc<str>>>,
    pub(super) dirty_entries: Vec<HashMap<Vec<u8>, (u16, bool)>>,
}

impl PageBook {
    pub(super) fn new(tags: usize) -> PageBook {
        let tags = tags.max(1);
        PageBook {
            tags,
            pages: HashMap::new(),
            entries: HashMap::new(),
            dirty_pages: vec![HashSet::new(); tags],
            dirty_entries: vec![HashMap::new(); tags],
        }
    }

    /// The shared name of `page`, one allocation per page.
    pub(super) fn intern(&self, page: &str) -> Arc<str> {
        match self.pages.get_key_value(page) {
            Some((p, _)) => p.clone(),
            None => Arc::from(page),
        }
    }

    /// One more session counted on `page`, with its entry if listed.
    pub(super) fn add(&mut self, page: &Arc<str>, entry: Option<(&[u8], u16)>) {
        let t = tag_of(page, self.tags);
        *self.pages.entry(page.clone()).or_insert(0) += 1;
        self.dirty_pages[t].insert(page.clone());
        if let Some((e, bucket)) = entry {
            self.entries.insert(e.to_vec(), (bucket, t));
            self.dirty_entries[t].insert(e.to_vec(), (bucket, true));
        }
    }

    /// One session fewer on `page`, and its entry gone.
    pub(super) fn remove(&mut self, page: &Arc<str>, entry: Option<(Vec<u8>, u16)>) {
        let t = tag_of(page, self.tags);
        if let Some(n) = self.pages.get_mut(page) {
            *n -= 1;
            if *n == 0 {
                self.pages.remove(page);
            }
        }
        self.dirty_pages[t].insert(page.clone());
        if let Some((e, bucket)) = entry {
            self.entries.remove(&e);
            self.dirty_entries[t].insert(e, (bucket, false));
        }
    }

    /// Whether tag `tag` has page counts or entries to send.
    pub(super) fn dirty(&self, tag: usize) -> bool {
        !self.dirty_pages[tag].is_empty() || !self.dirty_entries[tag].is_empty()
    }

    /// Redis lost tag `tag`: its pages' counts and entries are sent again, whole.
    pub(super) fn tag_lost(&mut self, tag: usize) {
        let tags = self.tags;
        self.dirty_pages[tag] = self
            .pages
            .keys()
            .filter(|p| tag_of(p, tags) == tag)
            .cloned()
            .collect();
        self.dirty_entries[tag] = self
            .entries
            .iter()
            .filter(|(_, v)| v.1 == tag)
            .map(|(e, &(bucket, _))| (e.clone(), (bucket, true)))
            .collect();
    }

    /// Redis acknowledged `count` for `page`.
    pub(super) fn page_sent(&mut self, page: &Arc<str>, count: u32) {
        if self.pages.get(page).copied().unwrap_or(0) == count {
            let t = tag_of(page, self.tags);
            self.dirty_pages[t].remove(page);
        }
    }

    /// Redis acknowledged `entries` of tag `tag` added (or removed).
    pub(super) fn entries_sent(&mut self, tag: usize, entries: Vec<Vec<u8>>, add: bool) {
        let dirty = &mut self.dirty_entries[tag];
        for e in entries {
            if dirty.get(&e).is_some_and(|&(_, a)| a == add) {
                dirty.remove(&e);
            }
        }
    }

    /// Forgets everything (the node leaves).
    pub(super) fn clear(&mut self) {
        *self = PageBook::new(self.tags);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_tag_sends_its_pages_again_and_only_those() {
        let k = 4;
        let mut book = PageBook::new(k);
        let pages: Vec<Arc<str>> = (0..40).map(|i| Arc::from(format!("/p/{i}"))).collect();
        for p in &pages {
            let mut e = format!("{:04x}", p.len()).into_bytes();
            e.extend_from_slice(p.as_bytes());
            e.extend_from_slice(b"ann\0ann\0");
            book.add(p, Some((&e, 1)));
        }
        for p in &pages {
            book.page_sent(p, 1);
        }
        for t in 0..k {
            let all: Vec<Vec<u8>> = book.dirty_entries[t].keys().cloned().collect();
            book.entries_sent(t, all, true);
        }
        assert!((0..k).all(|t| !book.dirty(t)));
        book.tag_lost(2);
        let in_two: Vec<&Arc<str>> = pages.iter().filter(|p| tag_of(p, k) == 2).collect();
        assert!(!in_two.is_empty() && in_two.len() < pages.len());
        assert_eq!(book.dirty_pages[2].len(), in_two.len());
        assert_eq!(book.dirty_entries[2].len(), in_two.len());
        assert!([0, 1, 3].iter().all(|&t| !book.dirty(t)));
    }
}
