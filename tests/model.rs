//! A model-based test: a plain `HashMap` model of the semantics in the crate docs, on the
//! same manual time, driven by random operations and compared after each one.
//!
//! The model knows nothing of reapers or expiry indexes: a session is live while
//! `now < min(last_seen + idle_timeout, last_active + heartbeat_limit)`, idle from
//! `last_active + idle_after`, and every change (expiries included, at their deadline)
//! happens at a logical instant. Reads must show exactly that state.
//!
//! Holds too: a held session has no deadline and reads as seen now; its last hold dropped,
//! it leaves `hold_grace` later (`Closed`) unless held, touched or heartbeated again; a hold
//! of a session that ended (an explicit leave) does nothing, whatever came after.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use common::drain;
use presence_tracker::{
    Event, Hold, Kind, LeaveReason, ManualClock, Presence, PresenceError, Reaper, SessionId,
    SessionState, Touch, UserStatus,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

const IDLE_TIMEOUT: u64 = 10_000;
const IDLE_AFTER: u64 = 4_000;
const HEARTBEAT_LIMIT: u64 = 25_000;
const HOLD_GRACE: u64 = 3_000;
const POOL: usize = 6;
const PAGES: [&str; 3] = ["/", "/forum", "/forum/42"];
const USERS: [&str; 3] = ["a", "b", "c"];
const DAY: u64 = 86_400_000;

fn kind(k: usize) -> Kind {
    match k {
        0 => Kind::Guest,
        1 => Kind::Bot,
        2 => Kind::member("a"),
        3 => Kind::member("b"),
        4 => Kind::member("c"),
        5 => Kind::hidden_member("a"),
        _ => Kind::hidden_member("b"),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Touch(usize, usize),
    Visit(usize, usize, usize),
    Heartbeat(usize),
    Leave(usize),
    Advance(u64),
    /// To session's deadline (or 1 ms before it), if it is live.
    ToDeadline(usize, bool),
    /// To the time session goes idle (or 1 ms before), if it is live and active.
    ToIdle(usize, bool),
    Reap,
    /// `erase_user` of one of `USERS`.
    Erase(usize),
    /// Read everything (in the rare-reads run; the other run reads after every op).
    Check,
    /// A new hold of session `i` as kind `k` on page `p`.
    Hold(usize, usize, usize),
    /// Drops one of the holds taken on session `i` (the `n`th, modulo; whatever session of
    /// that id it held).
    DropHold(usize, usize),
    /// Activity through one of the holds of `i` (the `n`th, modulo), moving it to page `p`
    /// if given.
    HoldActivity(usize, usize, Option<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0..POOL;
    prop_oneof![
        5 => (id.clone(), 0..7usize).prop_map(|(i, k)| Op::Touch(i, k)),
        3 => (id.clone(), 0..7usize, 0..PAGES.len()).prop_map(|(i, k, p)| Op::Visit(i, k, p)),
        4 => id.clone().prop_map(Op::Heartbeat),
        2 => id.clone().prop_map(Op::Leave),
        4 => prop::sample::select(vec![1, 500, 999, 1_000, 2_000, 3_999, 4_000, 6_000, 9_999, 10_000, 15_000, 25_000])
            .prop_map(Op::Advance),
        2 => (id.clone(), any::<bool>()).prop_map(|(i, m)| Op::ToDeadline(i, m)),
        1 => (id, any::<bool>()).prop_map(|(i, m)| Op::ToIdle(i, m)),
        1 => Just(Op::Reap),
        1 => (0..USERS.len()).prop_map(Op::Erase),
        2 => Just(Op::Check),
        3 => (0..POOL, 0..7usize, 0..PAGES.len()).prop_map(|(i, k, p)| Op::Hold(i, k, p)),
        3 => (0..POOL, 0..3usize).prop_map(|(i, n)| Op::DropHold(i, n)),
        1 => (0..POOL, 0..3usize, prop::option::of(0..PAGES.len()))
            .prop_map(|(i, n, p)| Op::HoldActivity(i, n, p)),
    ]
}

/// A session's hold state in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MHold {
    Free,
    Held,
    /// Its last hold dropped at `last_seen`.
    Released,
}

#[derive(Clone, Debug)]
struct MSession {
    kind: Kind,
    page: Option<usize>,
    first_seen: u64,
    last_seen: u64,
    last_active: u64,
    hold: MHold,
    /// Which session of its id this is: holds taken on it carry the same number.
    epoch: u64,
}

impl MSession {
    fn deadline(&self) -> u64 {
        match self.hold {
            MHold::Free => (self.last_seen + IDLE_TIMEOUT).min(self.last_active + HEARTBEAT_LIMIT),
            MHold::Held => u64::MAX,
            MHold::Released => self.last_seen + HOLD_GRACE,
        }
    }
    /// Last seen as reads show it: now while held.
    fn seen(&self, now: u64) -> u64 {
        if self.hold == MHold::Held {
            now
        } else {
            self.last_seen
        }
    }
    fn reason(&self) -> LeaveReason {
        if self.hold == MHold::Released {
            return LeaveReason::Closed;
        }
        if self.last_active + HEARTBEAT_LIMIT < self.last_seen + IDLE_TIMEOUT {
            LeaveReason::HeartbeatLimit
        } else {
            LeaveReason::Expired
        }
    }
    fn idle(&self, now: u64) -> bool {
        self.last_active + IDLE_AFTER <= now
    }
}

#[derive(Clone, Debug)]
struct MUser {
    /// Latest last-seen of any of the user's sessions that ended.
    last_seen: u64,
    /// When the user went offline, while offline.
    offline_since: Option<u64>,
}

struct Model {
    now: u64,
    remember: u64,
    ids: Vec<SessionId>,
    sessions: BTreeMap<usize, MSession>,
    users: HashMap<String, MUser>,
    peak: usize,
    peak_at: u64,
    events: Vec<Event>,
    /// Per session slot, the epochs of the holds taken on it and not dropped, in order.
    holds: Vec<Vec<u64>>,
    last_epoch: u64,
}

impl Model {
    fn new(remember: u64) -> Self {
        Model {
            now: 0,
            remember,
            ids: (0..POOL).map(|_| SessionId::new_v4()).collect(),
            sessions: BTreeMap::new(),
            users: HashMap::new(),
            peak: 0,
            peak_at: 0,
            events: Vec::new(),
            holds: vec![Vec::new(); POOL],
            last_epoch: 0,
        }
    }

    /// Whether hold `n` of slot `i` holds its live session.
    fn hold_is_current(&self, i: usize, n: usize) -> bool {
        match (self.holds[i].get(n), self.sessions.get(&i)) {
            (Some(&epoch), Some(s)) => s.epoch == epoch && s.hold == MHold::Held,
            _ => false,
        }
    }

    /// A hold of session `i` (activity as `kind` on `page` first).
    fn hold(&mut self, i: usize, kind: Kind, page: usize) {
        self.activity(i, kind, Some(page));
        let s = self.sessions.get_mut(&i).unwrap();
        s.hold = MHold::Held;
        self.holds[i].push(s.epoch);
    }

    /// Drops hold `n` of slot `i`; the last hold of a session releases it.
    fn drop_hold(&mut self, i: usize, n: usize) {
        let epoch = self.holds[i].remove(n);
        let now = self.now;
        let remaining = self.holds[i].iter().filter(|&&e| e == epoch).count();
        if let Some(s) = self.sessions.get_mut(&i) {
            if s.epoch == epoch && s.hold == MHold::Held && remaining == 0 {
                s.hold = MHold::Released;
                s.last_seen = now;
            }
        }
    }

    fn user_sessions<'a>(&'a self, user: &'a str) -> impl Iterator<Item = &'a MSession> + 'a {
        self.sessions
            .values()
            .filter(move |s| s.kind.user().is_some_and(|u| u.as_str() == user))
    }

    fn people(&self) -> (usize, usize, usize) {
        let mut listed: Vec<&str> = Vec::new();
        let mut signed: Vec<&str> = Vec::new();
        let mut guests = 0;
        for s in self.sessions.values() {
            match &s.kind {
                Kind::Guest => guests += 1,
                Kind::Member(u) => {
                    listed.push(u.as_str());
                    signed.push(u.as_str());
                }
                Kind::HiddenMember(u) => signed.push(u.as_str()),
                _ => {}
            }
        }
        listed.sort_unstable();
        listed.dedup();
        signed.sort_unstable();
        signed.dedup();
        (listed.len(), signed.len() - listed.len(), guests)
    }

    fn note_peak(&mut self) {
        let (m, h, g) = self.people();
        if m + h + g > self.peak {
            self.peak = m + h + g;
            self.peak_at = self.now;
        }
    }

    /// Ends session `i` at time `at` (it is already out of `sessions`).
    fn ended(&mut self, i: usize, s: &MSession, reason: LeaveReason, at: u64) {
        self.events.push(Event::Left {
            session: self.ids[i],
            kind: s.kind.clone(),
            reason,
        });
        if let Some(user) = s.kind.user() {
            self.user_left(user.as_str(), s.last_seen, at);
        }
    }

    fn user_left(&mut self, user: &str, last_seen: u64, at: u64) {
        let rec = self.users.entry(user.to_string()).or_insert(MUser {
            last_seen,
            offline_since: None,
        });
        rec.last_seen = rec.last_seen.max(last_seen);
        if self.user_sessions(user).next().is_none() {
            self.users.get_mut(user).unwrap().offline_since = Some(at);
            self.events.push(Event::UserOffline { user: user.into() });
        }
    }

    /// Call after adding a session of `user`: announces the user if it was its first.
    fn user_joined(&mut self, user: &str) {
        if self.user_sessions(user).count() == 1 {
            self.users
                .entry(user.to_string())
                .or_insert(MUser {
                    last_seen: self.now,
                    offline_since: None,
                })
                .offline_since = None;
            self.events.push(Event::UserOnline { user: user.into() });
        }
    }

    /// Every session due at `now` ends, in deadline order.
    fn expire(&mut self) {
        let mut due: Vec<(u64, usize)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline() <= self.now)
            .map(|(&i, s)| (s.deadline(), i))
            .collect();
        due.sort_unstable();
        for (at, i) in due {
            let s = self.sessions.remove(&i).unwrap();
            self.ended(i, &s, s.reason(), at);
        }
    }

    /// A heartbeat of session `i`: a released one goes on as an ordinary session (which may
    /// be due at once); whether it is live.
    fn heartbeat(&mut self, i: usize) -> bool {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(&i) else {
            return false;
        };
        let released = s.hold == MHold::Released;
        if released {
            s.hold = MHold::Free;
        }
        s.last_seen = now;
        !released || s.deadline() > now
    }

    fn activity(&mut self, i: usize, kind: Kind, page: Option<usize>) -> Touch {
        let now = self.now;
        let id = self.ids[i];
        if let Some(s) = self.sessions.get_mut(&i) {
            s.last_seen = now;
            s.last_active = now;
            if s.hold == MHold::Released {
                s.hold = MHold::Free;
            }
            if page.is_some() {
                s.page = page;
            }
            let from = std::mem::replace(&mut s.kind, kind.clone());
            if from != kind {
                self.events.push(Event::KindChanged {
                    session: id,
                    from: from.clone(),
                    to: kind.clone(),
                });
                let (old, new) = (from.user().cloned(), kind.user().cloned());
                if old != new {
                    if let Some(old) = old {
                        self.user_left(old.as_str(), now, now);
                    }
                    if let Some(new) = new {
                        self.user_joined(new.as_str());
                    }
                }
            }
            self.note_peak();
            return Touch::Refreshed;
        }
        self.last_epoch += 1;
        let s = MSession {
            kind: kind.clone(),
            page,
            first_seen: now,
            last_seen: now,
            last_active: now,
            hold: MHold::Free,
            epoch: self.last_epoch,
        };
        self.sessions.insert(i, s);
        self.events.push(Event::Joined {
            session: id,
            kind: kind.clone(),
        });
        if let Some(user) = kind.user() {
            self.user_joined(user.as_str());
        }
        self.note_peak();
        Touch::Joined
    }

    fn user(&mut self, user: &str) -> UserStatus2 {
        let live: Vec<&MSession> = self.user_sessions(user).collect();
        if !live.is_empty() {
            return UserStatus2::Online {
                sessions: live.len(),
                last_seen: live.iter().map(|s| s.seen(self.now)).max().unwrap(),
                idle: live.iter().all(|s| s.idle(self.now)),
                hidden: live.iter().all(|s| s.kind.is_hidden()),
            };
        }
        match self.users.get(user) {
            Some(MUser {
                last_seen,
                offline_since: Some(since),
            }) if since + self.remember > self.now => UserStatus2::Offline {
                last_seen: *last_seen,
            },
            Some(_) => {
                self.users.remove(user);
                UserStatus2::Unknown
            }
            None => UserStatus2::Unknown,
        }
    }
}

