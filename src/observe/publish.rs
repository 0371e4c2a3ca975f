//! The publisher's state: the channels that carry the latest counts and the latest state of
//! each watched page, the registry of watched pages (bounded by `max_watched_pages`), and
//! the signal that tells the HTTP streams to end.
//!
//! It knows nothing of the tracker: the tracker's publish step hands it the counts, the page
//! table's version and a way to read the watched pages that changed. Each publish sends only
//! what changed since the previous one, and a slow receiver simply finds the latest value
//! (tokio's `watch` channels keep one value, never a queue). Nothing is built on a touch:
//! the page table stamps versions on page changes, and a publish compares them.
//!
//! # Locks
//! `publishing` serialises publishes, so that states go out in the order they were read;
//! inside it, the registry lock is taken briefly (never while reading the page table or
//! sending). Registering a page reads its first state under the registry lock (the page
//! table's lock nests inside it). Sends happen with only `publishing` held, which no
//! reader ever takes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::UserId;
use crate::counts::Counts;

type Hasher = foldhash::fast::RandomState;

/// A watched page as published: its sessions and its listed members, in name order.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PageView {
    pub(crate) count: usize,
    pub(crate) members: Vec<UserId>,
}

/// A page's version, sessions and listed members, as the page table reads them.
pub(crate) type PageRead = (u64, usize, Vec<UserId>);

/// One watched page's channel.
#[derive(Debug)]
struct Channel {
    sender: watch::Sender<Arc<PageView>>,
    /// The page table's version of the state last sent; written under `publishing`.
    version: AtomicU64,
}

#[derive(Debug)]
struct Watched {
    channel: Arc<Channel>,
    /// `PageWatch`es of this page: the entry goes with the last.
    watchers: usize,
}

/// The registry is full: `max_watched_pages` pages are watched.
#[derive(Debug)]
pub(crate) struct Full;

#[derive(Debug)]
pub(crate) struct Publisher {
    counts: watch::Sender<Counts>,
    /// Moves at each publish that found a change (counts or any page): what the HTTP
    /// streams wait on before they read their own view.
    changes: watch::Sender<u64>,
    pages: Mutex<HashMap<Box<str>, Watched, Hasher>>,
    /// Entries in `pages`, readable without the lock.
    watched: AtomicUsize,
    max_pages: usize,
    /// The page table's version at the last publish.
    pages_version: AtomicU64,
    publishing: Mutex<()>,
    /// Set once the tracker is shut down: the HTTP streams end (the change signal wakes
    /// them to look).
    stopped: AtomicBool,
}

impl Publisher {
    pub(crate) fn new(counts: Counts, max_pages: usize) -> Self {
        Publisher {
            counts: watch::Sender::new(counts),
            changes: watch::Sender::new(0),
            pages: Mutex::new(HashMap::default()),
            watched: AtomicUsize::new(0),
            max_pages,
            pages_version: AtomicU64::new(0),
            publishing: Mutex::new(()),
            stopped: AtomicBool::new(false),
        }
    }

    /// Whether anyone watches: when not, a publish does nothing at all.
    pub(crate) fn wanted(&self) -> bool {
        self.counts.receiver_count() > 0
            || self.changes.receiver_count() > 0
            || self.watched.load(Ordering::Relaxed) > 0
    }

    /// A receiver of the counts, starting from `current`.
    pub(crate) fn watch_counts(&self, current: Counts) -> watch::Receiver<Counts> {
        let _publishing = self.publishing.lock();
        self.counts.send_if_modified(|c| replace(c, current));
        self.counts.subscribe()
    }

    /// A receiver told of every publish that found a change.
    pub(crate) fn watch_changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// A watcher of `page` more: its receiver and the state it starts from (the last one
    /// published, or `read()` for a page nobody watched).
    pub(crate) fn watch_page(
        &self,
        page: &str,
        read: impl FnOnce() -> PageRead,
    ) -> Result<(watch::Receiver<Arc<PageView>>, Arc<PageView>), Full> {
        let mut pages = self.pages.lock();
        if let Some(watched) = pages.get_mut(page) {
            watched.watchers += 1;
            let receiver = watched.channel.sender.subscribe();
            let seen = receiver.borrow().clone();
            return Ok((receiver, seen));
        }
        if pages.len() >= self.max_pages {
            return Err(Full);
        }
        let (version, count, members) = read();
        let view = Arc::new(PageView { count, members });
        let channel = Arc::new(Channel {
            sender: watch::Sender::new(view.clone()),
            version: AtomicU64::new(version),
        });
        let receiver = channel.sender.subscribe();
        pages.insert(
            page.into(),
            Watched {
                channel,
                watchers: 1,
            },
        );
        self.watched.store(pages.len(), Ordering::Relaxed);
        Ok((receiver, view))
    }

