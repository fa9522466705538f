//! Pools that still have threads running, so interpreter exit can finish them first.
//!
//! A pool's threads outlive its Python handle: dropped executors finish their queued work in the
//! background, as the stdlib's do. Those threads must end before the interpreter finalizes, or
//! they would try to take a GIL that no longer exists. `python/ferropool/_exit.py` registers
//! [`shutdown_all`]'s Python wrapper with `threading._register_atexit`, the hook the stdlib's
//! executors use, which runs before finalization.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

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

static LIVE: Mutex<Vec<Weak<dyn Pool>>> = Mutex::new(Vec::new());

/// Records a pool until it is gone.
pub fn register(pool: Arc<dyn Pool>) {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|p| p.strong_count() > 0);
    live.push(Arc::downgrade(&pool));
}

/// Every pool still alive.
fn live() -> Vec<Arc<dyn Pool>> {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
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
    for pool in &pools {
        if terminate {
            pool.terminate();
        } else {
            pool.begin_shutdown();
        }
    }
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
