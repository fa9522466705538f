//! Frames on a worker link: the only byte format that crosses between the parent and a worker.
//!
//! ```text
//! [len: u64][kind: u8][flags: u8][nfds: u8][id: u64][arg: u32][body: len bytes]   little-endian, 23-byte header
//! ```
//! The core never looks inside `body`: it is a pickled call or result, produced and consumed by
//! `python/ferropool/_runtime/serialize.py`. `arg` is a number whose meaning the
//! kind fixes (see [`kind`]): the function's length inside a call body, the task's run time (µs)
//! in a result, so neither needs a second frame; [`Frame`]'s accessors name each use. `nfds` descriptors
//! (memfd segments holding the large buffers of the body, see `fdpass.rs`) travel with the
//! frame's first bytes.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::fdpass;

/// Frame kinds. Parent → worker kinds are below 10, worker → parent kinds 10 and above.
pub mod kind {
    /// Run a call: body = pickled function (`arg` bytes: [`Frame::fn_len`]) + pickled `(args, kwargs)`.
    pub const CALL: u8 = 1;
    /// Run the initializer once before any call: same body layout as `CALL`; the `id` field
    /// carries the worker's memory limit in bytes, 0 for none ([`Frame::memory_limit`],
    /// written by [`encode_init`](super::encode_init)): an INIT belongs to no task.
    pub const INIT: u8 = 2;
    /// Finish: flush what is pending and exit.
    pub const STOP: u8 = 3;
    /// The worker has started (and ran its initializer).
    pub const READY: u8 = 10;
    /// A call returned: body = pickled value; `arg` = run time in µs ([`Frame::run_micros`]).
    pub const OK: u8 = 11;
    /// A call raised: body = pickled `(exception, traceback text)`; `arg` = run time in µs.
    pub const ERR: u8 = 12;
    /// The initializer raised: body as for `ERR`; the worker exits after sending it.
    pub const INIT_FAILED: u8 = 13;
    /// The worker's memory passed its limit: send it no more work, and stop it once idle.
    pub const RETIRE: u8 = 14;
}

/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 23;

/// Most descriptors one frame may carry.
pub const MAX_FRAME_FDS: usize = u8::MAX as usize;

/// One decoded frame.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub id: u64,
    /// A number whose meaning the kind fixes; read it through the accessors below.
    pub arg: u32,
    pub body: Vec<u8>,
    /// The descriptors that came with it (usually none).
    pub fds: Vec<OwnedFd>,
}

impl Frame {
    /// `CALL` and `INIT`: how many of the body's first bytes are the pickled function.
    pub fn fn_len(&self) -> u32 {
        self.arg
    }

    /// `OK` and `ERR`: how long the call ran in the worker, in µs.
    pub fn run_micros(&self) -> u32 {
        self.arg
    }

    /// `INIT`: the worker's memory limit in bytes, 0 for none.
    pub fn memory_limit(&self) -> u64 {
        self.id
    }
}

/// Appends an `INIT` frame: the initializer (`body`, whose first `fn_len` bytes are the pickled
/// function; empty for none) and the worker's memory limit (0: none).
pub fn encode_init(out: &mut Vec<u8>, flags: u8, memory_limit: u64, fn_len: u32, body: &[u8]) {
    encode(out, kind::INIT, flags, memory_limit, fn_len, &[body]);
}

/// Appends one frame whose body is the concatenation of `parts` to `out`.
pub fn encode(out: &mut Vec<u8>, kind: u8, flags: u8, id: u64, arg: u32, parts: &[&[u8]]) {
    encode_header(out, kind, flags, 0, id, arg, parts);
}

/// Queues one frame on `out` with `fds` attached (at most `MAX_FRAME_FDS`).
pub fn encode_fds(out: &mut WriteBuf, kind: u8, flags: u8, id: u64, arg: u32, parts: &[&[u8]], fds: Vec<OwnedFd>) {
    debug_assert!(fds.len() <= MAX_FRAME_FDS);
    let start = out.buf.len();
    encode_header(&mut out.buf, kind, flags, fds.len() as u8, id, arg, parts);
    if !fds.is_empty() {
        out.attach.push_back((start, fds));
    }
}

