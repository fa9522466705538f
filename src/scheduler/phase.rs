//! The pool's life: running, draining after `shutdown()`, stopping its workers, done; and the
//! workers' own lives within it: started to keep the pool at its size, retired at their quota,
//! stopped, killed, their exits handled, and the pool marked broken when it cannot go on.
//!
//! Every change of phase happens here, under the engine's lock, so the rest of the engine only
//! asks which phase it is in.

use std::io;
use std::mem;
use std::time::{Duration, Instant};

use super::slot::Worker;
use super::Sched;
use crate::stats::ExitCause;
use crate::task::{Completion, ExitInfo, Outcome};
use crate::wire::{self, kind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepting and running work.
    Running,
    /// `shutdown()` was called: no new work; finish what is queued and running.
    Draining,
    /// Workers were told to stop; waiting for them to exit.
    Stopping,
    /// Everything has exited; the engine thread ends.
    Done,
}

/// Workers that die before start-up completes, in a row, before the pool gives up.
const STARTUP_FAILURES_MAX: u32 = 3;
/// How long stopped workers get to exit before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

impl Sched {
    /// One step of the engine between two waits: hand out work, move phases (the workers the
    /// pool lacked were started just before, without the lock: `poll::start_workers`).
    pub(super) fn maintain(&mut self) {
        if matches!(self.phase, Phase::Running | Phase::Draining) {
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
        self.flush_links();
        self.send_out();
    }

    /// Writes what each worker's outgoing buffer holds, as far as its link takes it now.
    pub(super) fn flush_links(&mut self) {
        for w in &mut self.workers {
            if !w.out.is_empty() && !w.link_closed {
                let _ = w.out.flush_to_link(&w.link);
            }
        }
    }

    /// Whether the pool should start another worker now.
    pub(super) fn lacks_worker(&self) -> bool {
        if self.broken.is_some() || !matches!(self.phase, Phase::Running | Phase::Draining) {
            return false;
        }
        // a pool with the user's initializer starts its first workers even if it is closed
        // before any task, as multiprocessing.Pool does: each of them runs the initializer
        let first_workers = self.cfg.run_initializer && self.counters.workers_started < self.cfg.workers as u64;
        let wanted = if self.phase == Phase::Running || !self.pending.is_empty() || first_workers {
            self.cfg.workers
        } else {
            0
        };
        self.active_workers() < wanted
    }

    /// Takes in a worker `supervisor::start` started (without the lock: the pool may have been
    /// terminated or broken meanwhile, and then the worker is killed at once) and sends its
    /// `INIT`, or marks the pool broken if it could not be started.
    pub(super) fn add_worker(&mut self, started: io::Result<crate::supervisor::Started>) {
        let mut w = match started.and_then(|(child, link)| Worker::new(child, link, self.cfg.max_tasks_per_child)) {
            Ok(w) => w,
            Err(e) => return self.mark_broken(format!("could not start a worker process: {e}"), None),
        };
        self.counters.workers_started += 1;
        if self.broken.is_some() || !matches!(self.phase, Phase::Running | Phase::Draining) {
            w.stopping = true;
            w.counters.stopping_for(ExitCause::Terminated);
            w.signal_group(libc::SIGKILL);
            self.workers.push(w);
            return;
        }
        // every worker gets an INIT first (empty without an initializer): it answers READY after it
        let limit = self.cfg.max_memory_per_child;
        match &self.cfg.init {
            Some(init) => wire::encode_init(&mut w.out.buf, init.flags, limit, init.fn_len, &init.body),
            None => wire::encode_init(&mut w.out.buf, 0, limit, 0, &[]),
        }
        self.workers.push(w);
    }
    /// Tells every worker to finish; those that never started and hold nothing are killed, as
    /// waiting for an interpreter to boot only to tell it to exit helps nobody, unless the user
    /// gave an initializer: then each runs it first (its `STOP` follows its `INIT`).
    pub(super) fn stop_all(&mut self) {
        let kill_unready = !self.cfg.run_initializer;
        for w in &mut self.workers {
            w.counters.stopping_for(ExitCause::Shutdown);
            if kill_unready && !w.ready && w.inflight.is_empty() && !w.link_closed {
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
    pub(super) fn terminate(&mut self) {
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
    pub(super) fn mark_broken(&mut self, why: String, cause: Option<Vec<u8>>) {
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
    pub(super) fn kill_workers(&mut self, why: &str, cause: Option<Vec<u8>>) {
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
    /// A worker that reached its task quota (or its memory limit) and holds nothing is told to
    /// stop; `maintain()` starts its successor.
    pub(super) fn retire_if_done(&mut self, idx: usize) {
        let w = &mut self.workers[idx];
        if w.quota == Some(0) && w.inflight.is_empty() && !w.stopping {
            w.stopping = true;
            w.counters.stopping_for(ExitCause::Recycled);
            wire::encode(&mut w.out.buf, kind::STOP, 0, 0, 0, &[]);
        }
    }
    /// A worker has exited. Unless it was asked to go, the task it was running fails (it named
    /// the cause) and those queued behind it, never started, go to another worker.
    pub(super) fn on_exit(&mut self, idx: usize, info: ExitInfo) {
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
