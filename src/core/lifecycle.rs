//! The write path: [`Lifecycle`] owns the session map and every table kept in step with it
//! (counters and capacity, users, pages, holds, the expiry index, the change log, the event
//! queue), its fields private. One function starts a session (`start`), one changes it (`change`:
//! activity the hot path could not take, a kind or page change), one ends it (`end`); the
//! counters, users, pages, capacity, change log and events move there and nowhere else. The
//! operations (activity, leave, reaping, the bulk restore) call them; the tracker above
//! reads through methods.
//!
//! Every change to a session, and what it implies, happens under that session's shard
//! *write* lock (see the lock order in the tracker's docs); events are queued there and
//! delivered after every lock is released.

use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::clock::{Tick, WallClock};
use crate::core::changes::ChangeLog;
use crate::core::counters::Counters;
use crate::core::expiry::ExpiryIndex;
use crate::core::holds::{Dropped, HoldTable};
use crate::core::map::{Cold, Entry as MapEntry, SessionMap, SlotRef};
use crate::core::pages::{PageState, PageTable};
use crate::core::session::{Config, Details, HoldState, KindTag, Session, narrow, widen};
use crate::core::users::{UserSession, UserSnapshot, UserTable, WhenOffline};
use crate::counts::Counts;
use crate::error::PresenceError;
use crate::events::{Event, EventQueue, LeaveReason};
use crate::info::Touch;
use crate::kind::SharedStr;
use crate::limits::check_lengths;
use crate::observe::metrics::Refusals;
use crate::{Kind, SessionId, UserId};

/// Due sessions a read or a write settles itself at most; the reaper does the rest.
pub(crate) const READ_BATCH: usize = 256;
/// Due sessions one reaper step evicts under one hold of the locks.
const REAP_BATCH: usize = 2048;

/// The sessions and every table kept in step with them: the map, the counters (capacity
/// included), users, pages, the expiry index, the change log and the event queue. Its fields
/// are private: a session starts in [`start`](Self::start), changes in
/// [`change`](Self::change) and ends in [`end`](Self::end), and only those touch the tables.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    cfg: Config,
    sessions: SessionMap<Session, Details>,
    counters: Counters,
    users: UserTable,
    pages: PageTable,
    /// How many holds each held session has, and of which generation.
    holds: HoldTable,
    expiry: ExpiryIndex,
    /// Serialises reaps; a read or write that finds one in flight does not wait.
    reaping: Mutex<()>,
    events: EventQueue,
    /// Sessions changed on a write path, for the cluster view (off unless one is attached).
    changes: ChangeLog,
    refusals: Refusals,
}

/// A session as a snapshot saved it, for [`Lifecycle::restore_all`].
#[derive(Debug)]
pub(crate) struct Saved {
    pub(crate) id: SessionId,
    pub(crate) kind: Kind,
    /// Its page, as an index into the pages handed to [`Lifecycle::restore_all`].
    pub(crate) page: Option<u32>,
    /// Last seen, last active, first seen.
    pub(crate) times: (Tick, Tick, Tick),
}

/// What an operation does to the session counters.
enum Step {
    Add,
    Remove,
}

/// What becomes of an ended session's place in the map.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// The entry is removed (or was never inserted): its place counts no more.
    Freed,
    /// A new session takes the entry over at once: it keeps the place.
    Reused,
}

impl Lifecycle {
    pub(crate) fn new(cfg: Config, now: Tick, max_remembered_users: usize, events: usize) -> Self {
        Lifecycle {
            cfg,
            sessions: SessionMap::new(),
            counters: Counters::new(now),
            users: UserTable::new(max_remembered_users),
            pages: PageTable::default(),
            holds: HoldTable::default(),
            expiry: ExpiryIndex::new(),
            reaping: Mutex::new(()),
            events: EventQueue::new(events),
            changes: ChangeLog::default(),
            refusals: Refusals::default(),
        }
    }

