//! `Lock` and `RLock`: a futex mutex whose word names its owner, so a dead owner can be seen.
//!
//! The word is `0` (free) or the owner's pid, with [`WAITERS`] set once somebody may be asleep
//! on it (so an uncontended release makes no system call). A waiter whose slice runs out checks
//! whether the owner is alive; if not, one compare-and-swap from the dead owner's exact word to
//! its own pid takes the lock over (two waiters cannot both win it).

use crate::errors::Error;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{current_pid, current_thread, futex, park, process_alive, slice_end, spin_until, warn_took_over};
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};

/// Set in the lock word when a waiter may be parked on it.
const WAITERS: u32 = 1 << 31;
const SPIN_ROUNDS: u32 = 64;

/// The shared state of a `Lock` or `RLock`.
#[repr(C)]
#[derive(Debug, Default)]
pub struct MutexRecord {
    /// `0` when free, else the owner's pid, plus [`WAITERS`].
    word: AtomicU32,
    /// How many times the owner acquired it (`RLock`); 1 for a held `Lock`.
    count: AtomicU32,
    /// The owning thread (`pthread_self`), meaningful together with the pid in `word`.
    thread: AtomicU64,
}

impl MutexRecord {
    /// Takes the lock if it is free.
    pub fn try_lock(&self) -> bool {
        self.word
            .compare_exchange(0, current_pid(), Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Tries for up to `slice`; `Some(dead_pid)` in the result when it took the lock over from a
    /// process that died holding it.
    pub fn lock_within(&self, slice: Duration) -> (bool, Option<u32>) {
        let me = current_pid();
        if spin_until(|| self.try_lock(), SPIN_ROUNDS) {
            return (true, None);
        }
        let end = slice_end(slice);
        loop {
            let v = self.word.load(Ordering::Relaxed);
            if v == 0 {
                // a sleeper may remain, so keep the flag: the next release wakes it
                if self
                    .word
                    .compare_exchange(0, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return (true, None);
                }
                continue;
            }
            if v & WAITERS == 0
                && self
                    .word
                    .compare_exchange(v, v | WAITERS, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            if std::time::Instant::now() >= end {
                let dead = self.take_from_dead(v | WAITERS, me);
                return (dead.is_some(), dead);
            }
            park(&self.word, v | WAITERS, end);
        }
    }

    /// Takes the lock over if its owner (as of `seen`) is dead; returns the dead pid.
    fn take_from_dead(&self, seen: u32, me: u32) -> Option<u32> {
        let owner = seen & !WAITERS;
        if owner == 0 || process_alive(owner) {
            return None;
        }
        self.word
            .compare_exchange(seen, me | WAITERS, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| owner)
    }

    /// A non-blocking attempt that also takes over from a dead owner.
    fn try_lock_or_take(&self) -> (bool, Option<u32>) {
        if self.try_lock() {
            return (true, None);
        }
        let v = self.word.load(Ordering::Relaxed);
        let dead = self.take_from_dead(v, current_pid());
        (dead.is_some(), dead)
    }

    /// Frees the lock; `false` if it was not held.
    pub fn unlock(&self) -> bool {
        self.thread.store(0, Ordering::Relaxed);
        self.count.store(0, Ordering::Relaxed);
        let old = self.word.swap(0, Ordering::Release);
        if old & WAITERS != 0 {
            futex::wake(&self.word, 1);
        }
        old != 0
    }

    pub fn owner_pid(&self) -> u32 {
        self.word.load(Ordering::Relaxed) & !WAITERS
    }

    /// Held by the calling thread.
    pub fn is_mine(&self) -> bool {
        self.owner_pid() == current_pid() && self.thread.load(Ordering::Relaxed) == current_thread()
    }

    fn mark_mine(&self, count: u32) {
        self.thread.store(current_thread(), Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
    }

    /// The blocking acquire shared by `Lock`, `RLock` and `Barrier`: `what` names the
    /// primitive in the takeover warning.
    pub fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<Duration>, what: &str) -> PyResult<bool> {
        if self.try_lock() {
            return Ok(true);
        }
        let (got, dead) = if block {
            let mut dead = None;
            let got = wait_interruptible(py, timeout, |slice| {
                let (got, d) = self.lock_within(slice);
                dead = dead.or(d);
                got
            })?;
            (got, dead)
        } else {
            self.try_lock_or_take()
        };
        if let Some(pid) = dead {
            if let Err(e) = warn_took_over(py, what, pid, 1) {
                // a warning turned into an error: the caller does not get the lock
                self.unlock();
                return Err(e);
            }
        }
        Ok(got)
    }

    /// `acquire`, recording the calling thread as the owner, `count` levels deep, when it got
    /// the lock: how `Lock` and `RLock` take it.
    fn acquire_mine(
        &self,
        py: Python<'_>,
        block: bool,
        timeout: Option<Duration>,
        what: &str,
        count: u32,
    ) -> PyResult<bool> {
        let got = self.acquire(py, block, timeout, what)?;
        if got {
            self.mark_mine(count);
        }
        Ok(got)
    }
}

fn parse_timeout(block: bool, timeout: Option<f64>) -> PyResult<Option<Duration>> {
    if block {
        timeout_from_secs(timeout)
    } else {
        Ok(None)
    }
}

const RELEASED_TOO_MANY: &str = "semaphore or lock released too many times";

/// `multiprocessing.Lock`: a non-recursive lock any process can hold.
#[pyclass(name = "Lock", module = "ferropool._core", frozen, subclass)]
pub struct PyLock {
    rec: SharedRecord<MutexRecord>,
}

#[pymethods]
impl PyLock {
    #[new]
    #[pyo3(signature = (handle=None))]
    fn new(handle: Option<Handle>) -> PyResult<Self> {
        let rec = SharedRecord::open(handle)?;
        Ok(PyLock { rec })
    }

    /// Acquires the lock, blocking until it is free unless `block` is false; `True` if acquired.
    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        self.rec
            .acquire_mine(py, block, parse_timeout(block, timeout)?, "Lock", 1)
    }

    /// Releases the lock; any process or thread may release it.
    fn release(&self) -> PyResult<()> {
        if self.rec.owner_pid() == 0 || !self.rec.unlock() {
            return Err(Error::InvalidState(RELEASED_TOO_MANY.into()).into());
        }
        Ok(())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release()
    }

    /// Whether the calling thread holds the lock.
    fn _is_mine(&self) -> bool {
        self.rec.is_mine()
    }

    /// The owner's pid, 0 when free.
    fn _owner(&self) -> u32 {
        self.rec.owner_pid()
    }

    /// Releases for `Condition.wait`; returns what `_acquire_restore` needs.
    fn _release_save(&self) -> PyResult<u32> {
        self.release()?;
        Ok(1)
    }

    #[pyo3(signature = (_count))]
    fn _acquire_restore(&self, py: Python<'_>, _count: u32) -> PyResult<()> {
        self.acquire(py, true, None).map(|_| ())
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.rec.handle()
    }
}

/// `multiprocessing.RLock`: a lock its owning thread may acquire again.
#[pyclass(name = "RLock", module = "ferropool._core", frozen, subclass)]
pub struct PyRLock {
    rec: SharedRecord<MutexRecord>,
}

#[pymethods]
impl PyRLock {
    #[new]
    #[pyo3(signature = (handle=None))]
    fn new(handle: Option<Handle>) -> PyResult<Self> {
        let rec = SharedRecord::open(handle)?;
        Ok(PyRLock { rec })
    }

    /// Acquires the lock, or counts one more acquisition if this thread holds it already.
    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        if self.rec.is_mine() {
            self.rec.count.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        self.rec
            .acquire_mine(py, block, parse_timeout(block, timeout)?, "RLock", 1)
    }

    /// Undoes one acquisition by the owning thread.
    fn release(&self) -> PyResult<()> {
        if !self.rec.is_mine() {
            return Err(Error::NotOwner("attempt to release recursive lock not owned by thread").into());
        }
        if self.rec.count.load(Ordering::Relaxed) <= 1 {
            self.rec.unlock();
        } else {
            self.rec.count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release()
    }

    fn _is_mine(&self) -> bool {
        self.rec.is_mine()
    }

    fn _count(&self) -> u32 {
        if self.rec.owner_pid() == 0 {
            0
        } else {
            self.rec.count.load(Ordering::Relaxed)
        }
    }

    fn _owner(&self) -> u32 {
        self.rec.owner_pid()
    }

    /// Releases every level for `Condition.wait`; returns the count to restore.
    fn _release_save(&self) -> PyResult<u32> {
        if !self.rec.is_mine() {
            return Err(Error::NotOwner("attempt to release recursive lock not owned by thread").into());
        }
        let count = self.rec.count.load(Ordering::Relaxed);
        self.rec.unlock();
        Ok(count)
    }

    fn _acquire_restore(&self, py: Python<'_>, count: u32) -> PyResult<()> {
        self.rec.acquire_mine(py, true, None, "RLock", count.max(1)).map(|_| ())
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.rec.handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_held_lock_is_not_taken_twice() {
        let rec = MutexRecord::default();
        assert!(rec.try_lock());
        assert!(!rec.try_lock());
        assert!(rec.unlock());
        assert!(!rec.unlock());
    }

    #[test]
    fn a_dead_owner_is_taken_over() {
        let rec = MutexRecord::default();
        // pid 0x3fffff is above any default pid_max, so no process has it
        rec.word.store(0x003f_ffff, Ordering::SeqCst);
        let (got, dead) = rec.lock_within(Duration::from_millis(5));
        assert!(got);
        assert_eq!(dead, Some(0x003f_ffff));
        assert_eq!(rec.owner_pid(), current_pid());
    }

    #[test]
    fn threads_exclude_each_other() {
        let rec: Arc<SharedRecord<MutexRecord>> = Arc::new(SharedRecord::create(0).unwrap());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (rec, counter) = (Arc::clone(&rec), Arc::clone(&counter));
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        while !rec.lock_within(Duration::from_millis(50)).0 {}
                        // a non-atomic read-modify-write, safe only under the lock
                        let v = counter.load(Ordering::Relaxed);
                        counter.store(v + 1, Ordering::Relaxed);
                        rec.unlock();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::SeqCst), 8000);
    }
}