fn encode_header(out: &mut Vec<u8>, kind: u8, flags: u8, nfds: u8, id: u64, arg: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.push(kind);
    out.push(flags);
    out.push(nfds);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&arg.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Longest frame body accepted from the other end: 64 GiB.
///
/// Large buffers travel out of band (memfd segments, see `fdpass.rs`), so only what pickles
/// in-band (a `str`, `bytes`, a big list) makes a body long. This bound is far above any such
/// result a machine can build twice in memory (the worker's pickle and the parent's copy), and
/// its only job is to reject a length no honest peer sends before anything is sized from it.
pub const MAX_BODY_LEN: u64 = 64 << 30;

/// Bytes the reader asks for at least in one read.
const READ_CHUNK: usize = 64 * 1024;

/// A buffer emptied of a frame at least this large is freed, rather than kept for the next one.
const KEEP_BUFFER_MAX: usize = 4 << 20;

/// The fixed part of a frame, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Body length; at most [`MAX_BODY_LEN`].
    pub len: usize,
    pub kind: u8,
    pub flags: u8,
    pub nfds: u8,
    pub id: u64,
    pub arg: u32,
}

/// Why bytes from the other end are not a frame. The stream cannot be resynchronised after one:
/// the peer is broken or hostile, and the link is given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The header states a body longer than [`MAX_BODY_LEN`].
    TooLong(u64),
    /// The header announces more descriptors than arrived with the frame's first bytes.
    MissingFds { announced: usize, arrived: usize },
    /// Descriptors arrived with no frame to carry them.
    StrayFds(usize),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLong(len) => write!(
                f,
                "a frame header states a body of {len} bytes, more than the {MAX_BODY_LEN}-byte limit"
            ),
            FrameError::MissingFds { announced, arrived } => write!(
                f,
                "a frame announces {announced} descriptors but {arrived} arrived with it"
            ),
            FrameError::StrayFds(n) => write!(f, "{n} descriptors arrived outside any frame"),
        }
    }
}

/// Decodes the header at the front of `bytes`: `Ok(None)` until all of it is there.
pub fn decode_header(bytes: &[u8]) -> Result<Option<Header>, FrameError> {
    let Some(h) = bytes.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let le64 = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let raw_len = le64(0);
    let len = match usize::try_from(raw_len) {
        Ok(len) if raw_len <= MAX_BODY_LEN => len,
        _ => return Err(FrameError::TooLong(raw_len)),
    };
    Ok(Some(Header {
        len,
        kind: h[8],
        flags: h[9],
        nfds: h[10],
        id: le64(11),
        arg: u32::from_le_bytes([h[19], h[20], h[21], h[22]]),
    }))
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
///
/// Nothing is sized from a header: the buffer grows (doubling) only as bytes actually arrive,
/// and each byte of it is zeroed once, so a frame of any length is received in linear time and a
/// header that lies about its length costs no memory.
#[derive(Default)]
pub struct FrameReader {
    /// Bytes `start..filled` are received and not yet consumed; `filled..` is zeroed room.
    buf: Vec<u8>,
    start: usize,
    filled: usize,
    /// Descriptors received and not yet handed out with their frame, in arrival order.
    fds: VecDeque<OwnedFd>,
}

/// What one read from the stream gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many bytes arrived.
    Data(usize),
    /// The other end closed the stream.
    Eof,
    /// A non-blocking stream has nothing more for now.
    WouldBlock,
}

impl FrameReader {
    /// Reads once from `src` into the buffer.
    pub fn read_from<R: Read>(&mut self, src: &mut R) -> io::Result<ReadOutcome> {
        self.read_with(|buf, _| src.read(buf))
    }

    /// Reads once from a worker link, keeping the descriptors that arrive with the bytes.
    pub fn read_from_link(&mut self, link: &UnixStream) -> io::Result<ReadOutcome> {
        self.read_with(|buf, fds| fdpass::recv_with_fds(link, buf, fds))
    }

    /// Bytes received and not yet taken as frames.
    pub fn buffered(&self) -> usize {
        self.filled - self.start
    }

