//! A caller waiting for its own task reads the result off the worker's link itself.
//!
//! Why: otherwise a result reaches a waiting caller through three sleeping threads in a row (the
//! engine thread reads the link, the completion thread takes the GIL and sets the future, the
//! caller wakes), each wake-up tens of microseconds on a virtual machine, where bouncing one
//! byte between two processes takes two. A caller that waits on the link itself wakes when the
//! worker writes, as in that ping-pong.
//!
//! How it stays one mechanism: the caller takes the worker's reader out of its slot exactly as
//! the engine thread does before it reads without the lock (`poll.rs`), and hands what it read
//! to the same `on_pulled` under the lock, so every check, every count and every other task's
//! outcome is handled as if the engine had read it; only its own outcome comes back to it
//! instead of going to the completion thread. While the reader is out (`ReaderAt::Caller`) the
//! engine neither reads that link nor reaps that worker: the caller watches both the link and
//! the worker's exit, and wakes the engine when it puts the reader back. Deaths, time limits,
//! `kill()` and `terminate()` stay the engine's: they kill the worker, the caller wakes on its
//! exit, finds its task no longer running there, and waits on its future like anyone else.

use std::mem;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::link::{pull_frames, READ_BUDGET};
use super::phase::Phase;
use super::slot::ReaderAt;
use super::{EngineState, Sched};
use crate::task::Completion;

impl EngineState {
    /// Whether [`EngineState::wait_own`] could read task `id`'s outcome now, answered without
    /// waiting for the lock (`true` when it is busy: the caller then asks without the GIL).
    /// A caller whose task is not there returns at once and keeps the GIL: in a flood, giving
    /// it up for every `result()` handed it to the completion thread and back each time.
    pub fn may_wait_own(&self, id: u64) -> bool {
        self.try_lock().is_none_or(|s| s.claimable(id).is_some())
    }

    /// Waits up to `within` for task `id` by reading its worker's link in this thread. Returns
    /// its outcome, or `None` when it did not come this way: the task is queued, is not the one
    /// its worker runs now or has others sent behind it, another thread reads that link, the
    /// worker died or was stopped, or `within` passed. The outcome then reaches the task's
    /// future as usual.
    pub fn wait_own(&self, id: u64, within: Duration) -> Option<Completion> {
        let deadline = Instant::now() + within;
        loop {
            let (pid, link, exit_fd, mut reader, expect) = {
                let mut s = self.lock();
                let idx = s.claimable(id)?;
                let w = &mut s.workers[idx];
                w.reader_at = ReaderAt::Caller;
                let reader = mem::take(&mut w.reader);
                (
                    w.pid(),
                    std::sync::Arc::clone(&w.link),
                    w.exit_fd(),
                    reader,
                    w.expected_results(),
                )
            };
            // a short call's result comes within microseconds: looking for it a moment before
            // sleeping saves the wake-up, as a `Connection` does for a reply
            crate::connection::spin_until_readable(link.as_raw_fd());
            let left = deadline.saturating_duration_since(Instant::now());
            let watched: Vec<i32> = std::iter::once(link.as_raw_fd()).chain(exit_fd).collect();
            // a failed poll reads as "nothing yet": the reader goes back, the engine takes over
            let ready = crate::fd::ready_to_read(&watched, Some(left)).unwrap_or_default();
            let exited = exit_fd.is_some_and(|fd| ready.contains(&fd));
            let pulled = (!ready.is_empty()).then(|| pull_frames(&link, &mut reader, expect.as_deref(), READ_BUDGET));

            let mut s = self.lock();
            // the engine never removes a claimed worker, so it is still there (maybe elsewhere
            // in the list, if others left)
            let idx = s
                .workers
                .iter()
                .position(|w| w.reader_at == ReaderAt::Caller && w.pid() == pid)?;
            let w = &mut s.workers[idx];
            w.reader = reader;
            w.reader_at = ReaderAt::Slot;
            // still running there: its result frame, if it came, is its outcome (the engine
            // fails a task it stopped itself, and then a late result must not count)
            let mine = w.inflight.front().is_some_and(|t| t.id == id);
            let seen = s.out.len();
            if let Some(pulled) = pulled {
                s.on_pulled(idx, pulled);
            }
            let own = if mine {
                s.out[seen..]
                    .iter()
                    .position(|c| c.id == id)
                    .map(|at| s.out.remove(seen + at))
            } else {
                None
            };
            if s.phase == Phase::Running && !exited {
                // room on that worker: what is queued goes now, as the engine would send it
                // (not to a worker seen to exit: the engine reaps it first)
                s.dispatch();
            }
            s.flush_links();
            s.send_out();
            let gone = exited || s.workers.get(idx).is_none_or(|w| w.link_closed || w.stopping);
            if s.claim_skipped || gone || s.phase != Phase::Running {
                // it left this worker out of its `poll`, or has a death to handle (reading what
                // the worker wrote last), a retirement or a shutdown step to take
                s.wake();
            }
            drop(s);
            if own.is_some() || !mine || gone || Instant::now() >= deadline {
                return own;
            }
        }
    }
}

impl Sched {
    /// The worker whose link a caller may read for task `id`: the one running it now as its
    /// only task, with the reader in its slot and the link open.
    fn claimable(&self, id: u64) -> Option<usize> {
        let idx = self
            .workers
            .iter()
            .position(|w| w.inflight.front().is_some_and(|t| t.id == id))?;
        let w = &self.workers[idx];
        // only the task a worker runs now: results come in order, so no outcome of the same
        // worker can be handed to the completion thread behind this one. And only a worker's
        // lone task: with more sent behind it the pool is in a flood, where the engine reads
        // many results per wake-up and a caller claiming the link per result (and looking
        // before it sleeps) only adds CPU on every core
        let alone = w.inflight.len() == 1;
        (alone && w.reader_at == ReaderAt::Slot && !w.link_closed && !w.stopping).then_some(idx)
    }
}