/// `UserStatus` with times as milliseconds since the tracker's build.
#[derive(Debug, PartialEq)]
enum UserStatus2 {
    Online {
        sessions: usize,
        last_seen: u64,
        idle: bool,
        hidden: bool,
    },
    Offline {
        last_seen: u64,
    },
    Unknown,
}

struct Run {
    presence: Presence,
    clock: ManualClock,
    rx: tokio::sync::broadcast::Receiver<Event>,
    base: SystemTime,
    model: Model,
    /// The real holds, per session slot, as `model.holds` has their epochs.
    holds: Vec<Vec<Hold>>,
}

impl Run {
    fn new(remember: u64) -> Self {
        let clock = ManualClock::new();
        let presence = Presence::builder()
            .clock(clock.clone())
            .reaper(Reaper::Manual)
            .idle_timeout(Duration::from_millis(IDLE_TIMEOUT))
            .idle_after(Duration::from_millis(IDLE_AFTER))
            .heartbeat_limit(Duration::from_millis(HEARTBEAT_LIMIT))
            .remember_users_for(Duration::from_millis(remember))
            .hold_grace(Duration::from_millis(HOLD_GRACE))
            .event_capacity(100_000)
            .build();
        let rx = presence.subscribe();
        let base = presence.counts().peak.at;
        Run {
            presence,
            clock,
            rx,
            base,
            model: Model::new(remember),
            holds: (0..POOL).map(|_| Vec::new()).collect(),
        }
    }

