//! The futex system calls on a word in shared memory (not `FUTEX_PRIVATE`: waiters and wakers
//! are different processes).

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Sleeps while `*word == expected`, at most `timeout`; may return early or spuriously.
pub fn wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a valid, aligned u32 that outlives the call; the kernel only reads it and
    // the timespec. EINTR, EAGAIN and ETIMEDOUT all mean "look again", which every caller does.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &raw const ts,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes up to `n` processes sleeping on `word`.
pub fn wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not touch memory.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            n,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every sleeper.
pub fn wake_all(word: &AtomicU32) {
    wake(word, i32::MAX);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    #[test]
    fn wake_releases_a_waiter() {
        let w = Arc::new(AtomicU32::new(0));
        let w2 = Arc::clone(&w);
        let t = std::thread::spawn(move || {
            while w2.load(Ordering::SeqCst) == 0 {
                wait(&w2, 0, Duration::from_secs(5));
            }
        });
        w.store(1, Ordering::SeqCst);
        wake_all(&w);
        t.join().unwrap();
    }

    #[test]
    fn a_changed_word_does_not_sleep() {
        let w = AtomicU32::new(3);
        let start = std::time::Instant::now();
        wait(&w, 2, Duration::from_secs(5));
        assert!(start.elapsed() < Duration::from_secs(4));
    }
}
