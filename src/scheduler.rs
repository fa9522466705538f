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
//! How many tasks a worker may hold (`window`) follows the measured task time: enough to cover
//! about [`WINDOW_TARGET_US`] of work, so tiny tasks travel in batches and long ones are not
//! parked behind each other in one worker while another idles.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::errors::{Error, Result};
use crate::registry;
use crate::signals::CountLatch;
use crate::stats::{ExitCause, PoolCounters, PoolSnapshot, WorkerSnapshot};
use crate::supervisor::{Worker, WorkerSpec};
use crate::task::{Completion, ExitInfo, Outcome, Task};
use crate::wire::{self, kind, ReadOutcome};

/// Work a worker should hold, in µs of measured task time (see module docs).
const WINDOW_TARGET_US: f64 = 2000.0;
/// Upper bound on tasks held by one worker.
const WINDOW_MAX: usize = 512;
/// Tasks a worker holds before any task time has been measured.
const WINDOW_INITIAL: usize = 2;
/// Workers that die before start-up completes, in a row, before the pool gives up.
const STARTUP_FAILURES_MAX: u32 = 3;
/// How long stopped workers get to exit before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the engine needs to know to run a pool.
pub struct EngineConfig {
    pub spec: WorkerSpec,
    pub workers: usize,
    /// The initializer call each worker runs before its first task.
    pub init: Option<InitCall>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Accepting and running work.
    Running,
    /// `shutdown()` was called: no new work; finish what is queued and running.
    Draining,
    /// Workers were told to stop; waiting for them to exit.
    Stopping,
    /// Everything has exited; the engine thread ends.
    Done,
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
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake_tx.set_nonblocking(true)?;
        let shared = Arc::new(EngineState {
            sched: Mutex::new(Sched {
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
                counters: PoolCounters::default(),
            }),
            finished: CountLatch::new(1),
        });
        let for_thread = Arc::clone(&shared);
        thread::Builder::new().name("ferropool-engine".into()).spawn(move || {
            run(&for_thread);
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
        match self.shared.sched.try_lock() {
            Ok(s) => Ok(submit_locked(s, task)),
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(submit_locked(p.into_inner(), task)),
            Err(std::sync::TryLockError::WouldBlock) => Err(task),
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
        self.shared.lock().workers.iter().map(|w| w.pid).collect()
    }

    /// What a task handle uses to stop its task.
    pub fn stopper(&self) -> std::sync::Weak<dyn crate::task::Stopper> {
        let shared: Arc<dyn crate::task::Stopper> = Arc::clone(&self.shared) as Arc<dyn crate::task::Stopper>;
        Arc::downgrade(&shared)
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
            .map(|w| WorkerSnapshot::new(w.pid, w.ready, &w.counters, w.inflight.len(), now))
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
            send_call(w, task);
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

impl crate::task::Stopper for EngineState {
    fn stop(&self, id: u64) -> bool {
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

impl Worker {
    /// Whether the scheduler may give this worker another task.
    fn can_take(&self) -> bool {
        !self.stopping && !self.link_closed && self.quota != Some(0)
    }

    /// The ids its next results must carry, in order; `None` once it is on its way out, when
    /// late results are only dropped.
    fn expected_results(&self) -> Option<Vec<u64>> {
        (!self.stopping).then(|| self.inflight.iter().map(|t| t.id).collect())
    }

    /// The worker sent bytes that are not our protocol: nothing more is read from it, and it is
    /// killed. Its exit is then handled as a death (`on_exit`): the task it ran fails with
    /// `WorkerDiedError` naming `why`, the tasks behind it go to other workers, and the pool
    /// starts a replacement.
    fn reject(&mut self, why: String) {
        if self.bad_frame.is_none() {
            self.bad_frame = Some(why);
        }
        self.link_closed = true;
        self.signal_group(libc::SIGKILL);
    }
}

/// Most bytes read from one worker per round while others wait their turn.
const READ_BUDGET: usize = 1 << 20;

/// What one round of reading a worker's link gave.
#[derive(Default)]
struct Pulled {
    frames: Vec<wire::Frame>,
    /// The link reached end-of-file or failed.
    closed: bool,
    /// The worker sent something that is not a frame of ours: why.
    bad: Option<String>,
}

/// Reads `link` until it has nothing more or `budget` bytes came, decoding the frames.
///
/// Each header is checked as soon as it is complete, before its body arrives, so a worker that
/// announces a frame it will never finish is caught at once instead of waited for: its length
/// (see `wire::MAX_BODY_LEN`), its kind, and for a result, the task it names, which must be the
/// next of `expect` (the worker's tasks in order) while there are any. Results past `expect`
/// are for tasks sent meanwhile, and are checked in `on_frame`.
fn pull_frames(link: &UnixStream, reader: &mut wire::FrameReader, expect: Option<&[u64]>, budget: usize) -> Pulled {
    let mut pulled = Pulled::default();
    let mut results = 0usize;
    let mut read = 0usize;
    loop {
        let step = reader.read_from_link(link);
        loop {
            let header = reader.peek_header();
            if let Err(why) = header.as_ref().map_err(ToString::to_string).and_then(|h| match h {
                Some(h) => check_header(h, expect, results),
                None => Ok(()),
            }) {
                pulled.bad = Some(why);
                return pulled;
            }
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    if matches!(frame.kind, kind::OK | kind::ERR) {
                        results += 1;
                    }
                    pulled.frames.push(frame);
                }
                Ok(None) => break,
                Err(why) => {
                    pulled.bad = Some(why.to_string());
                    return pulled;
                }
            }
        }
        match step {
            Ok(ReadOutcome::Data(n)) => {
                read = read.saturating_add(n);
                if read >= budget {
                    return pulled;
                }
            }
            Ok(ReadOutcome::WouldBlock) => return pulled,
            Ok(ReadOutcome::Eof) => {
                pulled.closed = true;
                return pulled;
            }
            Err(e) => {
                pulled.bad = Some(format!("reading its link failed: {e}"));
                return pulled;
            }
        }
    }
}

/// Reads `bytes` as a worker's link would bring them (as much as one socket buffer holds), with
/// the engine's checks: the frames, and why the link would be given up, if it would. For the
/// fuzz target (`fuzz/`) and the tests.
#[doc(hidden)]
pub fn decode_link(bytes: &[u8], expect: Option<&[u64]>) -> io::Result<(Vec<wire::Frame>, Option<String>)> {
    let (mut tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let mut sent = 0;
    while sent < bytes.len() {
        match tx.write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    drop(tx);
    let pulled = pull_frames(&rx, &mut wire::FrameReader::default(), expect, usize::MAX);
    Ok((pulled.frames, pulled.bad))
}

/// Whether a worker may send the frame `h` introduces, as its result number `nth`.
fn check_header(h: &wire::Header, expect: Option<&[u64]>, nth: usize) -> std::result::Result<(), String> {
    match h.kind {
        kind::READY | kind::ERR | kind::INIT_FAILED | kind::RETIRE if h.nfds > 0 => {
            Err(format!("it sent descriptors with a frame of kind {}", h.kind))
        }
        kind::OK | kind::ERR => match expect.map(|ids| ids.get(nth)) {
            Some(Some(&id)) if id != h.id => Err(format!("it sent a result for task {} while running task {id}", h.id)),
            _ => Ok(()),
        },
        kind::READY | kind::INIT_FAILED | kind::RETIRE => Ok(()),
        other => Err(format!("it sent a frame of unknown kind {other}")),
    }
}

/// Encodes a task into the worker's outgoing buffer and records it as in flight.
/// The caller has checked the worker can take it; a task cancelled meanwhile is dropped here.
fn send_call(w: &mut Worker, task: Task) -> bool {
    if !task.state.start_or_resume() {
        return false;
    }
    if task.fds.is_empty() {
        wire::encode(
            &mut w.out.buf,
            kind::CALL,
            task.flags,
            task.id,
            task.fn_len,
            &[&task.body],
        );
    } else {
        // copies: the task keeps its segments in case this worker dies before running it
        let fds = task.fds.iter().filter_map(|fd| fd.try_clone().ok()).collect();
        wire::encode_fds(
            &mut w.out,
            kind::CALL,
            task.flags,
            task.id,
            task.fn_len,
            &[&task.body],
            fds,
        );
    }
    if w.inflight.is_empty() && w.ready {
        w.head_started = Some(Instant::now());
    }
    w.inflight.push_back(task);
    if let Some(q) = w.quota.as_mut() {
        *q = q.saturating_sub(1);
    }
    true
}

impl Sched {
    /// Makes the engine thread look at the state again.
    fn wake(&mut self) {
        if !self.wake_sent {
            if let Some(tx) = &self.wake_tx {
                self.wake_sent = true;
                let _ = (&*tx).write(&[1]);
            }
        }
    }

    /// Reads the wake-up bytes that have arrived.
    fn drain_wake(&mut self) {
        let mut sink = [0u8; 64];
        if let Some(rx) = &self.wake_rx {
            while matches!((&*rx).read(&mut sink), Ok(n) if n > 0) {}
        }
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

    /// Tasks one worker may hold, from the measured task time.
    fn window(&self) -> usize {
        window_for(self.ewma_us)
    }

    /// Workers that count toward the pool's size (not on their way out).
    fn active_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.stopping).count()
    }

    /// One step of the engine between two waits: start workers, hand out work, move phases.
    fn maintain(&mut self) {
        if matches!(self.phase, Phase::Running | Phase::Draining) {
            let wanted = if self.phase == Phase::Running || !self.pending.is_empty() {
                self.cfg.workers
            } else {
                0
            };
            while self.broken.is_none() && self.active_workers() < wanted {
                if let Err(e) = self.spawn_worker() {
                    self.mark_broken(format!("could not start a worker process: {e}"), None);
                }
            }
            self.dispatch();
            if self.phase == Phase::Draining
                && self.pending.is_empty()
                && self.workers.iter().all(|w| w.inflight.is_empty())
            {
                self.stop_all();
            }
        }
        if self.phase == Phase::Stopping {
            if self.workers.is_empty() {
                self.phase = Phase::Done;
                self.send_out();
                // a finished pool holds nothing: the completion thread ends, descriptors close
                self.results = None;
                self.wake_rx = None;
                self.wake_tx = None;
                self.cfg.spec.forkserver = None;
                self.cfg.spec.output = None; // the output thread's sign that no worker is left
            } else if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
                for w in &mut self.workers {
                    w.signal_group(libc::SIGKILL);
                }
            }
        }
        for w in &mut self.workers {
            if !w.out.is_empty() && !w.link_closed {
                let _ = w.out.flush_to_link(&w.link);
            }
        }
        self.send_out();
    }

    fn spawn_worker(&mut self) -> io::Result<()> {
        let mut w = Worker::start(&mut self.cfg.spec, self.cfg.max_tasks_per_child)?;
        self.counters.workers_started += 1;
        // every worker gets an INIT first (empty without an initializer): it answers READY after it
        let limit = self.cfg.max_memory_per_child;
        match &self.cfg.init {
            Some(init) => wire::encode_init(&mut w.out.buf, init.flags, limit, init.fn_len, &init.body),
            None => wire::encode_init(&mut w.out.buf, 0, limit, 0, &[]),
        }
        self.workers.push(w);
        Ok(())
    }

    /// Hands pending tasks out, each to the worker holding the fewest, so a quick task never
    /// waits behind a long one while another worker has room.
    fn dispatch(&mut self) {
        let window = self.window();
        while !self.pending.is_empty() {
            let target = self
                .workers
                .iter()
                .enumerate()
                .filter(|(_, w)| w.can_take() && w.inflight.len() < window)
                .min_by_key(|(_, w)| w.inflight.len())
                .map(|(i, _)| i);
            let Some(i) = target else { break };
            let Some(task) = self.pending.pop_front() else { break };
            let id = task.id;
            if self.kill_requested.remove(&id) {
                // stopped while it waited in a worker that then died: it never runs
                self.out.push(Completion {
                    id,
                    outcome: Outcome::Killed,
                });
                continue;
            }
            if !send_call(&mut self.workers[i], task) {
                // cancelled while queued: its future is already cancelled; free its entry
                self.out.push(Completion {
                    id,
                    outcome: Outcome::Cancelled,
                });
            }
        }
    }

    /// Tells every worker to finish; those that never started and hold nothing are killed, as
    /// waiting for an interpreter to boot only to tell it to exit helps nobody.
    fn stop_all(&mut self) {
        for w in &mut self.workers {
            w.counters.stopping_for(ExitCause::Shutdown);
            if !w.ready && w.inflight.is_empty() && !w.link_closed {
                w.stopping = true;
                w.signal_group(libc::SIGKILL);
            } else if !w.stopping {
                w.stopping = true;
                wire::encode(&mut w.out.buf, kind::STOP, 0, 0, 0, &[]);
            }
        }
        self.phase = Phase::Stopping;
        self.stop_deadline = Some(Instant::now() + STOP_GRACE);
    }

    /// Kills everything now: queued work is cancelled, running work fails.
    fn terminate(&mut self) {
        for task in mem::take(&mut self.pending) {
            if task.state.cancel() {
                self.out.push(Completion {
                    id: task.id,
                    outcome: Outcome::Cancelled,
                });
            }
        }
        self.kill_workers("the pool was terminated while the task was running", None);
    }

    /// The pool cannot go on: fail everything queued and running, stop all workers.
    fn mark_broken(&mut self, why: String, cause: Option<Vec<u8>>) {
        if self.broken.is_some() {
            return;
        }
        self.broken = Some(why.clone());
        for task in mem::take(&mut self.pending) {
            if task.state.cancel() || task.state.is_running() {
                self.out.push(Completion {
                    id: task.id,
                    outcome: Outcome::Broken(why.clone(), cause.clone()),
                });
            }
        }
        self.kill_workers(&why, cause);
    }

    /// Sends SIGKILL to every worker's group and fails what they held; the engine thread reaps
    /// them as their exits arrive, so a caller holding the GIL never waits here.
    fn kill_workers(&mut self, why: &str, cause: Option<Vec<u8>>) {
        for w in &mut self.workers {
            w.stopping = true;
            w.counters.stopping_for(ExitCause::Terminated);
            w.signal_group(libc::SIGKILL);
            for t in w.inflight.drain(..) {
                self.out.push(Completion {
                    id: t.id,
                    outcome: Outcome::Broken(why.to_owned(), cause.clone()),
                });
            }
        }
        self.phase = Phase::Stopping;
        self.stop_deadline = Some(Instant::now() + STOP_GRACE);
    }

    /// Reads whatever a worker sent and acts on each frame, all under the lock: for a worker
    /// that has exited, whose last bytes are bounded by its socket's buffer.
    fn read_worker(&mut self, idx: usize) {
        let Some(w) = self.workers.get_mut(idx) else { return };
        let expect = w.expected_results();
        let link = Arc::clone(&w.link);
        let pulled = pull_frames(&link, &mut w.reader, expect.as_deref(), usize::MAX);
        self.on_pulled(idx, pulled);
    }

    /// Acts on what one round of reading a worker's link gave.
    fn on_pulled(&mut self, idx: usize, pulled: Pulled) {
        for frame in pulled.frames {
            if self.workers.get(idx).is_none_or(|w| w.link_closed) {
                return; // a frame before this one broke the link
            }
            self.on_frame(idx, frame);
        }
        let Some(w) = self.workers.get_mut(idx) else { return };
        if let Some(why) = pulled.bad {
            w.reject(why);
        } else if pulled.closed {
            w.link_closed = true;
            if !w.stopping {
                // usually it is exiting; if a task closed the link instead, the worker can never
                // answer again, and only its exit would tell its tasks so
                w.signal_group(libc::SIGKILL);
            }
        }
    }

    fn on_frame(&mut self, idx: usize, frame: wire::Frame) {
        match frame.kind {
            kind::READY => {
                let w = &mut self.workers[idx];
                w.ready = true;
                if !w.inflight.is_empty() {
                    w.head_started = Some(Instant::now());
                }
                self.startup_failures = 0;
            }
            kind::OK | kind::ERR => {
                let w = &mut self.workers[idx];
                if !w.stopping && w.inflight.front().map(|t| t.id) != Some(frame.id) {
                    // results come in order: anything else is not our worker talking
                    let why = format!("it sent a result for task {} it was not running", frame.id);
                    w.reject(why);
                    return;
                }
                let us = f64::from(frame.run_micros());
                self.ewma_us = Some(self.ewma_us.map_or(us, |e| 0.8 * e + 0.2 * us));
                let w = &mut self.workers[idx];
                w.counters.task_done(frame.run_micros());
                if let Some(pos) = w.inflight.iter().position(|t| t.id == frame.id) {
                    w.inflight.remove(pos);
                }
                // results come in order: the next task has just started
                w.head_started = if w.inflight.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                let outcome = if frame.kind == kind::OK {
                    Outcome::Ok(frame.body, frame.fds)
                } else {
                    Outcome::Err(frame.body)
                };
                self.out.push(Completion { id: frame.id, outcome });
                self.retire_if_done(idx);
                let next = self.workers[idx].inflight.front().map(|t| t.id);
                if next.is_some_and(|id| self.kill_requested.remove(&id)) {
                    self.stop_running(idx, Outcome::Killed);
                }
            }
            kind::RETIRE => {
                // over its memory limit: no more work for it; it stops once its tasks are done
                self.workers[idx].quota = Some(0);
                self.workers[idx].counters.stopping_for(ExitCause::Memory);
                self.retire_if_done(idx);
            }
            kind::INIT_FAILED => {
                let pid = self.workers[idx].pid;
                self.workers[idx].stopping = true;
                self.workers[idx].counters.stopping_for(ExitCause::InitFailed);
                self.mark_broken(
                    format!(
                        "A child process terminated abruptly: the initializer raised in worker {pid}; \
                         the pool is not usable (fix the initializer)"
                    ),
                    Some(frame.body),
                );
            }
            other => {
                let why = format!("it sent a frame of unknown kind {other}");
                self.workers[idx].reject(why);
            }
        }
    }

    /// A worker that reached its task quota (or its memory limit) and holds nothing is told to
    /// stop; `maintain()` starts its successor.
    fn retire_if_done(&mut self, idx: usize) {
        let w = &mut self.workers[idx];
        if w.quota == Some(0) && w.inflight.is_empty() && !w.stopping {
            w.stopping = true;
            w.counters.stopping_for(ExitCause::Recycled);
            wire::encode(&mut w.out.buf, kind::STOP, 0, 0, 0, &[]);
        }
    }

    /// Kills the worker running a task: that task fails with `outcome`; the tasks queued behind
    /// it never started, so they go back to the front of the queue for another worker.
    fn stop_running(&mut self, idx: usize, outcome: Outcome) {
        let w = &mut self.workers[idx];
        w.stopping = true;
        w.counters.stopping_for(if matches!(outcome, Outcome::TimedOut { .. }) {
            ExitCause::TimedOut
        } else {
            ExitCause::Killed
        });
        w.signal_group(libc::SIGKILL);
        w.head_started = None;
        if let Some(head) = w.inflight.pop_front() {
            self.out.push(Completion { id: head.id, outcome });
        }
        for task in w.inflight.drain(..).rev() {
            self.pending.push_front(task);
        }
    }

    /// Stops the tasks that ran past their time limit; returns how long until the next limit.
    fn enforce_time_limits(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let mut next: Option<Duration> = None;
        for idx in 0..self.workers.len() {
            let w = &self.workers[idx];
            let (Some(started), Some(head)) = (w.head_started, w.inflight.front()) else {
                continue;
            };
            let Some(limit) = head.timeout else { continue };
            match time_left(started, limit, now) {
                None => {
                    let pid = w.pid;
                    self.stop_running(idx, Outcome::TimedOut { limit, pid });
                }
                Some(left) => next = Some(next.map_or(left, |n| n.min(left))),
            }
        }
        next
    }

    /// Stops a task wherever it is: queued (dropped), running (its worker killed), or waiting
    /// in a worker behind another task (killed the moment it starts). `false` if not found.
    fn kill_task(&mut self, id: u64) -> bool {
        if let Some(pos) = self.pending.iter().position(|t| t.id == id) {
            if let Some(task) = self.pending.remove(pos) {
                task.state.cancel();
                self.out.push(Completion {
                    id,
                    outcome: Outcome::Killed,
                });
            }
            return true;
        }
        for idx in 0..self.workers.len() {
            let w = &self.workers[idx];
            if w.stopping {
                continue;
            }
            match w.inflight.iter().position(|t| t.id == id) {
                Some(0) => {
                    self.stop_running(idx, Outcome::Killed);
                    return true;
                }
                Some(_) => {
                    self.kill_requested.insert(id);
                    return true;
                }
                None => {}
            }
        }
        false
    }

    /// A worker has exited. Unless it was asked to go, the task it was running fails (it named
    /// the cause) and those queued behind it, never started, go to another worker.
    fn on_exit(&mut self, idx: usize, info: ExitInfo) {
        let mut w = self.workers.remove(idx);
        let unexpected = !w.stopping;
        let cause = if unexpected {
            ExitCause::Died
        } else {
            w.counters.stop_cause.unwrap_or(ExitCause::Shutdown)
        };
        self.counters.worker_exited(info, &w.counters, cause);
        if unexpected {
            if let Some(head) = w.inflight.pop_front() {
                self.out.push(Completion {
                    id: head.id,
                    outcome: Outcome::Died(info, w.bad_frame.take()),
                });
            }
            for task in w.inflight.drain(..).rev() {
                self.pending.push_front(task);
            }
        }
        for t in w.inflight.drain(..) {
            let why = "the pool was terminated while the task was running";
            self.out.push(Completion {
                id: t.id,
                outcome: Outcome::Broken(why.into(), None),
            });
        }
        if unexpected && !w.ready {
            self.startup_failures += 1;
            if self.startup_failures >= STARTUP_FAILURES_MAX {
                let how = describe_exit(info);
                self.mark_broken(
                    format!(
                        "A child process terminated abruptly: {STARTUP_FAILURES_MAX} worker processes in a row \
                         died while starting (the last {how}); the pool is not usable"
                    ),
                    None,
                );
            }
        }
    }
}

/// "exited with code 3" / "was killed by signal 9".
pub fn describe_exit(info: ExitInfo) -> String {
    match (info.code, info.signal) {
        (_, Some(sig)) => format!("worker {} was killed by signal {sig}", info.pid),
        (Some(code), None) => format!("worker {} exited with code {code}", info.pid),
        (None, None) => format!("worker {} ended", info.pid),
    }
}

/// Which descriptor a poll entry watches.
#[derive(Clone, Copy)]
enum Watch {
    Wake,
    Link(usize),
    Exit(usize),
}

/// The engine thread: maintain, wait for any event, handle it, repeat until `Done`.
fn run(shared: &EngineState) {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut watch: Vec<Watch> = Vec::new();
    loop {
        let timeout_ms = {
            let mut s = shared.lock();
            s.maintain();
            if s.phase == Phase::Done {
                return;
            }
            fds.clear();
            watch.clear();
            if let Some(rx) = &s.wake_rx {
                fds.push(pollfd(rx.as_raw_fd(), libc::POLLIN));
                watch.push(Watch::Wake);
            }
            let mut need_tick = s.phase == Phase::Stopping;
            for (i, w) in s.workers.iter().enumerate() {
                if !w.link_closed {
                    let ev = if w.out.is_empty() {
                        libc::POLLIN
                    } else {
                        libc::POLLIN | libc::POLLOUT
                    };
                    fds.push(pollfd(w.link_fd(), ev));
                    watch.push(Watch::Link(i));
                }
                match w.exit_fd() {
                    Some(fd) => {
                        fds.push(pollfd(fd, libc::POLLIN));
                        watch.push(Watch::Exit(i));
                    }
                    None => need_tick = true, // no pidfd: look for exits on a timer
                }
            }
            s.wake_sent = false;
            let tick = if need_tick {
                Some(Duration::from_millis(20))
            } else {
                None
            };
            match (tick, s.enforce_time_limits()) {
                (None, None) => -1,
                (a, b) => {
                    let d = a.into_iter().chain(b).min().unwrap_or(Duration::ZERO);
                    // round up: waking a moment early would only find the deadline not yet due
                    i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            }
        };
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd structs; every
        // descriptor in it belongs to `shared` or to a worker that only this thread removes.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // poll itself failing means a bad descriptor: a bug, but never spin on it
            thread::sleep(Duration::from_millis(10));
        }
        let mut s = shared.lock();
        let mut exited: Vec<usize> = Vec::new();
        let mut to_read = Vec::new();
        for (fd, what) in fds.iter().zip(&watch) {
            if fd.revents == 0 {
                continue;
            }
            match *what {
                Watch::Wake => s.drain_wake(),
                Watch::Link(i) if i < s.workers.len() => {
                    let w = &mut s.workers[i];
                    if fd.revents & libc::POLLOUT != 0 && w.out.flush_to_link(&w.link).is_err() {
                        w.link_closed = true;
                    }
                    if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !w.link_closed {
                        let reader = mem::take(&mut w.reader);
                        to_read.push((i, Arc::clone(&w.link), reader, w.expected_results()));
                    }
                }
                Watch::Exit(i) => exited.push(i),
                Watch::Link(_) => {} // the pool broke while handling an earlier event
            }
        }
        if !to_read.is_empty() {
            s = read_links(shared, s, to_read);
        }
        s.handle_exits(exited);
    }
}

impl Sched {
    /// Reaps the workers in `exited` (indices) and those without a pidfd whose link closed,
    /// reading what each wrote last.
    fn handle_exits(&mut self, mut exited: Vec<usize>) {
        for (i, w) in self.workers.iter().enumerate() {
            if w.exit_fd().is_none() && w.link_closed && !exited.contains(&i) {
                exited.push(i);
            }
        }
        // remove from the back so the other indices stay valid
        exited.sort_unstable();
        exited.dedup();
        for &i in exited.iter().rev() {
            if i >= self.workers.len() {
                continue;
            }
            if !self.workers[i].link_closed {
                // the process is gone; whatever it wrote last is still in the socket
                self.read_worker(i);
            }
            let Some(w) = self.workers.get_mut(i) else { continue };
            match w.try_reap() {
                Ok(Some(info)) => self.on_exit(i, info),
                Ok(None) => {}
                Err(_) => {
                    let info = w.kill_and_reap();
                    self.on_exit(i, info);
                }
            }
        }
    }
}

/// A worker's link to read: its index, the link, its reader (taken out of the worker meanwhile)
/// and the results it owes (see `pull_frames`).
type LinkToRead = (usize, Arc<UnixStream>, wire::FrameReader, Option<Vec<u64>>);

/// Reads the links in `to_read` without the lock: a large result takes a while to arrive, and
/// submitters, `stats()` and the other workers must not wait for it. Indices stay valid
/// meanwhile, as only this thread removes workers. Returns the lock, taken again.
fn read_links<'a>(
    shared: &'a EngineState,
    s: MutexGuard<'a, Sched>,
    mut to_read: Vec<LinkToRead>,
) -> MutexGuard<'a, Sched> {
    drop(s);
    let pulled: Vec<_> = to_read
        .iter_mut()
        .map(|(_, link, reader, expect)| pull_frames(link, reader, expect.as_deref(), READ_BUDGET))
        .collect();
    let mut s = shared.lock();
    for ((i, _, reader, _), pulled) in to_read.into_iter().zip(pulled) {
        if let Some(w) = s.workers.get_mut(i) {
            w.reader = reader;
        }
        s.on_pulled(i, pulled);
    }
    s
}

/// Tasks one worker may hold when tasks take `ewma_us` µs on average (`None`: not measured yet):
/// enough for about [`WINDOW_TARGET_US`] of work, at least 1, at most [`WINDOW_MAX`].
fn window_for(ewma_us: Option<f64>) -> usize {
    match ewma_us {
        None => WINDOW_INITIAL,
        Some(us) => ((WINDOW_TARGET_US / us.max(1.0)).ceil() as usize).clamp(1, WINDOW_MAX),
    }
}

/// How long a task that started at `started` may still run under `limit`; `None` once it is due.
fn time_left(started: Instant, limit: Duration, now: Instant) -> Option<Duration> {
    let deadline = started + limit;
    (now < deadline).then(|| deadline - now)
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(list: &[(u8, u64)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(k, id) in list {
            wire::encode(&mut out, k, 0, id, 0, &[b"body"]);
        }
        out
    }

    #[test]
    fn results_must_name_the_tasks_in_order() {
        let ok = frames(&[(kind::READY, 0), (kind::OK, 5), (kind::ERR, 6)]);
        let (got, bad) = decode_link(&ok, Some(&[5, 6])).unwrap();
        assert_eq!((got.len(), bad), (3, None));
        let (got, bad) = decode_link(&frames(&[(kind::OK, 6)]), Some(&[5, 6])).unwrap();
        assert!(got.is_empty());
        assert!(bad.unwrap().contains("task 6 while running task 5"));
        // results beyond what was known when reading began are checked later, in on_frame
        assert!(decode_link(&frames(&[(kind::OK, 9)]), Some(&[])).unwrap().1.is_none());
        // a worker on its way out is not checked
        assert!(decode_link(&frames(&[(kind::OK, 9)]), None).unwrap().1.is_none());
    }

    #[test]
    fn windows_cover_about_two_milliseconds_of_work() {
        assert_eq!(window_for(None), WINDOW_INITIAL);
        assert_eq!(window_for(Some(1.0)), WINDOW_MAX, "tiny tasks: as many as allowed");
        assert_eq!(
            window_for(Some(0.0)),
            WINDOW_MAX,
            "a zero measurement is not a division by zero"
        );
        assert_eq!(window_for(Some(100.0)), 20);
        assert_eq!(
            window_for(Some(1500.0)),
            2,
            "rounded up: never less work than the target"
        );
        assert_eq!(window_for(Some(2000.0)), 1);
        assert_eq!(window_for(Some(5e6)), 1, "long tasks: one at a time");
    }

    #[test]
    fn a_deadline_is_due_at_its_instant_and_not_before() {
        let started = Instant::now();
        let limit = Duration::from_millis(500);
        assert_eq!(time_left(started, limit, started), Some(limit));
        assert_eq!(
            time_left(started, limit, started + Duration::from_millis(200)),
            Some(Duration::from_millis(300))
        );
        assert_eq!(time_left(started, limit, started + limit), None);
        assert_eq!(time_left(started, limit, started + Duration::from_secs(9)), None);
    }

    #[test]
    fn a_bad_header_is_refused_before_its_body() {
        let mut junk = Vec::new();
        junk.extend_from_slice(&(1u64 << 30).to_le_bytes());
        junk.extend_from_slice(&[0xEE, 0, 0]);
        junk.extend_from_slice(&[0u8; 12]);
        let (_, bad) = decode_link(&junk, Some(&[1])).unwrap();
        assert!(bad.unwrap().contains("unknown kind 238"));
        let mut fds = frames(&[(kind::READY, 0)]);
        fds[10] = 1; // READY announcing a descriptor
        assert!(decode_link(&fds, None).unwrap().1.unwrap().contains("descriptors"));
        let mut long = frames(&[(kind::OK, 1)]);
        long[..8].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
        assert!(decode_link(&long, Some(&[1])).unwrap().1.unwrap().contains("limit"));
    }
}