    fn ms(&self, t: SystemTime) -> u64 {
        u64::try_from(
            t.duration_since(self.base)
                .expect("a time before the build")
                .as_millis(),
        )
        .unwrap()
    }

    fn advance(&mut self, by: u64) {
        self.clock.advance(Duration::from_millis(by));
        self.model.now += by;
    }

    /// Applies `op` to both; checks the results the op returns. Returns whether its events
    /// may come in any order (it moved time, or erased a user).
    fn apply(&mut self, op: &Op, check_reap: bool) -> Result<bool, TestCaseError> {
        let m = &mut self.model;
        m.expire();
        let id = |i: usize| m.ids[i];
        match *op {
            Op::Touch(i, k) => {
                let got = self.presence.touch(id(i), kind(k)).unwrap();
                prop_assert_eq!(got, self.model.activity(i, kind(k), None), "touch result");
            }
            Op::Visit(i, k, p) => {
                let got = self.presence.visit(id(i), kind(k), PAGES[p]).unwrap();
                prop_assert_eq!(
                    got,
                    self.model.activity(i, kind(k), Some(p)),
                    "visit result"
                );
            }
            Op::Heartbeat(i) => {
                let got = self.presence.heartbeat(id(i));
                prop_assert_eq!(got, m.heartbeat(i), "heartbeat result");
                // Continued past its heartbeat limit: due now, ended by the next read.
                m.expire();
            }
            Op::Leave(i) => {
                let got = self.presence.leave(id(i)).map(|s| (s.kind, s.page));
                let expected = m.sessions.remove(&i).map(|mut s| {
                    let now = m.now;
                    s.last_seen = s.seen(now);
                    m.ended(i, &s, LeaveReason::Left, now);
                    (s.kind, s.page.map(|p| PAGES[p].to_string()))
                });
                prop_assert_eq!(got, expected, "leave result");
            }
            Op::Hold(i, k, p) => {
                let hold = self.presence.hold(id(i), kind(k), PAGES[p]).unwrap();
                prop_assert_eq!(hold.session(), id(i));
                self.holds[i].push(hold);
                m.hold(i, kind(k), p);
            }
            Op::DropHold(i, n) => {
                if self.holds[i].is_empty() {
                    return Ok(false);
                }
                let n = n % self.holds[i].len();
                drop(self.holds[i].remove(n));
                m.drop_hold(i, n);
            }
            Op::HoldActivity(i, n, page) => {
                if self.holds[i].is_empty() {
                    return Ok(false);
                }
                let n = n % self.holds[i].len();
                let hold = &self.holds[i][n];
                let current = m.hold_is_current(i, n);
                match page {
                    None => prop_assert_eq!(hold.activity(), current, "hold activity"),
                    Some(p) => {
                        let got = hold.visit(PAGES[p]);
                        let expected = if current {
                            Ok(())
                        } else {
                            Err(PresenceError::HoldEnded)
                        };
                        prop_assert_eq!(got, expected, "hold visit");
                    }
                }
                if current {
                    let k = m.sessions[&i].kind.clone();
                    m.activity(i, k, page);
                }
            }
            Op::Advance(by) => {
                self.advance(by);
                self.model.expire();
                return Ok(true);
            }
            Op::ToDeadline(i, minus_one) | Op::ToIdle(i, minus_one) => {
                let target = match (op, m.sessions.get(&i)) {
                    (Op::ToDeadline(..), Some(s)) if s.hold != MHold::Held => Some(s.deadline()),
                    (Op::ToIdle(..), Some(s)) if !s.idle(m.now) => Some(s.last_active + IDLE_AFTER),
                    _ => None,
                };
                let Some(target) = target.map(|t| t - u64::from(minus_one)) else {
                    return Ok(false);
                };
                if target > m.now {
                    self.advance(target - self.model.now);
                    self.model.expire();
                    return Ok(true);
                }
            }
            Op::Reap => {
                let got = self.presence.reap();
                if check_reap {
                    prop_assert_eq!(got, 0, "reap after reads found something due");
                }
            }
            Op::Erase(u) => {
                let user = USERS[u];
                let got = self.presence.erase_user(user).unwrap();
                let theirs: Vec<usize> = m
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.kind.user().is_some_and(|x| x.as_str() == user))
                    .map(|(&i, _)| i)
                    .collect();
                let now = m.now;
                for i in &theirs {
                    let s = m.sessions.remove(i).unwrap();
                    m.ended(*i, &s, LeaveReason::Left, now);
                }
                m.users.remove(user);
                prop_assert_eq!(got, theirs.len(), "erase_user result");
                // The user's sessions end in no particular order, as expiries do.
                return Ok(true);
            }
            Op::Check => {}
        }
        Ok(false)
    }

    /// Compares every read with the model.
    fn check_reads(&mut self) -> Result<(), TestCaseError> {
        let c = self.presence.counts();
        let (members, hidden, guests) = self.model.people();
        let sessions = self.model.sessions.values();
        let bots = sessions.clone().filter(|s| s.kind == Kind::Bot).count();
        let idle = sessions.clone().filter(|s| s.idle(self.model.now)).count();
        let n = self.model.sessions.len();
        prop_assert_eq!(
            (
                c.online, c.members, c.hidden, c.guests, c.bots, c.sessions, c.active, c.idle
            ),
            (
                members + hidden + guests,
                members,
                hidden,
                guests,
                bots,
                n,
                n - idle,
                idle
            ),
            "counts (online, members, hidden, guests, bots, sessions, active, idle)"
        );
        prop_assert_eq!(c.peak.online, self.model.peak, "peak.online");
        prop_assert_eq!(self.ms(c.peak.at), self.model.peak_at, "peak.at");
        prop_assert_eq!(self.presence.sessions().len(), n, "sessions().len()");
        for i in 0..POOL {
            let got = self.presence.session(self.model.ids[i]).map(|s| {
                let times = (
                    self.ms(s.first_seen),
                    self.ms(s.last_seen),
                    self.ms(s.last_active),
                );
                (s.kind, s.page, s.state, times)
            });
            let now = self.model.now;
            let expected = self.model.sessions.get(&i).map(|s| {
                let state = if s.idle(now) {
                    SessionState::Idle
                } else {
                    SessionState::Active
                };
                let page = s.page.map(|p| PAGES[p].to_string());
                (
                    s.kind.clone(),
                    page,
                    state,
                    (s.first_seen, s.seen(now), s.last_active),
                )
            });
            prop_assert_eq!(got, expected, "session({})", i);
        }
        for user in USERS {
            let got = match self.presence.user(user) {
                UserStatus::Online {
                    sessions,
                    last_seen,
                    idle,
                    hidden,
                    ..
                } => UserStatus2::Online {
                    sessions,
                    last_seen: self.ms(last_seen),
                    idle,
                    hidden,
                },
                UserStatus::Offline { last_seen, .. } => UserStatus2::Offline {
                    last_seen: self.ms(last_seen),
                },
                UserStatus::Unknown => UserStatus2::Unknown,
                other => panic!("a status this model does not know: {other:?}"),
            };
            prop_assert_eq!(got, self.model.user(user), "user({})", user);
        }
        let mut top = Vec::new();
        for (p, page) in PAGES.iter().enumerate() {
            let n = self
                .model
                .sessions
                .values()
                .filter(|s| s.page == Some(p))
                .count();
            prop_assert_eq!(self.presence.page_count(page), n, "page_count({})", page);
            if n > 0 {
                top.push((page.to_string(), n));
            }
        }
        top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        prop_assert_eq!(self.presence.top_pages(PAGES.len()), top, "top_pages");
        // Names: listed users (a listed session anywhere), each once, by name.
        let listed = |page: Option<usize>| {
            let mut names: Vec<String> = self
                .model
                .sessions
                .values()
                .filter(|s| page.is_none_or(|p| s.page == Some(p)))
                .filter_map(|s| match &s.kind {
                    Kind::Member(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect();
            names.sort();
            names.dedup();
            names
        };
        let names = |v: Vec<presence_tracker::UserId>| -> Vec<String> {
            v.iter().map(ToString::to_string).collect()
        };
        prop_assert_eq!(
            names(self.presence.online_members(usize::MAX)),
            listed(None),
            "online_members"
        );
        prop_assert_eq!(
            names(self.presence.online_members(1)).len(),
            listed(None).len().min(1)
        );
        for (p, page) in PAGES.iter().enumerate() {
            prop_assert_eq!(
                names(self.presence.page_members(page, usize::MAX)),
                listed(Some(p)),
                "page_members({})",
                page
            );
        }
        Ok(())
    }
}

/// Events of one op with expiries: the same events; a user's `UserOffline` after the `Left`
/// of each of its sessions. Sessions falling due in one step may be evicted in any order.
fn same_expiry_events(got: &[Event], expected: &[Event]) -> Result<(), TestCaseError> {
    let sorted = |v: &[Event]| {
        let mut v: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
        v.sort();
        v
    };
    prop_assert_eq!(
        sorted(got),
        sorted(expected),
        "events (any order): {:?}",
        got
    );
    for (at, e) in got.iter().enumerate() {
        if let Event::UserOffline { user } = e {
            let late = got[at..]
                .iter()
                .any(|e| matches!(e, Event::Left { kind, .. } if kind.user() == Some(user)));
            prop_assert!(!late, "UserOffline before its user's Left: {:?}", got);
        }
    }
    Ok(())
}

fn run_eager(ops: &[Op], remember: u64) -> Result<(), TestCaseError> {
    let mut run = Run::new(remember);
    for (step, op) in ops.iter().enumerate() {
        let moved = run.apply(op, true)?;
        run.check_reads()
            .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
        let got = drain(&mut run.rx);
        let expected = std::mem::take(&mut run.model.events);
        if moved {
            same_expiry_events(&got, &expected)?;
        } else {
            prop_assert_eq!(got, expected, "events after step {} {:?}", step, op);
        }
    }
    Ok(())
}

/// Per-user `UserOnline`/`UserOffline` sequences, and per-session event sequences.
fn projections(
    events: &[Event],
    ids: &[SessionId],
) -> (BTreeMap<String, Vec<bool>>, BTreeMap<usize, Vec<String>>) {
    let mut users: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    let mut sessions: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for e in events {
        match e {
            Event::UserOnline { user } => users.entry(user.to_string()).or_default().push(true),
            Event::UserOffline { user } => users.entry(user.to_string()).or_default().push(false),
            Event::Joined { session, .. }
            | Event::Left { session, .. }
            | Event::KindChanged { session, .. } => {
                let i = ids.iter().position(|id| id == session).unwrap();
                sessions.entry(i).or_default().push(format!("{e:?}"));
            }
            _ => {}
        }
    }
    (users, sessions)
}

/// Reads only at `Check`: expiries are then noticed late, by whatever call comes next. The
/// logical history must not change: counts, peak and users at each check, and the order
/// of events per user and per session.
fn run_rare_reads(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut run = Run::new(DAY);
    let mut got = Vec::new();
    let mut expected = Vec::new();
    for (step, op) in ops.iter().chain([&Op::Check]).enumerate() {
        run.apply(op, false)?;
        if matches!(op, Op::Check) {
            run.check_reads()
                .map_err(|e| TestCaseError::fail(format!("after step {step} {op:?}: {e}")))?;
        }
        got.extend(drain(&mut run.rx));
        expected.append(&mut run.model.events);
    }
    let (got_users, got_sessions) = projections(&got, &run.model.ids);
    let (exp_users, exp_sessions) = projections(&expected, &run.model.ids);
    prop_assert_eq!(got_users, exp_users, "per-user events; all: {:?}", got);
    prop_assert_eq!(got_sessions, exp_sessions, "per-session events");
    Ok(())
}

fn config() -> Config {
    Config {
        cases: 100,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn model_matches_with_reads_after_every_op(ops in prop::collection::vec(op(), 1..80)) {
        run_eager(&ops, DAY)?;
    }

    #[test]
    fn model_forgets_offline_users_after_remember_users_for(ops in prop::collection::vec(op(), 1..80)) {
        run_eager(&ops, 30_000)?;
    }

    #[test]
    fn model_matches_when_reads_are_rare(ops in prop::collection::vec(op(), 1..80)) {
        run_rare_reads(&ops)?;
    }
}
