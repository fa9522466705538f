//! A task: one pickled call on its way to a worker, the atomic state that decides whether it can
//! still be cancelled, and what comes back for it.
//!
//! The state is shared between the submitter's `Future` (through [`PyTaskHandle`]) and the
//! scheduler: whichever side moves it out of `PENDING` first wins, so a task is either cancelled or
//! dispatched, never both (the stdlib's `Future.cancel()` contract: pending work only).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

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

    /// Claims the task for a worker: a pending task, or one that a worker held but never started
    /// (sent back after that worker died). `false` means it was cancelled.
    pub fn start_or_resume(&self) -> bool {
        self.start() || self.is_running()
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
    /// Opaque to the core, forwarded to the worker (see `_runtime/serialize.py`).
    pub flags: u8,
    /// Length of the pickled function at the front of `body`.
    pub fn_len: u32,
    /// Pickled function followed by pickled arguments. Kept until the result arrives, so a
    /// task that never started on a worker that died can be sent to another.
    pub body: Vec<u8>,
    pub state: Arc<TaskState>,
    /// Longest it may run once a worker starts it; past that, its worker is killed.
    pub timeout: Option<std::time::Duration>,
    /// memfd segments holding the body's large buffers; a copy of each goes with every send.
    pub fds: Vec<std::os::fd::OwnedFd>,
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
    /// The call returned; the pickled value, and the segments of its large buffers.
    Ok(Vec<u8>, Vec<std::os::fd::OwnedFd>),
    /// The call raised; the pickled `(exception, traceback text)`.
    Err(Vec<u8>),
    /// The worker running it died; why, when the parent knows better than the exit status
    /// (it killed a worker that broke the protocol).
    Died(ExitInfo, Option<String>),
    /// It was cancelled before a worker took it.
    Cancelled,
    /// It ran past its time limit: its worker was killed.
    TimedOut { limit: std::time::Duration, pid: u32 },
    /// It was stopped on request while it ran: its worker was killed.
    Killed,
    /// The pool broke before it could run: why, and the pickled cause if a worker sent one.
    Broken(String, Option<Vec<u8>>),
}

/// A task's outcome under its id.
#[derive(Debug)]
pub struct Completion {
    pub id: u64,
    pub outcome: Outcome,
}

/// What a task's handle may ask of its pool beyond cancelling: a process pool's engine.
pub trait TaskControl: Send + Sync {
    /// Stops task `id` wherever it is; `false` if it is no longer in the pool.
    fn stop(&self, id: u64) -> bool;

    /// Waits up to `within` for task `id`'s outcome in this thread and completes its future
    /// with it; `false` if it did not come that way (see `scheduler/claim.rs`).
    fn wait_own(&self, py: Python<'_>, id: u64, within: Duration) -> PyResult<bool>;
}

/// The Python-side handle on a task's state, kept by its `Future`.
#[pyclass(name = "TaskHandle", module = "ferropool._core", frozen)]
pub struct PyTaskHandle {
    pub state: Arc<TaskState>,
    pub id: u64,
    /// The pool's engine, weakly: a handle never keeps a pool alive. `None` for thread pools,
    /// whose threads cannot be stopped.
    pub control: Option<std::sync::Weak<dyn TaskControl>>,
    /// The pool was made with `cancel_running=True`: `Future.cancel()` stops running tasks too.
    pub cancel_stops: bool,
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

    /// Stops the task even if it is running, by killing its worker. `False` if it finished, or
    /// if its pool cannot stop running tasks (threads).
    fn stop(&self, py: Python<'_>) -> bool {
        let Some(control) = self.control.as_ref().and_then(std::sync::Weak::upgrade) else {
            return false;
        };
        // the pool's lock may be held for a while; never wait for it holding the GIL
        py.detach(|| control.stop(self.id))
    }

    /// Waits up to `within` seconds for the outcome by reading it in this thread, as it comes
    /// from the worker, and completes the future with it. `False` if it did not come that way
    /// (not yet, or the task is queued, or its worker died): wait on the future then.
    fn wait_own(&self, py: Python<'_>, within: f64) -> PyResult<bool> {
        let Some(control) = self.control.as_ref().and_then(std::sync::Weak::upgrade) else {
            return Ok(false);
        };
        // a bad value only shortens the wait: the future's own wait follows
        let within = Duration::try_from_secs_f64(within).unwrap_or(Duration::ZERO);
        control.wait_own(py, self.id, within)
    }

    /// Whether `Future.cancel()` should stop the task when it is already running.
    #[getter]
    fn cancel_stops(&self) -> bool {
        self.cancel_stops
    }
}

/// Gives a Python future its handle on the task (`future._ferro_task`), which its `cancel()`,
/// `running()` and `kill()` consult.
pub fn attach_handle(py: Python<'_>, future: &Bound<'_, PyAny>, handle: PyTaskHandle) -> PyResult<()> {
    future.setattr(pyo3::intern!(py, "_ferro_task"), Bound::new(py, handle)?)
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
