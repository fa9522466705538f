//! Frames on a worker link: the only byte format that crosses between the parent and a worker.
//!
//! ```text
//! [len: u64][kind: u8][flags: u8][nfds: u8][id: u64][aux: u32][body: len bytes]   little-endian, 23-byte header
//! ```
//! The core never looks inside `body`: it is a pickled call or result, produced and consumed by
//! `python/ferropool/_serialize.py`. `aux` carries the function's length inside a call body and
//! the task's run time (µs) in a result, so neither needs a second frame. `nfds` descriptors
//! (memfd segments holding the large buffers of the body, see `fdpass.rs`) travel with the
//! frame's first bytes.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::fdpass;

/// Frame kinds. Parent → worker kinds are below 10, worker → parent kinds 10 and above.
pub mod kind {
    /// Run a call: body = pickled function (aux bytes) + pickled `(args, kwargs)`.
    pub const CALL: u8 = 1;
    /// Run the initializer once before any call: same body layout as `CALL`; `id` carries the
    /// worker's memory limit in bytes (0: none).
    pub const INIT: u8 = 2;
    /// Finish: flush what is pending and exit.
    pub const STOP: u8 = 3;
    /// The worker has started (and ran its initializer).
    pub const READY: u8 = 10;
    /// A call returned: body = pickled value; aux = run time in µs.
    pub const OK: u8 = 11;
    /// A call raised: body = pickled `(exception, traceback text)`; aux = run time in µs.
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
    pub aux: u32,
    pub body: Vec<u8>,
    /// The descriptors that came with it (usually none).
    pub fds: Vec<OwnedFd>,
}

/// Appends one frame whose body is the concatenation of `parts` to `out`.
pub fn encode(out: &mut Vec<u8>, kind: u8, flags: u8, id: u64, aux: u32, parts: &[&[u8]]) {
    encode_header(out, kind, flags, 0, id, aux, parts);
}

/// Queues one frame on `out` with `fds` attached (at most `MAX_FRAME_FDS`).
pub fn encode_fds(out: &mut WriteBuf, kind: u8, flags: u8, id: u64, aux: u32, parts: &[&[u8]], fds: Vec<OwnedFd>) {
    debug_assert!(fds.len() <= MAX_FRAME_FDS);
    let start = out.buf.len();
    encode_header(&mut out.buf, kind, flags, fds.len() as u8, id, aux, parts);
    if !fds.is_empty() {
        out.attach.push_back((start, fds));
    }
}

