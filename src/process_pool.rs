//! `ProcessEngine`: the Python handle on a process-pool engine, and the completion thread that
//! turns the engine's outcomes into finished futures.
//!
//! The engine (`scheduler/`) never touches Python. Its outcomes travel over a channel to one
//! completion thread per pool, which takes the GIL once per batch and hands the batch to the
//! front end's `on_results` callable (`ResultSink.deliver` in `_pool/backend.py`). Done-callbacks
//! therefore run on that one thread, in completion order, as `Pool` promises. The one exception
//! is a future without done-callbacks whose caller is waiting for it: that caller reads the
//! outcome off the worker's link and hands it to `on_results` itself (`PoolControl::wait_own`,
//! `scheduler/claim.rs`), which takes two thread hand-offs out of a round trip.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, OnceLock};
use std::thread::{self, ThreadId};
use std::time::Duration;

use crossbeam_channel::{unbounded, Receiver};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::errors::Error;
use crate::registry;
use crate::scheduler::{Engine, EngineConfig, EngineState, InitCall};
use crate::signals::{timeout_from_secs, wait_interruptible, CountLatch};
use crate::supervisor::WorkerSpec;
use crate::task::{attach_handle, Completion, Outcome, PyTaskHandle, Task, TaskControl, TaskState};
use crate::wire;

/// Outcome kinds: the second field of each `(id, kind, payload)` the completion thread hands to
/// Python. Defined here only; `lib.rs` exports each as `ferropool._core.<NAME>`, which is what
/// `ResultSink.deliver` (`python/ferropool/_pool/backend.py`) compares against.
pub const OUT_OK: u8 = 0;
pub const OUT_ERR: u8 = 1;
pub const OUT_DIED: u8 = 2;
pub const OUT_CANCELLED: u8 = 3;
pub const OUT_BROKEN: u8 = 4;
pub const OUT_TIMED_OUT: u8 = 5;
pub const OUT_KILLED: u8 = 6;
pub const OUT_OK_BUFFERS: u8 = 7;

/// The outcome kinds by the names Python reads them under.
pub const OUTCOME_KINDS: [(&str, u8); 8] = [
    ("OUT_OK", OUT_OK),
    ("OUT_ERR", OUT_ERR),
    ("OUT_DIED", OUT_DIED),
    ("OUT_CANCELLED", OUT_CANCELLED),
    ("OUT_BROKEN", OUT_BROKEN),
    ("OUT_TIMED_OUT", OUT_TIMED_OUT),
    ("OUT_KILLED", OUT_KILLED),
    ("OUT_OK_BUFFERS", OUT_OK_BUFFERS),
];

/// A process pool's engine as Python sees it.
#[pyclass(name = "ProcessEngine", module = "ferropool._core", frozen)]
pub struct PyProcessEngine {
    engine: Engine,
    /// Handed (weakly) to each task's handle, for `Future.kill()` and waits that read the
    /// outcome themselves. The completion thread holds it.
    control: std::sync::Weak<dyn TaskControl>,
    /// `cancel_running=True`: a future's `cancel()` stops its running task too.
    cancel_stops: bool,
    /// The fork epoch this pool was made in (see `registry.rs`).
    epoch: u64,
    /// Opens when the completion thread has delivered the last outcome.
    completer_done: Arc<CountLatch>,
    completer: Arc<OnceLock<ThreadId>>,
}

