//! The process-pool engine: pending work, the workers' links, and their liveness, driven by one
//! long-lived thread per pool that never takes the GIL.
//!
//! ```text
//!  submit() ──(direct, when a worker is idle)──────────────────────────┐
//!     │                                                                ▼
//!     └──▶ pending ──dispatch()──▶ worker.out ──write──▶ socket ──▶ worker process
//!                                                                      │ runs the call
//!  Completion ◀── frames ◀── FrameReader ◀── read ◀── socket ◀─────────┘
//!      │            (and: pidfd readable ⇒ worker died ⇒ its in-flight tasks fail)
//!      ▼
//!  results channel ──▶ completion thread (takes the GIL, sets futures: see `process_pool.rs`)
//! ```
//!
//! All state lives in one `Sched` behind a mutex. The engine thread is the only one that adds or
//! removes workers; submitters only append to `pending` or, when the queue is empty and a worker
//! holds nothing, write the frame to that worker themselves. That fast path saves one thread
//! hop per round trip, and it never needs to wake the engine: a queued task always has a worker
//! with work in flight, whose result will wake the engine, which then dispatches.
//!
//! The parts, one concept each (this file holds the handle, `Engine`, and the state they share):
//!
//! - `slot`: what the engine keeps per worker: its child process (`child.rs`), its link, the
//!   tasks it holds.
//! - `dispatch`: handing tasks to workers, and how many each may hold (its window).
//! - `claim`: a caller waiting for its own task reads the result off the worker's link itself.
//! - `deadlines`: time limits and `Future.kill()`: stopping a task that runs.
//! - `link`: reading what workers send, checking it, acting on each frame.
//! - `phase`: the pool's life (running, draining, stopping, done), starting and stopping
//!   workers, their exits, and a broken pool.
//! - `poll`: the engine thread's loop: one `poll` over the wake-up socket, every link and every
//!   worker's exit descriptor.

mod claim;
mod deadlines;
mod dispatch;
mod link;
mod phase;
mod poll;
mod slot;
#[cfg(test)]
mod tests;

use std::collections::{HashSet, VecDeque};
use std::io;
use std::mem;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::errors::{Error, Result};
use crate::registry;
use crate::signals::CountLatch;
use crate::stats::{PoolCounters, PoolSnapshot, WorkerSnapshot};
use crate::supervisor::WorkerSpec;
use crate::task::{Completion, Outcome, Task};

pub use link::decode_link;
pub use phase::describe_exit;
use phase::Phase;
use slot::Worker;

/// What the engine needs to know to run a pool.
pub struct EngineConfig {
    pub spec: WorkerSpec,
    pub workers: usize,
    /// The initializer call each worker runs before its first task.
    pub init: Option<InitCall>,
    /// The user gave an initializer (`init` may also hold only the pool's own set-up): as in
    /// `multiprocessing.Pool`, the first workers start even if the pool is closed before any
    /// task, and every worker runs the initializer before it is told to stop (see `phase.rs`).
    pub run_initializer: bool,
    pub max_tasks_per_child: Option<u64>,
    /// Resident memory (bytes) past which a worker is replaced after its current task; 0: none.
    pub max_memory_per_child: u64,
}

/// A pickled initializer call, laid out like a task body.
pub struct InitCall {
    pub flags: u8,
    pub fn_len: u32,
    pub body: Vec<u8>,
}

