//! The loop inside a worker process: read frames, run each call through the Python handler
//! (`python/ferropool/_worker/main.py`), write each result back as soon as its call returns.
//!
//! The GIL is released while the worker waits for frames and while it writes results; it is held
//! only for the handler, which unpickles, calls and pickles. Frames are read in batches, but
//! results are not held back to share a write: a call that crashes the process (segfault,
//! `os._exit`) would take every unwritten result with it, and tasks that finished must keep their
//! results.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::wire::{self, kind, FrameReader, ReadOutcome, WriteBuf};

/// Exit codes `worker_main` returns (the Python side passes them to `os._exit`).
const EXIT_OK: i32 = 0;
const EXIT_INIT_FAILED: i32 = 3;
const EXIT_ORPHANED: i32 = 4;
const EXIT_BAD_FRAME: i32 = 5;

/// Whether the worker holds output its output socket could not take yet (set by the Python
/// side, `_worker/forwarding.py`, when its queue fills and empties). While it does, a result
/// waits for that output: a task's prints reach the parent before its result, so a pool
/// terminated once its results are in (the end of a `with Pool()` block) loses none of them.
/// An atomic so that the task path pays one load, not a call into Python, when nothing waits.
static OUTPUT_BEHIND: AtomicBool = AtomicBool::new(false);

/// Marks the worker's output as behind (queued in the worker) or caught up.
#[pyfunction]
pub fn worker_output_behind(behind: bool) {
    OUTPUT_BEHIND.store(behind, Ordering::Release);
}

/// Runs the worker until told to stop or until the parent goes away; returns the exit code.
///
/// `handler.init(body, fn_len, flags)` and `handler.call(body, fn_len, flags)` each return
/// `(ok, payload, fds)`; a frame that brought descriptors (memfd segments of large buffers) adds
/// them as a fourth argument, and `fds` (or `None`) are the segments of the payload's buffers.
/// Either way the descriptors change owner: Python closes what it is given, Rust what it sends.
/// `handler.catch_up_output()` runs before a result is sent while output waits in the worker
/// (`OUTPUT_BEHIND`).
#[pyfunction]
pub fn worker_main(py: Python<'_>, handler: Bound<'_, PyAny>, parent_pid: u32) -> PyResult<i32> {
    let mut link = take_link()?;
    if !die_with_parent(parent_pid) {
        return Ok(EXIT_ORPHANED);
    }
    let call = handler.getattr("call")?;
    let init = handler.getattr("init")?;
    let catch_up = handler.getattr("catch_up_output")?;
    let mut reader = FrameReader::default();
    let mut out = WriteBuf::default();
    let mut memory = MemoryWatch::default();
    loop {
        let frame = match reader.next_frame() {
            Ok(Some(frame)) => frame,
            // the parent wrote something that is not a frame: nothing after it can be trusted
            Err(_) => return Ok(EXIT_BAD_FRAME),
            Ok(None) => {
                if !out.is_empty() {
                    flush(py, &mut link, &mut out)?;
                }
                match py.detach(|| reader.read_from_link(&link)) {
                    Ok(ReadOutcome::Data(_) | ReadOutcome::WouldBlock) => continue,
                    Ok(ReadOutcome::Eof) | Err(_) => return Ok(EXIT_OK), // the parent is gone
                }
            }
        };
        match frame.kind {
            kind::INIT => {
                memory.limit = frame.memory_limit();
                if !frame.body.is_empty() {
                    let (ok, payload, _) = run_handler(py, &init, frame)?;
                    if !ok {
                        wire::encode(&mut out.buf, kind::INIT_FAILED, 0, 0, 0, &[payload.as_bytes()]);
                        flush(py, &mut link, &mut out)?;
                        return Ok(EXIT_INIT_FAILED);
                    }
                }
                // on its own: if the first call crashes the worker, the parent must still know
                // that start-up succeeded (a crash loop at start-up breaks the pool)
                wire::encode(&mut out.buf, kind::READY, 0, 0, 0, &[]);
                flush(py, &mut link, &mut out)?;
            }
            kind::CALL => {
                drop_idle_interrupt(py)?;
                let started = Instant::now();
                let id = frame.id;
                let (ok, payload, fds) = run_handler(py, &call, frame)?;
                let us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
                if OUTPUT_BEHIND.load(Ordering::Acquire) {
                    // output that could not be sent in time is the output's loss (counted and
                    // reported by the parent), never the result's: an error here sends it anyway
                    let _ = catch_up.call0();
                }
                let k = if ok { kind::OK } else { kind::ERR };
                wire::encode_fds(&mut out, k, 0, id, us, &[payload.as_bytes()], fds);
                if memory.over_limit() {
                    wire::encode(&mut out.buf, kind::RETIRE, 0, 0, 0, &[]);
                }
                flush(py, &mut link, &mut out)?;
            }
            kind::STOP => {
                flush(py, &mut link, &mut out)?;
                return Ok(EXIT_OK);
            }
            _ => {}
        }
    }
}

/// Checks the worker's resident memory against `max_memory_per_child` after every call, so a
/// call that leaked is caught even in a burst of quick calls. `/proc/self/statm` stays open and
/// is read with one `pread` per check.
#[derive(Default)]
struct MemoryWatch {
    /// Bytes; 0: no limit.
    limit: u64,
    statm: Option<File>,
    /// Already reported: the parent stops sending work, once is enough.
    reported: bool,
}

