//! A task: one pickled call on its way to a worker, the atomic state that decides whether it can
//! still be cancelled, and what comes back for it.
//!
//! The state is shared between the submitter's `Future` (through [`PyTaskHandle`]) and the
//! scheduler: whichever side moves it out of `PENDING` first wins, so a task is either cancelled or
//! dispatched, never both (the stdlib's `Future.cancel()` contract: pending work only).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use pyo3::prelude::*;

const PENDING: u8 = 0;
const RUNNING: u8 = 1;
const CANCELLED: u8 = 2;

/// Where a task is in its life, shared by the scheduler and the future's handle.
#[derive(Debug, Default)]
pub struct TaskState(AtomicU8);

impl TaskState {
    /// Claims the task for a worker. `false` means it was cancelled first.
    pub fn start(&self) -> bool {
        self.0
            .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Cancels the task if no worker has it yet. `true` when it is (now or already) cancelled.
    pub fn cancel(&self) -> bool {
        match self
            .0
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == CANCELLED,
        }
    }

    /// Whether a worker has claimed the task.
    pub fn is_running(&self) -> bool {
        self.0.load(Ordering::Acquire) == RUNNING
    }
}

/// One call to run in a worker.
#[derive(Debug)]
pub struct Task {
    /// Chosen by the front end; results come back under it.
    pub id: u64,
    /// Opaque to the core, forwarded to the worker (see `_serialize.py`).
    pub flags: u8,
    /// Length of the pickled function at the front of `body`.
    pub fn_len: u32,
    /// Pickled function followed by pickled arguments.
    pub body: Vec<u8>,
    pub state: Arc<TaskState>,
}

/// How a worker process ended, as far as the parent could see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    /// The exit code, when the process exited.
    pub code: Option<i32>,
    /// The signal number, when a signal killed it.
    pub signal: Option<i32>,
}

/// What happened to a task, sent from the engine to the thread that completes futures.
#[derive(Debug)]
pub enum Outcome {
    /// The call returned; the pickled value.
    Ok(Vec<u8>),
    /// The call raised; the pickled `(exception, traceback text)`.
    Err(Vec<u8>),
    /// The worker running it died.
    Died(ExitInfo),
    /// It was cancelled before a worker took it.
    Cancelled,
    /// The pool broke before it could run: why, and the pickled cause if a worker sent one.
    Broken(String, Option<Vec<u8>>),
}

/// A task's outcome under its id.
#[derive(Debug)]
pub struct Completion {
    pub id: u64,
    pub outcome: Outcome,
}

/// The Python-side handle on a task's state, kept by its `Future`.
#[pyclass(name = "TaskHandle", module = "ferropool._core", frozen)]
pub struct PyTaskHandle {
    pub state: Arc<TaskState>,
}

#[pymethods]
impl PyTaskHandle {
    /// Cancels the task unless a worker already took it; `True` when it is cancelled.
    fn cancel(&self) -> bool {
        self.state.cancel()
    }

    /// Whether a worker has taken the task.
    fn running(&self) -> bool {
        self.state.is_running()
    }
}

/// Gives a Python future its handle on the task's state (`future._ferro_task`), which its
/// `cancel()` and `running()` consult.
pub fn attach_handle(py: Python<'_>, future: &Bound<'_, PyAny>, state: &Arc<TaskState>) -> PyResult<()> {
    let handle = Bound::new(
        py,
        PyTaskHandle {
            state: Arc::clone(state),
        },
    )?;
    future.setattr(pyo3::intern!(py, "_ferro_task"), handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cancel_and_start_exclude_each_other() {
        let s = TaskState::default();
        assert!(s.cancel());
        assert!(s.cancel(), "cancelling twice still reports cancelled");
        assert!(!s.start());
        let s = TaskState::default();
        assert!(s.start());
        assert!(s.is_running());
        assert!(!s.cancel());
    }
}
