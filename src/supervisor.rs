//! Worker processes: starting them, watching them, stopping them.
//!
//! A worker is never a `fork()` of the threaded parent (DESIGN.md, principle 4). It is either
//! forked by the fork server (`forkserver.rs`), which a single-threaded parent made before any
//! thread existed, or a fresh interpreter started by `Command::spawn` from the engine thread. In
//! both cases its end of the link arrives as its stdin; the worker moves it to a private
//! descriptor and puts `/dev/null` in its place, as multiprocessing does for its children's
//! stdin. Each worker leads its own process group, so a terminal's Ctrl-C reaches only the
//! parent, and stopping a worker can stop anything it started too.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::stats::WorkerCounters;
use crate::task::{ExitInfo, Task};
use crate::wire::{FrameReader, WriteBuf};

/// How to start a worker.
#[derive(Debug)]
pub struct WorkerSpec {
    /// The command line of a fresh worker interpreter (`python/ferropool/_runtime/spawn.py`).
    pub argv: Vec<String>,
    /// This engine's connection to the fork server, when there is one.
    pub forkserver: Option<UnixStream>,
    /// Where each new worker's output socket goes, when the pool forwards worker output
    /// (`python/ferropool/_pool/logs.py`): the parent's end of a fresh socket pair is sent here with
    /// the worker's pid, and the worker gets the other end before it starts. Non-blocking.
    pub output: Option<UnixStream>,
    /// Workers started so far: each worker's number, which names it (`PoolWorker-<n>`).
    pub started: u32,
}

/// The variable that tells a worker which inherited descriptor is its output socket; exported as
/// `ferropool._core.WORKER_OUTPUT_FD_VAR` for the fork server and the worker's start-up.
pub const OUTPUT_FD_VAR: &str = "FERROPOOL_OUTPUT_FD";
/// The variable that tells a worker its number (`ferropool._core.WORKER_NUMBER_VAR`, read by
/// `python/ferropool/_worker/start.py`).
pub const NUMBER_VAR: &str = "FERROPOOL_WORKER_NUMBER";

/// The process behind a worker, and how its end is observed.
pub enum Proc {
    /// Our child: reaped with `wait`, watched through a pidfd.
    Child { child: Child, pidfd: Option<OwnedFd> },
    /// The fork server's child: it writes the exit status to `status`, which also serves as the
    /// descriptor to poll for the exit. Signals go through `pidfd` (see `signal_group`).
    Forked { status: UnixStream, pidfd: Option<OwnedFd> },
}

/// The parent's side of one worker process.
pub struct Worker {
    pub proc: Proc,
    pub pid: u32,
    /// The parent's end of the socket pair (non-blocking). Shared so the engine thread can read
    /// it without holding the scheduler's lock (see `scheduler.rs`).
    pub link: Arc<UnixStream>,
    pub reader: FrameReader,
    pub out: WriteBuf,
    /// Tasks sent and not yet answered, oldest first. A worker runs them in order, so the
    /// first is the one running and the others have not started.
    pub inflight: VecDeque<Task>,
    /// When the first task in `inflight` started (as far as the parent can tell: when the
    /// previous result arrived, or when it was sent to an idle, started worker).
    pub head_started: Option<Instant>,
    /// Calls it may still be sent before it is recycled (`max_tasks_per_child`).
    pub quota: Option<u64>,
    /// It sent `READY`: started, initializer done.
    pub ready: bool,
    /// It was told to stop (or was killed) on purpose; its exit is not a crash.
    pub stopping: bool,
    /// The link reached end-of-file; only the exit status is still to come.
    pub link_closed: bool,
    /// What `stats()` reports about it.
    pub counters: WorkerCounters,
    /// Why its link was given up: it sent bytes that are not a frame (see `wire.rs`). It is
    /// killed, and its exit is reported with this reason.
    pub bad_frame: Option<String>,
}

