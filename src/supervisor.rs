//! Worker processes: starting them, watching them, stopping them.
//!
//! A worker is a fresh interpreter started with `posix_spawn`-style `Command::spawn` from the
//! engine thread, never a `fork()` of the threaded parent (DESIGN.md, principle 4). Its end of the
//! link travels as its stdin; the worker moves it to a private descriptor and puts `/dev/null` in
//! its place, as multiprocessing does for its children's stdin. Each worker leads its own process
//! group, so a terminal's Ctrl-C reaches only the parent, and stopping a worker can stop anything
//! it started too.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Instant;

use crate::task::{ExitInfo, TaskState};
use crate::wire::{FrameReader, WriteBuf};

/// How to start a worker: the full command line (built by `python/ferropool/_spawn.py`).
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub argv: Vec<String>,
}

/// A task a worker holds: sent to it, no result back yet.
#[derive(Debug)]
pub struct InFlight {
    pub id: u64,
    pub state: Arc<TaskState>,
}

/// The parent's side of one worker process.
pub struct Worker {
    pub child: Child,
    pub pid: u32,
    /// The parent's end of the socket pair (non-blocking).
    pub link: UnixStream,
    /// Becomes readable when the process exits (Linux pidfd); `None` where unsupported.
    pub pidfd: Option<OwnedFd>,
    pub reader: FrameReader,
    pub out: WriteBuf,
    /// Tasks sent and not yet answered, oldest first (a worker runs them in order).
    pub inflight: VecDeque<InFlight>,
    /// Calls it may still be sent before it is recycled (`max_tasks_per_child`).
    pub quota: Option<u64>,
    /// It sent `READY`: started, initializer done.
    pub ready: bool,
    /// It was told to stop (or was killed) on purpose; its exit is not a crash.
    pub stopping: bool,
    /// The link reached end-of-file; only the exit status is still to come.
    pub link_closed: bool,
    pub started: Instant,
}

impl Worker {
    /// Starts a worker process with its link on stdin.
    pub fn spawn(spec: &WorkerSpec, quota: Option<u64>) -> io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        let (program, args) = spec
            .argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty worker command line"))?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .process_group(0)
            .spawn()?;
        ours.set_nonblocking(true)?;
        let pid = child.id();
        Ok(Worker {
            pidfd: pidfd_open(pid),
            child,
            pid,
            link: ours,
            reader: FrameReader::default(),
            out: WriteBuf::default(),
            inflight: VecDeque::new(),
            quota,
            ready: false,
            stopping: false,
            link_closed: false,
            started: Instant::now(),
        })
    }

    /// Raw descriptor of the link, for `poll`.
    pub fn link_fd(&self) -> RawFd {
        self.link.as_raw_fd()
    }

    /// Sends `signal` to the worker's whole process group, so children it started go too.
    pub fn signal_group(&self, signal: i32) {
        let Ok(pgid) = libc::pid_t::try_from(self.pid) else { return };
        // SAFETY: killpg only sends a signal; the group id is this worker's own pid, which stays
        // reserved for it until we reap it with wait(), so it cannot name someone else's group.
        unsafe {
            libc::killpg(pgid, signal);
        }
    }

    /// Returns the exit information if the process has ended (reaping it).
    pub fn try_reap(&mut self) -> io::Result<Option<ExitInfo>> {
        Ok(self.child.try_wait()?.map(|status| exit_info(self.pid, status)))
    }

    /// Kills the worker's group and waits for the worker itself.
    pub fn kill_and_reap(&mut self) -> ExitInfo {
        self.stopping = true;
        self.signal_group(libc::SIGKILL);
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => exit_info(self.pid, status),
            Err(_) => ExitInfo { pid: self.pid, code: None, signal: Some(libc::SIGKILL) },
        }
    }
}

/// Translates a wait status into exit code or signal.
fn exit_info(pid: u32, status: ExitStatus) -> ExitInfo {
    ExitInfo { pid, code: status.code(), signal: status.signal() }
}

/// Opens a descriptor that becomes readable when `pid` exits, so the engine can wait on worker
/// death in the same `poll` as worker results.
#[cfg(target_os = "linux")]
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory is
    // shared. The pid is our unreaped child, so it cannot have been recycled.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::pid_t::try_from(pid).ok()?, 0) };
    if fd < 0 {
        return None;
    }
    let fd = RawFd::try_from(fd).ok()?;
    // SAFETY: `fd` was just returned by the kernel and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(not(target_os = "linux"))]
fn pidfd_open(_pid: u32) -> Option<OwnedFd> {
    None
}

/// The number of CPUs this process may use: its affinity mask and cgroup CPU quota (as
/// `num_cpus` reads them), or `FERROPOOL_CPU_COUNT` when set; never below 1.
#[pyo3::pyfunction]
pub fn cpu_count() -> usize {
    std::env::var("FERROPOOL_CPU_COUNT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or_else(num_cpus::get)
        .max(1)
}