#[pymethods]
impl PyProcessEngine {
    #[new]
    #[pyo3(signature = (
        argv, workers, on_results, init=None, max_tasks_per_child=None, forkserver_fd=None,
        max_memory_per_child=None, cancel_running=false, output_fd=None, run_initializer=false
    ))]
    #[allow(clippy::too_many_arguments)] // mirrors the executor's constructor
    fn new(
        argv: Vec<String>,
        workers: usize,
        on_results: Py<PyAny>,
        init: Option<(u8, u32, Vec<u8>)>,
        max_tasks_per_child: Option<u64>,
        forkserver_fd: Option<RawFd>,
        max_memory_per_child: Option<u64>,
        cancel_running: bool,
        output_fd: Option<RawFd>,
        run_initializer: bool,
    ) -> PyResult<Self> {
        let forkserver_fd = forkserver_fd.map(crate::errors::fd_arg).transpose();
        let output_fd = output_fd.map(crate::errors::fd_arg).transpose();
        // SAFETY: the caller hands over connected socket descriptors it no longer uses
        // (`socket.detach()` in `_runtime/forkserver.py` and `_pool/logs.py`); from here on this engine owns
        // them (the valid ones, even when the other is not: they close on the error).
        let own = |fd: &crate::errors::Result<Option<RawFd>>| {
            fd.as_ref()
                .ok()
                .copied()
                .flatten()
                .map(|fd| unsafe { UnixStream::from_raw_fd(fd) })
        };
        let (forkserver, output) = (own(&forkserver_fd), own(&output_fd));
        forkserver_fd?;
        output_fd?;
        if let Some(registrar) = &output {
            registrar.set_nonblocking(true).map_err(Error::from)?;
        }
        if workers == 0 {
            return Err(Error::InvalidArgument("max_workers must be greater than 0".into()).into());
        }
        if max_tasks_per_child == Some(0) {
            return Err(Error::InvalidArgument("max_tasks_per_child must be >= 1".into()).into());
        }
        let (tx, rx) = unbounded();
        let cfg = EngineConfig {
            spec: WorkerSpec {
                argv,
                forkserver,
                output,
                started: 0,
            },
            workers,
            init: init.map(|(flags, fn_len, body)| InitCall { flags, fn_len, body }),
            run_initializer,
            max_tasks_per_child,
            max_memory_per_child: max_memory_per_child.unwrap_or(0),
        };
        let engine = Engine::start(cfg, tx).map_err(Error::from)?;
        let completer_done = Arc::new(CountLatch::new(1));
        let completer = Arc::new(OnceLock::new());
        // the completion thread is the last part of the pool to finish, so it keeps the pool's
        // registration alive until then
        let life = Arc::new(PoolLife {
            engine: engine.lifecycle(),
            completer_done: Arc::clone(&completer_done),
        });
        registry::register(Arc::clone(&life) as Arc<dyn registry::Pool>);
        let id = Arc::clone(&completer);
        let control = Arc::new(PoolControl {
            engine: engine.state(),
            on_results,
            epoch: registry::fork_epoch(),
        });
        let weak_control: Arc<dyn TaskControl> = Arc::clone(&control) as Arc<dyn TaskControl>;
        let weak_control = Arc::downgrade(&weak_control);
        thread::Builder::new()
            .name("ferropool-results".into())
            .spawn(move || {
                let _ = id.set(thread::current().id());
                complete_forever(&rx, &control.on_results);
                Python::attach(|_py| drop(control));
                life.completer_done.count_down();
            })
            .map_err(Error::from)?;
        Ok(PyProcessEngine {
            engine,
            control: weak_control,
            cancel_stops: cancel_running,
            epoch: registry::fork_epoch(),
            completer_done,
            completer,
        })
    }

    /// Queues one call; `fn_bytes` and `args` are concatenated into the frame body. The task's
    /// handle is stored on `future` (`_ferro_task`) before the task can run. `timeout`: seconds
    /// it may run once started, after which its worker is killed. `fds`: memfd segments of
    /// the arguments' large buffers; they belong to the engine from this call on, whatever
    /// happens (the caller must not close them).
    #[pyo3(signature = (id, fn_bytes, args, flags, future, timeout=None, fds=None))]
    #[allow(clippy::too_many_arguments)] // one call per task: positional on purpose
    fn submit(
        &self,
        py: Python<'_>,
        id: u64,
        fn_bytes: &[u8],
        args: &[u8],
        flags: u8,
        future: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        fds: Option<Vec<i32>>,
    ) -> PyResult<()> {
        let fds = take_fds(fds.unwrap_or_default())?;
        if !registry::is_ours(self.epoch) {
            return Err(registry::inherited_pool_error());
        }
        let fn_len = u32::try_from(fn_bytes.len())
            .map_err(|_| PyErr::from(Error::InvalidArgument("pickled function too large".into())))?;
        let mut body = Vec::with_capacity(fn_bytes.len() + args.len());
        body.extend_from_slice(fn_bytes);
        body.extend_from_slice(args);
        let state = Arc::new(TaskState::default());
        let handle = PyTaskHandle {
            state: Arc::clone(&state),
            id,
            control: Some(self.control.clone()),
            cancel_stops: self.cancel_stops,
        };
        attach_handle(py, future, handle)?;
        let timeout = match timeout {
            Some(t) if !(t > 0.0 && t.is_finite()) => {
                return Err(
                    Error::InvalidArgument(format!("timeout must be a positive number of seconds, not {t}")).into(),
                )
            }
            t => t.map(Duration::from_secs_f64),
        };
        let task = Task {
            id,
            flags,
            fn_len,
            body,
            state,
            timeout,
            fds,
        };
        // the engine thread can hold the lock for a while (starting a worker); the GIL is not
        // held while waiting for it, or every Python thread would stall with this one
        let engine = &self.engine;
        match engine.try_submit(task) {
            Ok(done) => done?,
            Err(task) => py.detach(|| engine.submit(task))?,
        }
        Ok(())
    }

    /// Stops accepting work; queued work runs (or is cancelled), then workers stop.
    #[pyo3(signature = (cancel_pending=false))]
    fn shutdown(&self, py: Python<'_>, cancel_pending: bool) {
        if registry::is_ours(self.epoch) {
            py.detach(|| self.engine.shutdown(cancel_pending));
        }
    }

    /// Kills every worker now.
    fn terminate(&self, py: Python<'_>) {
        if registry::is_ours(self.epoch) {
            py.detach(|| self.engine.terminate());
        }
    }

    /// Waits until every worker has exited and every outcome was delivered. `False` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let timeout = timeout_from_secs(timeout)?;
        if !registry::is_ours(self.epoch) {
            return Ok(true); // the parent's pool: nothing of it runs here
        }
        // a done-callback that joins its own pool must not wait for itself
        let on_completer = self.completer.get() == Some(&thread::current().id());
        let engine = &self.engine;
        let completer_done = &self.completer_done;
        wait_interruptible(py, timeout, |slice| {
            engine.wait_finished(slice) && (on_completer || completer_done.wait_for(slice))
        })
    }

    /// Process ids of the workers alive now.
    #[getter]
    fn pids(&self, py: Python<'_>) -> Vec<u32> {
        if registry::is_ours(self.epoch) {
            py.detach(|| self.engine.pids())
        } else {
            Vec::new()
        }
    }

    /// `stats()`: the live workers, queue depth, tasks in flight, and why workers ended.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snap = py.detach(|| self.engine.stats());
        let out = PyDict::new(py);
        let workers = PyList::empty(py);
        for w in &snap.workers {
            let d = PyDict::new(py);
            d.set_item("pid", w.pid)?;
            d.set_item("ready", w.ready)?;
            d.set_item("tasks_done", w.tasks_done)?;
            d.set_item("busy_seconds", w.busy_s)?;
            d.set_item("idle_seconds", w.idle_s)?;
            d.set_item("in_flight", w.in_flight)?;
            workers.append(d)?;
        }
        out.set_item("workers", workers)?;
        out.set_item("queued", snap.queued)?;
        out.set_item("in_flight", snap.in_flight)?;
        out.set_item("tasks_done", snap.tasks_done)?;
        out.set_item("workers_started", snap.workers_started)?;
        let by_cause = PyDict::new(py);
        for (cause, n) in &snap.exits_by_cause {
            by_cause.set_item(cause, n)?;
        }
        out.set_item("exits_by_cause", by_cause)?;
        let exits = PyList::empty(py);
        for e in &snap.recent_exits {
            let d = PyDict::new(py);
            d.set_item("pid", e.pid)?;
            d.set_item("exitcode", e.code)?;
            d.set_item("signal", e.signal)?;
            d.set_item("cause", e.cause.name())?;
            d.set_item("tasks_done", e.tasks_done)?;
            exits.append(d)?;
        }
        out.set_item("exits", exits)?;
        Ok(out)
    }

    /// Why the pool cannot run work, or `None`.
    #[getter]
    fn broken(&self, py: Python<'_>) -> Option<String> {
        if registry::is_ours(self.epoch) {
            py.detach(|| self.engine.broken())
        } else {
            Some("this pool belongs to the parent process (it was created before os.fork())".into())
        }
    }
}

