//! Descriptors that travel with the bytes of a worker link (`SCM_RIGHTS`).
//!
//! Large buffers cross between the parent and a worker as memfd segments (see
//! `python/ferropool/_runtime/buffers.py`); their descriptors ride on the same socket as the frame that
//! refers to them. While a descriptor is in flight the kernel holds it, so a segment is freed
//! exactly when the last side that could still read it closes it, or dies.

use std::collections::VecDeque;
use std::io;
use std::mem;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

/// Most descriptors one message carries: a frame with more is sent as several messages.
pub const MAX_FDS: usize = 32;

fn cmsg_space() -> usize {
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    unsafe { libc::CMSG_SPACE((MAX_FDS * mem::size_of::<RawFd>()) as u32) as usize }
}

/// Sends `data` (at least its first byte) with `fds` attached. Returns the bytes written.
/// The descriptors stay ours: the receiver gets copies.
pub fn send_with_fds(link: &UnixStream, data: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    debug_assert!(!data.is_empty() && !fds.is_empty() && fds.len() <= MAX_FDS);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = vec![0u8; cmsg_space()];
    let payload = mem::size_of_val(fds);
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call, and
    // CMSG_FIRSTHDR returns a header inside `control`, which is CMSG_SPACE(MAX_FDS) bytes, enough
    // for `fds.len() <= MAX_FDS` descriptors.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(payload as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        // unaligned on purpose: written with write_unaligned
        #[allow(clippy::cast_ptr_alignment)]
        let dst = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, &fd) in fds.iter().enumerate() {
            ptr::write_unaligned(dst.add(i), fd);
        }
        let n = libc::sendmsg(link.as_raw_fd(), &raw const msg, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Reads into `buf` like `read`, collecting any descriptors that arrive into `fds`.
pub fn recv_with_fds(link: &UnixStream, buf: &mut [u8], fds: &mut VecDeque<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = vec![0u8; cmsg_space()];
    // SAFETY: as in send_with_fds, every pointer outlives the call. The kernel fills `control`
    // with complete cmsg headers only (MSG_CTRUNC aside, in which case the descriptors that did
    // fit are still valid and are taken), and each SCM_RIGHTS descriptor it delivers is a fresh
    // one owned by this process: wrapping it in OwnedFd is the only ownership.
    unsafe {
        let mut msg: libc::msghdr = mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control.len() as _;
        let n = libc::recvmsg(link.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                // unaligned on purpose: read with read_unaligned
                #[allow(clippy::cast_ptr_alignment)]
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / mem::size_of::<RawFd>() {
                    fds.push_back(OwnedFd::from_raw_fd(ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
        }
        Ok(n as usize)
    }
}