    fn read_with(
        &mut self,
        mut read: impl FnMut(&mut [u8], &mut VecDeque<OwnedFd>) -> io::Result<usize>,
    ) -> io::Result<ReadOutcome> {
        self.make_room()?;
        let res = loop {
            match read(&mut self.buf[self.filled..], &mut self.fds) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match res {
            Ok(0) => Ok(ReadOutcome::Eof),
            Ok(n) => {
                // a reader reporting more than it was given must not move `filled` past the end
                self.filled = self.filled.saturating_add(n).min(self.buf.len());
                Ok(ReadOutcome::Data(n))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(ReadOutcome::WouldBlock),
            Err(e) => Err(e),
        }
    }

    /// Makes sure there is free room after `filled`: consumed bytes are moved out first, and the
    /// buffer doubles only when what is buffered fills it.
    fn make_room(&mut self) -> io::Result<()> {
        let pending = self.filled - self.start;
        if self.start > 0 && (pending == 0 || self.start >= pending) {
            // moves at most as many bytes as were consumed since the last move: linear overall
            self.buf.copy_within(self.start..self.filled, 0);
            self.start = 0;
            self.filled = pending;
        }
        if self.filled < self.buf.len() {
            return Ok(());
        }
        // double, but not past the end of the frame in progress (zeroing pages nothing will fill
        // costs as much as the reading)
        let rest_of_frame = match self.peek_header() {
            Ok(Some(h)) => (HEADER_LEN + h.len).saturating_sub(pending),
            _ => usize::MAX,
        };
        let grow = self.buf.len().min(rest_of_frame).max(READ_CHUNK);
        self.buf
            .try_reserve_exact(grow)
            .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "no memory for a frame's bytes"))?;
        self.buf.resize(self.buf.len() + grow, 0);
        Ok(())
    }

    /// The header of the frame at the front, once it is complete.
    pub fn peek_header(&self) -> Result<Option<Header>, FrameError> {
        decode_header(&self.buf[self.start..self.filled])
    }

    /// Takes the next complete frame, if one is buffered. An error means the stream is not
    /// frames; nothing more should be read from it.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(h) = self.peek_header()? else {
            return self.check_no_stray_fds().map(|()| None);
        };
        let pending = self.filled - self.start;
        // cannot overflow: `h.len` is at most MAX_BODY_LEN
        let total = HEADER_LEN + h.len;
        if pending < total {
            return Ok(None);
        }
        // a frame's descriptors arrive with its first byte, so they are all here by now
        let nfds = usize::from(h.nfds);
        if nfds > self.fds.len() {
            return Err(FrameError::MissingFds {
                announced: nfds,
                arrived: self.fds.len(),
            });
        }
        let body_at = self.start + HEADER_LEN;
        let body = if self.start == 0 && pending == total && total >= KEEP_BUFFER_MAX {
            // a large frame alone in the buffer: hand over the buffer instead of copying it
            let mut body = mem::take(&mut self.buf);
            body.truncate(total);
            body.drain(..HEADER_LEN);
            self.start = 0;
            self.filled = 0;
            body
        } else {
            let body = self.buf[body_at..body_at + h.len].to_vec();
            self.start += total;
            body
        };
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            if self.buf.len() > KEEP_BUFFER_MAX {
                self.buf = Vec::new();
            }
        }
        Ok(Some(Frame {
            kind: h.kind,
            flags: h.flags,
            id: h.id,
            arg: h.arg,
            body,
            fds: self.fds.drain(..nfds).collect(),
        }))
    }

    /// Descriptors with no byte left to belong to were sent outside any frame.
    fn check_no_stray_fds(&self) -> Result<(), FrameError> {
        if self.filled == self.start && !self.fds.is_empty() {
            return Err(FrameError::StrayFds(self.fds.len()));
        }
        Ok(())
    }
}

/// Bytes queued for a non-blocking stream, written as far as the stream takes them.
#[derive(Default)]
pub struct WriteBuf {
    pub buf: Vec<u8>,
    pos: usize,
    /// Descriptors to send with the byte at each offset of `buf` (see `encode_fds`).
    attach: VecDeque<(usize, Vec<OwnedFd>)>,
}

