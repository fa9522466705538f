//! Pipe connections (`ferropool.Pipe`): whole messages over a `SOCK_SEQPACKET` socket pair.
//!
//! Wire format (ferropool to ferropool only): a message is one packet holding an 8-byte
//! little-endian body length followed by the first bytes of the body; a body longer than one
//! packet allows continues in packets of raw body bytes. A sequenced-packet socket keeps packet
//! boundaries, so a receive never reads past the message it wants: header and short body arrive
//! in one system call, nothing is buffered in user space (a descriptor handed to a child carries
//! every unread message with it), and `recv_bytes(maxlength)` can read the length with
//! `MSG_PEEK` and refuse the message while leaving it whole in the socket.
//!
//! Sends and receives run with the GIL released, one non-blocking system call per packet that
//! the socket can take or has; when it cannot, the attempt waits in `poll` for up to one 50 ms
//! slice, and between two attempts that came back empty (or signal-interrupted) the caller
//! checks for signals, as `signals::wait_interruptible` does, so Ctrl-C interrupts a blocked
//! `recv`/`send` within one slice. The socket itself stays an ordinary blocking socket with no
//! timeouts of its own: code that reads `fileno()` directly (`multiprocessing.reduction`'s
//! `recv_handle`, a child that inherits it) blocks on it as on a stdlib pipe. Before it blocks, a receive looks for its message for up to
//! `SPIN` (50 µs), yielding the CPU between looks (and skips the look for a while after looks
//! that found nothing), and a one-packet send is first tried without blocking and without
//! releasing the GIL: see `spin_until_readable` and `send_slice` for why.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PySlice};

use crate::errors::Error;
use crate::fd::wait_ready;
use crate::signals::{timeout_from_secs, wait_interruptible};

/// The largest packet sent; a message's first packet holds the header and up to
/// `PACKET - HEADER` body bytes. Well under the default socket send buffer (about 208 KiB), which
/// bounds a packet's size on a sequenced-packet socket.
pub const PACKET: usize = 64 * 1024;
/// The body length that opens every message.
pub const HEADER: usize = 8;
/// How long a blocked call waits before it looks for a signal (Ctrl-C) again.
const SLICE: Duration = Duration::from_millis(50);

/// How long a receive looks for a message, yielding the CPU between looks, before it sleeps.
///
/// A reply to a short message usually comes within a few microseconds. Sleeping for it and
/// being woken costs more than that when the peer runs on another CPU (an inter-processor
/// interrupt, and the CPU's way out of idle: tens of microseconds in a virtual machine), which
/// made a ping-pong over two CPUs several times slower than over one. Yielding between looks
/// lets a peer on this CPU run, so the look costs little there either.
const SPIN: Duration = Duration::from_micros(50);

/// Returns once `fd` is readable or `SPIN` has passed (at once on a machine of one CPU, and for
/// a while after looks in vain: see `SKIP`).
pub(crate) fn spin_until_readable(fd: RawFd) {
    static CPUS: std::sync::OnceLock<libc::c_long> = std::sync::OnceLock::new();
    // SAFETY: sysconf only reads a system setting.
    if *CPUS.get_or_init(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }) < 2 {
        return;
    }
    let skip = SKIP.get();
    if skip > 0 {
        SKIP.set(skip - 1);
        return;
    }
    let deadline = std::time::Instant::now() + SPIN;
    while !crate::fd::wait_ready(fd, libc::POLLIN, Some(Duration::ZERO)).unwrap_or(true) {
        if std::time::Instant::now() >= deadline {
            // the reply is slow in coming (a busy peer, or more runnable processes than CPUs):
            // looking takes CPU time the others need. The next receives sleep at once, more of
            // them after each look in vain, until a look finds its message again
            let backoff = (BACKOFF.get() * 2).clamp(1, MAX_BACKOFF);
            BACKOFF.set(backoff);
            SKIP.set(backoff);
            return;
        }
        std::thread::yield_now();
    }
    BACKOFF.set(0);
}