fn encode_header(out: &mut Vec<u8>, kind: u8, flags: u8, nfds: u8, id: u64, aux: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.reserve(HEADER_LEN + len);
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out.push(kind);
    out.push(flags);
    out.push(nfds);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&aux.to_le_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// Reassembles frames from a byte stream that arrives in arbitrary pieces.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the first unconsumed byte in `buf`.
    start: usize,
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
    ///
    /// When a frame's header says how long it is, room for the whole frame is reserved so a large
    /// body is read straight into place instead of growing the buffer piece by piece.
    pub fn read_from<R: Read>(&mut self, src: &mut R) -> io::Result<ReadOutcome> {
        self.read_with(|buf, _| src.read(buf))
    }

    /// Reads once from a worker link, keeping the descriptors that arrive with the bytes.
    pub fn read_from_link(&mut self, link: &UnixStream) -> io::Result<ReadOutcome> {
        self.read_with(|buf, fds| fdpass::recv_with_fds(link, buf, fds))
    }

    fn read_with(
        &mut self,
        mut read: impl FnMut(&mut [u8], &mut VecDeque<OwnedFd>) -> io::Result<usize>,
    ) -> io::Result<ReadOutcome> {
        if self.start > 0 && (self.start == self.buf.len() || self.start > self.buf.len() / 2) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let pending = self.buf.len() - self.start;
        let want = match self.peek_len() {
            Some(total) if total > pending => total - pending,
            _ => 0,
        }
        .max(64 * 1024);
        let old_len = self.buf.len();
        self.buf.resize(old_len + want, 0);
        let res = loop {
            match read(&mut self.buf[old_len..], &mut self.fds) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        match res {
            Ok(0) => {
                self.buf.truncate(old_len);
                Ok(ReadOutcome::Eof)
            }
            Ok(n) => {
                self.buf.truncate(old_len + n);
                Ok(ReadOutcome::Data(n))
            }
            Err(e) => {
                self.buf.truncate(old_len);
                if e.kind() == io::ErrorKind::WouldBlock {
                    Ok(ReadOutcome::WouldBlock)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Total length (header + body) of the frame at the front, once its header is complete.
    fn peek_len(&self) -> Option<usize> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            return None;
        }
        let len = u64::from_le_bytes(avail[0..8].try_into().ok()?);
        Some(HEADER_LEN + usize::try_from(len).ok()?)
    }

    /// Takes the next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let total = self.peek_len()?;
        let avail = &self.buf[self.start..];
        if avail.len() < total {
            return None;
        }
        // a frame's descriptors arrive with its first byte, so they are all here by now
        let nfds = usize::from(avail[10]).min(self.fds.len());
        let frame = Frame {
            kind: avail[8],
            flags: avail[9],
            id: u64::from_le_bytes(avail[11..19].try_into().ok()?),
            aux: u32::from_le_bytes(avail[19..23].try_into().ok()?),
            body: avail[HEADER_LEN..total].to_vec(),
            fds: self.fds.drain(..nfds).collect(),
        };
        self.start += total;
        Some(frame)
    }

    /// Whether a complete frame is waiting in the buffer.
    pub fn has_frame(&self) -> bool {
        self.peek_len()
            .is_some_and(|total| self.buf.len() - self.start >= total)
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
    pub fn flush_to_link(&mut self, link: &mut UnixStream) -> io::Result<bool> {
        while let Some(&(at, _)) = self.attach.front() {
            if self.pos < at {
                // write up to the attachment only: its descriptors must go with its first byte
                let n = write_some(link, &self.buf[self.pos..at])?;
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
        self.flush_to(link)
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
                while let Some(f) = reader.next_frame() {
                    frames.push(f);
                }
                if reader.read_from(&mut src).unwrap() == ReadOutcome::Eof {
                    break;
                }
            }
            assert_eq!(frames.len(), 3, "step {step}");
            let f = &frames[0];
            assert_eq!(
                (f.kind, f.flags, f.id, f.aux, &f.body[..], f.fds.len()),
                (kind::CALL, 1, 7, 3, &b"abcdefg"[..], 0)
            );
            assert_eq!(frames[1].body, b"");
            assert_eq!(
                (frames[2].id, frames[2].aux, frames[2].body.len()),
                (u64::MAX, u32::MAX, 100_000)
            );
            assert!(!reader.has_frame());
        }
    }

    #[test]
    fn descriptors_travel_with_their_frames() {
        use std::fs::File;
        let (mut a, b) = UnixStream::pair().unwrap();
        let files = |n: usize| -> Vec<OwnedFd> { (0..n).map(|_| File::open("/dev/null").unwrap().into()).collect() };
        let mut out = WriteBuf::default();
        encode(&mut out.buf, kind::READY, 0, 1, 0, &[b"plain"]);
        encode_fds(&mut out, kind::OK, 0, 2, 0, &[b"two"], files(2));
        encode_fds(&mut out, kind::OK, 0, 3, 0, &[b"many"], files(fdpass::MAX_FDS + 5));
        encode(&mut out.buf, kind::READY, 0, 4, 0, &[]);
        while !out.flush_to_link(&mut a).unwrap() {}
        drop(a);
        let mut reader = FrameReader::default();
        let mut got = Vec::new();
        loop {
            while let Some(f) = reader.next_frame() {
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
