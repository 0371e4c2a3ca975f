//! The node's cache of cluster reads: page counts, the busiest pages, users, and names.
//!
//! Requests and page polls read from here, never from Redis: a key is read from Redis the
//! first time it is asked (one call, shared by the callers asking at that moment), then the
//! flush task refreshes it at most once per flush interval, and only while it is asked (an
//! entry not asked for [`KEEP_WARM`] is dropped). While the view is stale (Redis down, or
//! refilling after it lost data) nothing is refreshed, so every read answers the last
//! complete view at once.
//!
//! Bounded: at most [`MAX_KEYS`] keys and [`MAX_ITEMS`] names and pages in all (the least
//! recently asked go first), and a list read returns at most [`MAX_LIST`] items.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::Value;

use super::ClusterError;
use crate::UserId;

/// Keys cached at most.
pub(super) const MAX_KEYS: usize = 4096;
/// Names and pages held in all the cached lists at most.
pub(super) const MAX_ITEMS: usize = 262_144;
/// The longest list one read returns (`online_members`, `page_members`, `top_pages`).
pub const MAX_LIST: usize = 1000;
/// An entry not asked for this long is no longer refreshed, and dropped.
pub(super) const KEEP_WARM: Duration = Duration::from_secs(60);

/// One read of the cluster view.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Read {
    PageCount(String),
    Top(usize),
    User(String),
    Members(usize),
    PageMembers(String, usize),
}

/// What Redis holds about a user: session counts and times (ms, Redis time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RemoteUser {
    pub(super) listed: i64,
    pub(super) hidden: i64,
    pub(super) seen_ms: i64,
    pub(super) active_ms: i64,
    pub(super) now_ms: i64,
}

/// The answer to a [`Read`].
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Answer {
    Count(usize),
    Pages(Vec<(String, usize)>),
    User(Option<RemoteUser>),
    Names(Vec<UserId>),
}

impl Answer {
    fn items(&self) -> usize {
        match self {
            Answer::Pages(p) => p.len(),
            Answer::Names(n) => n.len(),
            _ => 1,
        }
    }
}

impl Read {
    /// The read script's three arguments for this read.
    /// `pm_buckets`: the member buckets of a tag (see `task::pm_buckets`).
    pub(super) fn args(&self, pm_buckets: u16) -> [Vec<u8>; 3] {
        let s = |v: &str| v.as_bytes().to_vec();
        match self {
            Read::PageCount(p) => [s("pc"), s(p), Vec::new()],
            Read::Top(n) => [s("top"), s(&n.to_string()), Vec::new()],
            Read::User(u) => [s("user"), s(u), Vec::new()],
            Read::Members(n) => [s("mem"), s(&n.to_string()), Vec::new()],
            Read::PageMembers(p, n) => [s("pm"), s(p), s(&format!("{n}/{pm_buckets}"))],
        }
    }

    /// Reads the script's answer to this read.
    pub(super) fn answer(&self, v: Value) -> Result<Answer, ClusterError> {
        let bad = |what: &str| ClusterError::Protocol(format!("read {self:?}: {what}"));
        Ok(match self {
            Read::PageCount(_) => {
                let n: i64 = redis::from_redis_value(v).map_err(|_| bad("not a number"))?;
                Answer::Count(usize::try_from(n).unwrap_or(0))
            }
            Read::Top(_) => {
                let flat: Vec<String> =
                    redis::from_redis_value(v).map_err(|_| bad("not a list"))?;
                let mut out = Vec::with_capacity(flat.len() / 2);
                for pair in flat.chunks_exact(2) {
                    let count: f64 = pair[1].parse().map_err(|_| bad("page count"))?;
                    out.push((pair[0].clone(), count.max(0.0) as usize));
                }
                Answer::Pages(out)
            }
            Read::User(_) => {
                let r: Vec<i64> = redis::from_redis_value(v).map_err(|_| bad("not a list"))?;
                Answer::User(match r.as_slice() {
                    &[listed, hidden, seen_ms, active_ms, now_ms] if listed + hidden > 0 => {
                        Some(RemoteUser {
                            listed,
                            hidden,
                            seen_ms,
                            active_ms,
                            now_ms,
                        })
                    }
                    _ => None,
                })
            }
            Read::Members(_) | Read::PageMembers(..) => {
                let names: Vec<String> =
                    redis::from_redis_value(v).map_err(|_| bad("not a list"))?;
                Answer::Names(names.into_iter().map(UserId::from).collect())
            }
        })
    }
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    asked: Instant,
    refreshed: Instant,
}

