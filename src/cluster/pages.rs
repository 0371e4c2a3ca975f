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

/// The page of a page entry (`page_len(4 hex) page ...`).
fn page_of(entry: &[u8]) -> &[u8] {
    let len = std::str::from_utf8(entry.get(..4).unwrap_or_default())
        .ok()
        .and_then(|h| usize::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    entry.get(4..4 + len).unwrap_or_default()
}

#[derive(Debug, Default)]
pub(super) struct PageBook {
    tags: usize,
    /// Sessions this node counts on each page.
    pub(super) pages: HashMap<Arc<str>, u32>,
    /// Every page entry this node has now, with its member bucket.
    entries: HashMap<Vec<u8>, u16>,
    /// Pages whose count, and page entries whose presence (bucket, added), Redis may not
    /// have as they are here: sent until acknowledged as they still are.
    pub(super) dirty_pages: HashSet<Arc<str>>,
    pub(super) dirty_entries: HashMap<Vec<u8>, (u16, bool)>,
}

impl PageBook {
    pub(super) fn new(tags: usize) -> PageBook {
        PageBook {
            tags,
            ..PageBook::default()
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
        *self.pages.entry(page.clone()).or_insert(0) += 1;
        self.dirty_pages.insert(page.clone());
        if let Some((e, bucket)) = entry {
            self.entries.insert(e.to_vec(), bucket);
            self.dirty_entries.insert(e.to_vec(), (bucket, true));
        }
    }

    /// One session fewer on `page`, and its entry gone.
    pub(super) fn remove(&mut self, page: &Arc<str>, entry: Option<(Vec<u8>, u16)>) {
        if let Some(n) = self.pages.get_mut(page) {
            *n -= 1;
            if *n == 0 {
                self.pages.remove(page);
            }
        }
        self.dirty_pages.insert(page.clone());
        if let Some((e, bucket)) = entry {
            self.entries.remove(&e);
            self.dirty_entries.insert(e, (bucket, false));
        }
    }

    /// Whether `page` is kept by tag `tag`.
    pub(super) fn in_tag(&self, page: &str, tag: usize) -> bool {
        tag_of(page, self.tags) == tag
    }

    /// Whether `entry` is kept by tag `tag`.
    pub(super) fn entry_in_tag(&self, entry: &[u8], tag: usize) -> bool {
        self.tags <= 1
            || std::str::from_utf8(page_of(entry)).is_ok_and(|p| tag_of(p, self.tags) == tag)
    }

    /// Redis lost tag `tag`: its pages' counts and entries are sent again, whole.
    pub(super) fn tag_lost(&mut self, tag: usize) {
        let tags = self.tags;
        self.dirty_pages.retain(|p| tag_of(p, tags) != tag);
        for p in self.pages.keys() {
            if tag_of(p, tags) == tag {
                self.dirty_pages.insert(p.clone());
            }
        }
        self.dirty_entries
            .retain(|e, _| !std::str::from_utf8(page_of(e)).is_ok_and(|p| tag_of(p, tags) == tag));
        for (e, &bucket) in &self.entries {
            if std::str::from_utf8(page_of(e)).is_ok_and(|p| tag_of(p, tags) == tag) {
                self.dirty_entries.insert(e.clone(), (bucket, true));
            }
        }
    }

    /// Redis acknowledged `count` for `page`.
    pub(super) fn page_sent(&mut self, page: &Arc<str>, count: u32) {
        if self.pages.get(page).copied().unwrap_or(0) == count {
            self.dirty_pages.remove(page);
        }
    }

    /// Redis acknowledged `entries` added (or removed).
    pub(super) fn entries_sent(&mut self, entries: Vec<Vec<u8>>, add: bool) {
        for e in entries {
            if self.dirty_entries.get(&e).is_some_and(|&(_, a)| a == add) {
                self.dirty_entries.remove(&e);
            }
        }
    }

    /// Forgets everything (the node leaves).
    pub(super) fn clear(&mut self) {
        self.pages.clear();
        self.entries.clear();
        self.dirty_pages.clear();
        self.dirty_entries.clear();
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
        let all: Vec<Vec<u8>> = book.dirty_entries.keys().cloned().collect();
        book.entries_sent(all, true);
        assert!(book.dirty_pages.is_empty() && book.dirty_entries.is_empty());
        book.tag_lost(2);
        let in_two = pages.iter().filter(|p| tag_of(p, k) == 2).count();
        assert!(in_two > 0 && in_two < pages.len());
        assert_eq!(book.dirty_pages.len(), in_two);
        assert!(book.dirty_pages.iter().all(|p| book.in_tag(p, 2)));
        assert_eq!(book.dirty_entries.len(), in_two);
        assert!(book.dirty_entries.keys().all(|e| book.entry_in_tag(e, 2)));
    }
}