/// The most receives in a row that skip the look after looks in vain.
const MAX_BACKOFF: u32 = 64;
thread_local! {
    /// How many more receives of this thread skip the look.
    static SKIP: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// How many receives the last look in vain made skip it (doubling, up to `MAX_BACKOFF`).
    static BACKOFF: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// A connected pair of close-on-exec sequenced-packet sockets.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as RawFd; 2];
    // SAFETY: socketpair writes two new descriptors into the two-element array we own, or -1.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created by the kernel and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one packet made of `parts`: `Ok(false)` when the socket stayed full for one slice or a
/// signal arrived (nothing was sent; try again after checking signals).
fn send_packet(fd: RawFd, parts: &[&[u8]]) -> io::Result<bool> {
    let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
    if send_packet_flags(fd, parts, flags)? {
        return Ok(true);
    }
    if !wait_ready(fd, libc::POLLOUT, Some(SLICE))? {
        return Ok(false);
    }
    send_packet_flags(fd, parts, flags)
}

/// `send_packet` with the `sendmsg` flags given (`MSG_NOSIGNAL` at least).
fn send_packet_flags(fd: RawFd, parts: &[&[u8]], flags: libc::c_int) -> io::Result<bool> {
    let mut iov: [libc::iovec; 2] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; 2];
    for (slot, part) in iov.iter_mut().zip(parts) {
        slot.iov_base = part.as_ptr().cast_mut().cast();
        slot.iov_len = part.len();
    }
    // SAFETY: a zeroed msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = parts.len().min(2) as _;
    // SAFETY: `msg` points at iovecs describing borrowed slices that outlive the call; the
    // kernel only reads them.
    let rc = unsafe { libc::sendmsg(fd, &raw const msg, flags) };
    if rc >= 0 {
        return Ok(true); // a sequenced packet is sent whole or not at all
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(false),
        _ => Err(err),
    }
}

/// Receives one packet into `buf`: `Ok(None)` when none arrived within one slice or a signal
/// came first, `Ok(Some(0))` at end-of-file. The length is the packet's whole length
/// (`MSG_TRUNC`), which is more than `buf.len()` when the rest of the packet was cut off.
fn recv_packet(fd: RawFd, buf: &mut [u8], peek: bool) -> io::Result<Option<usize>> {
    if let Some(n) = recv_packet_now(fd, buf, peek)? {
        return Ok(Some(n));
    }
    if !wait_ready(fd, libc::POLLIN, Some(SLICE))? {
        return Ok(None);
    }
    recv_packet_now(fd, buf, peek)
}

/// `recv_packet` without waiting: `Ok(None)` when no packet is there.
fn recv_packet_now(fd: RawFd, buf: &mut [u8], peek: bool) -> io::Result<Option<usize>> {
    let flags = libc::MSG_TRUNC | libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
    // SAFETY: `buf` is an exclusively borrowed, writable slice of `buf.len()` bytes.
    let rc = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
    if rc >= 0 {
        return Ok(Some(rc as usize));
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => Ok(None),
        _ => Err(err),
    }
}

/// Sends `body` as one message. `wait` is called after each attempt that sent nothing (the
/// socket stayed full); it returns when it is worth trying again, or an error to give up with.
/// `cut_short` is set when it fails after the first packet went out (the peer then holds part of
/// a message).
pub fn send_message(
    fd: RawFd,
    body: &[u8],
    wait: &mut dyn FnMut() -> io::Result<()>,
    cut_short: &mut bool,
) -> io::Result<()> {
    let header = (body.len() as u64).to_le_bytes();
    let first = body.len().min(PACKET - HEADER);
    while !send_packet(fd, &[&header, &body[..first]])? {
        wait()?;
    }
    let mut rest = || {
        for chunk in body[first..].chunks(PACKET) {
            while !send_packet(fd, &[chunk])? {
                wait()?;
            }
        }
        Ok(())
    };
    rest().inspect_err(|_| *cut_short = true)
}

