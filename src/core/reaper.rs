//! The background work: a thread or a tokio task that runs a pass every interval: the reaper
//! (`reap` every `reap_interval`) and the publish ticker of the watches (every
//! `publish_interval`, started with the first watch).
//!
//! It holds only a `Weak` reference to what it drives (anything that implements
//! [`Periodic`]), so it never keeps a tracker alive: it stops when the last handle is dropped
//! (the tracker's drop signals it, so it does not even sleep out its interval) or on
//! `Presence::shutdown`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

/// What a background loop drives: the tracker's reaping, and its publishing.
pub(crate) trait Periodic: Send + Sync + 'static {
    /// One bounded step of a pass (for the reaper, one batch of what is due now); returns
    /// whether more is to do. Between steps the loop lets other work run, so no caller
    /// waits on a large reap.
    fn step(&self) -> bool;

    /// A pass (the steps of one interval) is over after `took`: for the history, the gauges
    /// and a word about a slow pass.
    fn pass_done(&self, took: Duration);
}

/// Who evicts sessions that went quiet.
///
/// Reads ([`Presence::counts`](crate::Presence::counts) and friends) are exact whatever the reaper: they settle what is
/// already due first. The reaper bounds how late [`Event::Left`](crate::Event::Left) and
/// [`Event::UserOffline`](crate::Event::UserOffline) arrive and frees memory.
///
/// A background reaper holds no strong reference to the tracker: it stops when the last
/// [`Presence`](crate::Presence) handle is dropped or on [`Presence::shutdown`](crate::Presence::shutdown).
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Reaper {
    /// A tokio task when [`build`](crate::PresenceBuilder::build) runs inside a tokio runtime, else
    /// a named thread (`presence-reaper`). The default.
    ///
    /// Inside a runtime without the time driver, `build` panics with a message saying so
    /// (enable it, or choose [`Reaper::Thread`]).
    #[default]
    Auto,
    /// A named std thread (`presence-reaper`).
    Thread,
    /// A task on the given tokio runtime. It needs the time driver: without it, `build`
    /// panics with a message saying so.
    Tokio(tokio::runtime::Handle),
    /// No background work: call [`Presence::reap`](crate::Presence::reap) yourself.
    Manual,
}

#[derive(Debug, Default)]
struct Signal {
    stopped: AtomicBool,
    lock: Mutex<()>,
    condvar: Condvar,
    notify: Notify,
}

/// Stops the reaper when told to or when dropped with the tracker.
#[derive(Debug, Default)]
pub(crate) struct ReaperControl {
    signal: Arc<Signal>,
}

impl ReaperControl {
    pub(crate) fn stop(&self) {
        let signal = &self.signal;
        if signal.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        // Taking the lock orders the flag before a sleeper's re-check: no lost wake-up.
        drop(signal.lock.lock());
        signal.condvar.notify_all();
        signal.notify.notify_one();
    }

    /// Starts the background loop `name` for `weak`, as `reaper` says (already resolved
    /// from [`Reaper::Auto`] by [`resolve`]).
    pub(crate) fn start(
        &self,
        reaper: Reaper,
        name: &'static str,
        weak: Weak<dyn Periodic>,
        interval: Duration,
    ) {
        let signal = self.signal.clone();
        match reaper {
            Reaper::Manual | Reaper::Auto => {}
            Reaper::Thread => {
                let spawned = std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || run_thread(weak, signal, interval));
                // Without a thread the tracker still works, reads included (they settle
                // what is due); only `Left` events (or published watches) wait for the
                // next write or read.
                if let Err(err) = spawned {
                    tracing::error!(
                        error = %err,
                        thread = name,
                        "presence: cannot start a background thread; reads and writes still \
                         settle what is due, `Left` events wait for them"
                    );
                }
            }
            Reaper::Tokio(handle) => {
                assert_time_driver(&handle);
                handle.spawn(run_task(weak, signal, interval));
            }
        }
    }
}

/// [`Reaper::Auto`] made concrete: a tokio task when called inside a runtime, else a thread.
pub(crate) fn resolve(reaper: Reaper) -> Reaper {
    match reaper {
        Reaper::Auto => match tokio::runtime::Handle::try_current() {
            Ok(handle) => Reaper::Tokio(handle),
            Err(_) => Reaper::Thread,
        },
        other => other,
    }
}

/// Panics with a message that says what to do when `handle`'s runtime has no time driver:
/// the reaper task would otherwise die at its first sleep, silently, and sessions would
/// be evicted only by reads.
fn assert_time_driver(handle: &tokio::runtime::Handle) {
    let _context = handle.enter();
    // Tokio has no query for its drivers; creating a timer is the check (it panics at
    // creation without the time driver, before anything is scheduled).
    let timers = std::panic::catch_unwind(|| drop(tokio::time::sleep(Duration::ZERO)));
    assert!(
        timers.is_ok(),
        "presence-tracker: the reaper's tokio runtime has no time driver: build the runtime \
         with `enable_time()` (or `enable_all()`), or choose `Reaper::Thread` \
         (PresenceBuilder::reaper)"
    );
}

impl Drop for ReaperControl {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_thread(tracker: Weak<dyn Periodic>, signal: Arc<Signal>, interval: Duration) {
    loop {
        {
            let mut guard = signal.lock.lock();
            if signal.stopped.load(Ordering::Acquire) {
                return;
            }
            signal.condvar.wait_for(&mut guard, interval);
            if signal.stopped.load(Ordering::Acquire) {
                return;
            }
        }
        let Some(tracker) = tracker.upgrade() else {
            return;
        };
        let started = Instant::now();
        while tracker.step() {
            if signal.stopped.load(Ordering::Acquire) {
                return;
            }
            std::thread::yield_now();
        }
        tracker.pass_done(started.elapsed());
    }
}

async fn run_task(tracker: Weak<dyn Periodic>, signal: Arc<Signal>, interval: Duration) {
    loop {
        // `notify_one` leaves a permit if we are not waiting yet, so a stop is never missed.
        let _ = tokio::time::timeout(interval, signal.notify.notified()).await;
        if signal.stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(tracker) = tracker.upgrade() else {
            return;
        };
        let started = Instant::now();
        while tracker.step() {
            if signal.stopped.load(Ordering::Acquire) {
                return;
            }
            tokio::task::yield_now().await;
        }
        tracker.pass_done(started.elapsed());
    }
}
