//! The user table: signed-in users, how many live sessions each has (listed and hidden), the
//! listed users in name order, and the last-seen time of users who went offline.
//!
//! It decides `UserOnline` / `UserOffline` under its one lock, so a user's events alternate,
//! and returns the change in distinct users ([`UserDelta`]) for the caller to apply to the
//! counters. Every operation is O(1) (plus O(log users) for the ordered sets), whatever the
//! number of sessions a user has. Offline users are remembered for `remember_users_for`, at
//! most `max_remembered_users` of them (the oldest forgotten first), one entry a user.
//!
//! Lock order: a session's shard lock, then this table's lock, then the event queue's; never
//! the reverse.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use parking_lot::Mutex;

use crate::clock::Tick;
use crate::core::counters::UserDelta;
use crate::events::{Event, EventQueue};
use crate::kind::ByName;
use crate::{SessionId, UserId};

type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct UserRecord {
    listed: u32,
    hidden: u32,
    /// Live sessions, for `Presence::user`: a set, so a leave is O(1) however many there are.
    sessions: HashSet<SessionId, Hasher>,
    /// While offline: when the user was last seen (the last session's last touch).
    last_seen: Tick,
    /// When they went offline; while online, the latest end of one of their sessions.
    offline_since: Tick,
    /// While offline: this user's key in [`Users::offline`].
    offline_key: Option<(Tick, u64)>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Standing {
    Offline,
    Listed,
    Hidden,
}

impl UserRecord {
    /// A user with no session yet, last seen at `last_seen`, offline since `since`.
    fn new(last_seen: Tick, since: Tick) -> Self {
        UserRecord {
            listed: 0,
            hidden: 0,
            sessions: HashSet::default(),
            last_seen,
            offline_since: since,
            offline_key: None,
        }
    }

    fn standing(&self) -> Standing {
        if self.listed > 0 {
            Standing::Listed
        } else if self.hidden > 0 {
            Standing::Hidden
        } else {
            Standing::Offline
        }
    }
}

/// One side of a change: a session of `user` (hidden or listed) joins or leaves.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserSession<'a> {
    pub(crate) user: &'a UserId,
    pub(crate) hidden: bool,
    pub(crate) session: SessionId,
}

/// What becomes of a user whose last session ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum WhenOffline {
    /// Remembered for last-seen (`remember_users_for`, `max_remembered_users`).
    Remember,
    /// Forgotten at once: the user is being erased. No other user's record makes room.
    Forget,
}

/// What `Presence::user` needs from the table.
#[derive(Debug)]
pub(crate) enum UserSnapshot {
    Unknown,
    Offline {
        last_seen: Tick,
        since: Tick,
    },
    Online {
        sessions: Vec<SessionId>,
        hidden: bool,
    },
}

#[derive(Debug, Default)]
struct Users {
    map: HashMap<UserId, UserRecord, Hasher>,
    /// Offline users by (offline since, sequence): one entry a user, oldest first, so that
    /// forgetting costs what falls due and the bound drops the oldest.
    offline: BTreeMap<(Tick, u64), UserId>,
    sequence: u64,
    /// Listed users online, in name order: `online_members` costs what it returns.
    listed: BTreeSet<ByName>,
}

#[derive(Debug)]
pub(crate) struct UserTable {
    users: Mutex<Users>,
    max_offline: usize,
}

impl UserTable {
    /// A table that remembers at most `max_offline` offline users.
    pub(crate) fn new(max_offline: usize) -> Self {
        UserTable {
            users: Mutex::new(Users::default()),
            max_offline,
        }
    }

    /// How many offline users it remembers at most.
    pub(crate) fn max_offline(&self) -> usize {
        self.max_offline
    }

