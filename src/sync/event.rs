//! `Event`: a shared flag that processes wait on.

use std::sync::atomic::{AtomicU32, Ordering};

use pyo3::prelude::*;

use super::{futex, park, slice_end};
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};

/// The shared state of an event.
#[repr(C)]
#[derive(Debug, Default)]
pub struct EventRecord {
    /// 1 when set; the futex word.
    flag: AtomicU32,
    /// Processes that may be parked on `flag`.
    waiters: AtomicU32,
}

/// `multiprocessing.Event`.
#[pyclass(name = "Event", module = "ferropool._core", frozen, subclass)]
pub struct PyEvent {
    rec: SharedRecord<EventRecord>,
}

#[pymethods]
impl PyEvent {
    #[new]
    #[pyo3(signature = (handle=None))]
    fn new(handle: Option<Handle>) -> PyResult<Self> {
        let rec = SharedRecord::open(handle)?;
        Ok(PyEvent { rec })
    }

    /// Whether the flag is set.
    fn is_set(&self) -> bool {
        self.rec.flag.load(Ordering::Acquire) != 0
    }

    /// Sets the flag and wakes every waiter.
    fn set(&self) {
        self.rec.flag.store(1, Ordering::SeqCst);
        if self.rec.waiters.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&self.rec.flag);
        }
    }

    /// Clears the flag.
    fn clear(&self) {
        self.rec.flag.store(0, Ordering::SeqCst);
    }

    /// Blocks until the flag is set or `timeout` passes; returns the flag.
    #[pyo3(signature = (timeout=None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if self.is_set() {
            return Ok(true);
        }
        let rec = &*self.rec;
        rec.waiters.fetch_add(1, Ordering::SeqCst);
        let result = wait_interruptible(py, timeout_from_secs(timeout)?, |slice| {
            let end = slice_end(slice);
            while rec.flag.load(Ordering::SeqCst) == 0 {
                if std::time::Instant::now() >= end {
                    return false;
                }
                park(&rec.flag, 0, end);
            }
            true
        });
        rec.waiters.fetch_sub(1, Ordering::SeqCst);
        result?;
        Ok(self.is_set())
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.rec.handle()
    }
}
