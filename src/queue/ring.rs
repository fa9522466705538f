//! The ring: a queue's shared record, its frames, and writing and reading whole messages
//! under the two robust locks (see `mod.rs` for the layout and why a killed process never
//! corrupts it).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::Error;
use crate::shm::SharedRecord;
use crate::signals::wait_interruptible;
use crate::sync::lock::MutexRecord;
use crate::sync::{current_pid, futex, park, process_alive, slice_end};

pub(super) const FIRST: u32 = 1 << 30;
pub(super) const LAST: u32 = 1 << 31;
pub(super) const LEN_MASK: u32 = FIRST - 1;
pub(super) const HEADER: usize = 8;
/// The ring of a queue made with no explicit size (pages are only allocated once written).
pub const DEFAULT_CAPACITY: usize = 4 << 20;
/// Spins (with the GIL held) before a waiting side gives up the GIL: a busy peer usually
/// answers within a few microseconds, much cheaper than a futex sleep and wake.
pub(super) const HOT_SPINS: u32 = 2_000;
/// Spins (GIL released) before parking.
pub(super) const COLD_SPINS: u32 = 200;
pub(super) const FEEDER_SLICE: Duration = Duration::from_millis(50);
/// How long `put` waits for another producer before leaving its item to the feeder thread.
pub(super) const PRODUCER_PATIENCE: Duration = Duration::from_millis(2);

/// One cache line, so the producer's and the consumer's words do not share one.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub(super) struct Line<T>(pub(super) T);

/// One side of the ring: its lock, its position and its sleepers.
#[repr(C)]
#[derive(Debug, Default)]
pub(super) struct End {
    pub(super) lock: MutexRecord,
    /// `messages << 32 | byte position`, both wrapping.
    pub(super) pos: AtomicU64,
    /// Bumped to wake the *other* side's parked process; the futex word.
    pub(super) seq: AtomicU32,
    /// Processes of the other side parked on `seq`.
    pub(super) parked: AtomicU32,
}

/// The shared state of a queue, followed by the ring.
#[repr(C)]
#[derive(Debug, Default)]
pub struct QueueRecord {
    pub(super) tail: Line<End>,
    pub(super) head: Line<End>,
    /// Ring bytes (a power of two).
    pub(super) capacity: AtomicU32,
    /// Messages allowed in the queue, 0 for no limit.
    pub(super) maxsize: AtomicU32,
    /// `JoinableQueue`: messages put and not yet marked done; the futex word of `join()`.
    pub(super) unfinished: AtomicU32,
    pub(super) joiners: AtomicU32,
    /// 1 for a `JoinableQueue` (only it pays for counting unfinished items).
    pub(super) joinable: AtomicU32,
}

pub(super) fn pos(packed: u64) -> u32 {
    packed as u32
}

pub(super) fn msgs(packed: u64) -> u32 {
    (packed >> 32) as u32
}

pub(super) fn pack(pos: u32, msgs: u32) -> u64 {
    (u64::from(msgs) << 32) | u64::from(pos)
}

pub(super) fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// This process's view of a queue's shared record and ring.
pub(super) struct Ring {
    pub(super) rec: SharedRecord<QueueRecord>,
    /// The first byte after the record.
    pub(super) bytes: *mut u8,
    pub(super) cap: u32,
}

// SAFETY: `bytes` points into `rec`'s mapping, which lives as long as `self`; all shared access
// to the ring is ordered by the atomics in the record.
unsafe impl Send for Ring {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring {}

impl Ring {
    /// Copies `src` into the ring at position `at` (wrapping).
    pub(super) fn copy_in(&self, at: u32, src: &[u8]) {
        let cap = self.cap as usize;
        let start = at as usize & (cap - 1);
        let first = src.len().min(cap - start);
        // SAFETY: both ranges lie inside the ring (start < cap, first <= cap - start, the rest
        // < cap because frames are at most cap / 4); the producer lock makes this process the
        // only writer of the unpublished bytes past `tail`.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), self.bytes.add(start), first);
            std::ptr::copy_nonoverlapping(src.as_ptr().add(first), self.bytes, src.len() - first);
        }
    }

    /// Copies `dst.len()` ring bytes from position `at` (wrapping).
    pub(super) fn copy_out(&self, at: u32, dst: &mut [u8]) {
        let cap = self.cap as usize;
        let start = at as usize & (cap - 1);
        let first = dst.len().min(cap - start);
        // SAFETY: as in `copy_in`; the bytes lie between `head` and the published `tail`, which
        // no producer writes until `head` moves past them.
        unsafe {
            std::ptr::copy_nonoverlapping(self.bytes.add(start), dst.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(self.bytes, dst.as_mut_ptr().add(first), dst.len() - first);
        }
    }

    pub(super) fn read_header(&self, at: u32) -> (u32, u32) {
        let mut h = [0u8; HEADER];
        self.copy_out(at, &mut h);
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        )
    }

