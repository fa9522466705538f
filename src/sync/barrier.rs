//! `Barrier`: `parties` processes meet, the last one to arrive runs the action, all go on.
//!
//! Each round is a *generation*; the futex word `gen` is bumped when a round ends, whether it
//! was released or broken, and the round's outcome is recorded beforehand in a small ring
//! indexed by generation, so a waiter that wakes late still learns how its own round ended.
//! The counters change under a short internal lock (a [`MutexRecord`], robust like `Lock`).

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::Instant;

use pyo3::prelude::*;

use super::lock::MutexRecord;
use super::{futex, park, slice_end};
use crate::errors::Error;
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};

const OUTCOMES: usize = 64;
const RELEASED: u8 = 1;
const BROKEN: u8 = 2;

/// The shared state of a barrier.
#[repr(C)]
#[derive(Debug)]
pub struct BarrierRecord {
    /// Guards `count`, `broken` and the ends of rounds.
    inner: MutexRecord,
    parties: AtomicU32,
    /// Arrivals in this round; equals `parties` while the last arrival runs the action.
    count: AtomicU32,
    /// The round; the futex word.
    gen: AtomicU32,
    /// 1 once aborted (until `reset`).
    broken: AtomicU32,
    /// How each recent round ended, by `gen % OUTCOMES`.
    outcomes: [AtomicU8; OUTCOMES],
}

/// `threading.Barrier` shared between processes.
#[pyclass(name = "Barrier", module = "ferropool._core", frozen, subclass)]
pub struct PyBarrier {
    rec: SharedRecord<BarrierRecord>,
}

impl PyBarrier {
    fn lock(&self, py: Python<'_>) -> PyResult<()> {
        self.rec.inner.acquire(py, true, None, "Barrier").map(|_| ())
    }

    fn unlock(&self) {
        self.rec.inner.unlock();
    }

    /// Ends round `gen` (the internal lock is held).
    fn end_round(&self, gen: u32, outcome: u8) {
        self.rec.outcomes[gen as usize % OUTCOMES].store(outcome, Ordering::SeqCst);
        self.rec.count.store(0, Ordering::SeqCst);
        self.rec.gen.store(gen.wrapping_add(1), Ordering::SeqCst);
        futex::wake_all(&self.rec.gen);
    }

    /// Waits until round `gen` is over; `false` on timeout.
    fn await_round(&self, py: Python<'_>, gen: u32, deadline: Option<Instant>) -> PyResult<bool> {
        let rec = &*self.rec;
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        wait_interruptible(py, timeout, |slice| {
            let end = slice_end(slice);
            while rec.gen.load(Ordering::SeqCst) == gen {
                if Instant::now() >= end {
                    return false;
                }
                park(&rec.gen, gen, end);
            }
            true
        })
    }

    fn break_round(&self, py: Python<'_>, reset: bool) -> PyResult<()> {
        self.lock(py)?;
        if !reset {
            self.rec.broken.store(1, Ordering::SeqCst);
        }
        if self.rec.count.load(Ordering::SeqCst) > 0 {
            self.end_round(self.rec.gen.load(Ordering::SeqCst), BROKEN);
        }
        if reset {
            self.rec.broken.store(0, Ordering::SeqCst);
        }
        self.unlock();
        Ok(())
    }
}

#[pymethods]
impl PyBarrier {
    #[new]
    #[pyo3(signature = (parties, handle=None))]
    fn new(parties: i64, handle: Option<Handle>) -> PyResult<Self> {
        if let Some(h) = handle {
            return Ok(PyBarrier {
                rec: SharedRecord::attach(h)?,
            });
        }
        if parties < 1 || parties > i64::from(u32::MAX) {
            return Err(Error::InvalidArgument("parties must be >= 1".into()).into());
        }
        let rec: SharedRecord<BarrierRecord> = SharedRecord::create(0)?;
        rec.parties.store(parties as u32, Ordering::SeqCst);
        Ok(PyBarrier { rec })
    }

    /// Waits for the others; the last to arrive runs `action` first. Returns this arrival's
    /// index (0 to parties - 1).
    #[pyo3(name = "_wait", signature = (timeout=None, action=None))]
    fn wait_round(&self, py: Python<'_>, timeout: Option<f64>, action: Option<Bound<'_, PyAny>>) -> PyResult<u32> {
        let deadline = timeout_from_secs(timeout)?.map(|t| Instant::now() + t);
        let parties = self.rec.parties.load(Ordering::SeqCst);
        self.lock(py)?;
        let (index, gen) = loop {
            if self.rec.broken.load(Ordering::SeqCst) != 0 {
                self.unlock();
                return Err(Error::BrokenBarrier.into());
            }
            let count = self.rec.count.load(Ordering::SeqCst);
            let gen = self.rec.gen.load(Ordering::SeqCst);
            if count < parties {
                self.rec.count.store(count + 1, Ordering::SeqCst);
                break (count, gen);
            }
            // the previous round's action is still running: wait for that round to end
            self.unlock();
            if !self.await_round(py, gen, deadline)? {
                self.break_round(py, false)?;
                return Err(Error::BrokenBarrier.into());
            }
            self.lock(py)?;
        };
        self.unlock();
        if index + 1 == parties {
            if let Some(action) = action {
                if let Err(e) = action.call0() {
                    self.break_round(py, false)?;
                    return Err(e);
                }
            }
            self.lock(py)?;
            let intact = self.rec.gen.load(Ordering::SeqCst) == gen;
            if intact {
                self.end_round(gen, RELEASED);
            }
            self.unlock();
            return if intact {
                Ok(index)
            } else {
                Err(Error::BrokenBarrier.into())
            };
        }
        if !self.await_round(py, gen, deadline)? {
            // as threading.Barrier does: a timeout breaks the barrier for everybody
            self.break_round(py, false)?;
            return Err(Error::BrokenBarrier.into());
        }
        if self.rec.outcomes[gen as usize % OUTCOMES].load(Ordering::SeqCst) == RELEASED {
            Ok(index)
        } else {
            Err(Error::BrokenBarrier.into())
        }
    }

    /// Breaks the current round (its waiters get `BrokenBarrierError`) and makes the barrier
    /// usable again.
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.break_round(py, true)
    }

    /// Breaks the barrier: current and future waiters get `BrokenBarrierError` until `reset`.
    fn abort(&self, py: Python<'_>) -> PyResult<()> {
        self.break_round(py, false)
    }

    #[getter]
    fn parties(&self) -> u32 {
        self.rec.parties.load(Ordering::SeqCst)
    }

    #[getter]
    fn n_waiting(&self) -> u32 {
        let count = self.rec.count.load(Ordering::SeqCst);
        if count < self.parties() {
            count
        } else {
            0
        }
    }

    #[getter]
    fn broken(&self) -> bool {
        self.rec.broken.load(Ordering::SeqCst) != 0
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.rec.handle()
    }
}
