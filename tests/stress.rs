//! Many threads, a hot reaper, the real clock: counts stay equal to a recount of the
//! sessions, no counter wraps, and a session that keeps being refreshed is never lost.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use presence_tracker::{
    Counts, Event, Kind, LeaveReason, ManualClock, Presence, Reaper, SessionId, SessionInfo,
    SessionState, Touch,
};
use tokio::sync::broadcast::error::TryRecvError;

/// A small xorshift generator: no dependency, reproducible per thread.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn random_kind(rng: &mut Rng) -> Kind {
    match rng.below(7) {
        0 | 1 => Kind::Guest,
        2 => Kind::Bot,
        3 => Kind::member("a"),
        4 => Kind::member("b"),
        5 => Kind::hidden_member("a"),
        _ => Kind::hidden_member("c"),
    }
}

/// What `counts()` should say about `sessions`, the peak aside.
fn recount(sessions: &[SessionInfo]) -> (usize, usize, usize, usize, usize, usize, usize) {
    let mut listed = HashSet::new();
    let mut signed = HashSet::new();
    let (mut guests, mut bots, mut idle) = (0, 0, 0);
    for s in sessions {
        match &s.kind {
            Kind::Guest => guests += 1,
            Kind::Bot => bots += 1,
            Kind::Member(u) => {
                listed.insert(u.clone());
                signed.insert(u.clone());
            }
            Kind::HiddenMember(u) => {
                signed.insert(u.clone());
            }
        }
        idle += usize::from(s.state == SessionState::Idle);
    }
    let hidden = signed.len() - listed.len();
    (
        listed.len(),
        hidden,
        guests,
        bots,
        sessions.len(),
        sessions.len() - idle,
        idle,
    )
}

fn fields(c: &Counts) -> (usize, usize, usize, usize, usize, usize, usize) {
    (
        c.members, c.hidden, c.guests, c.bots, c.sessions, c.active, c.idle,
    )
}

fn sane(c: &Counts, pool: usize) {
    // A wrapped counter is near usize::MAX; a reader may see one person twice for an instant.
    for (name, v) in [
        ("online", c.online),
        ("members", c.members),
        ("hidden", c.hidden),
        ("guests", c.guests),
        ("bots", c.bots),
        ("sessions", c.sessions),
        ("idle", c.idle),
        ("active", c.active),
    ] {
        assert!(v <= 2 * pool, "{name} = {v}: a counter wrapped ({c:?})");
    }
}

/// `counts()` against a recount of `sessions()`, taken while the sessions did not change.
/// The real clock moves, so retry until a `sessions()` before and after agree.
fn assert_counts_match_sessions(presence: &Presence) {
    let key = |v: &[SessionInfo]| {
        let mut v: Vec<_> = v.iter().map(|s| (s.id, s.kind.clone(), s.state)).collect();
        v.sort_by_key(|s| s.0);
        v
    };
    for _ in 0..1000 {
        let before = presence.sessions();
        let c = presence.counts();
        let after = presence.sessions();
        if key(&before) == key(&after) {
            assert_eq!(
                fields(&c),
                recount(&before),
                "counts {c:?} vs sessions {before:?}"
            );
            return;
        }
    }
    panic!("sessions never stood still long enough to compare");
}

#[test]
fn counts_equal_a_recount_after_concurrent_churn() {
    const POOL: usize = 48;
    const THREADS: u64 = 4;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_millis(30))
        .idle_after(Duration::from_millis(8))
        .heartbeat_limit(Duration::from_millis(60))
        .reap_interval(Duration::from_millis(1))
        .reaper(Reaper::Thread)
        .build();
    let _rx = presence.subscribe(); // events are built too
    let ids: Arc<Vec<SessionId>> = Arc::new((0..POOL).map(|_| SessionId::new_v4()).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (presence, stop) = (presence.clone(), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                sane(&presence.counts(), POOL);
                thread::yield_now();
            }
        })
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (presence, ids) = (presence.clone(), ids.clone());
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t + 1) * 0x1234_5678));
                let mut ops = 0u64;
                while started.elapsed() < Duration::from_millis(1200) {
                    let id = ids[rng.below(POOL)];
                    match rng.below(10) {
                        0..=3 => {
                            presence.touch(id, random_kind(&mut rng)).unwrap();
                        }
                        4..=5 => {
                            let page = ["/", "/a", "/b"][rng.below(3)];
                            presence.visit(id, random_kind(&mut rng), page).unwrap();
                        }
                        6..=8 => {
                            presence.heartbeat(id);
                        }
                        _ => {
                            presence.leave(id);
                        }
                    }
                    ops += 1;
                    if ops % 64 == 0 {
                        // Let time pass so that sessions go idle and expire under the reaper.
                        thread::sleep(Duration::from_micros(200 * rng.below(10) as u64));
                    }
                }
                ops
            })
        })
        .collect();
    let ops: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    stop.store(true, Ordering::Relaxed);
    monitor.join().unwrap();
    assert!(ops > 1000, "only {ops} ops");

    let c = presence.counts();
    sane(&c, POOL);
    assert_counts_match_sessions(&presence);
    let pages: usize = presence.top_pages(10).iter().map(|(_, n)| n).sum();
    assert!(pages <= presence.counts().sessions + POOL);

    // Everything expires: every counter comes back to exactly zero.
    thread::sleep(Duration::from_millis(150));
    let c = presence.counts();
    assert_eq!(fields(&c), (0, 0, 0, 0, 0, 0, 0), "{c:?}");
    assert_eq!(c.online, 0);
    assert!(presence.top_pages(10).is_empty());
    assert!(c.peak.online <= POOL);
}

