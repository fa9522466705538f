//! `Semaphore` and `BoundedSemaphore`: a futex counter plus a table of which processes hold
//! units, so units held by a process that died can be given back.
//!
//! A holder slot packs `pid << 32 | units` in one 64-bit word, so claiming, crediting, debiting
//! and reclaiming a slot are each a single compare-and-swap. The rule that keeps reclaiming
//! sound even when a semaphore is used as a signal (acquired in one process, released in
//! another): `release()` debits the releasing process's own slot if it has one, else any other
//! holder's. A slot therefore never counts more units than were acquired and not yet matched by
//! a release, and giving a dead process's units back can never raise the count above what it
//! would be had that process released them.

use crate::errors::Error;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{current_pid, futex, park, process_alive, slice_end, spin_until, warn_took_over};
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};

/// How many processes' holdings are tracked; units taken by more processes than this at once
/// are not reclaimed if their holder dies (documented in docs/ipc.md).
pub const HOLDER_SLOTS: usize = 32;
const UNBOUNDED: u32 = u32::MAX;
const SPIN_ROUNDS: u32 = 64;

/// The shared state of a semaphore.
#[repr(C)]
#[derive(Debug)]
pub struct SemRecord {
    /// Units available; the futex word.
    value: AtomicU32,
    /// Processes that may be parked on `value` (so an uncontended release makes no system call).
    waiters: AtomicU32,
    /// The bound of a `BoundedSemaphore`, [`UNBOUNDED`] otherwise.
    max: AtomicU32,
    /// `pid << 32 | units` of each process holding units; 0 for a free slot.
    holders: [AtomicU64; HOLDER_SLOTS],
}

fn pid_of(slot: u64) -> u32 {
    (slot >> 32) as u32
}

impl SemRecord {
    fn try_take(&self) -> bool {
        let mut v = self.value.load(Ordering::Relaxed);
        while v > 0 {
            match self
                .value
                .compare_exchange_weak(v, v - 1, Ordering::Acquire, Ordering::Relaxed)
            {
                Ok(_) => {
                    self.credit(current_pid());
                    return true;
                }
                Err(now) => v = now,
            }
        }
        false
    }

    fn credit(&self, me: u32) {
        for slot in &self.holders {
            let s = slot.load(Ordering::Relaxed);
            if pid_of(s) == me
                && slot
                    .compare_exchange(s, s + 1, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                return;
            }
        }
        let mine = (u64::from(me) << 32) | 1;
        for slot in &self.holders {
            if slot
                .compare_exchange(0, mine, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return;
            }
        }
        // every slot is taken: these units go untracked (see HOLDER_SLOTS)
    }

