//! Model checking (loom) of the two lock hand-offs that ordinary tests can only sample: event
//! delivery after the locks are released, and the expiry index's "may anything be due" bound
//! while a reap is in flight. loom runs every interleaving of the threads below (up to a
//! bound on preemptions), with the crate's own event queue and expiry index built on loom's
//! primitives.
//!
//! ```text
//! RUSTFLAGS="--cfg presence_loom" cargo test --release --test loom
//! ```
//!
//! Without `--cfg presence_loom` this file is empty.
#![cfg(presence_loom)]

use loom::sync::{Arc, Mutex};
use loom::thread;
use presence_tracker::__internals::{EventQueueHandle, ExpiryIndexHandle, SlotRef};
use presence_tracker::{Event, Kind, LeaveReason, SessionId};
use tokio::sync::broadcast::error::TryRecvError;

/// Interleavings with up to this many preemptions: enough for every race below to need at
/// most two, small enough that the whole file runs in seconds.
const PREEMPTIONS: usize = 3;

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(PREEMPTIONS);
    builder.check(f);
}

fn session(n: u128) -> SessionId {
    uuid::Uuid::from_u128(n).into()
}

/// A session's state, behind the lock that serialises its changes (a shard lock).
struct Live {
    id: SessionId,
    live: Mutex<bool>,
}

/// One change, as the tracker makes it: decide and queue the event under the session's
/// lock, deliver once the lock is released.
fn flip(queue: &EventQueueHandle, session: &Live) {
    {
        let mut live = session.live.lock().unwrap();
        let event = if *live {
            Event::Left {
                session: session.id,
                kind: Kind::Guest,
                reason: LeaveReason::Left,
            }
        } else {
            Event::Joined {
                session: session.id,
                kind: Kind::Guest,
            }
        };
        *live = !*live;
        if queue.wanted() {
            queue.push(event);
        }
    }
    queue.deliver();
}

