//! A session's life under the write path: start, refresh (activity the hot path could not
//! take: an idle session waking, a kind or page change), end; with the counters, users,
//! pages, change log and events each change implies.
//!
//! Every change to a session, and what it implies, happens under that session's shard
//! *write* lock (see the lock order in the tracker's docs); events are queued there and
//! delivered after every lock is released.

use std::sync::atomic::Ordering;

use crate::clock::Tick;
use crate::core::map::{Entry as MapEntry, SlotRef};
use crate::core::session::{Details, KindTag, Session, narrow, widen};
use crate::core::tracker::Tracker;
use crate::core::users::UserSession;
use crate::error::PresenceError;
use crate::events::{Event, LeaveReason};
use crate::info::Touch;
use crate::kind::SharedStr;
use crate::{Kind, SessionId, UserId};

/// Longest user name the tracker accepts, in bytes; a longer one is refused with
/// [`PresenceError::UserTooLong`]. Names are kept while online and remembered for last-seen,
/// so they are bounded.
pub const MAX_USER_LEN: usize = 256;

/// Longest page the tracker accepts, in bytes; a longer one is refused with
/// [`PresenceError::PageTooLong`]. The HTTP layer truncates request paths to this before
/// calling.
pub const MAX_PAGE_LEN: usize = 1024;

/// A session as a snapshot saved it, for [`Tracker::restore_all`].
#[derive(Debug)]
pub(crate) struct Saved {
    pub(crate) id: SessionId,
    pub(crate) kind: Kind,
    /// Its page, as an index into the pages handed to [`Tracker::restore_all`].
    pub(crate) page: Option<u32>,
    /// Last seen, last active, first seen.
    pub(crate) times: (Tick, Tick, Tick),
}

/// What an operation does to the session counters.
enum Step {
    Add,
    Remove,
}

impl Tracker {
    #[inline]
    pub(crate) fn activity(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
    ) -> Result<Touch, PresenceError> {
        let now = self.clock.now();
        let refreshed = self.sessions.read(&id, |s, d| {
            let unchanged = !s.idle
                && s.is(|| d.get(), &kind)
                && page.is_none_or(|p| d.get().page.as_ref().map(SharedStr::as_str) == Some(p))
                && now < s.deadline(&self.cfg, now);
            if unchanged {
                s.refresh(now, true);
            }
            unchanged
        });
        if refreshed == Some(true) {
            return Ok(Touch::Refreshed);
        }
        // A due session is logically gone: evict it before starting or changing one, so that
        // a newcomer is not counted alongside it (peak) and its user's `UserOffline` /
        // `UserOnline` are not lost. A bounded batch: during an expiry storm the reaper does
        // the rest, and no request waits on it.
        check_lengths(&kind, page)?;
        self.settle_at(now);
        let result = self.activity_slow(id, kind, page, now);
        self.events.deliver();
        result
    }

