//! The thread pool: Rust-owned threads that run Python callables.
//!
//! Each thread attaches to the interpreter once and keeps its thread state for life. It takes
//! jobs without releasing the GIL while the queue has some, and releases it only to wait for the
//! next job (granian's idiom): so a burst of short jobs costs no GIL hand-off per job. Threads are
//! started on demand, when no idle thread can take a submitted job and the cap allows, as
//! `concurrent.futures.ThreadPoolExecutor` does. Dropping the queue's sender is shutdown: every
//! thread finishes the jobs still queued and exits.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{unbounded, Receiver, Sender, TryRecvError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};

use crate::errors::Error;
use crate::registry;
use crate::signals::{timeout_from_secs, wait_interruptible, CountLatch};
use crate::task::{attach_handle, PyTaskHandle, TaskState};

/// One call and the future it completes.
struct Job {
    /// Decides, atomically with the future's `cancel()`, whether the call runs.
    state: Arc<TaskState>,
    future: Py<PyAny>,
    func: Py<PyAny>,
    args: Py<PyTuple>,
    kwargs: Option<Py<PyDict>>,
}

struct PoolState {
    /// `None` once shut down.
    tx: Mutex<Option<Sender<Job>>>,
    rx: Receiver<Job>,
    /// Threads waiting for work that no submit has claimed yet (CPython's idle semaphore).
    idle: AtomicUsize,
    started: AtomicUsize,
    /// Threads alive; opens at zero.
    live: CountLatch,
    max_workers: usize,
    name_prefix: String,
    initializer: Option<(Py<PyAny>, Py<PyTuple>)>,
    /// Python helpers in `python/ferropool/_pool/threads.py`: thread_started, thread_finished,
    /// initializer_failed.
    hooks: Py<PyAny>,
    broken: Mutex<Option<String>>,
    /// `broken.is_some()`, readable per job without the mutex.
    is_broken: AtomicBool,
    /// Each thread's counters, for `stats()`, in the order the threads started.
    counters: Mutex<Vec<Arc<ThreadCounters>>>,
    /// Jobs being run now.
    running: AtomicUsize,
}

/// What one thread did: `stats()` reads these while the thread updates them.
struct ThreadCounters {
    name: String,
    started: Instant,
    tasks_done: AtomicU64,
    busy_ns: AtomicU64,
    alive: AtomicBool,
}