    pub(super) fn chunk_max(&self) -> usize {
        self.cap as usize / 4 - HEADER
    }

    /// Waits until `ready()`, parking on `wake.seq`; `false` at the deadline. `check` runs
    /// between slices (`Some(err)` ends the wait).
    pub(super) fn wait_until(
        py: Option<Python<'_>>,
        wake: &End,
        deadline: Option<Instant>,
        ready: impl Fn() -> bool + Sync,
    ) -> PyResult<bool> {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            // get_nowait()/put_nowait(): one look, no spinning
            return Ok(ready());
        }
        for _ in 0..HOT_SPINS {
            if ready() {
                return Ok(true);
            }
            std::hint::spin_loop();
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        wait_slices(py, timeout, |slice| {
            if crate::sync::spin_until(&ready, COLD_SPINS) {
                return true;
            }
            let end = slice_end(slice);
            wake.parked.fetch_add(1, Ordering::SeqCst);
            let got = loop {
                let seen = wake.seq.load(Ordering::SeqCst);
                if ready() {
                    break true;
                }
                if Instant::now() >= end {
                    break false;
                }
                park(&wake.seq, seen, end);
            };
            wake.parked.fetch_sub(1, Ordering::SeqCst);
            got
        })
    }

    /// Wakes the other side's parked process, if any.
    pub(super) fn wake(end: &End) {
        if end.parked.load(Ordering::SeqCst) > 0 {
            end.seq.fetch_add(1, Ordering::SeqCst);
            futex::wake_all(&end.seq);
        }
    }

    /// Whether a message of `len` bytes fits into the ring as one frame right now.
    pub(super) fn fits_now(&self, len: usize) -> bool {
        let (tail, head) = (&self.rec.tail.0, &self.rec.head.0);
        let used = pos(tail.pos.load(Ordering::Relaxed)).wrapping_sub(pos(head.pos.load(Ordering::SeqCst))) as usize;
        len <= self.chunk_max() && self.cap as usize - used >= HEADER + padded(len)
    }

    /// Writes `data` as one message (the producer lock is held), waiting for room as needed.
    pub(super) fn write_message(&self, py: Option<Python<'_>>, data: &[u8], deadline: Option<Instant>) -> PyResult<()> {
        let rec = &*self.rec;
        let (tail, head) = (&rec.tail.0, &rec.head.0);
        let pid = current_pid();
        let chunk_max = self.chunk_max();
        let n_chunks = data.len().div_ceil(chunk_max).max(1);
        for i in 0..n_chunks {
            let chunk = &data[i * chunk_max..((i + 1) * chunk_max).min(data.len())];
            let (first, last) = (i == 0, i + 1 == n_chunks);
            let frame = HEADER + padded(chunk.len());
            let t = tail.pos.load(Ordering::Relaxed);
            let fits = || {
                let used = pos(t).wrapping_sub(pos(head.pos.load(Ordering::SeqCst))) as usize;
                self.cap as usize - used >= frame
            };
            // once a message has started, it is finished whatever the timeout: the consumer is
            // draining it right now
            let wait_deadline = if first { deadline } else { None };
            if !fits() && !Self::wait_until(py, head, wait_deadline, fits)? {
                return Err(Error::QueueFull.into());
            }
            let flags = (if first { FIRST } else { 0 }) | (if last { LAST } else { 0 });
            let mut hdr = [0u8; HEADER];
            hdr[..4].copy_from_slice(&((chunk.len() as u32) | flags).to_le_bytes());
            hdr[4..].copy_from_slice(&pid.to_le_bytes());
            self.copy_in(pos(t), &hdr);
            self.copy_in(pos(t).wrapping_add(HEADER as u32), chunk);
            let done = u32::from(last);
            tail.pos.store(
                pack(pos(t).wrapping_add(frame as u32), msgs(t).wrapping_add(done)),
                Ordering::SeqCst,
            );
            Self::wake(tail);
        }
        Ok(())
    }