impl Worker {
    /// Starts a worker: through the fork server when there is one, else as a fresh interpreter.
    pub fn start(spec: &mut WorkerSpec, quota: Option<u64>) -> io::Result<Worker> {
        // handed to the worker at its start, so no other process can ever connect in its place
        let output = match spec.output {
            Some(_) => Some(crate::connection::seqpacket_pair()?),
            None => None,
        };
        let worker_end = output.as_ref().map(|(_, theirs)| theirs.as_raw_fd());
        spec.started = spec.started.wrapping_add(1);
        let number = spec.started;
        let mut started = None;
        if let Some(conn) = spec.forkserver.as_mut() {
            match Worker::fork(conn, worker_end, number, quota) {
                Ok(w) => started = Some(w),
                // the server is gone (killed from outside, say): fresh interpreters still work
                Err(_) => spec.forkserver = None,
            }
        }
        let worker = match started {
            Some(w) => w,
            None => Worker::spawn(&spec.argv, worker_end, number, quota)?,
        };
        if let (Some(registrar), Some((ours, _))) = (spec.output.as_ref(), output) {
            let mut registration = [0u8; 8];
            registration[..4].copy_from_slice(&worker.pid.to_le_bytes());
            registration[4..].copy_from_slice(&number.to_le_bytes());
            // never waits: if the output thread is gone or far behind, this worker's output is
            // lost (its sends fail), which is better than a stalled engine
            let _ = crate::fdpass::send_with_fds(registrar, &registration, &[ours.as_raw_fd()]);
        }
        Ok(worker)
    }