    /// Applies a session leaving `left`'s user and/or joining `joined`'s user as one change
    /// (a kind change is both), pushes the user events, and returns the change in distinct
    /// users. Call under the session's shard lock and apply the result there too.
    pub(crate) fn apply(
        &self,
        left: Option<(UserSession<'_>, Tick)>,
        joined: Option<UserSession<'_>>,
        now: Tick,
        events: Option<&EventQueue>,
    ) -> UserDelta {
        self.apply_as(left, joined, now, events, WhenOffline::Remember)
    }

    /// [`apply`](Self::apply), with what becomes of a user who goes offline by it.
    pub(crate) fn apply_as(
        &self,
        left: Option<(UserSession<'_>, Tick)>,
        joined: Option<UserSession<'_>>,
        now: Tick,
        events: Option<&EventQueue>,
        offline: WhenOffline,
    ) -> UserDelta {
        let mut delta = UserDelta::default();
        if left.is_none() && joined.is_none() {
            return delta; // guests and bots: no user, and no lock
        }
        let mut guard = self.users.lock();
        let users = &mut *guard;
        // Both sides first change their records, then standings are compared, so that a
        // session moving between listed and hidden of one user is one step, not two.
        let before_left = left.map(|(s, _)| users.standing(s.user));
        let before_joined = joined.map(|s| users.standing(s.user));
        if let Some((s, last_seen)) = left {
            if let Some(rec) = users.map.get_mut(s.user) {
                if s.hidden {
                    rec.hidden -= 1;
                } else {
                    rec.listed -= 1;
                }
                rec.sessions.remove(&s.session);
                rec.last_seen = rec.last_seen.max(last_seen);
                // While online this collects the latest end of a session: sessions due
                // together may be evicted in any order, and the user went offline when the
                // last of them ended, not when the last one evicted ended.
                rec.offline_since = rec.offline_since.max(now);
            }
        }
        if let Some(s) = joined {
            let rec = users
                .map
                .entry(s.user.clone())
                .or_insert_with(|| UserRecord::new(now, now));
            if s.hidden {
                rec.hidden += 1;
            } else {
                rec.listed += 1;
            }
            rec.sessions.insert(s.session);
        }
        let mut went_offline = None;
        let mut came_online = None;
        if let (Some((s, _)), Some(before)) = (left, before_left) {
            let after = users.standing(s.user);
            users.moved(s.user, before, after, &mut delta);
            if before != Standing::Offline && after == Standing::Offline {
                went_offline = Some(s.user);
            }
        }
        if let (Some(s), Some(before)) = (joined, before_joined) {
            // The same user on both sides was handled above as one transition.
            if left.is_none_or(|(l, _)| l.user != s.user) {
                let after = users.standing(s.user);
                users.moved(s.user, before, after, &mut delta);
                if before == Standing::Offline && after != Standing::Offline {
                    came_online = Some(s.user);
                }
            }
        }
        if let Some(user) = went_offline {
            match offline {
                WhenOffline::Remember => users.remember(user, self.max_offline),
                WhenOffline::Forget => {
                    users.map.remove(user);
                }
            }
        }
        if let Some(events) = events {
            if let Some(user) = went_offline {
                events.push(Event::UserOffline { user: user.clone() });
            }
            if let Some(user) = came_online {
                events.push(Event::UserOnline { user: user.clone() });
            }
        }
        delta
    }

    pub(crate) fn snapshot(&self, user: &str) -> UserSnapshot {
        let users = self.users.lock();
        match users.map.get(user) {
            None => UserSnapshot::Unknown,
            Some(rec) => match rec.standing() {
                Standing::Offline => UserSnapshot::Offline {
                    last_seen: rec.last_seen,
                    since: rec.offline_since,
                },
                standing => UserSnapshot::Online {
                    sessions: rec.sessions.iter().copied().collect(),
                    hidden: standing == Standing::Hidden,
                },
            },
        }
    }

    /// Forgets `user` if they are offline: their last-seen record and their place in the
    /// offline queue. Returns whether a record was dropped. A user online (a session started
    /// meanwhile) keeps their record: it is theirs again.
    pub(crate) fn forget(&self, user: &str) -> bool {
        let mut guard = self.users.lock();
        let users = &mut *guard;
        let Some(rec) = users.map.get(user) else {
            return false;
        };
        if rec.standing() != Standing::Offline {
            return false;
        }
        if let Some(key) = rec.offline_key {
            users.offline.remove(&key);
        }
        users.map.remove(user);
        true
    }

    /// The first `limit` listed users online, by name: O(limit).
    pub(crate) fn listed(&self, limit: usize) -> Vec<UserId> {
        let users = self.users.lock();
        users
            .listed
            .iter()
            .take(limit)
            .map(|n| n.user().clone())
            .collect()
    }

    /// Forgets up to `limit` users offline since `remember` before `now`, oldest first;
    /// returns whether more are due. Bounded, because request-side settling calls it: a
    /// flood of names falling due together is forgotten a batch per call, and the reaper
    /// does the rest. The map gives its memory back in [`tidy`](Self::tidy), off the
    /// request path.
    pub(crate) fn forget_due(&self, now: Tick, remember: Tick, limit: usize) -> bool {
        let mut users = self.users.lock();
        for _ in 0..limit {
            let Some(entry) = users.offline.first_entry() else {
                return false;
            };
            if entry.key().0.saturating_add(remember) > now {
                return false;
            }
            let user = entry.remove();
            users.map.remove(&user);
        }
        users
            .offline
            .first_key_value()
            .is_some_and(|(key, _)| key.0.saturating_add(remember) <= now)
    }

    /// Gives memory back after a flood of names was forgotten: a rehash of what is left,
    /// O(users). The reaper calls it once a pass, never a request.
    pub(crate) fn tidy(&self) {
        self.users.lock().shrink();
    }

    /// Counts sessions restored from a snapshot in at once, under one hold of the lock:
    /// (user, hidden, session, last seen) each. Returns the change in distinct users. No
    /// events: a restart is not a user coming online.
    pub(crate) fn restore_sessions(
        &self,
        sessions: &[(UserId, bool, SessionId, Tick)],
    ) -> UserDelta {
        let mut delta = UserDelta::default();
        if sessions.is_empty() {
            return delta;
        }
        let mut guard = self.users.lock();
        let users = &mut *guard;
        let mut before: HashMap<UserId, Standing, Hasher> = HashMap::default();
        for (user, hidden, session, seen) in sessions {
            if !before.contains_key(user) {
                before.insert(user.clone(), users.standing(user));
            }
            let rec = users
                .map
                .entry(user.clone())
                .or_insert_with(|| UserRecord::new(*seen, *seen));
            if *hidden {
                rec.hidden += 1;
            } else {
                rec.listed += 1;
            }
            rec.sessions.insert(*session);
        }
        for (user, was) in before {
            let now = users.standing(&user);
            users.moved(&user, was, now, &mut delta);
        }
        delta
    }

    /// The offline users remembered, oldest first: (user, last seen, offline since). For the
    /// snapshot.
    pub(crate) fn export_offline(&self) -> Vec<(UserId, Tick, Tick)> {
        let users = self.users.lock();
        users
            .offline
            .values()
            .filter_map(|user| {
                let rec = users.map.get(user)?;
                Some((user.clone(), rec.last_seen, rec.offline_since))
            })
            .collect()
    }

    /// Remembers `user` as offline since `since`, last seen at `last_seen` (from a snapshot),
    /// unless the user is online; a user already remembered keeps the later times.
    pub(crate) fn remember_offline(&self, user: &UserId, last_seen: Tick, since: Tick) {
        let mut guard = self.users.lock();
        let users = &mut *guard;
        if let Some(rec) = users.map.get_mut(user) {
            if rec.standing() != Standing::Offline {
                return;
            }
            rec.last_seen = rec.last_seen.max(last_seen);
            if since <= rec.offline_since {
                return;
            }
            rec.offline_since = since;
            if let Some(key) = rec.offline_key.take() {
                users.offline.remove(&key);
            }
        } else {
            users
                .map
                .insert(user.clone(), UserRecord::new(last_seen, since));
        }
        users.remember(user, self.max_offline);
    }

    /// The users known, online or remembered, for which `matches` holds: one pass over all
    /// of them under the table's lock (for a cluster's erasure, which knows only a keyed
    /// hash of the name).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn find(&self, mut matches: impl FnMut(&str) -> bool) -> Vec<UserId> {
        let users = self.users.lock();
        users
            .map
            .keys()
            .filter(|u| matches(u.as_str()))
            .cloned()
            .collect()
    }

    /// Offline users remembered now (for tests and memory figures).
    #[cfg(test)]
    pub(crate) fn remembered(&self) -> usize {
        self.users.lock().offline.len()
    }
}

impl Users {
    fn standing(&self, user: &UserId) -> Standing {
        self.map
            .get(user)
            .map_or(Standing::Offline, UserRecord::standing)
    }

