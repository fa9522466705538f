//! `ferropool._core.Queue`: the Python class over the ring and the feeder; pickling by
//! ferropool's one policy (`_runtime/serialize.py`), deadlines, and waits that honour Ctrl-C.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::errors::Error;
use crate::shm::{Handle, SharedRecord};
use crate::signals::{timeout_from_secs, wait_interruptible};
use crate::sync::{futex, park, slice_end};

use super::feeder::{feed, Backlog};
use super::ring::{msgs, End, QueueRecord, Ring, DEFAULT_CAPACITY, HEADER, PRODUCER_PATIENCE};

/// The native queue shared by the three Python classes.
#[pyclass(name = "Queue", module = "ferropool._core", frozen, subclass, weakref)]
pub struct PyQueue {
    pub(super) ring: Arc<Ring>,
    pub(super) backlog: Arc<Backlog>,
    /// `close()` was called in this process (the stdlib's `close` is per process).
    pub(super) closed: AtomicBool,
    /// This process has put an item: as with the stdlib's, `close()` then closes the reading
    /// side for `empty()` too (an unused queue's `close()` changes nothing there).
    pub(super) used: AtomicBool,
}

pub(super) static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static PLAIN_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static EXTRA_REDUCERS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
pub(super) static LOADS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn import_attr(
    py: Python<'_>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<Py<PyAny>> {
    cell.get_or_try_init(py, || Ok(py.import(module)?.getattr(name)?.unbind()))
        .map(|f| f.clone_ref(py))
}

const SERIALIZE: &str = "ferropool._runtime.serialize";

/// Pickles `obj` by ferropool's one pickling policy (`_runtime/serialize.py`'s `dumps`), so that
/// a queue ships exactly what a pool or a `Connection` would. Its first step is taken here
/// without a Python frame, as `serialize.dumps` itself takes it (the policy's `plain_dumps`,
/// only while `extra_reducers` is empty, kept only without `__main__`): a small `put` costs
/// a third less. Everything else goes to `serialize.dumps`.
pub(super) fn dumps<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let reducers = import_attr(py, &EXTRA_REDUCERS, SERIALIZE, "extra_reducers")?;
    if reducers.bind(py).is_empty()? {
        let plain = import_attr(py, &PLAIN_DUMPS, SERIALIZE, "plain_dumps")?;
        if let Ok(data) = plain.bind(py).call1((obj, 5)) {
            let data = data.cast_into::<PyBytes>()?;
            if !data.as_bytes().windows(8).any(|w| w == b"__main__") {
                return Ok(data);
            }
        }
    }
    let dumps = import_attr(py, &DUMPS, SERIALIZE, "dumps")?;
    Ok(dumps.bind(py).call1((obj,))?.cast_into::<PyBytes>()?)
}

pub(super) fn deadline(block: bool, timeout: Option<f64>) -> PyResult<Option<Instant>> {
    if !block {
        return Ok(Some(Instant::now()));
    }
    Ok(timeout_from_secs(timeout)?.map(|t| Instant::now() + t))
}

/// Takes one side's lock, taking it over (with a warning) from a dead process.
pub(super) fn lock_end(py: Python<'_>, end: &End, deadline: Option<Instant>, what: &str) -> PyResult<bool> {
    if end.lock.try_lock() {
        return Ok(true);
    }
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    end.lock.acquire(py, true, timeout, what)
}

/// The feeder thread: moves this process's backlog into the ring, in order, as readers make
/// room; ends when the backlog is empty.
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

    pub(super) fn build(rec: SharedRecord<QueueRecord>) -> PyResult<Self> {
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