/// Why no message came back.
#[derive(Debug)]
pub enum RecvError {
    /// The other end is closed and nothing is left to read.
    Eof,
    /// The waiting message is longer than the caller allows; it is still unread.
    TooLong,
    Io(io::Error),
}

impl From<io::Error> for RecvError {
    fn from(err: io::Error) -> Self {
        RecvError::Io(err)
    }
}

/// The receiving half's state: a scratch packet, and a message whose continuation packets have
/// not all arrived when a wait was interrupted (the next receive finishes it, so an interrupt
/// never leaves the connection in the middle of a message).
#[derive(Default)]
pub struct Receiver {
    packet: Vec<u8>,
    partial: Option<(Vec<u8>, usize)>,
}

impl Receiver {
    /// Whether a message is half received (its next packets are already on their way).
    pub fn has_partial(&self) -> bool {
        self.partial.is_some()
    }

    /// Receives one message. `wait` as for [`send_message`].
    pub fn recv(
        &mut self,
        fd: RawFd,
        maxlength: Option<usize>,
        wait: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<Vec<u8>, RecvError> {
        let (mut body, total) = match self.partial.take() {
            Some(partial) => partial,
            None => self.first_packet(fd, maxlength, wait)?,
        };
        while body.len() < total {
            let start = body.len();
            let room = (total - start).min(PACKET);
            // grows with what arrives (amortised doubling), never to a length the peer only stated
            body.try_reserve(room).map_err(|_| bad_length())?;
            body.resize(start + room, 0);
            loop {
                match recv_packet(fd, &mut body[start..], false) {
                    Ok(Some(0)) => return Err(RecvError::Eof), // the sender died mid-message
                    // a packet longer than what is left of the message: not a ferropool sender
                    Ok(Some(n)) if n > room => return Err(bad_length().into()),
                    Ok(Some(n)) => {
                        body.truncate(start + n);
                        break;
                    }
                    Ok(None) => {
                        if let Err(err) = wait() {
                            body.truncate(start);
                            self.partial = Some((body, total));
                            return Err(err.into());
                        }
                    }
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(body)
    }

    fn first_packet(
        &mut self,
        fd: RawFd,
        maxlength: Option<usize>,
        wait: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<(Vec<u8>, usize), RecvError> {
        if let Some(max) = maxlength {
            let mut header = [0u8; HEADER];
            let n = loop {
                match recv_packet(fd, &mut header, true)? {
                    Some(n) => break n,
                    None => wait()?,
                }
            };
            if n == 0 {
                return Err(RecvError::Eof);
            }
            if n >= HEADER && u64::from_le_bytes(header) > max as u64 {
                return Err(RecvError::TooLong);
            }
        }
        self.packet.resize(PACKET, 0);
        let n = loop {
            match recv_packet(fd, &mut self.packet, false)? {
                Some(n) => break n,
                None => wait()?,
            }
        };
        if n == 0 {
            return Err(RecvError::Eof);
        }
        let (total, first) = decode_first_packet(&self.packet, n)?;
        let mut body = Vec::new();
        body.try_reserve_exact(total.min(PREALLOC_MAX))
            .map_err(|_| bad_length())?;
        body.extend_from_slice(first);
        Ok((body, total))
    }
}

/// Most bytes reserved for a message before they arrive: the rest grows as packets come.
const PREALLOC_MAX: usize = 16 << 20;

/// `OSError("bad message length")`, the stdlib's words for a message whose length is wrong.
fn bad_length() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "bad message length")
}

/// Decodes a message's first packet, of which `n` bytes arrived (its whole length: more than
/// `packet.len()` if it was cut off): the message's total body length, and the body bytes in
/// this packet.
pub fn decode_first_packet(packet: &[u8], n: usize) -> io::Result<(usize, &[u8])> {
    let Some(got) = packet.get(..n) else {
        return Err(bad_length()); // longer than any packet a ferropool sender makes
    };
    let Some((header, first)) = got.split_first_chunk::<HEADER>() else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message: a packet without a header (was the descriptor shared with another program?)",
        ));
    };
    let total = usize::try_from(u64::from_le_bytes(*header)).map_err(|_| bad_length())?;
    if first.len() > total {
        return Err(bad_length());
    }
    Ok((total, first))
}