    /// Activity of session `id` at `now`: the hot path (a live session of unchanged kind and
    /// page, under a shard read lock), else the write path.
    #[inline]
    pub(crate) fn activity(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) -> Result<Touch, PresenceError> {
        let refreshed = self.sessions.read(&id, |s, d| {
            // A released session in its grace goes on as an ordinary one: the write path.
            let unchanged = !s.idle
                && s.hold != HoldState::Released
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
        let result = self.activity_slow(id, kind, page, now, false);
        self.events.deliver();
        result.map(|(touch, _)| touch)
    }

    /// Activity of session `id` at `now` that also holds it: the write path always. Returns
    /// how the session went and the hold's generation.
    pub(crate) fn hold(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) -> Result<(Touch, u64), PresenceError> {
        check_lengths(&kind, page)?;
        self.settle_at(now);
        let result = self.activity_slow(id, kind, page, now, true);
        self.events.deliver();
        result
    }

    /// Activity on the write path; with `hold`, the session is held once more and the
    /// hold's generation returned (0 without).
    fn activity_slow(
        &self,
        id: SessionId,
        kind: Kind,
        page: Option<&str>,
        now: Tick,
        hold: bool,
    ) -> Result<(Touch, u64), PresenceError> {
        let mut settled = false;
        loop {
            match self.sessions.entry(id) {
                MapEntry::Occupied(mut entry) => {
                    let slot = entry.slot_ref();
                    let (session, details) = entry.get_mut();
                    if now < session.deadline(&self.cfg, now) {
                        self.change(id, slot, (session, details), kind, page, now);
                        let generation = self.take_hold(id, session, hold);
                        return Ok((Touch::Refreshed, generation));
                    }
                    // Due but not yet reaped: it ends, and a new session starts in its place.
                    let reason = session.leave_reason(&self.cfg, now);
                    self.end(id, session, details, reason, now, Place::Reused);
                    let (fresh, fresh_details, check) = self.start(id, kind, page, now);
                    (*session, *details) = (fresh, fresh_details);
                    let generation = self.take_hold(id, session, hold);
                    self.expiry.schedule(check, slot);
                    return Ok((Touch::Joined, generation));
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
                    let (mut fresh, details, check) = self.start(id, kind, page, now);
                    let generation = self.take_hold(id, &mut fresh, hold);
                    match entry.insert(fresh, details) {
                        Ok(slot) => self.expiry.schedule(check, slot),
                        Err((fresh, details)) => {
                            // No slot left in this shard (2^26 sessions): as full as it gets.
                            self.end(id, &fresh, &details, LeaveReason::Left, now, Place::Freed);
                            let max_sessions = self.cfg.max_sessions.unwrap_or(usize::MAX);
                            self.refusals.refused(max_sessions, now);
                            return Err(PresenceError::Full { max_sessions });
                        }
                    }
                    return Ok((Touch::Joined, generation));
                }
            }
        }
    }

    /// With `hold`, one more hold of live session `id`: its generation. Under the shard
    /// write lock. A held session needs no new expiry item: its current one comes no later
    /// than it would have expired, and is rescheduled then.
    fn take_hold(&self, id: SessionId, session: &mut Session, hold: bool) -> u64 {
        if !hold {
            return 0;
        }
        session.hold = HoldState::Held;
        self.holds.take(id)
    }

    /// Drops one hold (of generation `generation`) of session `id`. The last one leaves the
    /// session `Released` from now, gone at `hold_grace` unless continued (`grace`), or an
    /// ordinary session from its last touch or heartbeat (not `grace`: it may be due at
    /// once). A hold of a session that ended does nothing.
    pub(crate) fn release(&self, id: SessionId, generation: u64, now: Tick, grace: bool) {
        let MapEntry::Occupied(mut entry) = self.sessions.entry(id) else {
            return;
        };
        let slot = entry.slot_ref();
        let (session, _) = entry.get_mut();
        if session.hold != HoldState::Held || self.holds.drop_one(id, generation) != Dropped::Last {
            return;
        }
        if grace {
            session.hold = HoldState::Released;
            session.set_seen(now);
        } else {
            session.hold = HoldState::Free;
        }
        let next = session.next_change(&self.cfg, now);
        session.next_check = narrow(next);
        self.expiry.schedule(next, slot);
    }

    /// Activity of held session `id` through its hold of generation `generation`, moving it
    /// to `page` if given; [`PresenceError::HoldEnded`] if that session ended.
    pub(crate) fn hold_activity(
        &self,
        id: SessionId,
        generation: u64,
        page: Option<&str>,
        now: Tick,
    ) -> Result<(), PresenceError> {
        check_lengths(&Kind::Guest, page)?;
        let current =
            |s: &Session| s.hold == HoldState::Held && self.holds.is_current(id, generation);
        if page.is_none() {
            // The usual case (input on an open connection): a read lock, as a touch.
            let fast = self.sessions.read(&id, |s, _| {
                if !current(s) {
                    return Some(false);
                }
                (!s.idle).then(|| s.refresh(now, true)).map(|()| true)
            });
            match fast {
                None | Some(Some(false)) => return Err(PresenceError::HoldEnded),
                Some(Some(true)) => return Ok(()),
                Some(None) => {} // counted idle: the write path
            }
        }
        self.settle_at(now);
        let result = match self.sessions.entry(id) {
            MapEntry::Occupied(mut entry) => {
                let slot = entry.slot_ref();
                let (session, details) = entry.get_mut();
                if current(session) {
                    let kind = session.kind(details);
                    self.change(id, slot, (session, details), kind, page, now);
                    Ok(())
                } else {
                    Err(PresenceError::HoldEnded)
                }
            }
            MapEntry::Vacant(_) => Err(PresenceError::HoldEnded),
        };
        self.events.deliver();
        result
    }

    /// Whether session `id` is held by holds of generation `generation`.
    pub(crate) fn is_held_by(&self, id: SessionId, generation: u64) -> bool {
        self.sessions
            .read(&id, |s, _| {
                s.hold == HoldState::Held && self.holds.is_current(id, generation)
            })
            .unwrap_or(false)
    }

    /// Holds of session `id` (0 when it is not held).
    pub(crate) fn holds(&self, id: SessionId) -> usize {
        self.holds.holds(id)
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
    fn change(
        &self,
        id: SessionId,
        slot: SlotRef,
        (session, details): (&mut Session, &mut Details),
        kind: Kind,
        page: Option<&str>,
        now: Tick,
    ) {
        session.refresh(now, true);
        if session.hold == HoldState::Released {
            // Activity within the grace: it goes on as an ordinary session.
            session.hold = HoldState::Free;
        }
        if session.idle {
            session.idle = false;
            self.counters.active.fetch_add(1, Ordering::Relaxed);
            self.counters.idle.fetch_sub(1, Ordering::Relaxed);
        }
        let kind_changes = !session.is(|| details, &kind);
        let page_changes =
            page.filter(|&p| details.page.as_ref().map(SharedStr::as_str) != Some(p));
        if kind_changes || page_changes.is_some() {
            self.changes.record(id);
        }
        if kind_changes {
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
        if let Some(page) = page_changes {
            let member = listed(session.tag, details.user.as_ref());
            let from = details.page.as_ref().map(|p| (p, member));
            details.page = Some(self.pages.change(from, page, member));
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
        crate::observe::metrics::joined();
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

    /// Uncounts a session that ends and announces it, and frees its place unless a new
    /// session takes it over. Under the shard write lock; the caller removes or replaces the
    /// entry.
    fn end(
        &self,
        id: SessionId,
        session: &Session,
        details: &Details,
        reason: LeaveReason,
        now: Tick,
        place: Place,
    ) {
        self.end_as(
            id,
            session,
            details,
            reason,
            now,
            place,
            WhenOffline::Remember,
        );
    }

    /// [`end`](Self::end), with what becomes of the session's user if it was their last.
    #[allow(clippy::too_many_arguments)]
    fn end_as(
        &self,
        id: SessionId,
        session: &Session,
        details: &Details,
        reason: LeaveReason,
        now: Tick,
        place: Place,
        offline: WhenOffline,
    ) {
        self.changes.record(id);
        if session.hold == HoldState::Held {
            self.holds.remove(id);
        }
        if place == Place::Freed {
            self.counters.occupied.fetch_sub(1, Ordering::Relaxed);
        }
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
            self.users.apply_as(
                user_session(id, session.tag, details.user.as_ref())
                    .map(|s| (s, session.last_seen(now))),
                None,
                ended,
                events,
                offline,
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
            self.end(
                s.id,
                &failed.0,
                &failed.1,
                LeaveReason::Left,
                now,
                Place::Freed,
            );
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

impl Lifecycle {
    /// Keeps live session `id` online without counting as activity; `false` if it is unknown
    /// or due (then not revived). The hot path: a shard read lock.
    pub(crate) fn heartbeat(&self, id: SessionId, now: Tick) -> bool {
        let live = |s: &Session, _: Cold<'_, Details>| {
            if s.hold == HoldState::Released {
                return None; // continued from its grace: the write path
            }
            let live = now < s.deadline(&self.cfg, now);
            if live {
                s.refresh(now, false);
            }
            Some(live)
        };
        match self.sessions.read(&id, live) {
            None => false,
            Some(Some(live)) => live,
            Some(None) => self.heartbeat_released(id, now),
        }
    }

    /// A heartbeat of a session whose last hold was dropped: within the grace it goes on as
    /// an ordinary session (which may be due at once, past its `heartbeat_limit`).
    fn heartbeat_released(&self, id: SessionId, now: Tick) -> bool {
        let MapEntry::Occupied(mut entry) = self.sessions.entry(id) else {
            return false;
        };
        let slot = entry.slot_ref();
        let (session, _) = entry.get_mut();
        if now >= session.deadline(&self.cfg, now) {
            return false;
        }
        if session.hold == HoldState::Released {
            session.hold = HoldState::Free;
        }
        session.refresh(now, false);
        let next = session.next_change(&self.cfg, now);
        if next < widen(now, session.next_check) {
            session.next_check = narrow(next);
            self.expiry.schedule(next, slot);
        }
        now < session.deadline(&self.cfg, now)
    }

    /// Ends session `id` now (an explicit leave, or a due session found first by this call);
    /// returns `on_live` of it if it was live. Its events wait for [`deliver`](Self::deliver).
    pub(crate) fn leave<R>(
        &self,
        id: SessionId,
        now: Tick,
        on_live: impl FnOnce(&Session, &Details) -> R,
    ) -> Option<R> {
        match self.sessions.entry(id) {
            MapEntry::Occupied(entry) => {
                let (session, details) = entry.get();
                let live = now < session.deadline(&self.cfg, now);
                let info = live.then(|| on_live(session, details));
                let reason = if live {
                    self.changes.record_left(id, details.user.as_ref());
                    LeaveReason::Left
                } else {
                    session.leave_reason(&self.cfg, now)
                };
                self.end(id, session, details, reason, now, Place::Freed);
                entry.remove();
                info
            }
            MapEntry::Vacant(_) => None,
        }
    }

    /// Erases `user`: ends each of their sessions as an explicit leave (`Left`; one already
    /// due and not yet reaped, for the reason it was due), then forgets their last-seen
    /// record, so that nothing of the name is left in the tables (the snapshot is written
    /// from them). Returns the live sessions it ended, as `leave` would count them; their
    /// events wait for [`deliver`](Self::deliver).
    ///
    /// For the cluster view, each ended session, due or live, is logged as an explicit leave
    /// ([`ChangeLog::record_left`]): the next flush ends it on every node, as for
    /// `Presence::leave`. The user's records in Redis are the cluster's to remove.
    ///
    /// Takes no lock while it takes a shard's: the user's sessions are read first, then each
    /// ended under its own shard lock, so it runs beside reaps and requests in any order. A
    /// session that started for the user meanwhile (the application still lets them in) is
    /// not ended, and the user's record, theirs again, is kept.
    /// Known users (online or remembered) for which `matches` holds.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn find_users(&self, matches: impl FnMut(&str) -> bool) -> Vec<crate::UserId> {
        self.users.find(matches)
    }

    pub(crate) fn erase_user(&self, user: &str, now: Tick) -> Vec<SessionId> {
        let sessions = match self.users.snapshot(user) {
            UserSnapshot::Online { sessions, .. } => sessions,
            UserSnapshot::Offline { .. } | UserSnapshot::Unknown => Vec::new(),
        };
        let mut ended = Vec::with_capacity(sessions.len());
        for id in sessions {
            let MapEntry::Occupied(entry) = self.sessions.entry(id) else {
                continue; // ended meanwhile (a reap, a leave)
            };
            let (session, details) = entry.get();
            if details.user.as_ref().map(UserId::as_str) != Some(user) {
                continue; // ended meanwhile, and the id started again as someone else
            }
            let live = now < session.deadline(&self.cfg, now);
            let reason = if live {
                LeaveReason::Left
            } else {
                session.leave_reason(&self.cfg, now)
            };
            self.changes.record_left(id, details.user.as_ref());
            self.end_as(
                id,
                session,
                details,
                reason,
                now,
                Place::Freed,
                WhenOffline::Forget,
            );
            entry.remove();
            if live {
                ended.push(id);
            }
        }
        // Offline already, or a last session ended by a reap meanwhile: remembered, and
        // forgotten here.
        self.users.forget(user);
        ended
    }

    /// Evicts up to [`READ_BATCH`] due sessions, unless a reap is already in flight (then
    /// the reaper is on it, and this caller does not wait). Returns whether it reaped.
    ///
    /// So a read or a write never waits on a large reap: during an expiry storm a read may
    /// count a due session for up to one reap interval; with fewer than `READ_BATCH` due (the
    /// usual case, and every test under [`Reaper::Manual`](crate::Reaper::Manual) that does
    /// not storm) the read is exact.
    pub(crate) fn settle_at(&self, now: Tick) -> bool {
        if !self.expiry.may_be_due(now) {
            return false;
        }
        let Some(_reaping) = self.reaping.try_lock() else {
            return false;
        };
        self.reap_batch(now, READ_BATCH);
        true
    }

    /// Evicts everything due now, in batches that each release the locks, so that requests
    /// go on between them.
    pub(crate) fn reap_all(&self, now: Tick) -> usize {
        let mut evicted = 0;
        loop {
            let (n, more) = {
                let _reaping = self.reaping.lock();
                self.reap_batch(now, REAP_BATCH)
            };
            evicted += n;
            if !more {
                return evicted;
            }
            std::thread::yield_now();
        }
    }

    /// One reaper step: one batch of what is due; returns whether more is due.
    pub(crate) fn reap_step(&self, now: Tick) -> bool {
        let _reaping = self.reaping.lock();
        self.reap_batch(now, REAP_BATCH).1
    }

    /// Evicts up to `limit` due items; returns how many sessions it evicted and whether more
    /// are due. The caller holds `reaping`.
    fn reap_batch(&self, now: Tick, limit: usize) -> (usize, bool) {
        let mut due = Vec::new();
        let more = self.expiry.take_due(now, &mut due, limit);
        let mut later = Vec::new();
        let mut evicted = 0;
        // What the closure below will evict: a current item (not left stale by a reschedule
        // or by the session leaving) whose session is past its deadline.
        let evicts =
            |at: Tick, s: &Session| s.next_check == narrow(at) && s.deadline(&self.cfg, now) <= now;
        self.sessions.at_each(&due, evicts, |at, slot, mut entry| {
            let id = entry.id();
            let (session, details) = entry.get_mut();
            if session.next_check != narrow(at) {
                return; // a stale item: the session was rescheduled, or left and another came
            }
            if session.deadline(&self.cfg, now) <= now {
                let reason = session.leave_reason(&self.cfg, now);
                self.end(id, session, details, reason, now, Place::Freed);
                entry.remove();
                evicted += 1;
                return;
            }
            if session.hold == HoldState::Held {
                session.keep_times_in_range(now);
            }
            if !session.idle && session.idle_at(&self.cfg, now) <= now {
                session.idle = true;
                self.counters.idle.fetch_add(1, Ordering::Relaxed);
                self.counters.active.fetch_sub(1, Ordering::Relaxed);
            }
            let next = session.next_change(&self.cfg, now);
            session.next_check = narrow(next);
            later.push((next, slot));
        });
        self.expiry.schedule_all(later);
        self.expiry.finish();
        let forget_more = self.forget_due(now, limit);
        (evicted, more || forget_more)
    }

    /// Forgets up to `limit` offline users past `remember_users_for`; returns whether more
    /// are due.
    pub(crate) fn forget_due(&self, now: Tick, limit: usize) -> bool {
        self.users
            .forget_due(now, self.cfg.remember_users_for, limit)
    }

    /// Remembers an offline user's last-seen (a restore).
    pub(crate) fn remember_offline(&self, user: &UserId, last_seen: Tick, since: Tick) {
        self.users.remember_offline(user, last_seen, since);
    }

    /// Sets the peak (a restore).
    pub(crate) fn restore_peak(&self, online: usize, at: Tick) {
        self.counters.restore_peak(online, at);
    }

    /// Gives the user table's memory back after a flood was forgotten.
    pub(crate) fn tidy(&self) {
        self.users.tidy();
    }

    /// Delivers the queued events, once every lock is released.
    pub(crate) fn deliver(&self) {
        self.events.deliver();
    }

    /// A receiver of every event from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The change log, for its consumer (the cluster view) to enable and drain.
    pub(crate) fn changes(&self) -> &ChangeLog {
        &self.changes
    }

    /// The settings in ticks.
    pub(crate) fn cfg(&self) -> &Config {
        &self.cfg
    }

    /// `f` of session `id`'s parts, under its shard read lock.
    pub(crate) fn read<R>(
        &self,
        id: &SessionId,
        f: impl FnOnce(&Session, Cold<'_, Details>) -> R,
    ) -> Option<R> {
        self.sessions.read(id, f)
    }

    /// `f` of every stored session (due ones included), shard by shard under read locks.
    pub(crate) fn for_each(&self, f: impl FnMut(SessionId, &Session, &Details)) {
        self.sessions.for_each(f);
    }

    /// `f` of up to `limit` stored sessions from position `from`; the next position.
    pub(crate) fn for_each_from(
        &self,
        from: u64,
        limit: usize,
        f: impl FnMut(SessionId, &Session, &Details),
    ) -> Option<u64> {
        self.sessions.for_each_from(from, limit, f)
    }

    /// Sessions stored (live, or due and not yet reaped).
    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Places left under `max_sessions`.
    pub(crate) fn room(&self) -> usize {
        self.cfg.max_sessions.map_or(usize::MAX, |max| {
            max.saturating_sub(self.counters.occupied.load(Ordering::Relaxed))
        })
    }

    /// Every counter, read once.
    pub(crate) fn counts(&self, wall: &WallClock) -> Counts {
        self.counters.read(wall)
    }

    /// People online.
    pub(crate) fn online(&self) -> usize {
        self.counters.online()
    }

    /// The peak: online, and when.
    pub(crate) fn peak(&self) -> (usize, Tick) {
        self.counters.peak()
    }

    /// Where user `user` stands in the user table.
    pub(crate) fn user_snapshot(&self, user: &str) -> UserSnapshot {
        self.users.snapshot(user)
    }

    /// Listed users online, by name.
    pub(crate) fn listed(&self, limit: usize) -> Vec<UserId> {
        self.users.listed(limit)
    }

    /// The offline users remembered, oldest first: (user, last seen, offline since).
    pub(crate) fn export_offline(&self) -> Vec<(UserId, Tick, Tick)> {
        self.users.export_offline()
    }

    /// Offline users a restore keeps at most.
    pub(crate) fn max_offline(&self) -> usize {
        self.users.max_offline()
    }

    /// Live sessions on `page`.
    pub(crate) fn page_count(&self, page: &str) -> usize {
        self.pages.count(page)
    }

    /// The busiest pages.
    pub(crate) fn top_pages(&self, n: usize) -> Vec<(String, usize)> {
        self.pages.top(n)
    }

    /// Listed users on `page`, by name.
    pub(crate) fn page_members(&self, page: &str, limit: usize) -> Vec<UserId> {
        self.pages.members(page, limit)
    }

    /// The page table's version: it moves whenever any page changes.
    pub(crate) fn pages_version(&self) -> u64 {
        self.pages.version()
    }

    /// The pages of `asked` whose version moved: see [`PageTable::changed_since`].
    pub(crate) fn pages_changed_since(&self, asked: &[(&str, u64)]) -> Vec<Option<PageState>> {
        self.pages.changed_since(asked)
    }
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lifecycle(max_sessions: Option<usize>) -> Lifecycle {
        let cfg = Config {
            idle_timeout: 1_000,
            idle_after: 500,
            heartbeat_limit: 10_000,
            reap_interval: Duration::from_secs(1),
            max_sessions,
            remember_users_for: 60_000,
            hold_grace: 500,
        };
        let life = Lifecycle::new(cfg, 0, 100, 16);
        life.changes().enable();
        life
    }

    fn changed(life: &Lifecycle) -> Vec<SessionId> {
        life.changes().drain()
    }

    fn occupied(life: &Lifecycle) -> usize {
        life.counters.occupied.load(Ordering::Relaxed)
    }

    /// Each way a session starts, changes or ends puts it in the change log (which the
    /// cluster view sends from), and keeps the capacity count in step; the hot path and a
    /// refusal record nothing. A write path that skipped the log would fail here.
    #[test]
    fn every_write_path_records_its_session_in_the_change_log() {
        let life = lifecycle(Some(2));
        let a = SessionId::new_v4();

        // Starts.
        assert!(matches!(
            life.activity(a, Kind::Guest, None, 10),
            Ok(Touch::Joined)
        ));
        assert_eq!(changed(&life), [a]);
        // The hot path and a heartbeat change nothing the log carries.
        assert!(matches!(
            life.activity(a, Kind::Guest, None, 20),
            Ok(Touch::Refreshed)
        ));
        assert!(life.heartbeat(a, 30));
        assert!(changed(&life).is_empty());
        // Changes kind, then page.
        life.activity(a, Kind::member("alice"), None, 40).unwrap();
        assert_eq!(changed(&life), [a]);
        life.activity(a, Kind::member("alice"), Some("/x"), 50)
            .unwrap();
        assert_eq!(changed(&life), [a]);
        // Both at once: recorded once.
        life.activity(a, Kind::Bot, Some("/y"), 60).unwrap();
        assert_eq!(changed(&life), [a]);
        // Leaves.
        assert!(life.leave(a, 70, |_, _| ()).is_some());
        assert_eq!(changed(&life), [a]);
        assert_eq!(life.changes().drain_left(), [(a, None)]);
        assert_eq!(occupied(&life), 0);

        // Expires, evicted by a reap.
        let b = SessionId::new_v4();
        life.activity(b, Kind::Guest, None, 100).unwrap();
        assert_eq!(changed(&life), [b]);
        assert_eq!(life.reap_all(100 + 1_000), 1);
        assert_eq!(changed(&life), [b]);
        assert_eq!(occupied(&life), 0);

        // Due but not yet evicted (a reap in flight), then active again: it ends and a new
        // session starts in its place, keeping the place.
        let c = SessionId::new_v4();
        life.activity(c, Kind::Guest, None, 2_000).unwrap();
        assert_eq!(changed(&life), [c]);
        {
            let _reaping = life.reaping.lock();
            assert!(matches!(
                life.activity(c, Kind::Bot, None, 3_500),
                Ok(Touch::Joined)
            ));
        }
        assert_eq!(changed(&life), [c]);
        assert_eq!(occupied(&life), 1);
        assert_eq!(life.counters.bots.load(Ordering::Relaxed), 1);
        assert_eq!(life.counters.guests.load(Ordering::Relaxed), 0);

        // Restored from a snapshot.
        let d = SessionId::new_v4();
        let saved = Saved {
            id: d,
            kind: Kind::Guest,
            page: None,
            times: (3_500, 3_500, 3_500),
        };
        assert_eq!(life.restore_all(vec![saved], &[], 3_500), 1);
        assert_eq!(changed(&life), [d]);
        assert_eq!(occupied(&life), 2);

        // Refused at `max_sessions`: nothing recorded, nothing counted.
        let e = SessionId::new_v4();
        assert!(matches!(
            life.activity(e, Kind::Guest, None, 3_600),
            Err(PresenceError::Full { max_sessions: 2 })
        ));
        assert!(changed(&life).is_empty());
        assert_eq!(occupied(&life), 2);
    }

    /// An erasure is an explicit leave of each of the user's sessions, for the cluster view
    /// too: each is in the change log and among its explicit leaves (so the flush ends it on
    /// every node), a due one included; other sessions are not.
    #[test]
    fn erasing_a_user_logs_each_session_as_an_explicit_leave() {
        let life = lifecycle(None);
        let (a, b, c) = (
            SessionId::new_v4(),
            SessionId::new_v4(),
            SessionId::new_v4(),
        );
        life.activity(a, Kind::member("alice"), Some("/x"), 0)
            .unwrap();
        life.activity(b, Kind::hidden_member("alice"), None, 900)
            .unwrap();
        life.activity(c, Kind::member("bob"), None, 900).unwrap();
        changed(&life);

        // `a` is due at 1_000 and not yet reaped: it ends (as expired), uncounted.
        assert_eq!(life.erase_user("alice", 1_200), [b]);
        let mut expected = vec![a, b];
        expected.sort();
        let mut logged = changed(&life);
        logged.sort();
        assert_eq!(logged, expected);
        let mut left = life.changes().drain_left();
        left.sort();
        let alice = Some(UserId::from("alice"));
        assert_eq!(
            left,
            expected
                .iter()
                .map(|&id| (id, alice.clone()))
                .collect::<Vec<_>>()
        );
        assert!(matches!(life.user_snapshot("alice"), UserSnapshot::Unknown));
        assert!(matches!(
            life.user_snapshot("bob"),
            UserSnapshot::Online { .. }
        ));
        assert_eq!(occupied(&life), 1);
        assert_eq!(life.page_count("/x"), 0);
    }
}