/// What a process pool's task handles reach, weakly: the engine, and the pool's `on_results`
/// for a caller that read its own outcome. Lives as long as the completion thread.
struct PoolControl {
    engine: Arc<EngineState>,
    on_results: Py<PyAny>,
    /// The fork epoch of the pool: in a forked child its engine is a copy nothing runs.
    epoch: u64,
}

impl TaskControl for PoolControl {
    fn stop(&self, id: u64) -> bool {
        registry::is_ours(self.epoch) && self.engine.stop(id)
    }

    fn wait_own(&self, py: Python<'_>, id: u64, within: Duration) -> PyResult<bool> {
        if !registry::is_ours(self.epoch) {
            return Ok(false);
        }
        let engine = &self.engine;
        if !engine.may_wait_own(id) {
            return Ok(false);
        }
        let Some(outcome) = py.detach(|| engine.wait_own(id, within)) else {
            return Ok(false);
        };
        // as the completion thread would deliver it, in a batch of one
        let batch = to_python(py, vec![outcome])?;
        self.on_results.call1(py, (batch,))?;
        Ok(true)
    }
}

/// A process pool's threads, as interpreter exit sees them: the engine and the completion thread.
struct PoolLife {
    engine: Arc<dyn registry::Pool>,
    completer_done: Arc<CountLatch>,
}