    /// A watcher of `page` is gone; the page is unwatched with its last.
    pub(crate) fn unwatch_page(&self, page: &str) {
        let mut pages = self.pages.lock();
        if let Some(watched) = pages.get_mut(page) {
            watched.watchers -= 1;
            if watched.watchers == 0 {
                pages.remove(page);
                self.watched.store(pages.len(), Ordering::Relaxed);
            }
        }
    }

    /// The most pages watched at once.
    pub(crate) fn max_pages(&self) -> usize {
        self.max_pages
    }

    /// Pages watched now.
    #[cfg(test)]
    pub(crate) fn watched_pages(&self) -> usize {
        self.watched.load(Ordering::Relaxed)
    }

    /// Sends what changed: `counts` if they differ from the last sent, and, when the page
    /// table's version moved since the last publish, each watched page whose own version
    /// moved (`read` gives their states, `None` for those unchanged).
    pub(crate) fn publish(
        &self,
        counts: Counts,
        pages_version: u64,
        read: impl FnOnce(&[(&str, u64)]) -> Vec<Option<PageRead>>,
    ) {
        let _publishing = self.publishing.lock();
        let mut changed = self.counts.send_if_modified(|c| replace(c, counts));
        if self.pages_version.swap(pages_version, Ordering::Relaxed) != pages_version {
            changed = true;
            let watched: Vec<(Box<str>, Arc<Channel>)> = self
                .pages
                .lock()
                .iter()
                .map(|(page, w)| (page.clone(), w.channel.clone()))
                .collect();
            if !watched.is_empty() {
                let asked: Vec<(&str, u64)> = watched
                    .iter()
                    .map(|(page, c)| (&**page, c.version.load(Ordering::Relaxed)))
                    .collect();
                for ((_, channel), read) in watched.iter().zip(read(&asked)) {
                    if let Some((version, count, members)) = read {
                        channel.version.store(version, Ordering::Relaxed);
                        let view = Arc::new(PageView { count, members });
                        channel.sender.send_if_modified(|v| {
                            let differs = **v != *view;
                            if differs {
                                *v = view;
                            }
                            differs
                        });
                    }
                }
            }
        }
        if changed {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// The tracker is shut down: the HTTP streams end. Those waiting on the change signal
    /// are woken to see it.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Whether the tracker is shut down.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

/// Stores `new` in `slot` if it differs; whether it did.
fn replace(slot: &mut Counts, new: Counts) -> bool {
    let differs = *slot != new;
    if differs {
        *slot = new;
    }
    differs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(online: usize) -> Counts {
        Counts {
            online,
            ..Counts::default()
        }
    }

    #[test]
    fn only_changes_are_sent_and_a_slow_receiver_finds_the_latest() {
        let publisher = Publisher::new(counts(0), 10);
        assert!(!publisher.wanted());
        let mut rx = publisher.watch_counts(counts(1));
        assert!(publisher.wanted());
        assert_eq!(rx.borrow_and_update().online, 1);
        publisher.publish(counts(1), 0, |_| Vec::new());
        assert!(!rx.has_changed().unwrap(), "same counts: nothing sent");
        publisher.publish(counts(2), 0, |_| Vec::new());
        publisher.publish(counts(3), 0, |_| Vec::new());
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().online, 3, "the latest, not a queue");
    }

    #[test]
    fn pages_are_read_only_when_the_table_moved_and_sent_only_when_they_changed() {
        let publisher = Publisher::new(counts(0), 2);
        let alice = UserId::from("alice");
        let (mut rx, first) = publisher
            .watch_page("/a", || (1, 1, vec![alice.clone()]))
            .unwrap();
        assert_eq!(first.count, 1);
        let mut reads = 0;
        publisher.publish(counts(0), 0, |_| {
            reads += 1;
            Vec::new()
        });
        assert_eq!(reads, 0, "the table did not move: no page is read");
        publisher.publish(counts(0), 2, |asked| {
            reads += 1;
            assert_eq!(asked, [("/a", 1)]);
            vec![Some((2, 0, vec![]))]
        });
        assert_eq!(reads, 1);
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().count, 0);

        // The bound, and a page freed with its last watcher.
        let (_b, _) = publisher.watch_page("/b", || (0, 0, vec![])).unwrap();
        assert!(publisher.watch_page("/c", || (0, 0, vec![])).is_err());
        let (_a2, seen) = publisher.watch_page("/a", || unreachable!()).unwrap();
        assert_eq!(
            seen.count, 0,
            "a second watcher starts from the last published"
        );
        publisher.unwatch_page("/a");
        assert_eq!(publisher.watched_pages(), 2);
        publisher.unwatch_page("/a");
        assert_eq!(publisher.watched_pages(), 1);
        assert!(publisher.watch_page("/c", || (0, 0, vec![])).is_ok());
    }
}
