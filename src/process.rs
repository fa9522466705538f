//! One child process for `ferropool.Process`: spawned, watched through a pidfd, signalled, reaped.
//!
//! The child is a fresh interpreter (the command line comes from `python/ferropool/_runtime/spawn.py`),
//! started by `fork` + `exec` in one step of the standard library's `Command`, which runs nothing
//! but async-signal-safe calls between them: safe from a threaded parent (DESIGN.md, principle 4).
//! Or the child is forked by the fork server (`python/ferropool/_runtime/forkserver.py`): then it is the
//! server's child, watched through a pidfd and told of by the server, which reaps it and writes
//! its exit status to a socket, as for pool workers.
//! Unlike a pool worker it stays in the parent's process group and has no parent-death signal,
//! as `multiprocessing`'s children: a terminal's Ctrl-C reaches it, and interpreter exit, not the
//! kernel, decides its end (`_runtime/lifecycle.py`).
//!
//! Signalling, watching and reaping are `child.rs`'s, the same handle the pool's workers use; this
//! file only adds what Python sees (`sentinel`, `poll`, `wait` with Ctrl-C, exit codes).

use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::prelude::*;

use crate::child::{exitcode, pidfd_open, ChildHandle};
use crate::errors::Error;
use crate::fd::wait_ready;
use crate::signals::{timeout_from_secs, wait_interruptible};

/// A started child process.
#[pyclass(name = "ChildProcess", module = "ferropool._core", frozen)]
pub struct PyChildProcess {
    pid: u32,
    /// One lock, so a signal is never sent to a pid that a concurrent reap has already released.
    child: Mutex<ChildHandle>,
}

impl PyChildProcess {
    fn child(&self) -> MutexGuard<'_, ChildHandle> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_reap(&self) -> PyResult<Option<i32>> {
        Ok(self.child().try_reap().map_err(Error::Io)?.map(exitcode))
    }
}

#[pymethods]
impl PyChildProcess {
    /// Starts `argv` with `/dev/null` as stdin, inherited stdout and stderr, and the descriptors
    /// `pass_fds` (kept at their numbers) as the only ones inherited besides those three.
    #[new]
    fn new(argv: Vec<String>, pass_fds: Vec<RawFd>) -> PyResult<Self> {
        let (program, rest) = argv
            .split_first()
            .ok_or_else(|| Error::InvalidArgument("empty command line".into()))?;
        for &fd in &pass_fds {
            crate::errors::fd_arg(fd)?;
        }
        let mut command = Command::new(program);
        command.args(rest).stdin(Stdio::null());
        // SAFETY: the hook runs in the forked child before exec; it only calls fcntl, which is
        // async-signal-safe, on a vector moved in before the fork, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                for &fd in &pass_fds {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = ChildHandle::spawn(&mut command).map_err(Error::Io)?;
        Ok(PyChildProcess {
            pid: child.pid(),
            child: Mutex::new(child),
        })
    }

    /// Takes charge of `pid`, a child the fork server forked and has not let run yet (it waits
    /// for its payload), whose exit status the server will write to `status` (taken over).
    #[staticmethod]
    fn adopt(pid: u32, status: RawFd) -> PyResult<Self> {
        let status = crate::errors::fd_arg(status)?;
        // 0 and what does not fit a pid_t would make every later signal reach a process group
        if pid == 0 || libc::pid_t::try_from(pid).is_err() {
            return Err(Error::InvalidArgument(format!("invalid process id: {pid}")).into());
        }
        // SAFETY: the caller hands over `status`, a socket it created for this child and no
        // longer uses; from here this object owns and closes it.
        let status = unsafe { UnixStream::from_raw_fd(status) };
        // the child cannot have ended yet (it blocks reading its payload), so the pid is its
        let child = ChildHandle::forked(pid, status, pidfd_open(pid)).map_err(Error::Io)?;
        Ok(PyChildProcess {
            pid,
            child: Mutex::new(child),
        })
    }

    #[getter]
    fn pid(&self) -> u32 {
        self.pid
    }

    /// A descriptor that becomes readable when the process ends (a pidfd).
    #[getter]
    fn sentinel(&self) -> PyResult<RawFd> {
        match self.child().pidfd() {
            Some(fd) => Ok(fd),
            None => Err(Error::InvalidArgument("the process handle is closed".into()).into()),
        }
    }

    /// The exit code if the process has ended (reaping it), else `None`.
    fn poll(&self) -> PyResult<Option<i32>> {
        self.try_reap()
    }

    /// Waits up to `timeout` seconds (`None`: until it ends) for the process to end; returns the
    /// exit code, or `None` on timeout. The GIL is released and Ctrl-C honoured while waiting.
    #[pyo3(signature = (timeout = None))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<i32>> {
        if let Some(code) = self.try_reap()? {
            return Ok(Some(code));
        }
        let timeout = timeout_from_secs(timeout)?;
        let ended_fd = self.child().exit_fd();
        let ended = wait_interruptible(py, timeout, |slice| {
            if let Some(fd) = ended_fd {
                return wait_ready(fd, libc::POLLIN, Some(slice)).unwrap_or(true);
            }
            // no pidfd (an old kernel): look again after a short pause
            std::thread::sleep(slice.min(Duration::from_millis(5)));
            self.try_reap().ok().flatten().is_some()
        })?;
        if !ended {
            return Ok(None);
        }
        self.try_reap()
    }

    /// Sends `signal` unless the process has already been reaped (then there is nothing to stop).
    fn send_signal(&self, signal: i32) -> PyResult<()> {
        Ok(self.child().signal(signal).map_err(Error::Io)?)
    }

    /// Closes the sentinel.
    fn close(&self) {
        self.child().close_pidfd();
    }
}
