//! What the engine keeps per worker: the child process (`child.rs`: signalled and watched
//! through a pidfd, reaped once) and the engine's slot around it: the link, the tasks it holds,
//! and where it is in its life.
//!
//! The process is the same kind of handle `ferropool.Process` uses; everything else here is the
//! scheduler's bookkeeping, which only the engine's lock guards.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use crate::child::ChildHandle;
use crate::stats::WorkerCounters;
use crate::task::{ExitInfo, Task};
use crate::wire::{FrameReader, WriteBuf};

/// Where a worker's `FrameReader` is. Whoever reads the link takes it out of the slot, reads
/// without the scheduler's lock, and puts it back under the lock; nobody else reads that link
/// meanwhile, as the bytes of a frame in progress live in the reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReaderAt {
    Slot,
    /// The engine thread, between its `poll` and the end of `read_links`.
    Engine,
    /// A caller waiting for its own task's result (`claim.rs`). Until it puts the reader back,
    /// the engine neither reads the link nor reaps the worker.
    Caller,
}

/// One worker: its process and the engine's slot.
pub(super) struct Worker {
    pub(super) child: ChildHandle,
    /// The parent's end of the socket pair (non-blocking). Shared so the engine thread can read
    /// it without holding the scheduler's lock (see `poll.rs`).
    pub(super) link: Arc<UnixStream>,
    pub(super) reader: FrameReader,
    /// Who has `reader` while the link is read without the lock.
    pub(super) reader_at: ReaderAt,
    pub(super) out: WriteBuf,
    /// Tasks sent and not yet answered, oldest first. A worker runs them in order, so the
    /// first is the one running and the others have not started.
    pub(super) inflight: VecDeque<Task>,
    /// When the first task in `inflight` started (as far as the parent can tell: when the
    /// previous result arrived, or when it was sent to an idle, started worker).
    pub(super) head_started: Option<Instant>,
    /// Calls it may still be sent before it is recycled (`max_tasks_per_child`).
    pub(super) quota: Option<u64>,
    /// It sent `READY`: started, initializer done.
    pub(super) ready: bool,
    /// It was told to stop (or was killed) on purpose; its exit is not a crash.
    pub(super) stopping: bool,
    /// The link reached end-of-file; only the exit status is still to come.
    pub(super) link_closed: bool,
    /// What `stats()` reports about it.
    pub(super) counters: WorkerCounters,
    /// Why its link was given up: it sent bytes that are not a frame (see `wire.rs`). It is
    /// killed, and its exit is reported with this reason.
    pub(super) bad_frame: Option<String>,
}

impl Worker {
    /// The slot for a started process and its link.
    pub(super) fn new(child: ChildHandle, link: UnixStream, quota: Option<u64>) -> io::Result<Worker> {
        link.set_nonblocking(true)?;
        Ok(Worker {
            child,
            link: Arc::new(link),
            reader: FrameReader::default(),
            reader_at: ReaderAt::Slot,
            out: WriteBuf::default(),
            inflight: VecDeque::new(),
            head_started: None,
            quota,
            ready: false,
            stopping: false,
            link_closed: false,
            counters: WorkerCounters::default(),
            bad_frame: None,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Raw descriptor of the link, for `poll`.
    pub(super) fn link_fd(&self) -> RawFd {
        self.link.as_raw_fd()
    }

    /// The descriptor that becomes readable when the process has exited, if there is one.
    pub(super) fn exit_fd(&self) -> Option<RawFd> {
        self.child.exit_fd()
    }

    /// Sends `signal` to the worker and its process group (see `ChildHandle::signal_group`).
    pub(super) fn signal_group(&self, signal: i32) {
        self.child.signal_group(signal);
    }

    /// Returns the exit information if the process has ended (reaping it).
    pub(super) fn try_reap(&mut self) -> io::Result<Option<ExitInfo>> {
        self.child.try_reap()
    }

    /// Kills the worker's group and waits for the worker itself.
    pub(super) fn kill_and_reap(&mut self) -> ExitInfo {
        self.stopping = true;
        self.child.kill_and_reap()
    }

    /// Whether the scheduler may give this worker another task.
    pub(super) fn can_take(&self) -> bool {
        !self.stopping && !self.link_closed && self.quota != Some(0)
    }

    /// The ids its next results must carry, in order; `None` once it is on its way out, when
    /// late results are only dropped.
    pub(super) fn expected_results(&self) -> Option<Vec<u64>> {
        (!self.stopping).then(|| self.inflight.iter().map(|t| t.id).collect())
    }

    /// The worker sent bytes that are not our protocol: nothing more is read from it, and it is
    /// killed. Its exit is then handled as a death (`on_exit`): the task it ran fails with
    /// `WorkerDiedError` naming `why`, the tasks behind it go to other workers, and the pool
    /// starts a replacement.
    pub(super) fn reject(&mut self, why: String) {
        if self.bad_frame.is_none() {
            self.bad_frame = Some(why);
        }
        self.link_closed = true;
        self.signal_group(libc::SIGKILL);
    }
}
