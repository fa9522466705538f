//! Reading what workers send: frames pulled off each link, checked, and acted on.
//!
//! A worker is another process and may be broken or hostile: every header is checked as soon as
//! it is complete (length, kind, and for a result the task it names), and a worker that sends
//! anything that is not our protocol is cut off and killed, its exit then reported as a death
//! with the reason (`Worker::reject`).

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use super::Sched;
use crate::stats::ExitCause;
use crate::task::{Completion, Outcome};
use crate::wire::{self, kind, ReadOutcome};

/// Most bytes read from one worker per round while others wait their turn.
pub(super) const READ_BUDGET: usize = 1 << 20;

/// What one round of reading a worker's link gave.
#[derive(Default)]
pub(super) struct Pulled {
    pub(super) frames: Vec<wire::Frame>,
    /// The link reached end-of-file or failed.
    pub(super) closed: bool,
    /// The worker sent something that is not a frame of ours: why.
    pub(super) bad: Option<String>,
}

/// Reads `link` until it has nothing more or `budget` bytes came, decoding the frames.
///
/// Each header is checked as soon as it is complete, before its body arrives, so a worker that
/// announces a frame it will never finish is caught at once instead of waited for: its length
/// (see `wire::MAX_BODY_LEN`), its kind, and for a result, the task it names, which must be the
/// next of `expect` (the worker's tasks in order) while there are any. Results past `expect`
/// are for tasks sent meanwhile, and are checked in `on_frame`.
pub(super) fn pull_frames(
    link: &UnixStream,
    reader: &mut wire::FrameReader,
    expect: Option<&[u64]>,
    budget: usize,
) -> Pulled {
    let mut pulled = Pulled::default();
    let mut results = 0usize;
    let mut read = 0usize;
    loop {
        let step = reader.read_from_link(link);
        loop {
            let header = reader.peek_header();
            if let Err(why) = header.as_ref().map_err(ToString::to_string).and_then(|h| match h {
                Some(h) => check_header(h, expect, results),
                None => Ok(()),
            }) {
                pulled.bad = Some(why);
                return pulled;
            }
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    if matches!(frame.kind, kind::OK | kind::ERR) {
                        results += 1;
                    }
                    pulled.frames.push(frame);
                }
                Ok(None) => break,
                Err(why) => {
                    pulled.bad = Some(why.to_string());
                    return pulled;
                }
            }
        }
        match step {
            Ok(ReadOutcome::Data(n)) => {
                read = read.saturating_add(n);
                if read >= budget {
                    return pulled;
                }
            }
            Ok(ReadOutcome::WouldBlock) => return pulled,
            Ok(ReadOutcome::Eof) => {
                pulled.closed = true;
                return pulled;
            }
            Err(e) => {
                pulled.bad = Some(format!("reading its link failed: {e}"));
                return pulled;
            }
        }
    }
}

