//! The counters behind `stats()`: what each worker did, and why workers left.
//!
//! The engine thread updates them while it already holds its lock for the event (a result, an
//! exit), so keeping them costs two additions per result and nothing on the submit path. A
//! snapshot is taken under the same lock, on demand.

use std::collections::VecDeque;
use std::time::Instant;

use crate::task::ExitInfo;

/// Exits remembered for `stats()["exits"]`, newest last.
const EXITS_KEPT: usize = 64;

/// Why a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    /// The pool was shut down.
    Shutdown,
    /// It ran `max_tasks_per_child` tasks.
    Recycled,
    /// Its memory passed `max_memory_per_child`.
    Memory,
    /// A task ran past its time limit; the worker was killed.
    TimedOut,
    /// `Future.kill()` (or `cancel()` with `cancel_running=True`) stopped its task.
    Killed,
    /// The pool was terminated or broken.
    Terminated,
    /// The initializer raised.
    InitFailed,
    /// It died on its own: a crash, `os._exit`, a signal from outside.
    Died,
}

impl ExitCause {
    pub const ALL: [ExitCause; 8] = [
        ExitCause::Shutdown,
        ExitCause::Recycled,
        ExitCause::Memory,
        ExitCause::TimedOut,
        ExitCause::Killed,
        ExitCause::Terminated,
        ExitCause::InitFailed,
        ExitCause::Died,
    ];

    /// The name `stats()` reports.
    pub fn name(self) -> &'static str {
        match self {
            ExitCause::Shutdown => "shutdown",
            ExitCause::Recycled => "max_tasks_per_child",
            ExitCause::Memory => "max_memory_per_child",
            ExitCause::TimedOut => "timeout",
            ExitCause::Killed => "killed",
            ExitCause::Terminated => "terminated",
            ExitCause::InitFailed => "initializer_failed",
            ExitCause::Died => "died",
        }
    }
}

/// One worker's counters, kept in its `Worker`.
#[derive(Debug)]
pub struct WorkerCounters {
    pub started: Instant,
    pub tasks_done: u64,
    /// Time spent in calls, as the worker measured it (µs).
    pub busy_us: u64,
    /// Why it is on its way out, once it is.
    pub stop_cause: Option<ExitCause>,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            started: Instant::now(),
            tasks_done: 0,
            busy_us: 0,
            stop_cause: None,
        }
    }
}

impl WorkerCounters {
    /// A result arrived that took `us` µs in the worker.
    pub fn task_done(&mut self, us: u32) {
        self.tasks_done += 1;
        self.busy_us += u64::from(us);
    }

    /// Records why the worker is stopping, unless an earlier reason stands.
    pub fn stopping_for(&mut self, cause: ExitCause) {
        self.stop_cause.get_or_insert(cause);
    }
}

/// One ended worker.
#[derive(Debug, Clone)]
pub struct ExitRecord {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub cause: ExitCause,
    pub tasks_done: u64,
}

/// The pool's counters, kept in the engine's state.
#[derive(Debug, Default)]
pub struct PoolCounters {
    /// Worker processes started, replacements included.
    pub workers_started: u64,
    /// Tasks done and busy time of workers that have ended.
    pub ended_tasks_done: u64,
    pub ended_busy_us: u64,
    /// Exits per cause, in the order of `ExitCause::ALL`.
    pub exits_by_cause: [u64; 8],
    pub recent_exits: VecDeque<ExitRecord>,
}

impl PoolCounters {
    /// A worker ended for `cause`.
    pub fn worker_exited(&mut self, info: ExitInfo, counters: &WorkerCounters, cause: ExitCause) {
        self.ended_tasks_done += counters.tasks_done;
        self.ended_busy_us += counters.busy_us;
        if let Some(i) = ExitCause::ALL.iter().position(|c| *c == cause) {
            self.exits_by_cause[i] += 1;
        }
        if self.recent_exits.len() == EXITS_KEPT {
            self.recent_exits.pop_front();
        }
        self.recent_exits.push_back(ExitRecord {
            pid: info.pid,
            code: info.code,
            signal: info.signal,
            cause,
            tasks_done: counters.tasks_done,
        });
    }
}

/// One live worker in a snapshot.
#[derive(Debug, Clone)]
pub struct WorkerSnapshot {
    pub pid: u32,
    pub ready: bool,
    pub tasks_done: u64,
    pub busy_s: f64,
    pub idle_s: f64,
    pub in_flight: usize,
}

impl WorkerSnapshot {
    pub fn new(pid: u32, ready: bool, counters: &WorkerCounters, in_flight: usize, now: Instant) -> Self {
        let alive = now.saturating_duration_since(counters.started).as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // µs totals stay far below 2^52
        let busy_s = counters.busy_us as f64 / 1e6;
        WorkerSnapshot {
            pid,
            ready,
            tasks_done: counters.tasks_done,
            busy_s,
            idle_s: (alive - busy_s).max(0.0),
            in_flight,
        }
    }
}

/// Everything `stats()` reports for a process pool.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub workers: Vec<WorkerSnapshot>,
    pub queued: usize,
    pub in_flight: usize,
    pub tasks_done: u64,
    pub workers_started: u64,
    pub exits_by_cause: Vec<(&'static str, u64)>,
    pub recent_exits: Vec<ExitRecord>,
}

impl PoolSnapshot {
    pub fn new(counters: &PoolCounters, workers: Vec<WorkerSnapshot>, queued: usize) -> Self {
        let in_flight = workers.iter().map(|w| w.in_flight).sum();
        let tasks_done = counters.ended_tasks_done + workers.iter().map(|w| w.tasks_done).sum::<u64>();
        PoolSnapshot {
            workers,
            queued,
            in_flight,
            tasks_done,
            workers_started: counters.workers_started,
            exits_by_cause: ExitCause::ALL
                .iter()
                .zip(counters.exits_by_cause)
                .filter(|(_, n)| *n > 0)
                .map(|(c, n)| (c.name(), n))
                .collect(),
            recent_exits: counters.recent_exits.iter().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_counted_by_cause_and_the_newest_kept() {
        let mut pool = PoolCounters::default();
        let mut w = WorkerCounters::default();
        w.task_done(1500);
        w.task_done(500);
        w.stopping_for(ExitCause::Recycled);
        w.stopping_for(ExitCause::Shutdown); // the first reason stands
        assert_eq!(w.stop_cause, Some(ExitCause::Recycled));
        for pid in 0..100 {
            let info = ExitInfo {
                pid,
                code: Some(0),
                signal: None,
            };
            pool.worker_exited(info, &w, w.stop_cause.unwrap_or(ExitCause::Died));
        }
        let snap = PoolSnapshot::new(&pool, vec![], 3);
        assert_eq!(snap.exits_by_cause, vec![("max_tasks_per_child", 100)]);
        assert_eq!(snap.recent_exits.len(), EXITS_KEPT);
        assert_eq!(snap.recent_exits.last().map(|e| e.pid), Some(99));
        assert_eq!(snap.tasks_done, 200);
        assert_eq!(snap.queued, 3);
    }

    #[test]
    fn busy_and_idle_split_the_time_alive() {
        let mut w = WorkerCounters::default();
        w.task_done(2_000_000);
        let later = w.started + std::time::Duration::from_secs(5);
        let snap = WorkerSnapshot::new(1, true, &w, 0, later);
        assert!((snap.busy_s - 2.0).abs() < 1e-9);
        assert!((snap.idle_s - 3.0).abs() < 1e-9);
    }
}
