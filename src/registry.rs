//! Pools that still have threads running, so interpreter exit can finish them first.
//!
//! A pool's threads outlive its Python handle: dropped executors finish their queued work in the
//! background, as the stdlib's do. Those threads must end before the interpreter finalizes, or
//! they would try to take a GIL that no longer exists. `python/ferropool/_runtime/lifecycle.py` registers
//! [`shutdown_all`]'s Python wrapper with `threading._register_atexit`, the hook the stdlib's
//! executors use, which runs before finalization.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

/// Bumped in the child of every `os.fork()`: a pool made in another epoch belongs to an
/// ancestor process, whose threads do not exist here and whose locks may have been copied
/// while held. Such a pool is never locked, waited for or used in this process.
static FORK_EPOCH: AtomicU64 = AtomicU64::new(0);

/// The current fork epoch (0 in the process that imported ferropool first).
pub fn fork_epoch() -> u64 {
    FORK_EPOCH.load(Ordering::Acquire)
}

/// Whether a pool made in `epoch` belongs to this process.
pub fn is_ours(epoch: u64) -> bool {
    epoch == fork_epoch()
}

/// The error for using a pool inherited through `fork()`.
pub fn inherited_pool_error() -> pyo3::PyErr {
    crate::errors::Error::InheritedPool.into()
}

/// Called in the child after `os.fork()` (registered by `python/ferropool/_runtime/lifecycle.py`).
#[pyo3::pyfunction]
pub fn after_fork_in_child() {
    FORK_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// What interpreter exit needs from a pool.
pub trait Pool: Send + Sync {
    /// Stop accepting work; finish what is queued.
    fn begin_shutdown(&self);
    /// Stop now: cancel what is queued, kill what runs where it can be killed.
    fn terminate(&self);
    /// Whether `terminate` stops running work (processes), or only queued work (threads).
    fn kills_running_work(&self) -> bool {
        true
    }
    /// Wait up to `timeout` for the pool's threads to end.
    fn wait_finished(&self, timeout: Duration) -> bool;
}

/// How long a terminating exit waits for thread-pool threads still running a task.
const ABANDON_THREADS_AFTER: Duration = Duration::from_secs(1);

/// Live pools with the fork epoch they were made in.
static LIVE: Mutex<Vec<(u64, Weak<dyn Pool>)>> = Mutex::new(Vec::new());

/// Records a pool until it is gone.
pub fn register(pool: Arc<dyn Pool>) {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|(epoch, p)| is_ours(*epoch) && p.strong_count() > 0);
    live.push((fork_epoch(), Arc::downgrade(&pool)));
}

/// Every pool of this process still alive. In a forked child the list may have been copied
/// while another thread held its lock, so the child only tries the lock.
fn live() -> Vec<Arc<dyn Pool>> {
    let guard = if fork_epoch() == 0 {
        LIVE.lock().unwrap_or_else(PoisonError::into_inner)
    } else {
        match LIVE.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Vec::new(),
        }
    };
    guard
        .iter()
        .filter(|(epoch, _)| is_ours(*epoch))
        .filter_map(|(_, p)| p.upgrade())
        .collect()
}

/// Shuts down every pool still running and waits up to `timeout` seconds for each (forever when
/// `None`): gracefully (queued work runs, as the stdlib does at exit), or with `terminate` by
/// cancelling queued work and killing workers. Called at interpreter exit; returns whether all
/// finished. A `KeyboardInterrupt` during a graceful wait propagates; the caller then
/// terminates.
#[pyo3::pyfunction]
#[pyo3(signature = (timeout=None, terminate=false))]
pub fn shutdown_all(py: pyo3::Python<'_>, timeout: Option<f64>, terminate: bool) -> pyo3::PyResult<bool> {
    let timeout = crate::signals::timeout_from_secs(timeout)?;
    let pools = live();
    // each takes its pool's lock, which its engine thread may hold a while: not with the GIL
    py.detach(|| {
        for pool in &pools {
            if terminate {
                pool.terminate();
            } else {
                pool.begin_shutdown();
            }
        }
    });
    let mut all = true;
    for pool in pools {
        // a thread cannot be killed: after an interrupt, its running task is abandoned like a
        // daemon thread's rather than waited for
        let limit = if terminate && !pool.kills_running_work() {
            Some(ABANDON_THREADS_AFTER)
        } else {
            timeout
        };
        all &= crate::signals::wait_interruptible(py, limit, |slice| pool.wait_finished(slice))?;
    }
    Ok(all)
}