    fn activity_slow(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) -> Result<Touch, PresenceError> {
        let mut settled = false;
        loop {
            match self.sessions.entry(id) {
                MapEntry::Occupied(mut entry) => {
                    let slot = entry.slot_ref();
                    let (session, details) = entry.get_mut();
                    if now < session.deadline(&self.cfg, now) {
                        self.refresh_live(id, slot, (session, details), kind, page, now);
                        return Ok(Touch::Refreshed);
                    }
                    // Due but not yet reaped: it ends, and a new session starts in its place.
                    let reason = session.leave_reason(&self.cfg, now);
                    self.end(id, session, details, reason, now);
                    let (fresh, fresh_details, check) = self.start(id, kind, page, now);
                    crate::observe::metrics::joined();
                    (*session, *details) = (fresh, fresh_details);
                    self.expiry.schedule(check, slot);
                    return Ok(Touch::Joined);
                }
                MapEntry::Vacant(entry) => {
                    if !self.reserve() {
                        drop(entry);
                        if settled {
                            let max_sessions = self.cfg.max_sessions.unwrap_or(usize::MAX);
                            self.refusals.refused(max_sessions, now);
                            return Err(PresenceError::Full { max_sessions });
                        }
                        // Full: evict one bounded batch of what is due (without waiting
                        // on a reap in flight), then try once more. Never the whole
                        // backlog: a refused visitor must not wait on an expiry storm, and
                        // the reaper frees the rest of the room within a reap interval.
                        self.settle_at(now);
                        settled = true;
                        continue;
                    }
                    let (fresh, details, check) = self.start(id, kind, page, now);
                    crate::observe::metrics::joined();
                    match entry.insert(fresh, details) {
                        Ok(slot) => self.expiry.schedule(check, slot),
                        Err((fresh, details)) => {
                            // No slot left in this shard (2^26 sessions): as full as it gets.
                            self.end(id, &fresh, &details, LeaveReason::Left, now);
                            self.counters.occupied.fetch_sub(1, Ordering::Relaxed);
                            let max_sessions = self.cfg.max_sessions.unwrap_or(usize::MAX);
                            self.refusals.refused(max_sessions, now);
                            return Err(PresenceError::Full { max_sessions });
                        }
                    }
                    return Ok(Touch::Joined);
                }
            }
        }
    }