    /// Removes one unit from the releasing process's slot, else from anybody's.
    fn debit(&self, me: u32) {
        for pass_own in [true, false] {
            for slot in &self.holders {
                loop {
                    let s = slot.load(Ordering::Relaxed);
                    if s == 0 || (pass_own && pid_of(s) != me) {
                        break;
                    }
                    let next = if s & 0xffff_ffff <= 1 { 0 } else { s - 1 };
                    if slot
                        .compare_exchange(s, next, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok()
                    {
                        return;
                    }
                }
            }
        }
    }

    /// Gives back the units of holders that died; `(pid, units)` of each.
    fn reclaim_dead(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for slot in &self.holders {
            let s = slot.load(Ordering::Relaxed);
            if s == 0 || process_alive(pid_of(s)) {
                continue;
            }
            if slot.compare_exchange(s, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                let units = (s & 0xffff_ffff) as u32;
                let max = self.max.load(Ordering::Relaxed);
                let _ = self.value.fetch_update(Ordering::Release, Ordering::Relaxed, |v| {
                    Some(v.saturating_add(units).min(max))
                });
                futex::wake_all(&self.value);
                out.push((pid_of(s), units));
            }
        }
        out
    }

    fn take_within(&self, slice: Duration, dead: &mut Vec<(u32, u32)>) -> bool {
        if spin_until(|| self.try_take(), SPIN_ROUNDS) {
            return true;
        }
        let end = slice_end(slice);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let got = loop {
            if self.try_take() {
                break true;
            }
            if std::time::Instant::now() >= end {
                dead.extend(self.reclaim_dead());
                break self.try_take();
            }
            park(&self.value, 0, end);
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        got
    }

    /// Adds a unit; `false` if a bounded semaphore is already full.
    fn give(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        if self
            .value
            .fetch_update(Ordering::Release, Ordering::Relaxed, |v| (v < max).then_some(v + 1))
            .is_err()
        {
            return false;
        }
        self.debit(current_pid());
        if self.waiters.load(Ordering::SeqCst) > 0 {
            futex::wake(&self.value, 1);
        }
        true
    }
}

/// `multiprocessing.Semaphore` and (with `maxvalue`) `BoundedSemaphore`.
#[pyclass(name = "Semaphore", module = "ferropool._core", frozen, subclass)]
pub struct PySemaphore {
    rec: SharedRecord<SemRecord>,
}

#[pymethods]
impl PySemaphore {
    #[new]
    #[pyo3(signature = (value=1, maxvalue=None, handle=None))]
    fn new(value: i64, maxvalue: Option<i64>, handle: Option<Handle>) -> PyResult<Self> {
        if let Some(h) = handle {
            return Ok(PySemaphore {
                rec: SharedRecord::attach(h)?,
            });
        }
        if value < 0 {
            return Err(Error::InvalidArgument("semaphore initial value must be >= 0".into()).into());
        }
        let limit = i64::from(u32::MAX - 1);
        if value > limit || maxvalue.is_some_and(|m| m > limit) {
            return Err(Error::InvalidArgument(format!("semaphore value must be <= {limit}")).into());
        }
        let rec: SharedRecord<SemRecord> = SharedRecord::create(0)?;
        rec.value.store(value as u32, Ordering::Relaxed);
        rec.max
            .store(maxvalue.map_or(UNBOUNDED, |m| m as u32), Ordering::Release);
        Ok(PySemaphore { rec })
    }

    /// Takes a unit, blocking until one is free unless `block` is false; `True` if taken.
    #[pyo3(signature = (block=true, timeout=None))]
    fn acquire(&self, py: Python<'_>, block: bool, timeout: Option<f64>) -> PyResult<bool> {
        if self.rec.try_take() {
            return Ok(true);
        }
        let mut dead = Vec::new();
        let got = if block {
            wait_interruptible(py, timeout_from_secs(timeout)?, |slice| {
                self.rec.take_within(slice, &mut dead)
            })?
        } else {
            dead = self.rec.reclaim_dead();
            self.rec.try_take()
        };
        for (pid, units) in dead {
            if let Err(e) = warn_took_over(py, "Semaphore", pid, units) {
                if got {
                    self.rec.give();
                }
                return Err(e);
            }
        }
        Ok(got)
    }

    /// Gives a unit back; `ValueError` when a bounded semaphore would exceed its bound.
    fn release(&self) -> PyResult<()> {
        if self.rec.give() {
            Ok(())
        } else {
            Err(Error::InvalidState("semaphore or lock released too many times".into()).into())
        }
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<bool> {
        self.acquire(py, true, None)
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) -> PyResult<()> {
        self.release()
    }

    /// The units available now.
    fn get_value(&self) -> u32 {
        self.rec.value.load(Ordering::Relaxed)
    }

    /// The bound, or `None` for an unbounded semaphore.
    #[getter]
    fn _maxvalue(&self) -> Option<u32> {
        let m = self.rec.max.load(Ordering::Relaxed);
        (m != UNBOUNDED).then_some(m)
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.rec.handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: u32, max: u32) -> SharedRecord<SemRecord> {
        let rec: SharedRecord<SemRecord> = SharedRecord::create(0).unwrap();
        rec.value.store(value, Ordering::SeqCst);
        rec.max.store(max, Ordering::SeqCst);
        rec
    }

    #[test]
    fn a_bounded_semaphore_refuses_an_extra_release() {
        let rec = record(1, 1);
        assert!(!rec.give());
        assert!(rec.try_take());
        assert!(rec.give());
    }

    #[test]
    fn a_dead_holders_units_come_back() {
        let rec = record(0, UNBOUNDED);
        rec.holders[3].store((0x003f_ffffu64 << 32) | 2, Ordering::SeqCst);
        assert_eq!(rec.reclaim_dead(), vec![(0x003f_ffff, 2)]);
        assert_eq!(rec.value.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_release_elsewhere_cancels_the_holding() {
        let rec = record(0, UNBOUNDED);
        rec.holders[0].store((0x003f_ffffu64 << 32) | 1, Ordering::SeqCst);
        // this process never acquired: its release is the dead process's unit coming back
        assert!(rec.give());
        assert!(rec.reclaim_dead().is_empty());
        assert_eq!(rec.value.load(Ordering::SeqCst), 1);
    }
}
