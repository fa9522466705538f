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
    /// Wait up to `timeout` for the pool's threads to end.
    fn wait_finished(&self, timeout: Duration) -> bool;
}

static LIVE: Mutex<Vec<Weak<dyn Pool>>> = Mutex::new(Vec::new());

/// Records a pool until it is gone.
pub fn register(pool: Arc<dyn Pool>) {
    let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
    live.retain(|p| p.strong_count() > 0);
    live.push(Arc::downgrade(&pool));
}

/// Every pool still alive, after asking each to shut down.
pub fn begin_shutdown_all() -> Vec<Arc<dyn Pool>> {
    let live: Vec<Arc<dyn Pool>> = LIVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for pool in &live {
        pool.begin_shutdown();
    }
    live
}

/// Shuts down every pool still running and waits up to `timeout` seconds for each (forever when
/// `None`). Called at interpreter exit; returns whether all finished.
#[pyo3::pyfunction]
#[pyo3(signature = (timeout=None))]
pub fn shutdown_all(py: pyo3::Python<'_>, timeout: Option<f64>) -> pyo3::PyResult<bool> {
    let timeout = crate::signals::timeout_from_secs(timeout)?;
    let mut all = true;
    for pool in begin_shutdown_all() {
        all &= crate::signals::wait_interruptible(py, timeout, |slice| pool.wait_finished(slice))?;
    }
    Ok(all)
}