/// One end of a pipe: the native half of `ferropool.connection.Connection`.
#[pyclass(name = "Connection", module = "ferropool._core", subclass, frozen)]
pub struct PyConnection {
    /// The socket, or -1 once closed.
    fd: AtomicI32,
    readable: bool,
    writable: bool,
    /// One message is received at a time, whole, whichever thread receives.
    rx: Mutex<Receiver>,
    /// One message is sent at a time, so concurrent senders never interleave packets. `true`
    /// once a send stopped in the middle of a message (Ctrl-C): the receiver would read the
    /// next message as the rest of that one, so the connection sends no more.
    tx: Mutex<bool>,
}

impl PyConnection {
    fn fd_for(&self, readable: bool, writable: bool) -> Result<RawFd, Error> {
        let fd = self.fd.load(Ordering::Acquire);
        if fd < 0 {
            return Err(Error::ConnectionClosed);
        }
        if readable && !self.readable {
            return Err(Error::WrongDirection("connection is write-only"));
        }
        if writable && !self.writable {
            return Err(Error::WrongDirection("connection is read-only"));
        }
        Ok(fd)
    }

    /// Runs `io` (a send or receive) with the GIL released, waiting in slices and checking
    /// signals between them; a signal handler's exception comes back as the error.
    fn blocking<T: Send, E: Send + From<io::Error>>(
        &self,
        py: Python<'_>,
        fd: RawFd,
        io: impl FnOnce(&mut dyn FnMut() -> io::Result<()>) -> Result<T, E> + Send,
    ) -> Result<Result<T, E>, PyErr> {
        let mut interrupted: Option<PyErr> = None;
        let result = py.detach(|| {
            // the socket call already waited one slice; all that is left is to look at signals
            let mut wait = || {
                // closed by another thread meanwhile: stop before the number can name another file
                if self.fd.load(Ordering::Acquire) != fd {
                    return Err(io::Error::from_raw_os_error(libc::EBADF));
                }
                #[allow(clippy::redundant_closure_for_method_calls)] // the method is not general over 'py
                Python::attach(|py| py.check_signals()).map_err(|err| {
                    interrupted = Some(err);
                    io::Error::from(io::ErrorKind::Interrupted)
                })
            };
            io(&mut wait)
        });
        match interrupted {
            Some(err) => Err(err),
            None => Ok(result),
        }
    }