    /// A user's standing changed from `before` to `after`: keeps the listed set and the
    /// offline queue in step, and adds the change to `delta`.
    fn moved(&mut self, user: &UserId, before: Standing, after: Standing, delta: &mut UserDelta) {
        if before == after {
            return;
        }
        match before {
            Standing::Listed => {
                delta.members -= 1;
                self.listed.remove(&ByName::new(user.clone()));
            }
            Standing::Hidden => delta.hidden -= 1,
            Standing::Offline => {
                // Back online: no longer one of the remembered offline users.
                if let Some(key) = self.map.get_mut(user).and_then(|r| r.offline_key.take()) {
                    self.offline.remove(&key);
                }
            }
        }
        match after {
            Standing::Listed => {
                delta.members += 1;
                self.listed.insert(ByName::new(user.clone()));
            }
            Standing::Hidden => delta.hidden += 1,
            Standing::Offline => {}
        }
    }

    /// `user` just went offline: one entry in the offline queue (its old one, if any, was
    /// taken out when it came online), then the oldest beyond `max` are forgotten.
    fn remember(&mut self, user: &UserId, max: usize) {
        let key = (
            self.map.get(user).map_or(0, |rec| rec.offline_since),
            self.sequence,
        );
        self.sequence += 1;
        if let Some(rec) = self.map.get_mut(user) {
            rec.offline_key = Some(key);
            // A user who had 100k tabs should not keep their table once gone.
            rec.sessions = HashSet::default();
        }
        self.offline.insert(key, user.clone());
        // One in, at most one out (the bound is only passed by one at a time; a restore
        // remembers one user a call too): O(log users), never a rehash on a write path
        // (the reaper tidies).
        while self.offline.len() > max {
            if let Some((_, oldest)) = self.offline.pop_first() {
                self.map.remove(&oldest);
            }
        }
    }