impl WriteBuf {
    /// Whether everything queued has been written.
    pub fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// Writes as much as `link` accepts (without blocking, if it does not block), descriptors
    /// included. Returns `true` when nothing is left.
    pub fn flush_to_link(&mut self, mut link: &UnixStream) -> io::Result<bool> {
        while let Some(&(at, _)) = self.attach.front() {
            if self.pos < at {
                // write up to the attachment only: its descriptors must go with its first byte
                let n = write_some(&mut link, &self.buf[self.pos..at])?;
                self.pos += n;
                if self.pos < at {
                    return Ok(false);
                }
                continue;
            }
            let next = self.attach.get(1).map_or(self.buf.len(), |(next, _)| *next);
            let fds = &mut self.attach[0].1;
            let take = fds.len().min(fdpass::MAX_FDS);
            let rest_fds = fds.len() - take;
            // more descriptors than one message carries: send them a byte at a time
            let end = if rest_fds > 0 { self.pos + 1 } else { next };
            let raw: Vec<RawFd> = fds[..take].iter().map(AsRawFd::as_raw_fd).collect();
            match fdpass::send_with_fds(link, &self.buf[self.pos..end], &raw) {
                Ok(n) => {
                    self.pos += n;
                    if rest_fds > 0 {
                        fds.drain(..take);
                        self.attach[0].0 = self.pos;
                    } else {
                        self.attach.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.flush_to(&mut link)
    }

    /// Writes as much as `dst` accepts without blocking. Returns `true` when nothing is left.
    pub fn flush_to<W: Write>(&mut self, dst: &mut W) -> io::Result<bool> {
        debug_assert!(self.attach.is_empty(), "descriptors need flush_to_link");
        while self.pos < self.buf.len() {
            match dst.write(&self.buf[self.pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.pos = 0;
        Ok(true)
    }
}

/// One write of `data`; 0 when the stream would block.
fn write_some<W: Write>(dst: &mut W, data: &[u8]) -> io::Result<usize> {
    loop {
        match dst.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data a few bytes at a time, like a busy socket.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.pos == self.data.len() {
                return Ok(0);
            }
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_survive_arbitrary_splits() {
        let mut bytes = Vec::new();
        encode(&mut bytes, kind::CALL, 1, 7, 3, &[b"abc", b"defg"]);
        encode(&mut bytes, kind::OK, 0, 8, 99, &[]);
        encode(&mut bytes, kind::ERR, 2, u64::MAX, u32::MAX, &[&vec![0u8; 100_000]]);
        for step in [1, 5, 22, 23, 24, 4096] {
            let mut src = Trickle {
                data: bytes.clone(),
                pos: 0,
                step,
            };
            let mut reader = FrameReader::default();
            let mut frames = Vec::new();
            loop {
                while let Some(f) = reader.next_frame().unwrap() {
                    frames.push(f);
                }
                if reader.read_from(&mut src).unwrap() == ReadOutcome::Eof {
                    break;
                }
            }
            assert_eq!(frames.len(), 3, "step {step}");
            let f = &frames[0];
            assert_eq!(
                (f.kind, f.flags, f.id, f.arg, &f.body[..], f.fds.len()),
                (kind::CALL, 1, 7, 3, &b"abcdefg"[..], 0)
            );
            assert_eq!(frames[1].body, b"");
            assert_eq!(
                (frames[2].id, frames[2].arg, frames[2].body.len()),
                (u64::MAX, u32::MAX, 100_000)
            );
            assert!(reader.next_frame().unwrap().is_none());
        }
    }

    #[test]
    fn descriptors_travel_with_their_frames() {
        use std::fs::File;
        let (a, b) = UnixStream::pair().unwrap();
        let files = |n: usize| -> Vec<OwnedFd> { (0..n).map(|_| File::open("/dev/null").unwrap().into()).collect() };
        let mut out = WriteBuf::default();
        encode(&mut out.buf, kind::READY, 0, 1, 0, &[b"plain"]);
        encode_fds(&mut out, kind::OK, 0, 2, 0, &[b"two"], files(2));
        encode_fds(&mut out, kind::OK, 0, 3, 0, &[b"many"], files(fdpass::MAX_FDS + 5));
        encode(&mut out.buf, kind::READY, 0, 4, 0, &[]);
        while !out.flush_to_link(&a).unwrap() {}
        drop(a);
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        loop {
            while let Some(f) = reader.next_frame().unwrap() {
                got.push((f.id, f.fds.len(), f.body));
            }
            if reader.read_from_link(&b).unwrap() == ReadOutcome::Eof {
                break;
            }
        }
        let ids: Vec<_> = got.iter().map(|(id, n, _)| (*id, *n)).collect();
        assert_eq!(ids, [(1, 0), (2, 2), (3, fdpass::MAX_FDS + 5), (4, 0)]);
        assert_eq!(got[2].2, b"many");
    }

    fn header(len: u64, kind: u8, nfds: u8) -> Vec<u8> {
        let mut h = len.to_le_bytes().to_vec();
        h.extend_from_slice(&[kind, 0, nfds]);
        h.extend_from_slice(&[0u8; 12]);
        h
    }

    #[test]
    fn hostile_lengths_are_refused_before_anything_is_sized_from_them() {
        for len in [MAX_BODY_LEN + 1, 1 << 40, u64::MAX - 7, u64::MAX] {
            let mut reader = FrameReader::default();
            let mut src = &header(len, kind::OK, 0)[..];
            reader.read_from(&mut src).unwrap();
            assert_eq!(reader.next_frame().unwrap_err(), FrameError::TooLong(len));
            assert!(
                reader.next_frame().is_err(),
                "a bad header is reported again, not waited on"
            );
        }
    }

    #[test]
    fn a_long_frame_costs_memory_only_as_its_bytes_arrive() {
        let mut reader = FrameReader::default();
        let mut bytes = header(1 << 30, kind::OK, 0);
        bytes.extend_from_slice(&[7u8; 1000]);
        reader.read_from(&mut &bytes[..]).unwrap();
        assert!(reader.next_frame().unwrap().is_none());
        assert!(reader.buf.len() <= READ_CHUNK, "{} bytes reserved", reader.buf.len());
    }

    #[test]
    fn announced_descriptors_must_arrive() {
        let mut reader = FrameReader::default();
        let mut bytes = header(3, kind::OK, 2);
        bytes.extend_from_slice(b"abc");
        reader.read_from(&mut &bytes[..]).unwrap();
        assert_eq!(
            reader.next_frame().unwrap_err(),
            FrameError::MissingFds {
                announced: 2,
                arrived: 0
            }
        );
    }

    #[test]
    fn descriptors_without_a_frame_are_refused() {
        use std::fs::File;
        let (a, b) = UnixStream::pair().unwrap();
        let null = File::open("/dev/null").unwrap();
        let mut out = Vec::new();
        encode(&mut out, kind::OK, 0, 1, 0, &[b"x"]);
        // the descriptor rides on a frame that does not announce it
        fdpass::send_with_fds(&a, &out, &[null.as_raw_fd()]).unwrap();
        let mut reader = FrameReader::default();
        reader.read_from_link(&b).unwrap();
        assert_eq!(reader.next_frame().unwrap().map(|f| f.fds.len()), Some(0));
        assert_eq!(reader.next_frame().unwrap_err(), FrameError::StrayFds(1));
    }

    #[test]
    fn large_frames_arrive_whole_and_the_buffer_is_released() {
        let body = vec![5u8; 3 * KEEP_BUFFER_MAX + 17];
        let mut bytes = Vec::new();
        encode(&mut bytes, kind::OK, 0, 9, 0, &[&body]);
        encode(&mut bytes, kind::OK, 0, 10, 0, &[b"tail"]);
        let mut src = Trickle {
            data: bytes,
            pos: 0,
            step: 200_000,
        };
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        loop {
            while let Some(f) = reader.next_frame().unwrap() {
                got.push(f);
            }
            if reader.read_from(&mut src).unwrap() == ReadOutcome::Eof {
                break;
            }
        }
        assert_eq!(got.len(), 2);
        assert!(got[0].body == body);
        assert_eq!(got[1].body, b"tail");
        assert!(reader.buf.len() <= KEEP_BUFFER_MAX);
    }

    #[test]
    fn write_buf_resumes_after_partial_writes() {
        struct Stingy(Vec<u8>, usize);
        impl Write for Stingy {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.1 == 0 {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = b.len().min(self.1);
                self.0.extend_from_slice(&b[..n]);
                self.1 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut wb = WriteBuf::default();
        encode(&mut wb.buf, kind::STOP, 0, 1, 0, &[b"xyz"]);
        let mut sink = Stingy(Vec::new(), 10);
        assert!(!wb.flush_to(&mut sink).unwrap());
        sink.1 = 100;
        assert!(wb.flush_to(&mut sink).unwrap());
        assert!(wb.is_empty());
        assert_eq!(sink.0.len(), HEADER_LEN + 3);
    }
}