#[test]
fn refreshed_session_is_never_evicted_by_a_hot_reaper() {
    // Time is a manual clock that only this thread moves, and only after refreshing the
    // kept session: however the machine schedules the threads, the kept session is never
    // due, so any eviction of it is a bug. Each step leaves it 1 ms from its deadline, so
    // the reaper, running every millisecond of real time, keeps finding its expiry items
    // due while a touch may be landing; churn threads make sessions that do expire.
    const IDLE: Duration = Duration::from_millis(50);
    let clock = ManualClock::new();
    let presence = Presence::builder()
        .clock(clock.clone())
        .idle_timeout(IDLE)
        .reap_interval(Duration::from_millis(1))
        .event_capacity(1 << 18)
        .reaper(Reaper::Thread)
        .build();
    let kept = SessionId::new_v4();
    let mut rx = presence.subscribe();
    let stop = Arc::new(AtomicBool::new(false));
    // Drain events continuously so that the receiver never lags.
    let listener = {
        let stop = stop.clone();
        thread::spawn(move || {
            let (mut kept_lefts, mut expired) = (Vec::new(), 0usize);
            loop {
                match rx.try_recv() {
                    Ok(Event::Left {
                        session, reason, ..
                    }) if session == kept => kept_lefts.push(reason),
                    Ok(Event::Left {
                        reason: LeaveReason::Expired,
                        ..
                    }) => expired += 1,
                    Ok(_) => {}
                    Err(TryRecvError::Empty) => {
                        if stop.load(Ordering::Acquire) {
                            return (kept_lefts, expired);
                        }
                        thread::sleep(Duration::from_micros(200));
                    }
                    Err(err) => panic!("event receiver: {err:?}"),
                }
            }
        })
    };
    let churn: Vec<_> = (0..2u64)
        .map(|t| {
            let (presence, stop) = (presence.clone(), stop.clone());
            thread::spawn(move || {
                let mut rng = Rng(0xDEAD_BEEF ^ ((t + 7) * 0x9E37_79B9));
                let mut live = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = SessionId::new_v4();
                    presence.visit(id, random_kind(&mut rng), "/churn").unwrap();
                    live.push(id);
                    if live.len() > 200 || rng.below(3) == 0 {
                        let i = rng.below(live.len());
                        presence.leave(live.swap_remove(i));
                    }
                    thread::yield_now();
                }
            })
        })
        .collect();
    presence.touch(kept, Kind::member("keeper")).unwrap();
    for step in 0..400 {
        clock.advance(IDLE - Duration::from_millis(1));
        assert!(
            presence.session(kept).is_some(),
            "the kept session vanished at step {step}"
        );
        // Give the reaper a few rounds at this instant.
        thread::sleep(Duration::from_millis(2));
        if step % 2 == 0 {
            assert!(presence.heartbeat(kept), "heartbeat refused at step {step}");
        } else {
            assert_eq!(
                presence.touch(kept, Kind::member("keeper")),
                Ok(Touch::Refreshed),
                "step {step}"
            );
        }
    }
    stop.store(true, Ordering::Release);
    churn.into_iter().for_each(|t| t.join().unwrap());
    let (kept_lefts, expired) = listener.join().unwrap();
    assert!(
        kept_lefts.is_empty(),
        "the refreshed session was evicted: {kept_lefts:?}"
    );
    // The reaper was hot: churn sessions kept expiring around the kept one.
    assert!(expired > 0, "nothing expired: the reaper never ran");
    assert_eq!(
        presence.leave(kept).map(|s| s.kind),
        Some(Kind::member("keeper"))
    );
}