    /// Takes one place for a new entry, if `max_sessions` allows.
    fn reserve(&self) -> bool {
        let occupied = &self.counters.occupied;
        match self.cfg.max_sessions {
            None => {
                occupied.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(max) => occupied
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        }
    }

    /// Activity on a live session that the hot path could not take: it was counted idle, or
    /// its kind or page changes. Under the shard write lock.
    fn refresh_live(
        &self,
        id: SessionId,
        slot: SlotRef,
        (session, details): (&mut Session, &mut Details),
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) {
        session.refresh(now, true);
        if session.idle {
            session.idle = false;
            self.counters.active.fetch_add(1, Ordering::Relaxed);
            self.counters.idle.fetch_sub(1, Ordering::Relaxed);
        }
        if !session.is(|| details, &kind) {
            self.changes.record(id);
            let events = self.events.wanted().then_some(&self.events);
            if let Some(events) = events {
                events.push(Event::KindChanged {
                    session: id,
                    from: session.kind(details),
                    to: kind.clone(),
                });
            }
            let new_tag = KindTag::of(&kind);
            let mut people =
                self.count_kind(new_tag, Step::Add) - self.count_kind(session.tag, Step::Remove);
            people += self.counters.apply_users(
                self.users.apply(
                    user_session(id, session.tag, details.user.as_ref())
                        .map(|s| (s, session.last_seen(now))),
                    user_session(id, new_tag, kind.user()),
                    now,
                    events,
                ),
            );
            self.counters.add_people(people, now);
            if let Some(page) = &details.page {
                self.pages.relist(
                    page,
                    listed(session.tag, details.user.as_ref()),
                    listed(new_tag, kind.user()),
                );
            }
            (session.tag, details.user) = KindTag::split(kind);
        }
        if let Some(page) = page {
            if details.page.as_ref().map(SharedStr::as_str) != Some(page) {
                self.changes.record(id);
                let member = listed(session.tag, details.user.as_ref());
                let from = details.page.as_ref().map(|p| (p, member));
                details.page = Some(self.pages.change(from, page, member));
            }
        }
        // Activity only moves the session's times later, so its current expiry item usually
        // still fires early enough. The exception: a session counted idle becomes active and
        // may now go idle again before that item.
        let next = session.next_change(&self.cfg, now);
        if next < widen(now, session.next_check) {
            session.next_check = narrow(next);
            self.expiry.schedule(next, slot);
        }
    }

    /// A new session, counted and announced, and the time of its first check. Under the
    /// shard write lock.
    fn start(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) -> (Session, Details, Tick) {
        self.changes.record(id);
        let events = self.events.wanted().then_some(&self.events);
        if let Some(events) = events {
            events.push(Event::Joined {
                session: id,
                kind: kind.clone(),
            });
        }
        self.counters.active.fetch_add(1, Ordering::Relaxed);
        let tag = KindTag::of(&kind);
        let mut people = self.count_kind(tag, Step::Add);
        people += self.counters.apply_users(self.users.apply(
            None,
            user_session(id, tag, kind.user()),
            now,
            events,
        ));
        self.counters.add_people(people, now);
        let page = page.map(|p| self.pages.change(None, p, listed(tag, kind.user())));
        let (mut session, details) = Session::new(kind, page, now);
        let check = session.next_change(&self.cfg, now);
        session.next_check = narrow(check);
        (session, details, check)
    }

    /// Uncounts a session that ends and announces it. Under the shard write lock; the caller
    /// removes or replaces the entry.
    pub(crate) fn end(
        &self,
        id: SessionId,
        session: &Session,
        details: &Details,
        reason: LeaveReason,
        now: Tick,
    ) {
        self.changes.record(id);
        crate::observe::metrics::left(reason);
        let events = self.events.wanted().then_some(&self.events);
        if let Some(events) = events {
            events.push(Event::Left {
                session: id,
                kind: session.kind(details),
                reason,
            });
        }
        let counter = if session.idle {
            &self.counters.idle
        } else {
            &self.counters.active
        };
        counter.fetch_sub(1, Ordering::Relaxed);
        let mut people = -self.count_kind(session.tag, Step::Remove);
        // A due session ended at its deadline, however late that is noticed.
        let ended = now.min(session.deadline(&self.cfg, now));
        people += self.counters.apply_users(
            self.users.apply(
                user_session(id, session.tag, details.user.as_ref())
                    .map(|s| (s, session.last_seen(now))),
                None,
                ended,
                events,
            ),
        );
        self.counters.add_people(people, now);
        if let Some(page) = &details.page {
            self.pages
                .leave(page, listed(session.tag, details.user.as_ref()));
        }
    }

    /// Sessions restored from a snapshot at build, in bulk: each table (users, pages,
    /// counters, expiry) is updated once for all of them, not once a session, so that a
    /// million sessions restore in about the time it takes to read them. Sessions are
    /// counted as [`start`](Self::start) counts a new one, with their saved times (idle if
    /// they are), and announced to no one: nobody can have subscribed yet, and a restart is
    /// not a join. `pages` holds the page names `Saved::page` refers to. Past
    /// `max_sessions` the rest are not restored. Returns how many were.
    pub(crate) fn restore_all(&self, mut saved: Vec<Saved>, pages: &[&str], now: Tick) -> usize {
        if let Some(max) = self.cfg.max_sessions {
            let room = max.saturating_sub(self.counters.occupied.load(Ordering::Relaxed));
            saved.truncate(room);
        }
        self.counters
            .occupied
            .fetch_add(saved.len(), Ordering::Relaxed);

        // Pages: each page's sessions and listed users, counted in at once.
        let mut per_page: Vec<Option<(usize, Vec<UserId>)>> = Vec::new();
        per_page.resize_with(pages.len(), || None);
        for s in &saved {
            if let Some(p) = s.page {
                let (sessions, members) = per_page[p as usize].get_or_insert_default();
                *sessions += 1;
                if let Kind::Member(user) = &s.kind {
                    members.push(user.clone());
                }
            }
        }
        let used: Vec<usize> = (0..pages.len())
            .filter(|&p| per_page[p].is_some())
            .collect();
        let interned = self.pages.restore(
            used.iter()
                .filter_map(|&p| {
                    let (sessions, members) = per_page[p].take()?;
                    Some((pages[p], sessions, members))
                })
                .collect(),
        );
        let mut page_names: Vec<Option<SharedStr>> = vec![None; pages.len()];
        for (p, name) in used.into_iter().zip(interned) {
            page_names[p] = Some(name);
        }

        // Users, then the counters, all before the sessions are visible.
        let members: Vec<(UserId, bool, SessionId, Tick)> = saved
            .iter()
            .filter_map(|s| {
                let user = s.kind.user()?.clone();
                Some((user, s.kind.is_hidden(), s.id, s.times.0))
            })
            .collect();
        let mut people = self
            .counters
            .apply_users(self.users.restore_sessions(&members));
        let (mut guests, mut bots, mut idle) = (0, 0, 0);
        for s in &saved {
            match KindTag::of(&s.kind) {
                KindTag::Guest => guests += 1,
                KindTag::Bot => bots += 1,
                KindTag::Member | KindTag::Hidden => {}
            }
            if s.times.1 + self.cfg.idle_after <= now {
                idle += 1;
            }
        }
        let c = &self.counters;
        c.guests.fetch_add(guests, Ordering::Relaxed);
        c.bots.fetch_add(bots, Ordering::Relaxed);
        c.idle.fetch_add(idle, Ordering::Relaxed);
        c.active.fetch_add(saved.len() - idle, Ordering::Relaxed);
        people += isize::try_from(guests).unwrap_or(isize::MAX);
        c.add_people(people, now);

        // The sessions themselves, and their first checks in one go.
        let restored = saved.len();
        let mut checks = Vec::with_capacity(restored);
        let mut lost = 0;
        for s in saved {
            let (seen, active, first_seen) = s.times;
            let page = s.page.and_then(|p| page_names[p as usize].clone());
            let (mut session, mut details) = Session::new(s.kind, page, seen);
            session.set_times(seen, active);
            details.first_seen = first_seen;
            session.idle = active + self.cfg.idle_after <= now;
            let check = session.next_change(&self.cfg, now);
            session.next_check = narrow(check);
            self.changes.record(s.id);
            let failed = match self.sessions.entry(s.id) {
                MapEntry::Vacant(entry) => match entry.insert(session, details) {
                    Ok(slot) => {
                        checks.push((check, slot));
                        continue;
                    }
                    Err(failed) => failed,
                },
                // Ids in a snapshot are distinct, and the map is empty at build.
                MapEntry::Occupied(_) => (session, details),
            };
            // Counted above: uncount it.
            self.end(s.id, &failed.0, &failed.1, LeaveReason::Left, now);
            self.counters.occupied.fetch_sub(1, Ordering::Relaxed);
            lost += 1;
        }
        self.expiry.schedule_all(checks);
        restored - lost
    }

    /// Counts a guest or bot session in or out; returns the guests it adds to `people`.
    fn count_kind(&self, tag: KindTag, step: Step) -> isize {
        let counter = match tag {
            KindTag::Guest => &self.counters.guests,
            KindTag::Bot => &self.counters.bots,
            KindTag::Member | KindTag::Hidden => return 0,
        };
        match step {
            Step::Add => counter.fetch_add(1, Ordering::Relaxed),
            Step::Remove => counter.fetch_sub(1, Ordering::Relaxed),
        };
        isize::from(tag == KindTag::Guest)
    }
}

/// Refuses a user name or page longer than the tracker stores.
fn check_lengths(kind: &Kind, page: Option<&str>) -> Result<(), PresenceError> {
    if let Some(user) = kind.user().filter(|u| u.len() > MAX_USER_LEN) {
        return Err(PresenceError::UserTooLong {
            len: user.len(),
            max: MAX_USER_LEN,
        });
    }
    if let Some(page) = page.filter(|p| p.len() > MAX_PAGE_LEN) {
        return Err(PresenceError::PageTooLong {
            len: page.len(),
            max: MAX_PAGE_LEN,
        });
    }
    Ok(())
}

fn user_session(id: SessionId, tag: KindTag, user: Option<&UserId>) -> Option<UserSession<'_>> {
    user.map(|user| UserSession {
        user,
        hidden: tag == KindTag::Hidden,
        session: id,
    })
}

/// The user a page lists a session under: its user if it is a listed member's session.
fn listed(tag: KindTag, user: Option<&UserId>) -> Option<&UserId> {
    user.filter(|_| tag == KindTag::Member)
}