    /// Reads one message (the consumer lock is held); `None` at the deadline.
    pub(super) fn read_message<'py>(
        &self,
        py: Python<'py>,
        deadline: Option<Instant>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        self.read_message_as(
            Some(py),
            deadline,
            // a message in one frame goes straight from the ring into its `bytes`
            |start, len| {
                PyBytes::new_with(py, len, |buf| {
                    self.copy_out(start, buf);
                    Ok(())
                })
            },
            |buf| Ok(PyBytes::new(py, &buf)),
        )
    }

    /// Reads one message as raw bytes: what the fuzz target and the tests decode with.
    pub fn read_message_raw(&self, deadline: Option<Instant>) -> PyResult<Option<Vec<u8>>> {
        self.read_message_as(
            None,
            deadline,
            |start, len| {
                let mut buf = vec![0u8; len];
                self.copy_out(start, &mut buf);
                Ok(buf)
            },
            Ok,
        )
    }

    /// The decoding of [`Ring::read_message`]: `whole(start, len)` makes a message held in one
    /// frame at ring position `start`, `assembled` one gathered from several.
    ///
    /// Every other process that maps the queue can write the ring, so nothing read from it is
    /// trusted: a frame must fit in the bytes published before `tail` and in one chunk, or the
    /// queue is reported corrupt; no length from the ring sizes anything before that check.
    pub(super) fn read_message_as<T>(
        &self,
        py: Option<Python<'_>>,
        deadline: Option<Instant>,
        whole: impl FnOnce(u32, usize) -> PyResult<T>,
        assembled: impl FnOnce(Vec<u8>) -> PyResult<T>,
    ) -> PyResult<Option<T>> {
        let rec = &*self.rec;
        let (tail, head) = (&rec.tail.0, &rec.head.0);
        let mut partial: Option<(Vec<u8>, u32)> = None;
        loop {
            let h = head.pos.load(Ordering::Relaxed);
            let has_frame = || pos(tail.pos.load(Ordering::SeqCst)) != pos(h);
            if !has_frame() {
                let got = match &partial {
                    None => Self::wait_until(py, tail, deadline, has_frame)?,
                    Some((_, writer)) => {
                        // the rest of a message: wait while its writer still holds the producer
                        // lock, whatever the deadline
                        let writer = *writer;
                        let abandoned = || tail.lock.owner_pid() != writer || !process_alive(writer);
                        let _ = Self::wait_until(py, tail, None, || has_frame() || abandoned())?;
                        if !has_frame() {
                            partial = None;
                        }
                        continue;
                    }
                };
                if !got {
                    return Ok(None);
                }
            }
            let published = pos(tail.pos.load(Ordering::SeqCst)).wrapping_sub(pos(h)) as usize;
            let (word, writer) = self.read_header(pos(h));
            let len = (word & LEN_MASK) as usize;
            let frame = HEADER + padded(len);
            if len > self.chunk_max() || published > self.cap as usize || frame > published {
                return Err(Error::InvalidState("the queue's shared memory is corrupt".into()).into());
            }
            let start = pos(h).wrapping_add(HEADER as u32);
            let advance = |done: u32| {
                head.pos.store(
                    pack(pos(h).wrapping_add(frame as u32), msgs(h).wrapping_add(done)),
                    Ordering::SeqCst,
                );
                Self::wake(head);
            };
            let last = word & LAST != 0;
            if word & FIRST != 0 {
                // a new message; any unfinished one was abandoned by its writer
                if last {
                    let out = whole(start, len)?;
                    advance(1);
                    return Ok(Some(out));
                }
                let mut buf = vec![0u8; len];
                self.copy_out(start, &mut buf);
                partial = Some((buf, writer));
                advance(0);
                continue;
            }
            match partial.as_mut() {
                // the tail of a message whose start an interrupted consumer took: skip it
                None => advance(u32::from(last)),
                Some((buf, _)) => {
                    let at = buf.len();
                    // a message is as long as its writer makes it: running out of memory for
                    // one is an error, not an abort
                    buf.try_reserve(len)
                        .map_err(|_| PyErr::from(Error::OutOfMemory("no memory for a queue message")))?;
                    buf.resize(at + len, 0);
                    self.copy_out(start, &mut buf[at..]);
                    advance(u32::from(last));
                    if last {
                        let (buf, _) = partial.take().unwrap_or_default();
                        return assembled(buf).map(Some);
                    }
                }
            }
        }
    }
}

/// Waits in slices: interruptibly with the GIL released when called from Python (`py`), plainly
/// on the feeder thread.
pub(super) fn wait_slices(
    py: Option<Python<'_>>,
    timeout: Option<Duration>,
    mut f: impl FnMut(Duration) -> bool + Send,
) -> PyResult<bool> {
    if let Some(py) = py {
        return wait_interruptible(py, timeout, f);
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = deadline.map_or(FEEDER_SLICE, |d| {
            d.saturating_duration_since(Instant::now()).min(FEEDER_SLICE)
        });
        if f(slice) {
            return Ok(true);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}
