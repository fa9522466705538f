//! Asking the fork server for a worker.
//!
//! The fork server (`python/ferropool/_runtime/forkserver.py`) is a copy of the parent made with `fork()`
//! while the parent still had a single thread, so it holds every module the parent had imported
//! and no lock another thread could have held. It never starts a thread, so its own forks are
//! safe too. A worker forked from it starts in about a millisecond, with the task's modules
//! already imported, where a fresh interpreter needs tens of milliseconds.
//!
//! Each engine has its own connection to the server. The messages (a worker request and its
//! answer, the exit status the server writes for a reaped worker) are defined in
//! `python/ferropool/_runtime/forkserver_wire.py`, the server's side; the tests below pin the
//! same bytes here.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::fdpass;

/// Has the fork server start worker number `number`, whose link is `link`, whose exit status
/// goes to `status` and, if given, whose output socket is `output`; returns the worker's pid,
/// and its pidfd.
///
/// The server opens the pidfd before it could reap the worker, so it names that process and no
/// other: the worker is not our child, and its pid may be reaped and reused at any time, which
/// makes the pid alone unsafe to signal. No pidfd comes from a kernel without `pidfd_open`.
pub fn request_worker(
    conn: &mut UnixStream,
    link: &UnixStream,
    status: &UnixStream,
    output: Option<RawFd>,
    number: u32,
) -> io::Result<(u32, Option<OwnedFd>)> {
    let mut fds = vec![link.as_raw_fd(), status.as_raw_fd()];
    fds.extend(output);
    let mut request = [1u8; 5];
    request[1..].copy_from_slice(&number.to_le_bytes());
    send_fds(conn, &request, &fds)?;
    let mut pid = [0u8; 4];
    let mut got = 0;
    let mut received = VecDeque::new();
    while got < pid.len() {
        match fdpass::recv_with_fds(conn, &mut pid[got..], &mut received) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // anything past the one pidfd is not ours to keep: dropping closes it
    Ok((decode_pid(pid)?, received.pop_front()))
}

/// Decodes the fork server's answer to a request: the new worker's pid.
pub fn decode_pid(bytes: [u8; 4]) -> io::Result<u32> {
    let pid = u32::from_le_bytes(bytes);
    // 0 or a negative pid_t would make each later signal reach a whole process group, ours
    // included: the server only ever answers with a real child's pid
    if pid == 0 || libc::pid_t::try_from(pid).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the fork server answered with an invalid pid {pid}"),
        ));
    }
    Ok(pid)
}

/// Decodes the status the fork server wrote for an exited worker: `(code, signal)`.
pub fn decode_status(bytes: [u8; 8]) -> (Option<i32>, Option<i32>) {
    let code = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let signal = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    ((code >= 0).then_some(code), (signal > 0).then_some(signal))
}

/// Sends `request` with `fds` attached.
fn send_fds(conn: &UnixStream, request: &[u8], fds: &[RawFd]) -> io::Result<()> {
    loop {
        match fdpass::send_with_fds(conn, request, fds) {
            // a stream socket: a short write would leave the rest for the next request
            Ok(n) if n < request.len() => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "short request to the fork server",
                ));
            }
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_decodes_exit_codes_and_signals() {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&3i32.to_le_bytes());
        assert_eq!(decode_status(b), (Some(3), None));
        b[..4].copy_from_slice(&(-1i32).to_le_bytes());
        b[4..].copy_from_slice(&9i32.to_le_bytes());
        assert_eq!(decode_status(b), (None, Some(9)));
    }

    #[test]
    fn pids_that_name_process_groups_are_refused() {
        assert_eq!(decode_pid(1234u32.to_le_bytes()).unwrap(), 1234);
        for bad in [0u32, 1 << 31, u32::MAX] {
            assert!(decode_pid(bad.to_le_bytes()).is_err());
        }
    }
}