/// Everything the engine knows, behind one mutex.
struct Sched {
    cfg: EngineConfig,
    phase: Phase,
    /// Tasks no worker has yet, oldest first.
    pending: VecDeque<Task>,
    workers: Vec<Worker>,
    /// Where outcomes go; dropped when the engine ends, which ends the completion thread.
    results: Option<Sender<Vec<Completion>>>,
    /// Outcomes gathered while handling one round of events, sent together.
    out: Vec<Completion>,
    /// Why the pool cannot run work any more.
    broken: Option<String>,
    /// Moving average of task run time reported by workers, µs.
    ewma_us: Option<f64>,
    /// Workers that died before `READY`, in a row.
    startup_failures: u32,
    /// Tasks to kill the moment they start (they wait in a worker behind another task).
    kill_requested: HashSet<u64>,
    /// When stopped workers are killed if still alive.
    stop_deadline: Option<Instant>,
    /// The engine polls `wake_rx`; anyone who needs its attention writes a byte to `wake_tx`.
    /// Both close when the engine ends, so a finished pool holds no descriptor.
    wake_rx: Option<UnixStream>,
    wake_tx: Option<UnixStream>,
    /// The engine is awake, or a wake-up byte is on its way: nobody needs to write another.
    /// Cleared by the engine just before it sleeps; set by whoever wakes it. Both happen under
    /// the lock, so a task queued after the engine looked is always followed by a wake-up byte.
    wake_sent: bool,
    /// The engine's last `poll` left out a worker a caller had claimed (`claim.rs`): whoever
    /// puts that worker's reader back wakes the engine, so that it watches the worker again.
    claim_skipped: bool,
    /// What `stats()` reports beyond the live workers (see `stats.rs`).
    counters: PoolCounters,
}

/// The state shared by the engine thread and the pool's handle.
pub struct EngineState {
    sched: Mutex<Sched>,
    /// Opens when the engine thread has ended.
    pub finished: CountLatch,
}

/// The handle a front end holds. Dropping it shuts the pool down gracefully in the background.
pub struct Engine {
    shared: Arc<EngineState>,
    /// The fork epoch it was made in: in a forked child it is left alone (see `registry.rs`).
    epoch: u64,
}

impl Engine {
    /// Starts the engine thread, which starts the workers.
    pub fn start(cfg: EngineConfig, results: Sender<Vec<Completion>>) -> io::Result<Engine> {
        let shared = Arc::new(EngineState {
            sched: Mutex::new(Sched::new(cfg, results)?),
            finished: CountLatch::new(1),
        });
        let for_thread = Arc::clone(&shared);
        thread::Builder::new().name("ferropool-engine".into()).spawn(move || {
            poll::run(&for_thread);
            for_thread.finished.count_down();
        })?;
        Ok(Engine {
            shared,
            epoch: registry::fork_epoch(),
        })
    }

    /// Queues a task, or hands it straight to an idle worker.
    pub fn submit(&self, task: Task) -> Result<()> {
        let s = self.shared.lock();
        submit_locked(s, task)
    }

    /// [`Engine::submit`] if the lock is free now; otherwise the task comes back, so that a
    /// caller holding the GIL can release it before waiting (another thread may hold the lock for
    /// a while, and must never wait for the GIL while it does).
    pub fn try_submit(&self, task: Task) -> std::result::Result<Result<()>, Task> {
        match self.shared.try_lock() {
            Some(s) => Ok(submit_locked(s, task)),
            None => Err(task),
        }
    }
    /// Stops accepting work; finishes what is queued (or cancels it) and running, then stops
    /// the workers. Returns at once; see [`Engine::wait_finished`].
    pub fn shutdown(&self, cancel_pending: bool) {
        self.shared.shutdown(cancel_pending);
    }

    /// Kills every worker now; queued tasks are cancelled and running ones fail.
    pub fn terminate(&self) {
        registry::Pool::terminate(&*self.shared);
    }

    /// Waits up to `timeout` for the engine thread to end.
    pub fn wait_finished(&self, timeout: Duration) -> bool {
        self.shared.finished.wait_for(timeout)
    }

    /// Process ids of the live workers.
    pub fn pids(&self) -> Vec<u32> {
        self.shared.lock().workers.iter().map(Worker::pid).collect()
    }

    /// The state the engine thread runs on, for what a task's handle asks of the pool
    /// ([`EngineState::stop`], [`EngineState::wait_own`]).
    pub fn state(&self) -> Arc<EngineState> {
        Arc::clone(&self.shared)
    }

    /// The engine's side of interpreter-exit bookkeeping (see `registry.rs`).
    pub fn lifecycle(&self) -> Arc<dyn registry::Pool> {
        Arc::clone(&self.shared) as Arc<dyn registry::Pool>
    }

    /// Why the pool is broken, if it is.
    pub fn broken(&self) -> Option<String> {
        self.shared.lock().broken.clone()
    }

