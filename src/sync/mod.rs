//! Locks, semaphores, conditions, events and barriers shared between processes.
//!
//! Each primitive is a small record of atomics at the start of an anonymous shared segment
//! ([`crate::shm::SharedRecord`]); processes block on its 32-bit words with `futex` (the shared, not
//! the process-private, kind). Waits run in slices ([`crate::signals::wait_interruptible`]) with
//! the GIL released, so timeouts and Ctrl-C are honoured, and so that between slices a waiter can
//! see that the process holding what it waits for has died and take it over
//! ([`process_alive`]; the robust-ownership rules are in `docs/ipc.md`).
//!
//! - `futex`: the two system calls, nothing else.
//! - `lock`: `Lock` and `RLock` (owner = pid in the lock word).
//! - `semaphore`: `Semaphore` and `BoundedSemaphore` (count + a table of holders).
//! - `condition`: the wait queue of `Condition` (its lock is a `Lock`/`RLock`).
//! - `event`: `Event`.
//! - `barrier`: `Barrier`.

pub mod barrier;
pub mod condition;
pub mod event;
pub mod futex;
pub mod lock;
pub mod semaphore;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyRuntimeWarning;
use pyo3::prelude::*;

/// This process's pid, cached: `getpid()` is a system call and the lock fast paths need it.
static PID: AtomicU32 = AtomicU32::new(0);
static AT_FORK: Once = Once::new();

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// This process's pid (refreshed in the child after `fork()`).
pub fn current_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    AT_FORK.call_once(|| {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
    });
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() } as u32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

/// The calling thread's identity inside its process (`pthread_self`, as `threading.get_ident()`).
pub fn current_thread() -> u64 {
    // SAFETY: pthread_self cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

/// Whether process `pid` still runs. A zombie (dead, not yet reaped) counts as dead: its
/// parent may be the very process waiting for its lock.
pub fn process_alive(pid: u32) -> bool {
    if pid == 0 || pid == current_pid() {
        return pid != 0;
    }
    // SAFETY: signal 0 only checks that the process exists.
    if unsafe { libc::kill(pid as i32, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // the state letter follows the command name, which is in parentheses and may hold any byte
        Ok(stat) => !matches!(
            stat.rfind(')').and_then(|i| stat[i + 1..].trim_start().chars().next()),
            Some('Z' | 'X')
        ),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Spins briefly until `ready()`; a handoff between two running processes is much cheaper
/// than a sleep and a wake.
pub fn spin_until(mut ready: impl FnMut() -> bool, rounds: u32) -> bool {
    for i in 0..rounds {
        if ready() {
            return true;
        }
        if i < rounds / 2 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    ready()
}

/// Parks on `word` while it holds `seen`, until `deadline`; returns on any change (or spuriously).
pub fn park(word: &AtomicU32, seen: u32, deadline: Instant) {
    let left = deadline.saturating_duration_since(Instant::now());
    if !left.is_zero() {
        futex::wait(word, seen, left);
    }
}

/// Tells Python that this process took over something a dead process held.
pub fn warn_took_over(py: Python<'_>, what: &str, pid: u32, units: u32) -> PyResult<()> {
    let held = if units == 1 {
        String::new()
    } else {
        format!(" {units} units of")
    };
    let msg = std::ffi::CString::new(format!(
        "process {pid} died while holding{held} this {what}; it was taken over, and whatever it \
         protected may be half-updated"
    ))
    .unwrap_or_default();
    PyErr::warn(py, &py.get_type::<PyRuntimeWarning>(), &msg, 1)
}

/// The deadline of a wait slice that starts now.
pub fn slice_end(slice: Duration) -> Instant {
    Instant::now() + slice
}
