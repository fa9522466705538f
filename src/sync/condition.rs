//! The wait queue of `Condition`; its lock is an ordinary `Lock` or `RLock` that the Python
//! facade releases around [`PyCondVar::sleep`].
//!
//! `notify(n)` must wake at most `n` waiters, so a wake-up is a *token*: `notify` moves up to `n`
//! sleepers into `tokens` and bumps `seq`; a sleeper returns only when it has consumed a token.
//! `sleepers` and `tokens` change only under the condition's lock (`prepare`, `notify`,
//! `cancel`), except a token's consumption, which is one atomic decrement, so their sum always
//! counts every waiter exactly once; a waiter whose time runs out takes a token that may be
//! waiting for it, or else leaves `sleepers`.
//!
//! A token belongs to the waiters that were asleep when it was granted: a waiter may take one
//! only once `seq` has moved past the value it prepared on. Otherwise a thread that calls
//! `wait()` right after a `notify()` (say the notifier itself, in `wait_for`) would take the
//! token meant for the sleeper, which would then sleep on with nobody left to wake it.

use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::prelude::*;

use super::{futex, park, slice_end};
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};

/// The shared state of a condition's wait queue.
#[repr(C)]
#[derive(Debug, Default)]
pub struct CondRecord {
    /// Bumped by every notify; the futex word.
    seq: AtomicU32,
    /// Waiters not yet chosen by a notify.
    sleepers: AtomicU32,
    /// Wake-ups granted and not yet consumed.
    tokens: AtomicU32,
}

impl CondRecord {
    /// Takes a token if one was granted since the waiter prepared on `seq`.
    fn take_token(&self, seq: u32) -> bool {
        if self.seq.load(Ordering::SeqCst) == seq {
            return false;
        }
        self.tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1))
            .is_ok()
    }
}

/// `Condition`'s shared wait queue.
#[pyclass(name = "CondVar", module = "ferropool._core", frozen)]
pub struct PyCondVar {
    rec: SharedRecord<CondRecord>,
}

#[pymethods]
impl PyCondVar {
    #[new]
    #[pyo3(signature = (handle=None))]
    fn new(handle: Option<Handle>) -> PyResult<Self> {
        let rec = SharedRecord::open(handle)?;
        Ok(PyCondVar { rec })
    }

    /// Joins the sleepers (the lock is held); returns the sequence to sleep on.
    fn prepare(&self) -> u32 {
        self.rec.sleepers.fetch_add(1, Ordering::SeqCst);
        self.rec.seq.load(Ordering::SeqCst)
    }

    /// Sleeps (the lock is released) until a notify picks this waiter or `timeout` passes.
    #[pyo3(signature = (seq, timeout=None))]
    fn sleep(&self, py: Python<'_>, seq: u32, timeout: Option<f64>) -> PyResult<bool> {
        let rec = &*self.rec;
        let mut seen = seq;
        wait_interruptible(py, timeout_from_secs(timeout)?, |slice| {
            let end = slice_end(slice);
            loop {
                if rec.take_token(seq) {
                    return true;
                }
                if std::time::Instant::now() >= end {
                    return false;
                }
                park(&rec.seq, seen, end);
                seen = rec.seq.load(Ordering::SeqCst);
            }
        })
    }

    /// After a sleep that timed out or was interrupted (the lock is held again): `True` if a
    /// notify had chosen this waiter after all.
    fn cancel(&self, seq: u32) -> bool {
        if self.rec.take_token(seq) {
            return true;
        }
        let _ = self
            .rec
            .sleepers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| s.checked_sub(1));
        false
    }

    /// Wakes up to `n` waiters (the lock is held); returns how many were chosen.
    fn notify(&self, n: u32) -> u32 {
        let mut chosen = 0;
        let _ = self.rec.sleepers.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
            chosen = s.min(n);
            Some(s - chosen)
        });
        if chosen > 0 {
            self.rec.tokens.fetch_add(chosen, Ordering::SeqCst);
            self.rec.seq.fetch_add(1, Ordering::SeqCst);
            // a woken waiter that finds no token left sleeps again, so waking all is safe
            futex::wake_all(&self.rec.seq);
        }
        chosen
    }

    /// Waiters not yet chosen by a notify.
    fn _sleepers(&self) -> u32 {
        self.rec.sleepers.load(Ordering::SeqCst)
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.rec.handle()
    }
}