/// The cache; see the module docs.
#[derive(Debug, Default)]
pub(super) struct ReadCache {
    entries: Mutex<HashMap<Read, Entry>>,
    items: Mutex<usize>,
    /// Callers that missed take this before reading Redis: concurrent misses of one key make
    /// one call (the second finds the answer the first stored).
    pub(super) misses: tokio::sync::Mutex<()>,
}

impl ReadCache {
    /// The cached answer, marking the key as asked.
    pub(super) fn get(&self, read: &Read) -> Option<Answer> {
        let mut entries = self.entries.lock();
        let e = entries.get_mut(read)?;
        e.asked = Instant::now();
        Some(e.answer.clone())
    }

    /// Stores a fresh answer, making room if needed.
    pub(super) fn store(&self, read: Read, answer: Answer) {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let mut items = self.items.lock();
        let added = answer.items();
        match entries.get_mut(&read) {
            Some(e) => {
                *items = *items - e.answer.items() + added;
                e.answer = answer;
                e.refreshed = now;
            }
            None => {
                *items += added;
                entries.insert(
                    read,
                    Entry {
                        answer,
                        asked: now,
                        refreshed: now,
                    },
                );
            }
        }
        while entries.len() > MAX_KEYS || (*items > MAX_ITEMS && entries.len() > 1) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, e)| e.asked)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            if let Some(e) = entries.remove(&oldest) {
                *items -= e.answer.items();
            }
        }
    }

    /// The keys to refresh now: those asked within [`KEEP_WARM`] whose last refresh is at
    /// least `min_age` old. Drops the others.
    pub(super) fn due(&self, min_age: Duration) -> Vec<Read> {
        let now = Instant::now();
        let mut entries = self.entries.lock();
        let mut items = self.items.lock();
        entries.retain(|_, e| {
            let keep = now.duration_since(e.asked) < KEEP_WARM;
            if !keep {
                *items -= e.answer.items();
            }
            keep
        });
        entries
            .iter()
            .filter(|(_, e)| now.duration_since(e.refreshed) >= min_age)
            .map(|(k, _)| k.clone())
            .collect()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asked_keys_are_due_once_per_interval() {
        let c = ReadCache::default();
        let k = Read::PageCount("/a".into());
        c.store(k.clone(), Answer::Count(3));
        assert_eq!(c.get(&k), Some(Answer::Count(3)));
        assert_eq!(c.due(Duration::ZERO), std::slice::from_ref(&k));
        assert!(
            c.due(Duration::from_secs(3600)).is_empty(),
            "refreshed too recently"
        );
    }

    #[test]
    fn the_cache_is_bounded_in_keys_and_items() {
        let c = ReadCache::default();
        for i in 0..MAX_KEYS + 100 {
            c.store(Read::PageCount(format!("/{i}")), Answer::Count(i));
        }
        assert_eq!(c.len(), MAX_KEYS);
        let names: Vec<UserId> = (0..MAX_LIST)
            .map(|i| UserId::from(format!("u{i}")))
            .collect();
        for i in 0..MAX_ITEMS / MAX_LIST + 10 {
            c.store(
                Read::PageMembers(format!("/{i}"), MAX_LIST),
                Answer::Names(names.clone()),
            );
        }
        assert!(*c.items.lock() <= MAX_ITEMS);
        assert!(c.len() <= MAX_KEYS);
    }
}
