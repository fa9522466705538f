//! Waiting without the GIL, and still answering Ctrl-C.
//!
//! Every blocking call the core offers to Python goes through [`wait_interruptible`]: it waits in
//! short slices with the GIL released and runs `check_signals` between slices, so a signal
//! handler's exception (`KeyboardInterrupt`) reaches the caller within one slice, the way
//! `threading.Thread.join()` behaves.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How long one slice of a wait lasts before signals are checked again.
const SLICE: Duration = Duration::from_millis(50);

/// Waits until `done_within(slice)` returns `true`, or `timeout` passes (`Ok(false)`), or a signal
/// handler raises (`Err`).
pub fn wait_interruptible<F>(py: Python<'_>, timeout: Option<Duration>, mut done_within: F) -> PyResult<bool>
where
    F: FnMut(Duration) -> bool + Send,
{
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        if py.detach(|| done_within(slice)) {
            return Ok(true);
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(false);
        }
    }
}

/// A count that threads wait to see reach zero (running threads, unfinished engine threads).
#[derive(Debug, Default)]
pub struct CountLatch {
    count: Mutex<usize>,
    zero: Condvar,
}

impl CountLatch {
    /// A latch that opens after `n` calls to [`CountLatch::count_down`].
    pub fn new(n: usize) -> Self {
        CountLatch {
            count: Mutex::new(n),
            zero: Condvar::new(),
        }
    }

    pub fn count_up(&self) {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) += 1;
    }

    pub fn count_down(&self) {
        let mut count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        *count = count.saturating_sub(1);
        if *count == 0 {
            self.zero.notify_all();
        }
    }

    /// Waits up to `timeout` for the count to reach zero; `true` if it did.
    pub fn wait_for(&self, timeout: Duration) -> bool {
        let count = self.count.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, _) = self
            .zero
            .wait_timeout_while(count, timeout, |c| *c > 0)
            .unwrap_or_else(PoisonError::into_inner);
        *count == 0
    }

    pub fn is_open(&self) -> bool {
        *self.count.lock().unwrap_or_else(PoisonError::into_inner) == 0
    }
}

/// Converts a Python timeout (seconds, `None` for forever) to a duration, rejecting what the
/// stdlib rejects.
pub fn timeout_from_secs(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() => {
            Err(crate::errors::Error::InvalidArgument("timeout must be a number, not NaN".into()).into())
        }
        Some(t) => Ok(Some(Duration::from_secs_f64(t.clamp(0.0, 1e9)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn latch_opens_at_zero() {
        let latch = Arc::new(CountLatch::new(2));
        assert!(!latch.wait_for(Duration::from_millis(1)));
        let l2 = Arc::clone(&latch);
        let t = std::thread::spawn(move || {
            l2.count_down();
            l2.count_down();
        });
        assert!(latch.wait_for(Duration::from_secs(10)));
        t.join().unwrap();
        assert!(latch.is_open());
    }
}
