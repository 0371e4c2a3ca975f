//! The synchronisation primitives of the event queue and the expiry index, swapped for
//! loom's model-checked ones under `cfg(presence_loom)`, so that the model-checking tests
//! (`tests/loom.rs`) explore the very code that ships:
//!
//! ```text
//! RUSTFLAGS="--cfg presence_loom" cargo test --release --test loom
//! ```
//!
//! A cfg rather than a feature: features unify across a build, and loom's types work only
//! inside a loom model, so a feature turned on by `--all-features` would break every other
//! test. A cfg of our own rather than the customary `loom`: tokio reads `cfg(loom)` itself
//! and drops part of its API under it, which breaks the dev-dependencies built on it.

#[cfg(not(presence_loom))]
pub(crate) use parking_lot::Mutex;
#[cfg(not(presence_loom))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(presence_loom)]
pub(crate) use self::model::Mutex;
#[cfg(presence_loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[cfg(presence_loom)]
mod model {
    use std::fmt;
    use std::ops::{Deref, DerefMut};
    use std::sync::{PoisonError, TryLockError};

    use loom::sync::atomic::{AtomicUsize, Ordering};

    /// loom's mutex with `parking_lot`'s signatures, and its release made visible to loom.
    ///
    /// loom records no operation for an unlock, so it never orders another thread's
    /// `try_lock` against one, and the event queue's hand-off (a `try_lock` failing just
    /// before the holder lets go) would go unexplored. Here every release is preceded by a
    /// write to `releases` and every `try_lock` by a read of it: loom then explores a
    /// `try_lock` on either side of each release.
    pub(crate) struct Mutex<T> {
        inner: loom::sync::Mutex<T>,
        releases: AtomicUsize,
    }

    pub(crate) struct MutexGuard<'a, T> {
        guard: Option<loom::sync::MutexGuard<'a, T>>,
        releases: &'a AtomicUsize,
    }

    impl<T> Mutex<T> {
        pub(crate) fn new(value: T) -> Self {
            Mutex {
                inner: loom::sync::Mutex::new(value),
                releases: AtomicUsize::new(0),
            }
        }

        fn guard<'a>(&'a self, guard: loom::sync::MutexGuard<'a, T>) -> MutexGuard<'a, T> {
            MutexGuard {
                guard: Some(guard),
                releases: &self.releases,
            }
        }

        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.guard(self.inner.lock().unwrap_or_else(PoisonError::into_inner))
        }

        pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.releases.load(Ordering::Relaxed);
            match self.inner.try_lock() {
                Ok(guard) => Some(self.guard(guard)),
                Err(TryLockError::WouldBlock) => None,
                Err(TryLockError::Poisoned(poisoned)) => Some(self.guard(poisoned.into_inner())),
            }
        }
    }

    impl<T> Deref for MutexGuard<'_, T> {
        type Target = T;

        fn deref(&self) -> &T {
            self.guard.as_ref().expect("held until dropped")
        }
    }

    impl<T> DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.guard.as_mut().expect("held until dropped")
        }
    }

    impl<T> Drop for MutexGuard<'_, T> {
        fn drop(&mut self) {
            self.releases.fetch_add(1, Ordering::Relaxed);
            drop(self.guard.take());
        }
    }

    impl<T> fmt::Debug for Mutex<T> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Mutex { .. }")
        }
    }
}