thread_local! {
    /// The pool this thread serves, so a task that joins its own pool gets an error, not a hang.
    static SERVING: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// A thread pool as Python sees it.
#[pyclass(name = "ThreadEngine", module = "ferropool._core", frozen)]
pub struct PyThreadEngine {
    shared: Arc<PoolState>,
    /// The fork epoch this pool was made in (see `registry.rs`).
    epoch: u64,
}

#[pymethods]
impl PyThreadEngine {
    #[new]
    #[pyo3(signature = (max_workers, name_prefix, hooks, initializer=None, initargs=None))]
    fn new(
        py: Python<'_>,
        max_workers: usize,
        name_prefix: String,
        hooks: Py<PyAny>,
        initializer: Option<Py<PyAny>>,
        initargs: Option<Py<PyTuple>>,
    ) -> PyResult<Self> {
        if max_workers == 0 {
            return Err(Error::InvalidArgument("max_workers must be greater than 0".into()).into());
        }
        let (tx, rx) = unbounded();
        let initargs = initargs.unwrap_or_else(|| PyTuple::empty(py).unbind());
        let shared = Arc::new(PoolState {
            tx: Mutex::new(Some(tx)),
            rx,
            idle: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            live: CountLatch::new(0),
            max_workers,
            name_prefix,
            initializer: initializer.map(|f| (f, initargs)),
            hooks,
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            counters: Mutex::new(Vec::new()),
            running: AtomicUsize::new(0),
        });
        registry::register(Arc::clone(&shared) as Arc<dyn registry::Pool>);
        Ok(PyThreadEngine {
            shared,
            epoch: registry::fork_epoch(),
        })
    }

    /// Queues `func(*args, **kwargs)`; its outcome goes to `future`.
    #[pyo3(signature = (future, func, args, kwargs=None))]
    fn submit(
        &self,
        py: Python<'_>,
        future: Bound<'_, PyAny>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        kwargs: Option<Py<PyDict>>,
    ) -> PyResult<()> {
        if !registry::is_ours(self.epoch) {
            return Err(registry::inherited_pool_error());
        }
        let sh = &self.shared;
        if let Some(why) = sh.broken_reason() {
            return Err(Error::BrokenThreads(why).into());
        }
        {
            let tx = sh.tx.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(tx) = tx.as_ref() else {
                return Err(Error::ShutDown.into());
            };
            let state = Arc::new(TaskState::default());
            let handle = PyTaskHandle {
                state: Arc::clone(&state),
                id: 0,
                control: None,
                cancel_stops: false,
            };
            attach_handle(py, &future, handle)?;
            tx.send(Job {
                state,
                future: future.unbind(),
                func,
                args,
                kwargs,
            })
            .map_err(|_| Error::ShutDown)?;
        }
        let claimed_idle = sh
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !claimed_idle {
            start_thread_if_allowed(sh)?;
        }
        Ok(())
    }

    /// Stops accepting work; `cancel_futures` cancels what is still queued; `wait` waits for the
    /// threads to finish.
    #[pyo3(signature = (wait=true, cancel_futures=false))]
    fn shutdown(&self, py: Python<'_>, wait: bool, cancel_futures: bool) -> PyResult<()> {
        if !registry::is_ours(self.epoch) {
            return Ok(()); // the parent's threads: nothing of them runs here
        }
        let sh = &self.shared;
        drop(sh.tx.lock().unwrap_or_else(PoisonError::into_inner).take());
        if cancel_futures {
            while let Ok(job) = sh.rx.try_recv() {
                job.future.call_method0(py, intern!(py, "cancel"))?;
            }
        }
        if wait {
            if SERVING.with(std::cell::Cell::get) == Arc::as_ptr(sh) as usize {
                return Err(Error::WouldDeadlock(
                    "cannot join current thread: shutdown(wait=True) called from a task of the same pool",
                )
                .into());
            }
            wait_interruptible(py, None, |slice| sh.live.wait_for(slice))?;
        }
        Ok(())
    }

    /// Waits for every thread to end; `False` on timeout.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        if !registry::is_ours(self.epoch) {
            return Ok(true);
        }
        let sh = &self.shared;
        wait_interruptible(py, timeout_from_secs(timeout)?, |slice| sh.live.wait_for(slice))
    }

    /// `stats()`: each thread's tasks and busy/idle time, queue depth and jobs running.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let sh = &self.shared;
        let workers = PyList::empty(py);
        let mut tasks_done = 0u64;
        let now = Instant::now();
        for c in sh.counters.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let d = PyDict::new(py);
            let done = c.tasks_done.load(Ordering::Relaxed);
            #[allow(clippy::cast_precision_loss)] // ns totals below 2^52 are 52 days of work
            let busy = c.busy_ns.load(Ordering::Relaxed) as f64 / 1e9;
            let alive_for = now.saturating_duration_since(c.started).as_secs_f64();
            tasks_done += done;
            d.set_item("name", &c.name)?;
            d.set_item("alive", c.alive.load(Ordering::Relaxed))?;
            d.set_item("tasks_done", done)?;
            d.set_item("busy_seconds", busy)?;
            d.set_item("idle_seconds", (alive_for - busy).max(0.0))?;
            workers.append(d)?;
        }
        let out = PyDict::new(py);
        out.set_item("workers", workers)?;
        out.set_item("queued", sh.rx.len())?;
        out.set_item("in_flight", sh.running.load(Ordering::Relaxed))?;
        out.set_item("tasks_done", tasks_done)?;
        Ok(out)
    }

    /// Threads started so far that are still alive.
    #[getter]
    fn threads(&self) -> usize {
        self.shared.started.load(Ordering::Acquire)
    }
}

