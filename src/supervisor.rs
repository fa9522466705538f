//! Worker processes: starting them. What the engine keeps of each started worker (its child
//! handle, `child.rs`, which signals, watches and reaps it, and the engine's slot around it) is
//! `scheduler/slot.rs`'s.
//!
//! A worker is never a `fork()` of the threaded parent (DESIGN.md, principle 4). It is either
//! forked by the fork server (`forkserver.rs`), which a single-threaded parent made before any
//! thread existed, or a fresh interpreter started by `Command::spawn` from the engine thread. In
//! both cases its end of the link arrives as its stdin; the worker moves it to a private
//! descriptor and puts `/dev/null` in its place, as multiprocessing does for its children's
//! stdin. Each worker leads its own process group, so a terminal's Ctrl-C reaches only the
//! parent, and stopping a worker can stop anything it started too.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::child::ChildHandle;

/// How to start a worker.
#[derive(Debug, Default)]
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

/// A started worker process, and the parent's end of its link (blocking).
pub type Started = (ChildHandle, UnixStream);

/// Starts a worker: through the fork server when there is one, else as a fresh interpreter.
pub fn start(spec: &mut WorkerSpec) -> io::Result<Started> {
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
        match fork(conn, worker_end, number) {
            Ok(w) => started = Some(w),
            // the server is gone (killed from outside, say): fresh interpreters still work
            Err(_) => spec.forkserver = None,
        }
    }
    let worker = match started {
        Some(w) => w,
        None => spawn(&spec.argv, worker_end, number)?,
    };
    if let (Some(registrar), Some((ours, _))) = (spec.output.as_ref(), output) {
        let mut registration = [0u8; 8];
        registration[..4].copy_from_slice(&worker.0.pid().to_le_bytes());
        registration[4..].copy_from_slice(&number.to_le_bytes());
        // never waits: if the output thread is gone or far behind, this worker's output is
        // lost (its sends fail), which is better than a stalled engine
        let _ = crate::fdpass::send_with_fds(registrar, &registration, &[ours.as_raw_fd()]);
    }
    Ok(worker)
}

fn fork(conn: &mut UnixStream, output: Option<RawFd>, number: u32) -> io::Result<Started> {
    let (ours, theirs) = UnixStream::pair()?;
    let (status, status_theirs) = UnixStream::pair()?;
    // the server opened the pidfd before it could reap the worker (see `forkserver.rs`)
    let (pid, pidfd) = crate::forkserver::request_worker(conn, &theirs, &status_theirs, output, number)?;
    Ok((ChildHandle::forked(pid, status, pidfd)?, ours))
}

fn spawn(command: &[String], output: Option<RawFd>, number: u32) -> io::Result<Started> {
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
    Ok((ChildHandle::spawn(&mut command)?, ours))
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