    fn send_slice(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        let fd = self.fd_for(false, true)?;
        let tx = &self.tx;
        // A message of one packet into a socket with room: one non-blocking sendmsg, the GIL
        // kept (releasing and taking it back would cost more than the call). `try_lock`: a
        // sender blocked in another thread holds `tx` and may wait for the GIL to check signals.
        if data.len() <= PACKET - HEADER {
            if let Ok(broken) = tx.try_lock() {
                if !*broken {
                    let header = (data.len() as u64).to_le_bytes();
                    let sent = send_packet_flags(fd, &[&header, data], libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                        .map_err(Error::Io)?;
                    if sent {
                        return Ok(());
                    }
                }
            }
        }
        let mut cut_short = false;
        let sent = self.blocking(py, fd, |wait| {
            let mut broken = tx.lock().unwrap_or_else(PoisonError::into_inner);
            if *broken {
                return Err(io::Error::other(
                    "a send was interrupted in the middle of a message; this connection can no longer send",
                ));
            }
            let result = send_message(fd, data, wait, &mut cut_short);
            *broken = cut_short;
            result
        });
        sent?.map_err(|e| Error::Io(e).into())
    }

    fn recv_vec(&self, py: Python<'_>, maxlength: Option<usize>) -> PyResult<Vec<u8>> {
        let fd = self.fd_for(true, false)?;
        let rx = &self.rx;
        let result = self.blocking(py, fd, |wait| {
            let mut rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            if !rx.has_partial() {
                spin_until_readable(fd);
            }
            rx.recv(fd, maxlength, wait)
        })?;
        result.map_err(|err| match err {
            RecvError::Eof => Error::Eof.into(),
            RecvError::TooLong => Error::MessageTooLong.into(),
            RecvError::Io(e) => Error::Io(e).into(),
        })
    }
}

/// The bytes of a bytes-like object (any buffer, read as unsigned bytes).
fn buffer_bytes(obj: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let py = obj.py();
    let view = py
        .import("builtins")?
        .getattr("memoryview")?
        .call1((obj,))?
        .call_method1("cast", ("B",))?;
    let buf = PyBuffer::<u8>::get(&view)?;
    buf.to_vec(py)
}

#[pymethods]
impl PyConnection {
    /// Takes ownership of `fd`, a socket made by `seqpacket_pair`.
    #[new]
    #[pyo3(signature = (fd, readable = true, writable = true))]
    fn new(fd: RawFd, readable: bool, writable: bool) -> PyResult<Self> {
        let fd = crate::errors::fd_arg(fd)?;
        if !readable && !writable {
            return Err(Error::InvalidArgument("at least one of `readable` and `writable` must be True".into()).into());
        }
        Ok(PyConnection {
            fd: AtomicI32::new(fd),
            readable,
            writable,
            rx: Mutex::new(Receiver::default()),
            tx: Mutex::new(false),
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.fd.load(Ordering::Acquire) < 0
    }

    #[getter]
    fn readable(&self) -> bool {
        self.readable
    }

    #[getter]
    fn writable(&self) -> bool {
        self.writable
    }

    fn fileno(&self) -> PyResult<RawFd> {
        Ok(self.fd_for(false, false)?)
    }

    fn close(&self) {
        let fd = self.fd.swap(-1, Ordering::AcqRel);
        if fd >= 0 {
            // SAFETY: the swap made this call the descriptor's only owner.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }

    /// Sends `buf[offset:offset + size]` (bytes-like) as one message.
    #[pyo3(signature = (buf, offset = 0, size = None))]
    fn send_bytes(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, offset: isize, size: Option<isize>) -> PyResult<()> {
        self.fd_for(false, true)?;
        if offset == 0 && size.is_none() {
            if let Ok(bytes) = buf.cast::<PyBytes>() {
                return self.send_slice(py, bytes.as_bytes());
            }
        }
        let data = buffer_bytes(buf)?;
        let n = data.len() as isize;
        // the stdlib's checks and words
        if offset < 0 {
            return Err(Error::InvalidArgument("offset is negative".into()).into());
        }
        if n < offset {
            return Err(Error::InvalidArgument("buffer length < offset".into()).into());
        }
        let size = match size {
            None => n - offset,
            Some(s) if s < 0 => return Err(Error::InvalidArgument("size is negative".into()).into()),
            // `offset <= n` here, so this cannot overflow where `offset + s` could
            Some(s) if s > n - offset => {
                return Err(Error::InvalidArgument("buffer length < offset + size".into()).into())
            }
            Some(s) => s,
        };
        let (start, end) = (offset as usize, (offset + size) as usize);
        self.send_slice(py, &data[start..end])
    }

    /// Receives one message as bytes; a message longer than `maxlength` stays unread.
    #[pyo3(signature = (maxlength = None))]
    fn recv_bytes<'py>(&self, py: Python<'py>, maxlength: Option<isize>) -> PyResult<Bound<'py, PyBytes>> {
        if let Some(max) = maxlength {
            if max < 0 {
                return Err(Error::InvalidArgument("negative maxlength".into()).into());
            }
        }
        let body = self.recv_vec(py, maxlength.map(|m| m as usize))?;
        Ok(PyBytes::new(py, &body))
    }

    /// Receives one message into the writable buffer `buf` at byte `offset`; returns its length.
    #[pyo3(signature = (buf, offset = 0))]
    fn recv_bytes_into(&self, py: Python<'_>, buf: &Bound<'_, PyAny>, offset: isize) -> PyResult<usize> {
        self.fd_for(true, false)?;
        let view = py
            .import("builtins")?
            .getattr("memoryview")?
            .call1((buf,))?
            .call_method1("cast", ("B",))?;
        let target = PyBuffer::<u8>::get(&view)?;
        if target.readonly() {
            return Err(Error::WrongType("recv_bytes_into() needs a writable buffer".into()).into());
        }
        let len = target.item_count() as isize;
        if offset < 0 {
            return Err(Error::InvalidArgument("negative offset".into()).into());
        }
        if offset > len {
            return Err(Error::InvalidArgument("offset too large".into()).into());
        }
        let body = self.recv_vec(py, None)?;
        let start = offset as usize;
        if body.len() > target.item_count() - start {
            return Err(Error::BufferTooShort(PyBytes::new(py, &body).unbind()).into());
        }
        let end = start + body.len();
        let window = view.get_item(PySlice::new(py, start as isize, end as isize, 1))?;
        PyBuffer::<u8>::get(&window)?.copy_from_slice(py, &body)?;
        Ok(body.len())
    }

    /// Whether a message (or end-of-file) is waiting; waits up to `timeout` seconds, forever
    /// for `None`.
    #[pyo3(signature = (timeout = 0.0))]
    fn poll(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let fd = self.fd_for(true, false)?;
        let timeout = timeout_from_secs(timeout)?;
        if timeout == Some(Duration::ZERO) {
            return Ok(wait_ready(fd, libc::POLLIN, timeout)?);
        }
        wait_interruptible(py, timeout, |slice| {
            wait_ready(fd, libc::POLLIN, Some(slice)).unwrap_or(true)
        })
    }
}

impl Drop for PyConnection {
    fn drop(&mut self) {
        self.close();
    }
}

/// Returns once `fd` is readable or a short while (`SPIN`) has passed, the GIL released: what a
/// socket connection (a manager's, the manager server's loop) does before it blocks.
#[pyfunction]
pub fn spin_until_readable_fd(py: Python<'_>, fd: RawFd) -> PyResult<()> {
    let fd = crate::errors::fd_arg(fd)?;
    py.detach(|| spin_until_readable(fd));
    Ok(())
}

/// A connected pair of sockets for `Pipe()`, as descriptors the two Connections will own.
#[pyfunction]
pub fn socket_pair() -> PyResult<(RawFd, RawFd)> {
    let (a, b) = seqpacket_pair().map_err(Error::Io)?;
    Ok((a.into_raw_fd(), b.into_raw_fd()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A pair as `PyConnection::new` takes it: blocking sockets, no timeouts.
    fn pair() -> (OwnedFd, OwnedFd) {
        seqpacket_pair().unwrap()
    }

    fn never_wait() -> io::Result<()> {
        Err(io::Error::from(io::ErrorKind::WouldBlock))
    }

    /// Keeps trying: each attempt already waited one slice.
    #[allow(clippy::unnecessary_wraps)] // the shape `send_message` and `recv` expect
    fn block() -> io::Result<()> {
        Ok(())
    }

    #[test]
    fn short_and_long_messages_arrive_whole_and_in_order() {
        let (a, b) = pair();
        let big: Vec<u8> = (0..3 * PACKET + 17).map(|i| (i % 251) as u8).collect();
        let (afd, bfd) = (a.as_raw_fd(), b.as_raw_fd());
        let sender = {
            let big = big.clone();
            std::thread::spawn(move || {
                send_message(afd, b"hello", &mut block, &mut false).unwrap();
                send_message(afd, &big, &mut block, &mut false).unwrap();
                send_message(afd, b"", &mut block, &mut false).unwrap();
            })
        };
        let mut rx = Receiver::default();
        assert_eq!(rx.recv(bfd, None, &mut block).unwrap(), b"hello");
        assert_eq!(rx.recv(bfd, None, &mut block).unwrap(), big);
        assert_eq!(rx.recv(bfd, None, &mut block).unwrap(), b"");
        sender.join().unwrap();
        drop(a);
        assert!(matches!(rx.recv(bfd, None, &mut block), Err(RecvError::Eof)));
    }

    #[test]
    fn too_long_leaves_the_message_readable() {
        let (a, b) = pair();
        send_message(a.as_raw_fd(), b"0123456789", &mut never_wait, &mut false).unwrap();
        let mut rx = Receiver::default();
        assert!(matches!(
            rx.recv(b.as_raw_fd(), Some(4), &mut never_wait),
            Err(RecvError::TooLong)
        ));
        assert_eq!(
            rx.recv(b.as_raw_fd(), Some(10), &mut never_wait).unwrap(),
            b"0123456789"
        );
    }

    #[test]
    fn an_interrupted_long_message_resumes() {
        let (a, b) = pair();
        let body: Vec<u8> = (0..2 * PACKET).map(|i| (i % 7) as u8).collect();
        let header = (body.len() as u64).to_le_bytes();
        let first = PACKET - HEADER;
        assert!(send_packet(a.as_raw_fd(), &[&header, &body[..first]]).unwrap());
        let mut rx = Receiver::default();
        assert!(matches!(
            rx.recv(b.as_raw_fd(), None, &mut never_wait),
            Err(RecvError::Io(_))
        ));
        for chunk in body[first..].chunks(PACKET) {
            assert!(send_packet(a.as_raw_fd(), &[chunk]).unwrap());
        }
        assert_eq!(rx.recv(b.as_raw_fd(), None, &mut never_wait).unwrap(), body);
    }

    #[test]
    fn a_send_stopped_mid_message_says_so() {
        let (a, _b) = pair();
        let mut cut_short = false;
        let big = vec![0u8; 4 * 1024 * 1024]; // more than the socket holds: nobody reads
        assert!(send_message(a.as_raw_fd(), &big, &mut never_wait, &mut cut_short).is_err());
        assert!(cut_short);
    }

    #[test]
    fn a_receive_looks_before_it_sleeps_and_not_for_long() {
        let (a, b) = pair();
        let started = std::time::Instant::now();
        spin_until_readable(b.as_raw_fd()); // nothing comes: gives up after about SPIN
        let waited = started.elapsed();
        assert!(waited < Duration::from_secs(1), "looked for {waited:?}");
        send_message(a.as_raw_fd(), b"x", &mut never_wait, &mut false).unwrap();
        spin_until_readable(b.as_raw_fd()); // returns at once: a message is waiting
        let mut rx = Receiver::default();
        assert_eq!(rx.recv(b.as_raw_fd(), None, &mut never_wait).unwrap(), b"x");
    }

    #[test]
    fn looks_in_vain_make_the_next_receives_sleep_at_once() {
        if unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) } < 2 {
            return;
        }
        let (a, b) = pair();
        spin_until_readable(b.as_raw_fd()); // nothing comes: a look in vain
        assert_eq!((SKIP.get(), BACKOFF.get()), (1, 1));
        spin_until_readable(b.as_raw_fd()); // skipped
        spin_until_readable(b.as_raw_fd()); // in vain again: twice as many skipped
        assert_eq!((SKIP.get(), BACKOFF.get()), (2, 2));
        SKIP.set(0);
        send_message(a.as_raw_fd(), b"x", &mut never_wait, &mut false).unwrap();
        spin_until_readable(b.as_raw_fd()); // found: the next receives look again
        assert_eq!((SKIP.get(), BACKOFF.get()), (0, 0));
    }

    #[test]
    fn first_packets_from_strangers_are_refused() {
        let packet = |len: u64, body: &[u8]| [&len.to_le_bytes()[..], body].concat();
        let ok = packet(5, b"abc");
        assert_eq!(decode_first_packet(&ok, ok.len()).unwrap(), (5, &b"abc"[..]));
        let over = packet(2, b"abc");
        assert!(
            decode_first_packet(&over, over.len()).is_err(),
            "body beyond the stated length"
        );
        assert!(
            decode_first_packet(&ok, ok.len() + 1).is_err(),
            "a packet that was cut off"
        );
        assert!(decode_first_packet(b"abc", 3).is_err(), "no header");
    }
}