    /// What the workers did and why they left, with the queue depth (see `stats.rs`).
    pub fn stats(&self) -> PoolSnapshot {
        let s = self.shared.lock();
        let now = Instant::now();
        let workers = s
            .workers
            .iter()
            .map(|w| WorkerSnapshot::new(w.pid(), w.ready, &w.counters, w.inflight.len(), now))
            .collect();
        PoolSnapshot::new(&s.counters, workers, s.pending.len())
    }
}

/// The body of [`Engine::submit`], once the lock is held.
fn submit_locked(mut s: MutexGuard<'_, Sched>, task: Task) -> Result<()> {
    if let Some(why) = &s.broken {
        return Err(Error::BrokenProcess(why.clone()));
    }
    if s.phase != Phase::Running {
        return Err(Error::ShutDown);
    }
    // Fast path for a lone call (the latency case): the whole pool is idle, so writing the
    // frame here saves the hop through the engine thread. Under a stream of submits the
    // pool is never idle, and tasks queue up for the engine to send in batches, which costs
    // the submitter no system call per task.
    if s.pending.is_empty() && s.workers.iter().all(|w| w.inflight.is_empty()) {
        if let Some(w) = s.workers.iter_mut().find(|w| w.can_take()) {
            let timed = task.timeout.is_some();
            dispatch::send_call(w, task);
            // a failed write shows up as the worker's death; a partial one is the engine's
            // to finish; a time limit is the engine's to watch
            if matches!(w.out.flush_to_link(&w.link), Ok(false)) || timed {
                s.wake();
            }
            return Ok(());
        }
    }
    s.pending.push_back(task);
    // a worker with room takes it at once; otherwise the next result makes room and the
    // engine dispatches then, with no wake-up needed
    let window = s.window();
    if s.workers.is_empty() || s.workers.iter().any(|w| w.can_take() && w.inflight.len() < window) {
        s.wake();
    }
    Ok(())
}

impl Drop for Engine {
    fn drop(&mut self) {
        if registry::is_ours(self.epoch) {
            self.shared.shutdown(false);
        }
    }
}

impl EngineState {
    /// Stops task `id` wherever it is (`Future.kill()`); `false` if it is no longer in the pool.
    pub fn stop(&self, id: u64) -> bool {
        let mut s = self.lock();
        let found = s.kill_task(id);
        s.send_out();
        s.wake();
        found
    }
}

impl registry::Pool for EngineState {
    fn begin_shutdown(&self) {
        self.shutdown(false);
    }

    fn terminate(&self) {
        let mut s = self.lock();
        if s.phase != Phase::Done {
            s.terminate();
            s.send_out();
            s.wake();
        }
    }

    fn wait_finished(&self, timeout: Duration) -> bool {
        self.finished.wait_for(timeout)
    }
}

impl EngineState {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`EngineState::lock`] if the lock is free now, `None` if another thread holds it.
    fn try_lock(&self) -> Option<MutexGuard<'_, Sched>> {
        match self.sched.try_lock() {
            Ok(s) => Some(s),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn shutdown(&self, cancel_pending: bool) {
        let mut s = self.lock();
        if s.phase == Phase::Running {
            s.phase = Phase::Draining;
        }
        if cancel_pending {
            let pending = mem::take(&mut s.pending);
            for task in pending {
                if task.state.cancel() {
                    s.out.push(Completion {
                        id: task.id,
                        outcome: Outcome::Cancelled,
                    });
                }
            }
            s.send_out();
        }
        s.wake();
    }
}

impl Sched {
    /// The state of a pool that has started nothing yet.
    fn new(cfg: EngineConfig, results: Sender<Vec<Completion>>) -> io::Result<Sched> {
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        Ok(Sched {
            cfg,
            phase: Phase::Running,
            pending: VecDeque::new(),
            workers: Vec::new(),
            results: Some(results),
            out: Vec::new(),
            broken: None,
            ewma_us: None,
            startup_failures: 0,
            kill_requested: HashSet::new(),
            stop_deadline: None,
            wake_rx: Some(wake_rx),
            wake_tx: Some(wake_tx),
            wake_sent: false,
            claim_skipped: false,
            counters: PoolCounters::default(),
        })
    }

    /// Sends gathered outcomes to the completion thread.
    fn send_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let batch = mem::take(&mut self.out);
        if let Some(tx) = &self.results {
            let _ = tx.send(batch);
        }
    }
}