impl MemoryWatch {
    fn over_limit(&mut self) -> bool {
        if self.limit == 0 || self.reported {
            return false;
        }
        if self.statm.is_none() {
            self.statm = File::open("/proc/self/statm").ok();
        }
        self.reported = self
            .statm
            .as_ref()
            .and_then(resident_bytes)
            .is_some_and(|rss| rss > self.limit);
        self.reported
    }
}

/// The process's current resident set size: pages (second field of statm) × page size.
fn resident_bytes(statm: &File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 128];
    let n = statm.read_at(&mut buf, 0).ok()?;
    let pages: u64 = std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Runs the handlers of signals that arrived while no call was running. A Ctrl-C sent to an idle
/// worker belongs to no task: dropped here, it does not fail the next call, nor end the worker
/// (and the calls queued behind it) at the call's first line. Another handler's exception
/// (`SystemExit` from a handler a task installed) still ends the worker.
fn drop_idle_interrupt(py: Python<'_>) -> PyResult<()> {
    match py.check_signals() {
        Err(err) if err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py) => Ok(()),
        other => other,
    }
}

type HandlerResult<'py> = (bool, Bound<'py, PyBytes>, Vec<OwnedFd>);

fn run_handler<'py>(py: Python<'py>, handler: &Bound<'py, PyAny>, frame: wire::Frame) -> PyResult<HandlerResult<'py>> {
    let body = PyBytes::new(py, &frame.body);
    let (fn_len, flags) = (frame.fn_len(), frame.flags);
    let result = if frame.fds.is_empty() {
        handler.call1((body, fn_len, flags))?
    } else {
        let fds: Vec<i32> = frame.fds.into_iter().map(IntoRawFd::into_raw_fd).collect();
        handler.call1((body, fn_len, flags, fds))?
    };
    let (ok, payload, fds): (bool, Bound<'py, PyBytes>, Option<Vec<i32>>) = result.extract()?;
    // SAFETY: the handler made these descriptors for this result and gives up ownership of them
    // (see worker_main); nothing else closes them.
    let fds = fds
        .unwrap_or_default()
        .into_iter()
        .filter(|&fd| fd >= 0)
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    Ok((ok, payload, fds))
}

/// Writes everything in `out`, descriptors included, with the GIL released.
fn flush(py: Python<'_>, link: &mut UnixStream, out: &mut WriteBuf) -> PyResult<()> {
    let res = py.detach(|| loop {
        // a blocking socket: each round writes something or fails
        match out.flush_to_link(link) {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
    });
    if res.is_err() {
        *out = WriteBuf::default();
    }
    match res {
        // the parent is gone: nobody needs the results; the read that follows sees EOF
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Moves the link from stdin to a private descriptor and puts `/dev/null` on stdin.
fn take_link() -> io::Result<UnixStream> {
    // SAFETY: F_DUPFD_CLOEXEC duplicates descriptor 0, which the parent set up as our link, to a
    // new descriptor >= 3 that child processes of this worker will not inherit.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let link = unsafe { UnixStream::from_raw_fd(fd) };
    let devnull = File::open("/dev/null")?;
    // SAFETY: dup2 replaces descriptor 0 (our copy of the link, now duplicated) with /dev/null.
    if unsafe { libc::dup2(devnull.as_raw_fd(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    link.set_nonblocking(false)?;
    Ok(link)
}

/// Asks the kernel to signal this process when the thread that started it ends, and checks that
/// the parent did not already go before that took effect. `false`: the parent is gone.
///
/// The signal is a real-time one whose handler kills this process's whole group: the process
/// leads its own group, so programs its tasks started (`subprocess`) die with it instead of
/// outliving a killed parent. Without the handler the signal's default action still ends it.
#[pyfunction]
#[cfg(target_os = "linux")]
pub fn die_with_parent(parent_pid: u32) -> bool {
    let signal = parent_death_signal();
    // SAFETY: sigaction installs `kill_own_group`, which only calls killpg, an async-signal-safe
    // function; the zeroed sigaction is valid (empty mask, no flags) once the handler is set.
    // PR_SET_PDEATHSIG only records a signal number; getppid reads an id.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = kill_own_group as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigaction(signal, &raw const action, std::ptr::null_mut());
        libc::prctl(libc::PR_SET_PDEATHSIG, signal);
        u32::try_from(libc::getppid()).ok() == Some(parent_pid)
    }
}

/// The parent-death signal: a real-time signal nothing else in a worker uses.
#[cfg(target_os = "linux")]
fn parent_death_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

/// Runs in a signal handler when the parent dies: SIGKILL to this process's group (itself
/// included).
#[cfg(target_os = "linux")]
extern "C" fn kill_own_group(_signal: libc::c_int) {
    // SAFETY: killpg is async-signal-safe; group 0 is the caller's own process group, which a
    // worker (and the fork server) leads.
    unsafe {
        libc::killpg(0, libc::SIGKILL);
    }
}

#[pyfunction]
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_parent_pid: u32) -> bool {
    true // elsewhere the link's end-of-file is the only signal of the parent's death
}