    /// Gives memory back after a flood of names is forgotten.
    fn shrink(&mut self) {
        let len = self.map.len();
        if self.map.capacity() > 4 * len + 64 {
            self.map.shrink_to(2 * len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(user: &UserId, session: SessionId) -> UserSession<'_> {
        UserSession {
            user,
            hidden: false,
            session,
        }
    }

    #[test]
    fn forgetting_is_bounded_per_call_and_reports_what_is_left() {
        let table = UserTable::new(10_000);
        for i in 0..1000 {
            let user = UserId::from(format!("u{i}"));
            let id = SessionId::new_v4();
            table.apply(None, Some(side(&user, id)), 0, None);
            table.apply(Some((side(&user, id), 0)), None, 0, None);
        }
        assert!(!table.forget_due(99, 100, 300), "nothing due yet");
        assert_eq!(table.remembered(), 1000);
        assert!(table.forget_due(100, 100, 300));
        assert_eq!(table.remembered(), 700);
        assert!(table.forget_due(100, 100, 300));
        assert!(table.forget_due(100, 100, 300));
        assert!(!table.forget_due(100, 100, 300));
        assert_eq!(table.remembered(), 0);
        table.tidy();
    }

    #[test]
    fn a_user_flipping_online_and_offline_is_remembered_once() {
        let table = UserTable::new(10);
        let alice = UserId::from("alice");
        let id = SessionId::new_v4();
        for t in 0..1000 {
            table.apply(None, Some(side(&alice, id)), t, None);
            table.apply(Some((side(&alice, id), t)), None, t, None);
        }
        assert_eq!(table.remembered(), 1);
    }

    #[test]
    fn the_oldest_offline_users_are_forgotten_beyond_the_bound() {
        let table = UserTable::new(3);
        let names: Vec<UserId> = (0..5).map(|i| UserId::from(format!("u{i}"))).collect();
        for (t, user) in names.iter().enumerate() {
            let id = SessionId::new_v4();
            let t = t as Tick;
            table.apply(None, Some(side(user, id)), t, None);
            table.apply(Some((side(user, id), t)), None, t, None);
        }
        assert_eq!(table.remembered(), 3);
        assert!(matches!(table.snapshot("u0"), UserSnapshot::Unknown));
        assert!(matches!(table.snapshot("u1"), UserSnapshot::Unknown));
        assert!(matches!(table.snapshot("u4"), UserSnapshot::Offline { .. }));
    }

    #[test]
    fn listed_users_come_in_name_order_whatever_the_case() {
        let table = UserTable::new(10);
        for name in ["bob", "Alice", "carol", "alice"] {
            let user = UserId::from(name);
            table.apply(None, Some(side(&user, SessionId::new_v4())), 0, None);
        }
        let names: Vec<String> = table.listed(10).iter().map(|u| u.to_string()).collect();
        assert_eq!(names, ["Alice", "alice", "bob", "carol"]);
        assert_eq!(table.listed(2).len(), 2);
    }
}
