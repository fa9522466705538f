//! Time limits and `Future.kill()`: stopping a task while it runs.
//!
//! A worker runs its tasks in order, so only the first of those it holds is running; the
//! engine knows when it started (`Worker::head_started`). A task past its limit, or one killed
//! on request, takes its worker with it (a running Python call cannot be stopped any other way);
//! the tasks queued behind it never started and go to another worker. A task killed while it
//! waits behind another is remembered and killed the moment it starts.

use std::time::{Duration, Instant};

use super::Sched;
use crate::stats::ExitCause;
use crate::task::{Completion, Outcome};

impl Sched {
    /// Kills the worker running a task: that task fails with `outcome`; the tasks queued behind
    /// it never started, so they go back to the front of the queue for another worker.
    pub(super) fn stop_running(&mut self, idx: usize, outcome: Outcome) {
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
    pub(super) fn enforce_time_limits(&mut self) -> Option<Duration> {
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
                    let pid = w.pid();
                    self.stop_running(idx, Outcome::TimedOut { limit, pid });
                }
                Some(left) => next = Some(next.map_or(left, |n| n.min(left))),
            }
        }
        next
    }

    /// Stops a task wherever it is: queued (dropped), running (its worker killed), or waiting
    /// in a worker behind another task (killed the moment it starts). `false` if not found.
    pub(super) fn kill_task(&mut self, id: u64) -> bool {
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
}

/// How long a task that started at `started` may still run under `limit`; `None` once it is due.
pub(super) fn time_left(started: Instant, limit: Duration, now: Instant) -> Option<Duration> {
    let deadline = started + limit;
    (now < deadline).then(|| deadline - now)
}
