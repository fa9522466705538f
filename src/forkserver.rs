//! Asking the fork server for a worker.
//!
//! The fork server (`python/ferropool/_forkserver.py`) is a copy of the parent made with `fork()`
//! while the parent still had a single thread, so it holds every module the parent had imported
//! and no lock another thread could have held. It never starts a thread, so its own forks are
//! safe too. A worker forked from it starts in about a millisecond, with the task's modules
//! already imported, where a fresh interpreter needs tens of milliseconds.
//!
//! Each engine has its own connection to the server. A request is one byte carrying two
//! descriptors (`SCM_RIGHTS`): the worker's end of its link, and the write end of a status
//! socket. The server answers with the worker's pid (u32, little-endian). The worker is the
//! server's child, not ours, so the server reaps it and writes its exit status to the status
//! socket as two i32 (exit code or -1, signal or 0) before closing it.

use std::io::{self, Read};
use std::mem;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

/// Has the fork server start a worker whose link is `link` and whose exit status goes to
/// `status`; returns the worker's pid.
pub fn request_worker(conn: &mut UnixStream, link: &UnixStream, status: &UnixStream) -> io::Result<u32> {
    send_fds(conn, &[link.as_raw_fd(), status.as_raw_fd()])?;
    let mut pid = [0u8; 4];
    conn.read_exact(&mut pid)?;
    Ok(u32::from_le_bytes(pid))
}

/// Decodes the status the fork server wrote for an exited worker: `(code, signal)`.
pub fn decode_status(bytes: [u8; 8]) -> (Option<i32>, Option<i32>) {
    let code = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let signal = i32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    ((code >= 0).then_some(code), (signal > 0).then_some(signal))
}

/// Sends one byte with `fds` attached.
fn send_fds(conn: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let payload = [1u8];
    let fds_len = mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fds_len as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty header; every pointer set below outlives the
    // sendmsg call (`iov`, `payload`, `control` are locals), and the control buffer is exactly
    // CMSG_SPACE bytes, enough for one cmsghdr carrying `fds.len()` descriptors, which
    // CMSG_FIRSTHDR/CMSG_DATA address inside that buffer.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() {
            return Err(io::Error::other("no room for the descriptors"));
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fds_len as u32) as _;
        ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fds_len);
        loop {
            let sent = libc::sendmsg(conn.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL);
            if sent >= 0 {
                return Ok(());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
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
}
