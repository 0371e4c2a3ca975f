//! The user table: signed-in users, how many live sessions each has (listed and hidden), and
//! the last-seen time of users who went offline, kept for `remember_users_for`.
//!
//! It owns the distinct-user counters (`members`, `hidden`) and decides `UserOnline` /
//! `UserOffline`, both under its one lock, so a user's events alternate. Lock order: a
//! session's shard lock, then this table's lock, then the event queue's; never the reverse.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::clock::Tick;
use crate::events::{Event, EventQueue};
use crate::tracker::Counters;
use crate::{SessionId, UserId};

type Hasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct UserRecord {
    listed: u32,
    hidden: u32,
    /// Live sessions, for `Presence::user`. Small: one per open browser of this user.
    sessions: Vec<SessionId>,
    /// While offline: when the user was last seen (the last session's last touch).
    last_seen: Tick,
    /// While offline: when they went offline (the forget queue's check).
    offline_since: Tick,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Standing {
    Offline,
    Listed,
    Hidden,
}

impl UserRecord {
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
    /// (offline since, user), in about that order: forgetting costs what falls due.
    forget: VecDeque<(Tick, UserId)>,
}

#[derive(Debug, Default)]
pub(crate) struct UserTable {
    users: Mutex<Users>,
}

impl UserTable {
    /// Applies a session leaving `left`'s user and/or joining `joined`'s user as one change
    /// (a kind change is both), updates the distinct-user counters and pushes the user
    /// events. Returns the change in people online (distinct users). Call under the session's
    /// shard lock.
    pub(crate) fn apply(
        &self,
        left: Option<(UserSession<'_>, Tick)>,
        joined: Option<UserSession<'_>>,
        now: Tick,
        counters: &Counters,
        events: Option<&EventQueue>,
    ) -> isize {
        if left.is_none() && joined.is_none() {
            return 0; // guests and bots: no user, and no lock
        }
        let mut users = self.users.lock();
        let mut people = 0;
        // Both sides first change their records, then standings are compared, so that a
        // session moving between listed and hidden of one user is one step, not two.
        let before_left = left.map(|(s, _)| standing(&users, s.user));
        let before_joined = joined.map(|s| standing(&users, s.user));
        if let Some((s, last_seen)) = left {
            if let Some(rec) = users.map.get_mut(s.user) {
                if s.hidden {
                    rec.hidden -= 1;
                } else {
                    rec.listed -= 1;
                }
                rec.sessions.retain(|&id| id != s.session);
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
                .or_insert_with(|| UserRecord {
                    listed: 0,
                    hidden: 0,
                    sessions: Vec::new(),
                    last_seen: now,
                    offline_since: now,
                });
            if s.hidden {
                rec.hidden += 1;
            } else {
                rec.listed += 1;
            }
            rec.sessions.push(s.session);
        }
        let mut went_offline = None;
        let mut came_online = None;
        if let (Some((s, _)), Some(before)) = (left, before_left) {
            let after = standing(&users, s.user);
            people += transition(before, after, counters);
            if before != Standing::Offline && after == Standing::Offline {
                went_offline = Some(s.user);
            }
        }
        if let (Some(s), Some(before)) = (joined, before_joined) {
            // The same user on both sides was handled above as one transition.
            if left.is_none_or(|(l, _)| l.user != s.user) {
                let after = standing(&users, s.user);
                people += transition(before, after, counters);
                if before == Standing::Offline && after != Standing::Offline {
                    came_online = Some(s.user);
                }
            }
        }
        if let Some(user) = went_offline {
            let since = users.map.get(user).map_or(now, |rec| rec.offline_since);
            users.forget.push_back((since, user.clone()));
        }
        if let Some(events) = events {
            if let Some(user) = went_offline {
                events.push(Event::UserOffline { user: user.clone() });
            }
            if let Some(user) = came_online {
                events.push(Event::UserOnline { user: user.clone() });
            }
        }
        people
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
                    sessions: rec.sessions.clone(),
                    hidden: standing == Standing::Hidden,
                },
            },
        }
    }

    /// Forgets users offline since `remember` before `now`; costs what falls due.
    pub(crate) fn forget_due(&self, now: Tick, remember: Tick) {
        let mut users = self.users.lock();
        while let Some((since, _)) = users.forget.front() {
            if since.saturating_add(remember) > now {
                break;
            }
            let Some((_, user)) = users.forget.pop_front() else {
                break;
            };
            let forget = users.map.get(&user).is_some_and(|rec| {
                rec.standing() == Standing::Offline
                    && rec.offline_since.saturating_add(remember) <= now
            });
            if forget {
                users.map.remove(&user);
            }
        }
    }
}

fn standing(users: &Users, user: &UserId) -> Standing {
    users
        .map
        .get(user)
        .map_or(Standing::Offline, UserRecord::standing)
}

/// Moves the distinct-user counters from `before` to `after`; returns the change in people.
fn transition(before: Standing, after: Standing, counters: &Counters) -> isize {
    if before == after {
        return 0;
    }
    // Increment before decrement: a concurrent reader may see one person twice for an
    // instant, never a counter below zero.
    match after {
        Standing::Listed => counters.members.fetch_add(1, Ordering::Relaxed),
        Standing::Hidden => counters.hidden.fetch_add(1, Ordering::Relaxed),
        Standing::Offline => 0,
    };
    match before {
        Standing::Listed => counters.members.fetch_sub(1, Ordering::Relaxed),
        Standing::Hidden => counters.hidden.fetch_sub(1, Ordering::Relaxed),
        Standing::Offline => 0,
    };
    isize::from(after != Standing::Offline) - isize::from(before != Standing::Offline)
}