impl registry::Pool for PoolLife {
    fn begin_shutdown(&self) {
        self.engine.begin_shutdown();
    }

    fn terminate(&self) {
        self.engine.terminate();
    }

    fn wait_finished(&self, timeout: Duration) -> bool {
        self.engine.wait_finished(timeout) && self.completer_done.wait_for(timeout)
    }
}

/// Delivers batches until the engine ends (its sender is dropped).
fn complete_forever(rx: &Receiver<Vec<Completion>>, on_results: &Py<PyAny>) {
    Python::attach(|py| {
        while let Some(batch) = py.detach(|| next_batch(rx)) {
            let delivered = to_python(py, batch).and_then(|list| on_results.call1(py, (list,)));
            if let Err(err) = delivered {
                err.write_unraisable(py, Some(on_results.bind(py)));
            }
        }
    });
}

/// Blocks for one batch, then takes whatever else is already waiting, so one GIL acquisition
/// serves every outcome that arrived meanwhile.
fn next_batch(rx: &Receiver<Vec<Completion>>) -> Option<Vec<Completion>> {
    let mut batch = rx.recv().ok()?;
    while let Ok(more) = rx.recv_timeout(Duration::ZERO) {
        batch.extend(more);
    }
    Some(batch)
}

/// `[(id, kind, payload), ...]` with the payloads described in `_runtime/serialize.py`.
fn to_python(py: Python<'_>, batch: Vec<Completion>) -> PyResult<Bound<'_, PyList>> {
    let items = batch.into_iter().map(|c| -> PyResult<Bound<'_, PyTuple>> {
        let id = c.id;
        match c.outcome {
            Outcome::Ok(b, fds) if fds.is_empty() && b.len() >= LEND_MIN => {
                (id, OUT_OK, Bound::new(py, Received(b))?).into_pyobject(py)
            }
            Outcome::Ok(b, fds) if fds.is_empty() => (id, OUT_OK, PyBytes::new(py, &b)).into_pyobject(py),
            Outcome::Ok(b, fds) => {
                // Python owns the descriptors from here: it maps and closes them
                let fds: Vec<i32> = fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
                (id, OUT_OK_BUFFERS, (PyBytes::new(py, &b), fds)).into_pyobject(py)
            }
            Outcome::Err(b) => (id, OUT_ERR, PyBytes::new(py, &b)).into_pyobject(py),
            Outcome::Died(info, why) => (id, OUT_DIED, (info.pid, info.code, info.signal, why)).into_pyobject(py),
            Outcome::Cancelled => (id, OUT_CANCELLED, py.None()).into_pyobject(py),
            Outcome::Killed => (id, OUT_KILLED, py.None()).into_pyobject(py),
            Outcome::TimedOut { limit, pid } => (id, OUT_TIMED_OUT, (limit.as_secs_f64(), pid)).into_pyobject(py),
            Outcome::Broken(why, cause) => {
                let cause = cause.map(|b| PyBytes::new(py, &b));
                (id, OUT_BROKEN, (why, cause)).into_pyobject(py)
            }
        }
    });
    let items: PyResult<Vec<_>> = items.collect();
    PyList::new(py, items?)
}