    fn fork(conn: &mut UnixStream, output: Option<RawFd>, number: u32, quota: Option<u64>) -> io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        let (status, status_theirs) = UnixStream::pair()?;
        let (pid, pidfd) = crate::forkserver::request_worker(conn, &theirs, &status_theirs, output, number)?;
        status.set_nonblocking(true)?;
        Worker::new(Proc::Forked { status, pidfd }, pid, ours, quota)
    }

    fn spawn(command: &[String], output: Option<RawFd>, number: u32, quota: Option<u64>) -> io::Result<Worker> {
        let (ours, theirs) = UnixStream::pair()?;
        let (program, rest) = command
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty worker command line"))?;
        let mut command = Command::new(program);
        command
            .args(rest)
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .env(NUMBER_VAR, number.to_string())
            .process_group(0);
        if let Some(fd) = output {
            command.env(OUTPUT_FD_VAR, fd.to_string());
            // SAFETY: the hook runs in the forked child before exec; it only calls fcntl, which
            // is async-signal-safe, on a number copied in before the fork, and allocates nothing.
            unsafe {
                command.pre_exec(move || {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = command.spawn()?;
        let pid = child.id();
        Worker::new(
            Proc::Child {
                child,
                pidfd: pidfd_open(pid),
            },
            pid,
            ours,
            quota,
        )
    }

    fn new(proc: Proc, pid: u32, link: UnixStream, quota: Option<u64>) -> io::Result<Worker> {
        link.set_nonblocking(true)?;
        Ok(Worker {
            proc,
            pid,
            link: Arc::new(link),
            reader: FrameReader::default(),
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

    /// The descriptor that becomes readable when the process has exited, if there is one.
    pub fn exit_fd(&self) -> Option<RawFd> {
        match &self.proc {
            Proc::Child { pidfd, .. } => pidfd.as_ref().map(AsRawFd::as_raw_fd),
            Proc::Forked { status, .. } => Some(status.as_raw_fd()),
        }
    }

    /// Raw descriptor of the link, for `poll`.
    pub fn link_fd(&self) -> RawFd {
        self.link.as_raw_fd()
    }

    /// Sends `signal` to the worker's whole process group, so children it started go too, and
    /// to the worker itself, which may not lead its group yet if it was forked a moment ago.
    ///
    /// Our own child keeps its pid until we reap it, so its pid is safe to signal. A fork-server
    /// worker's pid is not: the server may reap it at any moment, and the pid may then name
    /// another process. It is signalled through its pidfd, and its group only while the pidfd
    /// says it has not exited (until then its pid, which is the group's id, cannot be reused).
    pub fn signal_group(&self, signal: i32) {
        let pid = match libc::pid_t::try_from(self.pid) {
            // 0 would signal our own group, and a negative one a group by its number
            Ok(pid) if pid > 0 => pid,
            _ => return,
        };
        let pidfd = match &self.proc {
            Proc::Forked { pidfd: Some(fd), .. } => Some(fd),
            _ => None,
        };
        if let Some(fd) = pidfd {
            if !has_exited(fd) {
                // SAFETY: killpg only sends a signal, to a group whose leader has not exited
                unsafe { libc::killpg(pid, signal) };
            }
            let _ = pidfd_signal(fd, signal);
            return;
        }
        // SAFETY: kill/killpg only send a signal. Our child's pid stays reserved until we reap
        // it; a fork-server worker without a pidfd (a kernel without pidfd_open) is signalled
        // by pid as the best there is.
        unsafe {
            libc::killpg(pid, signal);
            libc::kill(pid, signal);
        }
    }

    /// Returns the exit information if the process has ended (reaping it).
    pub fn try_reap(&mut self) -> io::Result<Option<ExitInfo>> {
        let pid = self.pid;
        match &mut self.proc {
            Proc::Child { child, .. } => Ok(child.try_wait()?.map(|status| exit_info(pid, status))),
            Proc::Forked { status, .. } => {
                let mut bytes = [0u8; 8];
                match status.read(&mut bytes) {
                    Ok(8) => {
                        let (code, signal) = crate::forkserver::decode_status(bytes);
                        Ok(Some(ExitInfo { pid, code, signal }))
                    }
                    // the server closed it without a status: it died, and took the worker along
                    Ok(_) => Ok(Some(ExitInfo {
                        pid,
                        code: None,
                        signal: None,
                    })),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Kills the worker's group and waits for the worker itself.
    pub fn kill_and_reap(&mut self) -> ExitInfo {
        self.stopping = true;
        self.signal_group(libc::SIGKILL);
        let pid = self.pid;
        let killed = ExitInfo {
            pid,
            code: None,
            signal: Some(libc::SIGKILL),
        };
        match &mut self.proc {
            Proc::Child { child, .. } => {
                let _ = child.kill();
                child.wait().map_or(killed, |status| exit_info(pid, status))
            }
            Proc::Forked { status, .. } => {
                // the server reaps it at once; wait for its word, but never forever
                let _ = status.set_nonblocking(false);
                let _ = status.set_read_timeout(Some(Duration::from_secs(5)));
                let mut bytes = [0u8; 8];
                match status.read_exact(&mut bytes) {
                    Ok(()) => {
                        let (code, signal) = crate::forkserver::decode_status(bytes);
                        ExitInfo { pid, code, signal }
                    }
                    Err(_) => killed,
                }
            }
        }
    }
}

/// Translates a wait status into exit code or signal.
fn exit_info(pid: u32, status: ExitStatus) -> ExitInfo {
    ExitInfo {
        pid,
        code: status.code(),
        signal: status.signal(),
    }
}

/// Whether the process behind `pidfd` has exited (its pidfd is readable).
fn has_exited(pidfd: &OwnedFd) -> bool {
    crate::fd::wait_ready(pidfd.as_raw_fd(), libc::POLLIN, Some(Duration::ZERO)).unwrap_or(true)
}

/// Sends `signal` to the process behind `pidfd`, which names that process and no other;
/// `ESRCH` (it has exited) is not an error.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal takes a pidfd we own, a signal number, no siginfo (null) and no
    // flags; it shares no memory with us.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            return Err(err);
        }
    }
    Ok(())
}

/// Opens a descriptor that becomes readable when `pid` exits, so the engine can wait on worker
/// death in the same `poll` as worker results.
#[cfg(target_os = "linux")]
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
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
pub(crate) fn pidfd_open(_pid: u32) -> Option<OwnedFd> {
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
