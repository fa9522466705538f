//! `Queue`, `SimpleQueue` and `JoinableQueue`: a ring of pickled frames in shared memory.
//!
//! ```text
//!  producer (put)                      ring (anonymous segment)              consumer (get)
//!  pickle obj ─▶ take producer lock    [hdr|payload][hdr|payload]...         take consumer lock
//!               wait for room  ◀── head ──────────────────────────── tail ──▶ wait for a frame
//!               copy frame at tail                                           copy frame out
//!               publish tail (1 store)                                       publish head (1 store)
//!               wake a parked getter                                         wake a parked putter
//!               release lock                                                 release lock, unpickle
//! ```
//!
//! A frame is an 8-byte header (`len | FIRST | LAST`, producer pid) and its payload, padded to 8
//! bytes. A message larger than a quarter of the ring travels as several frames, FIRST to LAST,
//! while its producer keeps the producer lock.
//!
//! Why a killed process never corrupts the queue: a producer publishes a frame with one store of
//! `tail` after the frame is completely written, so a frame is either whole or invisible, and its
//! reservation is simply the unpublished bytes past `tail`, which the next producer (taking the
//! robust producer lock over) overwrites. A message cut off between frames is dropped by the
//! consumer: the next FIRST frame, or the producer lock no longer held by the writer's pid, tells
//! it the rest will never come; frames of a message whose start it never saw are skipped.
//! `tail` and `head` pack the byte position with the count of whole messages, so `qsize()` stays
//! exact whatever dies.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::errors::Error;
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};
use crate::sync::lock::MutexRecord;
use crate::sync::{current_pid, futex, park, process_alive, slice_end};

const FIRST: u32 = 1 << 30;
const LAST: u32 = 1 << 31;
const LEN_MASK: u32 = FIRST - 1;
const HEADER: usize = 8;
/// The ring of a queue made with no explicit size (pages are only allocated once written).
pub const DEFAULT_CAPACITY: usize = 4 << 20;
/// Spins (with the GIL held) before a waiting side gives up the GIL: a busy peer usually
/// answers within a few microseconds, much cheaper than a futex sleep and wake.
const HOT_SPINS: u32 = 2_000;
/// Spins (GIL released) before parking.
const COLD_SPINS: u32 = 200;
const FEEDER_SLICE: Duration = Duration::from_millis(50);
/// How long `put` waits for another producer before leaving its item to the feeder thread.
const PRODUCER_PATIENCE: Duration = Duration::from_millis(2);

/// One cache line, so the producer's and the consumer's words do not share one.
#[repr(C, align(64))]
#[derive(Debug, Default)]
struct Line<T>(T);

/// One side of the ring: its lock, its position and its sleepers.
#[repr(C)]
#[derive(Debug, Default)]
struct End {
    lock: MutexRecord,
    /// `messages << 32 | byte position`, both wrapping.
    pos: AtomicU64,
    /// Bumped to wake the *other* side's parked process; the futex word.
    seq: AtomicU32,
    /// Processes of the other side parked on `seq`.
    parked: AtomicU32,
}

/// The shared state of a queue, followed by the ring.
#[repr(C)]
#[derive(Debug, Default)]
pub struct QueueRecord {
    tail: Line<End>,
    head: Line<End>,
    /// Ring bytes (a power of two).
    capacity: AtomicU32,
    /// Messages allowed in the queue, 0 for no limit.
    maxsize: AtomicU32,
    /// `JoinableQueue`: messages put and not yet marked done; the futex word of `join()`.
    unfinished: AtomicU32,
    joiners: AtomicU32,
    /// 1 for a `JoinableQueue` (only it pays for counting unfinished items).
    joinable: AtomicU32,
}

fn pos(packed: u64) -> u32 {
    packed as u32
}

fn msgs(packed: u64) -> u32 {
    (packed >> 32) as u32
}

fn pack(pos: u32, msgs: u32) -> u64 {
    (u64::from(msgs) << 32) | u64::from(pos)
}

