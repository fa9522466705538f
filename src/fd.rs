//! Waiting on file descriptors: `poll(2)` with a timeout, for one descriptor or many.
//!
//! Everything that waits for a descriptor goes through here: a `Connection`'s blocked
//! `recv`/`send` between slices, `ferropool.connection.wait()` (`wait_readable`), a child's pidfd
//! (`process.rs`, `supervisor.rs`), and the readiness check of a process pool's result thread.
//!
//! `any_readable` keeps the GIL: a process pool's result thread asks, before each batch of
//! results, whether workers' output is waiting to be written first
//! (`python/ferropool/_pool/logs.py`). A Python-level `poll` would release the GIL for the system
//! call, and on a busy interpreter getting it back can take a whole switch interval: per batch,
//! that was most of the cost of forwarding output. A zero-timeout `poll` never blocks, so holding
//! the GIL through it costs nothing. `wait_readable` releases it and honours Ctrl-C.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::Error;
use crate::signals::{timeout_from_secs, wait_interruptible};

/// Waits up to `timeout` (`None`: forever) for `fd` to report one of `events`; a hang-up or error
/// counts as ready, since the next call on it will not block. An interrupted wait reports
/// not ready, so the caller can look at signals.
pub fn wait_ready(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd, events, revents: 0 };
    Ok(poll_fds(std::slice::from_mut(&mut pfd), timeout)? > 0)
}

/// `poll(2)` on `fds`, rounding the timeout up to whole milliseconds (never a busy loop).
fn poll_fds(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX));
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(err)
        };
    }
    Ok(rc as usize)
}

/// Descriptors of `fds` ready to read (or hung up) within `timeout`; empty on timeout.
pub fn ready_to_read(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<RawFd>> {
    let mut pfds = read_polls(fds);
    if poll_fds(&mut pfds, timeout)? == 0 {
        return Ok(Vec::new());
    }
    Ok(pfds.iter().filter(|p| p.revents != 0).map(|p| p.fd).collect())
}

/// Whether any of `fds` is readable (or closed) right now; never waits. A stale descriptor only
/// reports POLLNVAL (ready), and a failed poll reports nothing ready.
#[pyfunction]
pub fn any_readable(fds: Vec<RawFd>) -> bool {
    poll_fds(&mut read_polls(&fds), Some(Duration::ZERO)).is_ok_and(|n| n > 0)
}

/// One `pollfd` a descriptor, each waiting to read.
fn read_polls(fds: &[RawFd]) -> Vec<libc::pollfd> {
    fds.iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect()
}

/// The descriptors of `fds` ready to read within `timeout` seconds (`None`: wait until one is);
/// the GIL is released and Ctrl-C honoured while waiting.
#[pyfunction]
#[pyo3(signature = (fds, timeout = None))]
pub fn wait_readable(py: Python<'_>, fds: Vec<RawFd>, timeout: Option<f64>) -> PyResult<Vec<RawFd>> {
    let timeout = timeout_from_secs(timeout)?;
    // poll would skip a negative number forever and call a closed one ready: neither is a wait
    for &fd in &fds {
        crate::errors::fd_arg(fd)?;
    }
    let mut ready = Vec::new();
    let mut failure: Option<io::Error> = None;
    wait_interruptible(py, timeout, |slice| match ready_to_read(&fds, Some(slice)) {
        Ok(r) if r.is_empty() => false,
        Ok(r) => {
            ready = r;
            true
        }
        Err(e) => {
            failure = Some(e);
            true
        }
    })?;
    match failure {
        Some(e) => Err(Error::Io(e).into()),
        None => Ok(ready),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn reports_data_waiting_and_nothing_else() {
        let (a, mut b) = UnixStream::pair().unwrap();
        assert!(!any_readable(vec![a.as_raw_fd()]));
        b.write_all(b"x").unwrap();
        assert!(any_readable(vec![a.as_raw_fd()]));
        assert!(!any_readable(vec![]));
    }

    #[test]
    fn ready_to_read_reports_only_ready_descriptors() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let (c, d) = UnixStream::pair().unwrap();
        b.write_all(b"x").unwrap();
        let ready = ready_to_read(&[a.as_raw_fd(), d.as_raw_fd()], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready, vec![a.as_raw_fd()]);
        drop(c);
        let ready = ready_to_read(&[d.as_raw_fd()], Some(Duration::ZERO)).unwrap();
        assert_eq!(ready, vec![d.as_raw_fd()]);
    }
}
