//! Handing tasks to workers, and how many each may hold.
//!
//! How many tasks a worker may hold (its window) follows the measured task time: enough to cover
//! about [`WINDOW_TARGET_US`] of work, so tiny tasks travel in batches and long ones are not
//! parked behind each other in one worker while another idles. Each task goes to the worker
//! holding the fewest, so a quick task never waits behind a long one while another has room.

use std::time::Instant;

use super::slot::Worker;
use super::Sched;
use crate::task::{Completion, Outcome, Task};
use crate::wire::{self, kind};

/// Work a worker should hold, in µs of measured task time (see module docs).
const WINDOW_TARGET_US: f64 = 2000.0;
/// Upper bound on tasks held by one worker.
pub(super) const WINDOW_MAX: usize = 512;
/// Tasks a worker holds before any task time has been measured.
pub(super) const WINDOW_INITIAL: usize = 2;

/// Encodes a task into the worker's outgoing buffer and records it as in flight.
/// The caller has checked the worker can take it; a task cancelled meanwhile is dropped here.
pub(super) fn send_call(w: &mut Worker, task: Task) -> bool {
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
    /// Tasks one worker may hold, from the measured task time; one while the pool is still
    /// starting workers (`poll::start_workers` hands out work as each arrives): a task must not
    /// queue behind one that may run long when the next worker is moments away.
    pub(super) fn window(&self) -> usize {
        if self.workers.len() < self.cfg.workers {
            return 1;
        }
        window_for(self.ewma_us)
    }

    /// Workers that count toward the pool's size (not on their way out).
    pub(super) fn active_workers(&self) -> usize {
        self.workers.iter().filter(|w| !w.stopping).count()
    }
    /// Hands pending tasks out, each to the worker holding the fewest, so a quick task never
    /// waits behind a long one while another worker has room.
    pub(super) fn dispatch(&mut self) {
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
}

/// Tasks one worker may hold when tasks take `ewma_us` µs on average (`None`: not measured yet):
/// enough for about [`WINDOW_TARGET_US`] of work, at least 1, at most [`WINDOW_MAX`].
pub(super) fn window_for(ewma_us: Option<f64>) -> usize {
    match ewma_us {
        None => WINDOW_INITIAL,
        Some(us) => ((WINDOW_TARGET_US / us.max(1.0)).ceil() as usize).clamp(1, WINDOW_MAX),
    }
}