#[test]
fn holds_and_drops_racing_a_hot_reaper_never_lose_a_held_session() {
    // Threads take and drop holds on shared sessions (so one thread's drop races another's
    // hold), touch, heartbeat and take holds of fresh sessions, while the reaper runs every
    // millisecond with timeouts of a few milliseconds. A session with a hold outstanding
    // must be live at every look; at quiescence the counts equal a recount, every counter
    // is sane, and once the last holds are dropped everything leaves, `Closed` among the
    // reasons. Each session's events alternate Joined / Left.
    const POOL: usize = 16;
    const THREADS: u64 = 4;
    let presence = Presence::builder()
        .idle_timeout(Duration::from_millis(4))
        .idle_after(Duration::from_millis(2))
        .heartbeat_limit(Duration::from_millis(8))
        .hold_grace(Duration::from_millis(3))
        .reap_interval(Duration::from_millis(1))
        .reaper(Reaper::Thread)
        .event_capacity(1 << 20)
        .build();
    let mut rx = presence.subscribe();
    let ids: Arc<Vec<SessionId>> = Arc::new((0..POOL).map(|_| SessionId::new_v4()).collect());
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (presence, ids) = (presence.clone(), ids.clone());
            thread::spawn(move || {
                let mut rng = Rng(0xC0FF_EE00 ^ ((t + 3) * 0x5851_F42D));
                let mut holds = Vec::new();
                let mut looks = 0u64;
                while started.elapsed() < Duration::from_millis(1200) {
                    let id = ids[rng.below(POOL)];
                    match rng.below(10) {
                        0..=3 => {
                            let page = ["/", "/a", "/b"][rng.below(3)];
                            holds.push(presence.hold(id, random_kind(&mut rng), page).unwrap());
                        }
                        4..=6 if !holds.is_empty() => {
                            let i = rng.below(holds.len());
                            drop(holds.swap_remove(i));
                        }
                        7 => {
                            presence.touch(id, random_kind(&mut rng)).unwrap();
                        }
                        8 => {
                            presence.heartbeat(id);
                        }
                        _ if !holds.is_empty() => {
                            let i = rng.below(holds.len());
                            assert!(holds[i].activity(), "a held session is live");
                        }
                        _ => {}
                    }
                    // Every session this thread holds is live, whatever the others do.
                    if let Some(hold) = holds.get(rng.below(holds.len().max(1))) {
                        assert!(
                            presence.session(hold.session()).is_some(),
                            "a held session was lost"
                        );
                        looks += 1;
                    }
                    if rng.below(32) == 0 {
                        // Let time pass: unheld sessions expire, graces run out.
                        thread::sleep(Duration::from_micros(500 * rng.below(8) as u64));
                    }
                }
                (holds, looks)
            })
        })
        .collect();
    let mut kept = Vec::new();
    let mut looks = 0;
    for worker in workers {
        let (holds, n) = worker.join().unwrap();
        kept.extend(holds);
        looks += n;
    }
    assert!(looks > 1000, "only {looks} looks");
    // Quiescent, some holds still out: those sessions are live, and counts match.
    thread::sleep(Duration::from_millis(30));
    for hold in &kept {
        assert!(presence.session(hold.session()).is_some());
    }
    sane(&presence.counts(), POOL);
    assert_counts_match_sessions(&presence);
    drop(kept);
    thread::sleep(Duration::from_millis(60));
    let c = presence.counts();
    assert_eq!(fields(&c), (0, 0, 0, 0, 0, 0, 0), "{c:?}");

    let mut alive: std::collections::HashMap<SessionId, bool> = Default::default();
    let mut closed = 0;
    loop {
        match rx.try_recv() {
            Ok(Event::Joined { session, .. }) => {
                let was = alive.insert(session, true).unwrap_or(false);
                assert!(!was, "Joined twice without a Left");
            }
            Ok(Event::Left {
                session, reason, ..
            }) => {
                let was = alive.insert(session, false).unwrap_or(false);
                assert!(was, "Left without a Joined");
                closed += usize::from(reason == LeaveReason::Closed);
            }
            Ok(_) => {}
            Err(TryRecvError::Empty) => break,
            Err(err) => panic!("event receiver: {err:?}"),
        }
    }
    assert!(closed > 0, "no session left by its grace");
    assert!(alive.values().all(|live| !live));
}