#[test]
fn every_event_is_delivered_once_in_the_order_of_its_session() {
    model(|| {
        let queue = Arc::new(EventQueueHandle::new(16));
        let mut events = queue.subscribe();
        let one = Arc::new(Live {
            id: session(1),
            live: Mutex::new(false),
        });
        let two = Arc::new(Live {
            id: session(2),
            live: Mutex::new(false),
        });

        let a = {
            let (queue, one) = (queue.clone(), one.clone());
            thread::spawn(move || {
                flip(&queue, &one);
                flip(&queue, &one);
            })
        };
        let b = {
            let (queue, one, two) = (queue.clone(), one.clone(), two.clone());
            thread::spawn(move || {
                flip(&queue, &two);
                flip(&queue, &one);
            })
        };
        a.join().unwrap();
        b.join().unwrap();

        // Every change's deliver has returned: nothing may be left pending.
        let mut got = Vec::new();
        loop {
            match events.try_recv() {
                Ok(event) => got.push(event),
                Err(TryRecvError::Empty) => break,
                Err(err) => panic!("{err:?}"),
            }
        }
        let of = |id: SessionId| -> Vec<&'static str> {
            got.iter()
                .filter_map(|e| match e {
                    Event::Joined { session, .. } if *session == id => Some("joined"),
                    Event::Left { session, .. } if *session == id => Some("left"),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(got.len(), 4, "lost or duplicated: {got:?}");
        assert_eq!(of(one.id), ["joined", "left", "joined"], "{got:?}");
        assert_eq!(of(two.id), ["joined"], "{got:?}");
    });
}

#[test]
fn a_change_during_another_threads_delivery_is_not_stranded() {
    // Three threads deliver at once: whoever holds the delivery token sends the others'
    // events too, and re-checks after giving the token back.
    model(|| {
        let queue = Arc::new(EventQueueHandle::new(16));
        let mut events = queue.subscribe();
        let handles: Vec<_> = (0..3u128)
            .map(|n| {
                let queue = queue.clone();
                thread::spawn(move || {
                    let id = Live {
                        id: session(10 + n),
                        live: Mutex::new(false),
                    };
                    flip(&queue, &id);
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        let mut n = 0;
        while events.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 3);
    });
}

/// Items scheduled before the threads start: one due (it will be rescheduled later by the
/// reap), one not yet due.
const EARLY: (u64, SlotRef) = (100, 1);
const LATER: (u64, SlotRef) = (1500, 2);
/// The reap's "now": the bucket of 1024..2047 straddles it.
const NOW: u64 = 1200;

#[test]
fn a_schedule_racing_a_reap_never_hides_a_due_item() {
    model(|| {
        let index = Arc::new(ExpiryIndexHandle::new());
        index.schedule_all([EARLY, LATER]);
        index.finish();

        // The reaper: batches of one item, each rescheduling what it took as not really
        // due (a touched session) at 1250, then finishing, as `reap_batch` does.
        let reaper = {
            let index = index.clone();
            thread::spawn(move || {
                let mut taken = Vec::new();
                loop {
                    let mut batch = Vec::new();
                    let more = index.take_due(NOW, &mut batch, 1);
                    assert!(batch.iter().all(|&(at, _)| at <= NOW), "{batch:?}");
                    let later: Vec<_> = batch
                        .iter()
                        .filter(|&&(_, slot)| slot == EARLY.1)
                        .map(|&(_, slot)| (1250, slot))
                        .collect();
                    taken.extend(batch);
                    index.schedule_all(later);
                    index.finish();
                    if !more {
                        return taken;
                    }
                }
            })
        };

        // A writer: a new session due after the reap's now, then one already due (a write
        // whose clock read is behind the reaper's).
        index.schedule(1300, 3);
        assert!(index.may_be_due(1300), "an item just scheduled is hidden");
        index.schedule(50, 4);
        assert!(
            index.may_be_due(1300),
            "an item scheduled earlier is hidden"
        );

        let taken = reaper.join().unwrap();

        // Whatever the interleaving: each item not taken is due for the bound, at its time.
        let mut left: Vec<(u64, SlotRef)> = vec![(1250, 1), LATER, (1300, 3), (50, 4)];
        if !taken.contains(&EARLY) {
            panic!("the due item {EARLY:?} was not taken: {taken:?}");
        }
        left.retain(|item| !taken.contains(item));
        for &(at, slot) in &left {
            assert!(
                index.may_be_due(at),
                "slot {slot} due at {at} is hidden; taken {taken:?}"
            );
        }
        // And nothing was lost or taken twice.
        let mut rest = Vec::new();
        assert!(!index.take_due(u64::MAX / 2, &mut rest, usize::MAX));
        rest.sort_unstable();
        left.sort_unstable();
        assert_eq!(rest, left, "taken {taken:?}");
    });
}

#[test]
fn a_read_that_sees_nothing_due_is_right_until_a_schedule() {
    // A read checks the bound without the lock while a reap finishes and a writer
    // schedules: if the read says "nothing due" at `NOW`, then nothing at or before `NOW`
    // was in the index when it looked, except what the writer added after.
    model(|| {
        let index = Arc::new(ExpiryIndexHandle::new());
        index.schedule(100, 1);
        index.finish();

        let reaper = {
            let index = index.clone();
            thread::spawn(move || {
                let mut taken = Vec::new();
                index.take_due(NOW, &mut taken, usize::MAX);
                index.finish();
                taken
            })
        };
        let writer = {
            let index = index.clone();
            thread::spawn(move || index.schedule(900, 2))
        };
        let seen = index.may_be_due(NOW);
        let taken = reaper.join().unwrap();
        writer.join().unwrap();
        if !seen {
            // The read saw the finished reap and not yet the write.
            assert_eq!(taken.first(), Some(&(100, 1)));
        }
        // After both: the writer's item is due and visible, unless the reap took it.
        if !taken.contains(&(900, 2)) {
            assert!(index.may_be_due(900));
            assert!(index.may_be_due(NOW));
        }
    });
}
