//! A readiness check that keeps the GIL: for callers that must not let another thread in.
//!
//! A process pool's result thread asks, before each batch of results, whether workers' output
//! is waiting to be written first (`python/ferropool/_pool/logs.py`). A Python-level `poll` would
//! release the GIL for the system call, and on a busy interpreter getting it back can take a
//! whole switch interval: per batch, that was most of the cost of forwarding output. A
//! zero-timeout `poll` never blocks, so holding the GIL through it costs nothing.

use pyo3::prelude::*;

/// Whether any of `fds` is readable (or closed) right now; never waits.
#[pyfunction]
pub fn any_readable(fds: Vec<i32>) -> bool {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` is an exclusively borrowed array of `polls.len()` pollfd structs; a
    // timeout of 0 returns at once. A stale descriptor only reports POLLNVAL.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 0) };
    n > 0
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
}