fn padded(len: usize) -> usize {
    (len + 7) & !7
}

/// This process's view of a queue's shared record and ring.
struct Ring {
    rec: SharedRecord<QueueRecord>,
    /// The first byte after the record.
    bytes: *mut u8,
    cap: u32,
}

// SAFETY: `bytes` points into `rec`'s mapping, which lives as long as `self`; all shared access
// to the ring is ordered by the atomics in the record.
unsafe impl Send for Ring {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring {}

/// Messages this process put that did not fit into the ring yet, in order, and whether a
/// feeder thread is moving them (the stdlib's feeder-thread buffer: `put` on an unbounded queue
/// never waits for a reader).
#[derive(Default)]
struct Backlog {
    items: Mutex<VecDeque<Arc<[u8]>>>,
    /// Signalled when the backlog empties.
    drained: Condvar,
}

/// The native queue shared by the three Python classes.
#[pyclass(name = "Queue", module = "ferropool._core", frozen, subclass, weakref)]
pub struct PyQueue {
    ring: Arc<Ring>,
    backlog: Arc<Backlog>,
    /// `close()` was called in this process (the stdlib's `close` is per process).
    closed: AtomicBool,
    /// This process has put an item: as with the stdlib's, `close()` then closes the reading
    /// side for `empty()` too (an unused queue's `close()` changes nothing there).
    used: AtomicBool,
}

/// Waits in slices: interruptibly with the GIL released when called from Python (`py`), plainly
/// on the feeder thread.
fn wait_slices(
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

static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn import_attr(py: Python<'_>, cell: &'static PyOnceLock<Py<PyAny>>, module: &str, name: &str) -> PyResult<Py<PyAny>> {
    cell.get_or_try_init(py, || Ok(py.import(module)?.getattr(name)?.unbind()))
        .map(|f| f.clone_ref(py))
}

/// Pickles `obj` by ferropool's one pickling policy (`_runtime/serialize.py`'s `dumps`: plain
/// pickle, cloudpickle for what a fresh interpreter could not load, `reduction.register`'s
/// reducers), so that a queue ships exactly what a pool or a `Connection` would.
fn dumps<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let dumps = import_attr(py, &DUMPS, "ferropool._runtime.serialize", "dumps")?;
    Ok(dumps.bind(py).call1((obj,))?.cast_into::<PyBytes>()?)
}

impl Ring {
    /// Copies `src` into the ring at position `at` (wrapping).
    fn copy_in(&self, at: u32, src: &[u8]) {
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
    fn copy_out(&self, at: u32, dst: &mut [u8]) {
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

    fn read_header(&self, at: u32) -> (u32, u32) {
        let mut h = [0u8; HEADER];
        self.copy_out(at, &mut h);
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        )
    }

    fn chunk_max(&self) -> usize {
        self.cap as usize / 4 - HEADER
    }

    /// Waits until `ready()`, parking on `wake.seq`; `false` at the deadline. `check` runs
    /// between slices (`Some(err)` ends the wait).
    fn wait_until(
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
    fn wake(end: &End) {
        if end.parked.load(Ordering::SeqCst) > 0 {
            end.seq.fetch_add(1, Ordering::SeqCst);
            futex::wake_all(&end.seq);
        }
    }

    /// Whether a message of `len` bytes fits into the ring as one frame right now.
    fn fits_now(&self, len: usize) -> bool {
        let (tail, head) = (&self.rec.tail.0, &self.rec.head.0);
        let used = pos(tail.pos.load(Ordering::Relaxed)).wrapping_sub(pos(head.pos.load(Ordering::SeqCst))) as usize;
        len <= self.chunk_max() && self.cap as usize - used >= HEADER + padded(len)
    }

    /// Writes `data` as one message (the producer lock is held), waiting for room as needed.
    fn write_message(&self, py: Option<Python<'_>>, data: &[u8], deadline: Option<Instant>) -> PyResult<()> {
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
    fn read_message<'py>(&self, py: Python<'py>, deadline: Option<Instant>) -> PyResult<Option<Bound<'py, PyBytes>>> {
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
    fn read_message_as<T>(
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

/// Decodes a ring another process could have written: a fresh ring of `cap` bytes (a power of
/// two, 4096 or more) holding `bytes`, with `tail` and `head` as stored, read without waiting
/// until it is empty or reported corrupt. For the fuzz target (`fuzz/`) and the tests.
#[doc(hidden)]
pub fn decode_ring(cap: usize, tail: u64, head: u64, bytes: &[u8]) -> PyResult<Vec<Vec<u8>>> {
    let rec: SharedRecord<QueueRecord> = SharedRecord::create(cap)?;
    rec.capacity.store(cap as u32, Ordering::Release);
    let (ring_bytes, len) = rec.extra();
    let n = bytes.len().min(len).min(cap);
    // SAFETY: `ring_bytes` is the start of `len` mapped bytes that only this function uses yet.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring_bytes, n) };
    rec.tail.0.pos.store(tail, Ordering::SeqCst);
    rec.head.0.pos.store(head, Ordering::SeqCst);
    let queue = PyQueue::build(rec)?;
    let mut out = Vec::new();
    // every message is at least one 8-byte frame: more reads than that is a loop
    for _ in 0..=cap / HEADER {
        match queue.ring.read_message_raw(Some(Instant::now()))? {
            Some(message) => out.push(message),
            None => return Ok(out),
        }
    }
    Err(Error::InvalidState("the ring never emptied".into()).into())
}

fn deadline(block: bool, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    if !block {
        return Ok(Some(Instant::now()));
    }
    Ok(timeout_from_secs(timeout)?.map(|t| Instant::now() + t))
}

/// Takes one side's lock, taking it over (with a warning) from a dead process.
fn lock_end(py: Python<'_>, end: &End, deadline: Option<Instant>, what: &str) -> PyResult<bool> {
    if end.lock.try_lock() {
        return Ok(true);
    }
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    end.lock.acquire(py, true, timeout, what)
}

/// The feeder thread: moves this process's backlog into the ring, in order, as readers make
/// room; ends when the backlog is empty.
fn feed(ring: &Ring, backlog: &Backlog) {
    let tail = &ring.rec.tail.0;
    loop {
        let next = backlog
            .items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .front()
            .cloned();
        let Some(data) = next else { break };
        while !tail.lock.lock_within(FEEDER_SLICE).0 {}
        // no Python here: the wait cannot be interrupted, and cannot fail
        let _ = ring.write_message(None, &data, None);
        tail.lock.unlock();
        let mut items = backlog.items.lock().unwrap_or_else(PoisonError::into_inner);
        items.pop_front();
        if items.is_empty() {
            backlog.drained.notify_all();
            break;
        }
    }
}

impl PyQueue {
    /// Writes a pickled item: into the ring, or into the backlog the feeder thread drains.
    fn put_pickled(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyBytes>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let deadline = deadline(block, timeout)?;
        self.used.store(true, Ordering::Relaxed);
        let ring = &*self.ring;
        let (tail, head) = (&ring.rec.tail.0, &ring.rec.head.0);
        let maxsize = ring.rec.maxsize.load(Ordering::Relaxed);
        if maxsize > 0 {
            let room = || self.in_ring() + self.backlog_len() < maxsize;
            if !room() && !Ring::wait_until(Some(py), head, deadline, room)? {
                return Err(Error::QueueFull.into());
            }
        }
        let data = data.as_bytes();
        let joinable = ring.rec.joinable.load(Ordering::Relaxed) != 0;
        if joinable {
            // counted before the item can be seen, so a fast consumer's task_done() never
            // underflows, and before it may wait in the backlog, so join() waits for it too
            ring.rec.unfinished.fetch_add(1, Ordering::SeqCst);
        }
        // The backlog's mutex is never held while the GIL is released (another thread of this
        // process may be waiting for it with the GIL held), so the producer lock comes first.
        let undo = |e: PyErr| {
            if joinable {
                ring.rec.unfinished.fetch_sub(1, Ordering::SeqCst);
            }
            e
        };
        if self.backlog_len() == 0
            && ring.fits_now(data.len())
            && lock_end(
                py,
                tail,
                Some(Instant::now() + PRODUCER_PATIENCE),
                "Queue's producer lock",
            )
            .map_err(undo)?
        {
            let items = self.backlog.items.lock().unwrap_or_else(PoisonError::into_inner);
            // the common case: straight into the ring, no thread involved; with room for the
            // whole frame, write_message does not wait
            let direct = items.is_empty() && ring.fits_now(data.len());
            let result = if direct {
                ring.write_message(Some(py), data, None)
            } else {
                Ok(())
            };
            drop(items);
            tail.lock.unlock();
            if direct {
                return result.map_err(undo);
            }
        }
        // no room now: the feeder thread writes it when readers make room, as the stdlib's does
        let mut items = self.backlog.items.lock().unwrap_or_else(PoisonError::into_inner);
        items.push_back(Arc::from(data));
        if items.len() == 1 {
            let (ring, backlog) = (Arc::clone(&self.ring), Arc::clone(&self.backlog));
            let spawned = std::thread::Builder::new()
                .name("ferropool-queue-feeder".into())
                .spawn(move || feed(&ring, &backlog));
            if let Err(e) = spawned {
                items.pop_back();
                return Err(undo(Error::Io(e).into()));
            }
        }
        Ok(())
    }

    fn build(rec: SharedRecord<QueueRecord>) -> PyResult<Self> {
        let (ring, len) = rec.extra();
        let cap = rec.capacity.load(Ordering::Acquire);
        if cap as usize > len || !cap.is_power_of_two() || cap < 64 {
            return Err(Error::InvalidArgument("not a ferropool queue segment".into()).into());
        }
        Ok(PyQueue {
            ring: Arc::new(Ring { rec, bytes: ring, cap }),
            backlog: Arc::default(),
            closed: AtomicBool::new(false),
            used: AtomicBool::new(false),
        })
    }

    fn check_open(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(Error::InvalidState("Queue is closed".into()).into());
        }
        Ok(())
    }

    fn backlog_len(&self) -> u32 {
        self.backlog.items.lock().unwrap_or_else(PoisonError::into_inner).len() as u32
    }

    /// Messages in the ring.
    fn in_ring(&self) -> u32 {
        let t = msgs(self.ring.rec.tail.0.pos.load(Ordering::SeqCst));
        let h = msgs(self.ring.rec.head.0.pos.load(Ordering::SeqCst));
        t.wrapping_sub(h).min(u32::MAX >> 1)
    }
}

#[pymethods]
impl PyQueue {
    #[new]
    #[pyo3(signature = (maxsize=0, joinable=false, capacity=None, handle=None))]
    fn new(maxsize: i64, joinable: bool, capacity: Option<usize>, handle: Option<Handle>) -> PyResult<Self> {
        if let Some(h) = handle {
            return Self::build(SharedRecord::attach(h)?);
        }
        let maxsize = if maxsize <= 0 {
            0
        } else {
            maxsize.min(i64::from(u32::MAX >> 2)) as u32
        };
        let cap = capacity
            .unwrap_or(DEFAULT_CAPACITY)
            .clamp(4096, 1 << 30)
            .next_power_of_two();
        let rec: SharedRecord<QueueRecord> = SharedRecord::create(cap)?;
        rec.maxsize.store(maxsize, Ordering::Relaxed);
        rec.joinable.store(u32::from(joinable), Ordering::Relaxed);
        rec.capacity.store(cap as u32, Ordering::Release);
        Self::build(rec)
    }

    /// Puts `obj` into the queue, pickled now. An object that cannot be pickled goes to the
    /// class's `_on_queue_feeder_error(e, obj)` hook where it has one (the stdlib calls it from
    /// its feeder thread), else its error raises here.
    #[pyo3(signature = (obj, block=true, timeout=None))]
    fn put(
        slf: &Bound<'_, Self>,
        py: Python<'_>,
        obj: &Bound<'_, PyAny>,
        block: bool,
        timeout: Option<f64>,
    ) -> PyResult<()> {
        let this = slf.get();
        this.check_open()?;
        let data = match dumps(py, obj) {
            Ok(data) => data,
            Err(e) if e.is_instance_of::<pyo3::exceptions::PyException>(py) => {
                let Ok(hook) = slf.getattr(pyo3::intern!(py, "_on_queue_feeder_error")) else {
                    return Err(e);
                };
                hook.call1((e.into_value(py), obj))?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        this.put_pickled(py, &data, block, timeout)
    }

    /// Removes and returns an item; `queue.Empty` when none comes in time.
    #[pyo3(signature = (block=true, timeout=None))]
    fn get<'py>(&self, py: Python<'py>, block: bool, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        self.check_open()?;
        let deadline = deadline(block, timeout)?;
        let head = &self.ring.rec.head.0;
        if !lock_end(py, head, deadline, "Queue's consumer lock")? {
            return Err(Error::QueueEmpty.into());
        }
        let result = self.ring.read_message(py, deadline);
        head.lock.unlock();
        let loads = import_attr(py, &LOADS, "ferropool._runtime.serialize", "loads")?;
        match result? {
            Some(bytes) => loads.bind(py).call1((bytes,)),
            None => Err(Error::QueueEmpty.into()),
        }
    }

    /// Waits until this process's backlog is in the ring (the stdlib's `join_thread`).
    #[pyo3(signature = (timeout=None))]
    fn _flush(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let backlog = &*self.backlog;
        wait_interruptible(py, timeout_from_secs(timeout)?, |slice| {
            let items = backlog.items.lock().unwrap_or_else(PoisonError::into_inner);
            let (items, _) = backlog
                .drained
                .wait_timeout_while(items, slice, |i| !i.is_empty())
                .unwrap_or_else(PoisonError::into_inner);
            items.is_empty()
        })
    }

    /// Items in the queue now (exact, but stale as soon as it returns).
    fn qsize(&self) -> u32 {
        self.in_ring() + self.backlog_len()
    }

    fn empty(&self) -> PyResult<bool> {
        if self.closed.load(Ordering::Relaxed) && self.used.load(Ordering::Relaxed) {
            return Err(Error::ConnectionClosed.into());
        }
        Ok(self.qsize() == 0)
    }

    fn full(&self) -> bool {
        let maxsize = self.ring.rec.maxsize.load(Ordering::Relaxed);
        maxsize > 0 && self.qsize() >= maxsize
    }

    #[getter]
    fn _maxsize(&self) -> u32 {
        self.ring.rec.maxsize.load(Ordering::Relaxed)
    }

    #[getter]
    fn _capacity(&self) -> u32 {
        self.ring.cap
    }

    /// Refuses further `put` and `get` calls from this process.
    fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    #[getter]
    fn _closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// `JoinableQueue`: one item taken with `get()` is fully processed.
    fn task_done(&self) -> PyResult<()> {
        let rec = &*self.ring.rec;
        let left = rec
            .unfinished
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| u.checked_sub(1))
            .map_err(|_| PyErr::from(Error::InvalidState("task_done() called too many times".into())))?;
        if left == 1 && rec.joiners.load(Ordering::SeqCst) > 0 {
            futex::wake_all(&rec.unfinished);
        }
        Ok(())
    }

    /// `JoinableQueue`: blocks until every item put has been marked done.
    #[pyo3(signature = (timeout=None))]
    fn join(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let rec = &*self.ring.rec;
        rec.joiners.fetch_add(1, Ordering::SeqCst);
        let done = wait_interruptible(py, timeout_from_secs(timeout)?, |slice| {
            let end = slice_end(slice);
            loop {
                let left = rec.unfinished.load(Ordering::SeqCst);
                if left == 0 {
                    return true;
                }
                if Instant::now() >= end {
                    return false;
                }
                park(&rec.unfinished, left, end);
            }
        });
        rec.joiners.fetch_sub(1, Ordering::SeqCst);
        done
    }

    /// `JoinableQueue`: items put and not yet marked done.
    fn _unfinished(&self) -> u32 {
        self.ring.rec.unfinished.load(Ordering::SeqCst)
    }

    #[getter]
    fn _handle(&self) -> Handle {
        self.ring.rec.handle()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(cap: usize) -> Ring {
        let rec: SharedRecord<QueueRecord> = SharedRecord::create(cap).unwrap();
        rec.capacity.store(cap as u32, Ordering::SeqCst);
        let (bytes, _) = rec.extra();
        Ring {
            rec,
            bytes,
            cap: cap as u32,
        }
    }

    #[test]
    fn a_message_is_published_whole_with_one_count() {
        let r = ring(4096);
        r.write_message(None, b"hello", None).unwrap();
        let t = r.rec.tail.0.pos.load(Ordering::SeqCst);
        assert_eq!((pos(t), msgs(t)), (16, 1));
        let (word, pid) = r.read_header(0);
        assert_eq!(word, 5 | FIRST | LAST);
        assert_eq!(pid, current_pid());
        let mut out = [0u8; 5];
        r.copy_out(8, &mut out);
        assert_eq!(&out, b"hello");
    }

    #[test]
    fn a_large_message_spans_frames_counted_once() {
        let r = ring(4096);
        let data = vec![7u8; 2500];
        r.write_message(None, &data, None).unwrap();
        let t = r.rec.tail.0.pos.load(Ordering::SeqCst);
        assert_eq!(msgs(t), 1);
        let (first, _) = r.read_header(0);
        assert_eq!(first & (FIRST | LAST), FIRST);
        assert_eq!((first & LEN_MASK) as usize, r.chunk_max());
    }

    #[test]
    fn a_corrupt_ring_is_reported_not_trusted() {
        let frame = |word: u32, body: &[u8]| {
            let mut f = word.to_le_bytes().to_vec();
            f.extend_from_slice(&0u32.to_le_bytes());
            f.extend_from_slice(body);
            f.resize(HEADER + padded(body.len()), 0);
            f
        };
        let good = frame(3 | FIRST | LAST, b"abc");
        assert_eq!(decode_ring(4096, 16, 0, &good).unwrap(), vec![b"abc".to_vec()]);
        // a frame longer than what was published
        assert!(decode_ring(4096, 8, 0, &good).is_err());
        // a length beyond one chunk
        assert!(decode_ring(4096, 16, 0, &frame(LEN_MASK | FIRST | LAST, b"")).is_err());
        // tail more than a ring ahead of head
        assert!(decode_ring(4096, 1 << 20, 0, &good).is_err());
        // a message that never finishes, from a writer that is gone
        assert_eq!(
            decode_ring(4096, 16, 0, &frame(3 | FIRST, b"abc")).unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }

    #[test]
    fn frames_wrap_around_the_end_of_the_ring() {
        let r = ring(4096);
        // consume as we go, so the ring wraps several times
        for i in 0..1000u32 {
            let msg = i.to_le_bytes().repeat(10);
            r.write_message(None, &msg, None).unwrap();
            let h = r.rec.head.0.pos.load(Ordering::SeqCst);
            let (word, _) = r.read_header(pos(h));
            let len = (word & LEN_MASK) as usize;
            let mut out = vec![0u8; len];
            r.copy_out(pos(h).wrapping_add(HEADER as u32), &mut out);
            assert_eq!(out, msg);
            let next = pos(h).wrapping_add((HEADER + padded(len)) as u32);
            r.rec.head.0.pos.store(pack(next, msgs(h) + 1), Ordering::SeqCst);
        }
        assert!(r.fits_now(100));
    }
}