impl PoolState {
    /// Why the pool is broken, if it is; the flag keeps the per-job check free of the mutex.
    fn broken_reason(&self) -> Option<String> {
        if !self.is_broken.load(Ordering::Acquire) {
            return None;
        }
        self.broken.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl Drop for PyThreadEngine {
    /// An executor nobody references any more: its threads finish the queued jobs and exit, as
    /// the stdlib's do when their executor is collected.
    fn drop(&mut self) {
        if registry::is_ours(self.epoch) {
            registry::Pool::begin_shutdown(&*self.shared);
        }
    }
}

impl registry::Pool for PoolState {
    fn begin_shutdown(&self) {
        drop(self.tx.lock().unwrap_or_else(PoisonError::into_inner).take());
    }

    /// Threads cannot be killed: queued jobs are dropped (their futures stay pending, which
    /// nobody can observe any more at exit) and running ones finish.
    fn terminate(&self) {
        self.begin_shutdown();
        while self.rx.try_recv().is_ok() {}
    }

    fn kills_running_work(&self) -> bool {
        false
    }

    fn wait_finished(&self, timeout: Duration) -> bool {
        self.live.wait_for(timeout)
    }
}

fn start_thread_if_allowed(sh: &Arc<PoolState>) -> PyResult<()> {
    let n = sh.started.load(Ordering::Acquire);
    if n >= sh.max_workers
        || sh
            .started
            .compare_exchange(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
    {
        return Ok(());
    }
    let name = format!("{}_{}", sh.name_prefix, n);
    let for_thread = Arc::clone(sh);
    sh.live.count_up();
    let spawned = thread::Builder::new().name(name.clone()).spawn(move || {
        Python::attach(|py| serve(py, &for_thread, &name));
        for_thread.live.count_down();
    });
    if let Err(e) = spawned {
        sh.live.count_down();
        sh.started.fetch_sub(1, Ordering::AcqRel);
        return Err(Error::from(e).into());
    }
    Ok(())
}

/// A pool thread's life: name itself, run the initializer, then take jobs until shutdown.
fn serve(py: Python<'_>, sh: &Arc<PoolState>, name: &str) {
    SERVING.with(|s| s.set(Arc::as_ptr(sh) as usize));
    let hooks = sh.hooks.bind(py);
    let counters = Arc::new(ThreadCounters {
        name: name.to_owned(),
        started: Instant::now(),
        tasks_done: AtomicU64::new(0),
        busy_ns: AtomicU64::new(0),
        alive: AtomicBool::new(true),
    });
    sh.counters
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::clone(&counters));
    if let Err(e) = hooks.call_method1(intern!(py, "thread_started"), (name,)) {
        e.write_unraisable(py, None);
    }
    if let Some((init, args)) = &sh.initializer {
        if let Err(err) = init.call1(py, args.bind(py)) {
            if let Err(e) = hooks.call_method1(intern!(py, "initializer_failed"), (err.into_value(py),)) {
                e.write_unraisable(py, None);
            }
            break_pool(
                py,
                sh,
                "A thread initializer failed, the thread pool is not usable anymore",
            );
        }
    }
    loop {
        let job = match sh.rx.try_recv() {
            Ok(job) => job,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                sh.idle.fetch_add(1, Ordering::AcqRel);
                match py.detach(|| sh.rx.recv()) {
                    Ok(job) => job,
                    Err(_) => break,
                }
            }
        };
        match sh.broken_reason() {
            Some(why) => fail_job(py, job, &why),
            None => run_counted(py, sh, &counters, job),
        }
    }
    counters.alive.store(false, Ordering::Relaxed);
    sh.started.fetch_sub(1, Ordering::AcqRel);
    if let Err(e) = hooks.call_method0(intern!(py, "thread_finished")) {
        e.write_unraisable(py, None);
    }
}

/// Runs one job, counting it for `stats()`.
fn run_counted(py: Python<'_>, sh: &PoolState, counters: &ThreadCounters, job: Job) {
    let started = Instant::now();
    sh.running.fetch_add(1, Ordering::Relaxed);
    run_job(py, job);
    sh.running.fetch_sub(1, Ordering::Relaxed);
    let ns = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    counters.busy_ns.fetch_add(ns, Ordering::Relaxed);
    counters.tasks_done.fetch_add(1, Ordering::Relaxed);
}

/// Runs one job the way CPython's `_WorkItem.run` does. Claiming the task state replaces
/// `set_running_or_notify_cancel()`: a job whose future was cancelled is skipped, and the
/// future's own `cancel()` already notified its waiters.
fn run_job(py: Python<'_>, job: Job) {
    if !job.state.start() {
        return;
    }
    let future = job.future.bind(py);
    let outcome = job
        .func
        .bind(py)
        .call(job.args.bind(py), job.kwargs.as_ref().map(|k| k.bind(py)));
    let set = match outcome {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,)),
        Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),)),
    };
    if let Err(e) = set {
        e.write_unraisable(py, Some(future));
    }
}

fn fail_job(py: Python<'_>, job: Job, why: &str) {
    if !job.state.start() {
        return;
    }
    let future = job.future.bind(py);
    let exc = PyErr::from(Error::BrokenThreads(why.to_owned())).into_value(py);
    if let Err(e) = future.call_method1(intern!(py, "set_exception"), (exc,)) {
        e.write_unraisable(py, Some(future));
    }
}

/// Marks the pool broken and fails every queued job, as CPython's `_initializer_failed` does.
fn break_pool(py: Python<'_>, sh: &PoolState, why: &str) {
    sh.broken
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(|| why.to_owned());
    sh.is_broken.store(true, Ordering::Release);
    while let Ok(job) = sh.rx.try_recv() {
        fail_job(py, job, why);
    }
}
