//! The background reaper: a thread or a tokio task that calls `reap` every `reap_interval`.
//!
//! It holds only a `Weak` reference, so it never keeps a tracker alive: it stops when the
//! last handle is dropped (the tracker's drop signals it, so it does not even sleep out its
//! interval) or on `Presence::shutdown`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

use crate::builder::Reaper;
use crate::tracker::Tracker;

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

    /// Starts the configured reaper for `tracker`.
    pub(crate) fn start(&self, reaper: Reaper, tracker: &Arc<Tracker>, interval: Duration) {
        let weak = Arc::downgrade(tracker);
        let signal = self.signal.clone();
        let reaper = match reaper {
            Reaper::Auto => match tokio::runtime::Handle::try_current() {
                Ok(handle) => Reaper::Tokio(handle),
                Err(_) => Reaper::Thread,
            },
            other => other,
        };
        match reaper {
            Reaper::Manual | Reaper::Auto => {}
            Reaper::Thread => {
                let spawned = std::thread::Builder::new()
                    .name("presence-reaper".into())
                    .spawn(move || run_thread(weak, signal, interval));
                // Without a thread the tracker still works, reads included (they settle
                // what is due); only `Left` events wait for the next write or read.
                if let Err(err) = spawned {
                    eprintln!("presence-tracker: cannot start the reaper thread: {err}");
                }
            }
            Reaper::Tokio(handle) => {
                handle.spawn(run_task(weak, signal, interval));
            }
        }
    }
}

impl Drop for ReaperControl {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_thread(tracker: Weak<Tracker>, signal: Arc<Signal>, interval: Duration) {
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
        tracker.reap();
    }
}

async fn run_task(tracker: Weak<Tracker>, signal: Arc<Signal>, interval: Duration) {
    loop {
        // `notify_one` leaves a permit if we are not waiting yet, so a stop is never missed.
        let _ = tokio::time::timeout(interval, signal.notify.notified()).await;
        if signal.stopped.load(Ordering::Acquire) {
            return;
        }
        let Some(tracker) = tracker.upgrade() else {
            return;
        };
        tracker.reap();
    }
}