/// Reads `bytes` as a worker's link would bring them (as much as one socket buffer holds), with
/// the engine's checks: the frames, and why the link would be given up, if it would. For the
/// fuzz target (`fuzz/`) and the tests.
#[doc(hidden)]
pub fn decode_link(bytes: &[u8], expect: Option<&[u64]>) -> io::Result<(Vec<wire::Frame>, Option<String>)> {
    let (mut tx, rx) = UnixStream::pair()?;
    tx.set_nonblocking(true)?;
    rx.set_nonblocking(true)?;
    let mut sent = 0;
    while sent < bytes.len() {
        match tx.write(&bytes[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    drop(tx);
    let pulled = pull_frames(&rx, &mut wire::FrameReader::default(), expect, usize::MAX);
    Ok((pulled.frames, pulled.bad))
}

/// Whether a worker may send the frame `h` introduces, as its result number `nth`.
pub(super) fn check_header(h: &wire::Header, expect: Option<&[u64]>, nth: usize) -> std::result::Result<(), String> {
    match h.kind {
        kind::READY | kind::ERR | kind::INIT_FAILED | kind::RETIRE if h.nfds > 0 => {
            Err(format!("it sent descriptors with a frame of kind {}", h.kind))
        }
        kind::OK | kind::ERR => match expect.map(|ids| ids.get(nth)) {
            Some(Some(&id)) if id != h.id => Err(format!("it sent a result for task {} while running task {id}", h.id)),
            _ => Ok(()),
        },
        kind::READY | kind::INIT_FAILED | kind::RETIRE => Ok(()),
        other => Err(format!("it sent a frame of unknown kind {other}")),
    }
}

impl Sched {
    /// Reads whatever a worker sent and acts on each frame, all under the lock: for a worker
    /// that has exited, whose last bytes are bounded by its socket's buffer.
    pub(super) fn read_worker(&mut self, idx: usize) {
        let Some(w) = self.workers.get_mut(idx) else { return };
        let expect = w.expected_results();
        let link = Arc::clone(&w.link);
        let pulled = pull_frames(&link, &mut w.reader, expect.as_deref(), usize::MAX);
        self.on_pulled(idx, pulled);
    }

    /// Acts on what one round of reading a worker's link gave.
    pub(super) fn on_pulled(&mut self, idx: usize, pulled: Pulled) {
        for frame in pulled.frames {
            if self.workers.get(idx).is_none_or(|w| w.link_closed) {
                return; // a frame before this one broke the link
            }
            self.on_frame(idx, frame);
        }
        let Some(w) = self.workers.get_mut(idx) else { return };
        if let Some(why) = pulled.bad {
            w.reject(why);
        } else if pulled.closed {
            w.link_closed = true;
            if !w.stopping {
                // usually it is exiting; if a task closed the link instead, the worker can never
                // answer again, and only its exit would tell its tasks so
                w.signal_group(libc::SIGKILL);
            }
        }
    }

    pub(super) fn on_frame(&mut self, idx: usize, frame: wire::Frame) {
        match frame.kind {
            kind::READY => {
                let w = &mut self.workers[idx];
                w.ready = true;
                if !w.inflight.is_empty() {
                    w.head_started = Some(Instant::now());
                }
                self.startup_failures = 0;
            }
            kind::OK | kind::ERR => {
                let w = &mut self.workers[idx];
                if !w.stopping && w.inflight.front().map(|t| t.id) != Some(frame.id) {
                    // results come in order: anything else is not our worker talking
                    let why = format!("it sent a result for task {} it was not running", frame.id);
                    w.reject(why);
                    return;
                }
                let us = f64::from(frame.run_micros());
                self.ewma_us = Some(self.ewma_us.map_or(us, |e| 0.8 * e + 0.2 * us));
                let w = &mut self.workers[idx];
                w.counters.task_done(frame.run_micros());
                if let Some(pos) = w.inflight.iter().position(|t| t.id == frame.id) {
                    w.inflight.remove(pos);
                }
                // results come in order: the next task has just started
                w.head_started = if w.inflight.is_empty() {
                    None
                } else {
                    Some(Instant::now())
                };
                let outcome = if frame.kind == kind::OK {
                    Outcome::Ok(frame.body, frame.fds)
                } else {
                    Outcome::Err(frame.body)
                };
                self.out.push(Completion { id: frame.id, outcome });
                self.retire_if_done(idx);
                let next = self.workers[idx].inflight.front().map(|t| t.id);
                if next.is_some_and(|id| self.kill_requested.remove(&id)) {
                    self.stop_running(idx, Outcome::Killed);
                }
            }
            kind::RETIRE => {
                // over its memory limit: no more work for it; it stops once its tasks are done
                self.workers[idx].quota = Some(0);
                self.workers[idx].counters.stopping_for(ExitCause::Memory);
                self.retire_if_done(idx);
            }
            kind::INIT_FAILED => {
                let pid = self.workers[idx].pid();
                self.workers[idx].stopping = true;
                self.workers[idx].counters.stopping_for(ExitCause::InitFailed);
                self.mark_broken(
                    format!(
                        "A child process terminated abruptly: the initializer raised in worker {pid}; \
                         the pool is not usable (fix the initializer)"
                    ),
                    Some(frame.body),
                );
            }
            other => {
                let why = format!("it sent a frame of unknown kind {other}");
                self.workers[idx].reject(why);
            }
        }
    }
}