/// Results at least this large reach Python as a [`Received`] instead of a copy in `bytes`.
const LEND_MIN: usize = 1 << 20;

/// A large result's bytes, lent to Python as a read-only buffer (`pickle.loads` reads it in
/// place). Copying them into `bytes` would hold the GIL for the copy, page faults included: a
/// second or more per GiB, during which no other Python thread runs.
#[pyclass(name = "ReceivedBytes", module = "ferropool._core", frozen)]
pub struct Received(Vec<u8>);

#[pymethods]
impl Received {
    fn __len__(&self) -> usize {
        self.0.len()
    }

    /// # Safety
    /// Called by Python with a valid `view` to fill.
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut pyo3::ffi::Py_buffer,
        flags: std::os::raw::c_int,
    ) -> PyResult<()> {
        let bytes = &slf.get().0;
        let len = pyo3::ffi::Py_ssize_t::try_from(bytes.len())
            .map_err(|_| PyErr::from(Error::InvalidArgument("result too large for a buffer".into())))?;
        // SAFETY: the object is frozen, so the bytes never move or change while it lives, and
        // PyBuffer_FillInfo makes the view hold a reference to it (read-only: writable requests
        // fail with BufferError).
        let rc = unsafe {
            pyo3::ffi::PyBuffer_FillInfo(view, slf.as_ptr(), bytes.as_ptr().cast_mut().cast(), len, 1, flags)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(PyErr::fetch(slf.py()))
        }
    }
}

/// Takes ownership of descriptors handed over by Python.
fn take_fds(fds: Vec<i32>) -> PyResult<Vec<OwnedFd>> {
    if fds.len() > wire::MAX_FRAME_FDS {
        return Err(Error::InvalidArgument("too many shared-memory buffers in one call".into()).into());
    }
    let bad = fds.iter().find_map(|&fd| crate::errors::fd_arg(fd).err());
    // SAFETY: the caller (ProcessBackend, via _runtime/buffers.py) created each descriptor for this call
    // and gives up ownership here; nothing else closes them. Only open ones are taken.
    let owned: Vec<OwnedFd> = fds
        .into_iter()
        .filter(|&fd| crate::errors::fd_arg(fd).is_ok())
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    match bad {
        // the good ones are ours either way: dropping them closes them
        Some(err) => Err(err.into()),
        None => Ok(owned),
    }
}
