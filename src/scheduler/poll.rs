//! The engine thread's loop: maintain the pool, wait in one `poll` for any event (a wake-up
//! byte, a worker's link readable or writable, a worker's exit), handle it, repeat until done.
//!
//! Links are read without the lock (`read_links`), so a large result arriving never holds up
//! submitters, `stats()` or the other workers.

use std::io::{self, Read, Write};
use std::mem;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, MutexGuard};
use std::thread;
use std::time::Duration;

use super::link::{pull_frames, READ_BUDGET};
use super::phase::Phase;
use super::slot::ReaderAt;
use super::{EngineState, Sched};
use crate::wire;

impl Sched {
    /// Makes the engine thread look at the state again.
    pub(super) fn wake(&mut self) {
        if !self.wake_sent {
            if let Some(tx) = &self.wake_tx {
                self.wake_sent = true;
                let _ = (&*tx).write(&[1]);
            }
        }
    }

    /// Reads the wake-up bytes that have arrived.
    pub(super) fn drain_wake(&mut self) {
        let mut sink = [0u8; 64];
        if let Some(rx) = &self.wake_rx {
            while matches!((&*rx).read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

/// Which descriptor a poll entry watches.
#[derive(Clone, Copy)]
enum Watch {
    Wake,
    Link(usize),
    Exit(usize),
}

/// The engine thread: maintain, wait for any event, handle it, repeat until `Done`.
pub(super) fn run(shared: &EngineState) {
    let mut fds: Vec<libc::pollfd> = Vec::new();
    let mut watch: Vec<Watch> = Vec::new();
    loop {
        let timeout_ms = {
            let mut s = start_workers(shared, shared.lock());
            s.maintain();
            if s.phase == Phase::Done {
                return;
            }
            fds.clear();
            watch.clear();
            if let Some(rx) = &s.wake_rx {
                fds.push(pollfd(rx.as_raw_fd(), libc::POLLIN));
                watch.push(Watch::Wake);
            }
            let mut need_tick = s.phase == Phase::Stopping;
            let mut skipped = false;
            for (i, w) in s.workers.iter().enumerate() {
                // a caller reading this link for its own result watches the link and the exit
                // (`claim.rs`); the engine only finishes writes, and looks again when woken
                let claimed = w.reader_at == ReaderAt::Caller;
                skipped |= claimed;
                if !(w.link_closed || claimed && w.out.is_empty()) {
                    let ev = match (claimed, w.out.is_empty()) {
                        (true, _) => libc::POLLOUT,
                        (false, true) => libc::POLLIN,
                        (false, false) => libc::POLLIN | libc::POLLOUT,
                    };
                    fds.push(pollfd(w.link_fd(), ev));
                    watch.push(Watch::Link(i));
                }
                match w.exit_fd() {
                    Some(_) if claimed => {}
                    Some(fd) => {
                        fds.push(pollfd(fd, libc::POLLIN));
                        watch.push(Watch::Exit(i));
                    }
                    None => need_tick = true, // no pidfd: look for exits on a timer
                }
            }
            s.claim_skipped = skipped;
            s.wake_sent = false;
            let tick = if need_tick {
                Some(Duration::from_millis(20))
            } else {
                None
            };
            match (tick, s.enforce_time_limits()) {
                (None, None) => -1,
                (a, b) => {
                    let d = a.into_iter().chain(b).min().unwrap_or(Duration::ZERO);
                    // round up: waking a moment early would only find the deadline not yet due
                    i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
                }
            }
        };
        // SAFETY: `fds` is a live, exclusively borrowed array of `fds.len()` pollfd structs; every
        // descriptor in it belongs to `shared` or to a worker that only this thread removes.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // poll itself failing means a bad descriptor: a bug, but never spin on it
            thread::sleep(Duration::from_millis(10));
        }
        let mut s = shared.lock();
        let mut exited: Vec<usize> = Vec::new();
        let mut to_read = Vec::new();
        for (fd, what) in fds.iter().zip(&watch) {
            if fd.revents == 0 {
                continue;
            }
            match *what {
                Watch::Wake => s.drain_wake(),
                Watch::Link(i) if i < s.workers.len() => {
                    let w = &mut s.workers[i];
                    if fd.revents & libc::POLLOUT != 0 && w.out.flush_to_link(&w.link).is_err() {
                        w.link_closed = true;
                    }
                    if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0
                        && !w.link_closed
                        && w.reader_at == ReaderAt::Slot
                    {
                        w.reader_at = ReaderAt::Engine;
                        let reader = mem::take(&mut w.reader);
                        to_read.push((i, Arc::clone(&w.link), reader, w.expected_results()));
                    }
                }
                Watch::Exit(i) => exited.push(i), // skipped by `handle_exits` while claimed
                Watch::Link(_) => {}              // the pool broke while handling an earlier event
            }
        }
        if !to_read.is_empty() {
            s = read_links(shared, s, to_read);
        }
        s.handle_exits(exited);
    }
}

impl Sched {
    /// Reaps the workers in `exited` (indices) and those without a pidfd whose link closed,
    /// reading what each wrote last.
    pub(super) fn handle_exits(&mut self, mut exited: Vec<usize>) {
        for (i, w) in self.workers.iter().enumerate() {
            if w.exit_fd().is_none() && w.link_closed && !exited.contains(&i) {
                exited.push(i);
            }
        }
        // a caller has this worker's reader, and maybe its last bytes still to read: its exit is
        // handled once the caller puts the reader back and wakes the engine (`claim.rs`)
        let before = exited.len();
        exited.retain(|&i| self.workers.get(i).is_none_or(|w| w.reader_at != ReaderAt::Caller));
        if exited.len() != before {
            self.claim_skipped = true;
        }
        // remove from the back so the other indices stay valid
        exited.sort_unstable();
        exited.dedup();
        for &i in exited.iter().rev() {
            if i >= self.workers.len() {
                continue;
            }
            if !self.workers[i].link_closed {
                // the process is gone; whatever it wrote last is still in the socket
                self.read_worker(i);
            }
            let Some(w) = self.workers.get_mut(i) else { continue };
            match w.try_reap() {
                Ok(Some(info)) => self.on_exit(i, info),
                Ok(None) => {}
                Err(_) => {
                    let info = w.kill_and_reap();
                    self.on_exit(i, info);
                }
            }
        }
    }
}

/// Starts the workers the pool lacks, one at a time, each without the lock: a worker takes
/// milliseconds to start (the fork server's fork, or a fresh interpreter), and meanwhile
/// submitters must not wait, nor the workers already started: the first can take a task while
/// the next is being forked. Only this thread adds workers, and it holds the spec meanwhile.
fn start_workers<'a>(shared: &'a EngineState, mut s: MutexGuard<'a, Sched>) -> MutexGuard<'a, Sched> {
    while s.lacks_worker() {
        let mut spec = mem::take(&mut s.cfg.spec);
        drop(s);
        let started = crate::supervisor::start(&mut spec);
        s = shared.lock();
        s.cfg.spec = spec;
        s.add_worker(started);
        // its INIT, and any queued work, go now: it reads them as soon as it runs
        s.dispatch();
        s.flush_links();
        s.send_out();
    }
    s
}

/// A worker's link to read: its index, the link, its reader (taken out of the worker meanwhile)
/// and the results it owes (see `pull_frames`).
type LinkToRead = (usize, Arc<UnixStream>, wire::FrameReader, Option<Vec<u64>>);

/// Reads the links in `to_read` without the lock: a large result takes a while to arrive, and
/// submitters, `stats()` and the other workers must not wait for it. Indices stay valid
/// meanwhile, as only this thread removes workers. Returns the lock, taken again.
pub(super) fn read_links<'a>(
    shared: &'a EngineState,
    s: MutexGuard<'a, Sched>,
    mut to_read: Vec<LinkToRead>,
) -> MutexGuard<'a, Sched> {
    drop(s);
    let pulled: Vec<_> = to_read
        .iter_mut()
        .map(|(_, link, reader, expect)| pull_frames(link, reader, expect.as_deref(), READ_BUDGET))
        .collect();
    let mut s = shared.lock();
    for ((i, _, reader, _), pulled) in to_read.into_iter().zip(pulled) {
        if let Some(w) = s.workers.get_mut(i) {
            w.reader = reader;
            w.reader_at = ReaderAt::Slot;
        }
        s.on_pulled(i, pulled);
    }
    s
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}
