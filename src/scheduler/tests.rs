//! The scheduler against fake workers: each is a `sleep` process (so the engine has a real child
//! to signal and reap) and the far end of a socket pair standing in for its link, which the test
//! reads and writes as a worker would, with `wire.rs`. No Python is involved.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;

use crossbeam_channel::{unbounded, Receiver};

use super::deadlines::time_left;
use super::dispatch::{window_for, WINDOW_INITIAL, WINDOW_MAX};
use super::slot::ReaderAt;
use super::*;
use crate::child::ChildHandle;
use crate::task::{ExitInfo, TaskState};
use crate::wire::{self, kind, ReadOutcome};

fn frames(list: &[(u8, u64)]) -> Vec<u8> {
    let mut out = Vec::new();
    for &(k, id) in list {
        wire::encode(&mut out, k, 0, id, 0, &[b"body"]);
    }
    out
}

#[test]
fn results_must_name_the_tasks_in_order() {
    let ok = frames(&[(kind::READY, 0), (kind::OK, 5), (kind::ERR, 6)]);
    let (got, bad) = decode_link(&ok, Some(&[5, 6])).unwrap();
    assert_eq!((got.len(), bad), (3, None));
    let (got, bad) = decode_link(&frames(&[(kind::OK, 6)]), Some(&[5, 6])).unwrap();
    assert!(got.is_empty());
    assert!(bad.unwrap().contains("task 6 while running task 5"));
    // results beyond what was known when reading began are checked later, in on_frame
    assert!(decode_link(&frames(&[(kind::OK, 9)]), Some(&[])).unwrap().1.is_none());
    // a worker on its way out is not checked
    assert!(decode_link(&frames(&[(kind::OK, 9)]), None).unwrap().1.is_none());
}

#[test]
fn windows_cover_about_two_milliseconds_of_work() {
    assert_eq!(window_for(None), WINDOW_INITIAL);
    assert_eq!(window_for(Some(1.0)), WINDOW_MAX, "tiny tasks: as many as allowed");
    assert_eq!(
        window_for(Some(0.0)),
        WINDOW_MAX,
        "a zero measurement is not a division by zero"
    );
    assert_eq!(window_for(Some(100.0)), 20);
    assert_eq!(
        window_for(Some(1500.0)),
        2,
        "rounded up: never less work than the target"
    );
    assert_eq!(window_for(Some(2000.0)), 1);
    assert_eq!(window_for(Some(5e6)), 1, "long tasks: one at a time");
}

#[test]
fn a_deadline_is_due_at_its_instant_and_not_before() {
    let started = Instant::now();
    let limit = Duration::from_millis(500);
    assert_eq!(time_left(started, limit, started), Some(limit));
    assert_eq!(
        time_left(started, limit, started + Duration::from_millis(200)),
        Some(Duration::from_millis(300))
    );
    assert_eq!(time_left(started, limit, started + limit), None);
    assert_eq!(time_left(started, limit, started + Duration::from_secs(9)), None);
}

#[test]
fn a_bad_header_is_refused_before_its_body() {
    let mut junk = Vec::new();
    junk.extend_from_slice(&(1u64 << 30).to_le_bytes());
    junk.extend_from_slice(&[0xEE, 0, 0]);
    junk.extend_from_slice(&[0u8; 12]);
    let (_, bad) = decode_link(&junk, Some(&[1])).unwrap();
    assert!(bad.unwrap().contains("unknown kind 238"));
    let mut fds = frames(&[(kind::READY, 0)]);
    fds[10] = 1; // READY announcing a descriptor
    assert!(decode_link(&fds, None).unwrap().1.unwrap().contains("descriptors"));
    let mut long = frames(&[(kind::OK, 1)]);
    long[..8].copy_from_slice(&(u64::MAX - 7).to_le_bytes());
    assert!(decode_link(&long, Some(&[1])).unwrap().1.unwrap().contains("limit"));
}

/// The worker's side of a fake worker's link.
struct FakeWorker {
    end: UnixStream,
    reader: wire::FrameReader,
}

impl FakeWorker {
    /// The frames the engine has written so far.
    fn received(&mut self) -> Vec<wire::Frame> {
        let mut frames = Vec::new();
        loop {
            let step = self.reader.read_from_link(&self.end).unwrap();
            while let Some(frame) = self.reader.next_frame().unwrap() {
                frames.push(frame);
            }
            if !matches!(step, ReadOutcome::Data(_)) {
                return frames;
            }
        }
    }

    /// The ids of the calls the engine has sent so far, checking each is a `CALL`.
    fn calls(&mut self) -> Vec<u64> {
        let frames = self.received();
        assert!(frames.iter().all(|f| f.kind == kind::CALL), "only calls expected");
        frames.iter().map(|f| f.id).collect()
    }

    /// Writes a frame as the worker would.
    fn send(&mut self, kind: u8, id: u64, run_micros: u32) {
        let mut out = Vec::new();
        wire::encode(&mut out, kind, 0, id, run_micros, &[b"result"]);
        (&self.end).write_all(&out).unwrap();
    }
}

/// An engine's state with no thread and no real workers; `add_worker` adds fake ones.
struct Harness {
    s: Sched,
    results: Receiver<Vec<Completion>>,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_initializer(false)
    }

    /// A harness whose pool's user gave an initializer (`EngineConfig::run_initializer`).
    fn with_initializer(run_initializer: bool) -> Harness {
        let (s, results) = empty_sched(run_initializer);
        Harness { s, results }
    }

    /// The state as an engine thread and the pool's callers share it (for what callers do
    /// with the lock: `claim.rs`); the harness keeps an empty one. The test plays the engine.
    fn share(&mut self) -> SharedState {
        let (empty, _) = empty_sched(false);
        let s = mem::replace(&mut self.s, empty);
        SharedState(Arc::new(EngineState {
            sched: Mutex::new(s),
            finished: CountLatch::new(1),
        }))
    }

    /// Adds a worker that has started and sent `READY`.
    fn add_worker(&mut self) -> FakeWorker {
        let mut fake = self.add_unready_worker();
        fake.send(kind::READY, 0, 0);
        self.read(self.s.workers.len() - 1);
        assert!(self.s.workers.last().unwrap().ready);
        fake
    }

    /// Adds a worker still starting (running its initializer): it has not sent `READY`.
    fn add_unready_worker(&mut self) -> FakeWorker {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut command = Command::new("sleep");
        command.arg("60").process_group(0);
        let child = ChildHandle::spawn(&mut command).unwrap();
        self.s.workers.push(Worker::new(child, ours, None).unwrap());
        theirs.set_nonblocking(true).unwrap();
        FakeWorker {
            end: theirs,
            reader: wire::FrameReader::default(),
        }
    }

    fn submit(&mut self, id: u64, timeout: Option<Duration>) -> Arc<TaskState> {
        let state = Arc::new(TaskState::default());
        self.s.pending.push_back(Task {
            id,
            flags: 0,
            fn_len: 2,
            body: format!("fn{id}").into_bytes(),
            state: Arc::clone(&state),
            timeout,
            fds: Vec::new(),
        });
        state
    }

    /// Hands out pending work and writes it to the links, as one engine round does.
    fn dispatch(&mut self) {
        self.s.dispatch();
        for w in &mut self.s.workers {
            assert!(w.out.flush_to_link(&w.link).unwrap(), "a small write completes");
        }
    }

    /// Reads what worker `idx` sent and acts on it.
    fn read(&mut self, idx: usize) {
        self.s.read_worker(idx);
    }

    /// The outcomes gathered so far, as the completion thread would get them.
    fn outcomes(&mut self) -> Vec<Completion> {
        self.s.send_out();
        self.results.try_iter().flatten().collect()
    }

    /// Waits for worker `idx`'s process to exit and reaps it.
    fn exit_of(&mut self, idx: usize) -> ExitInfo {
        let fd = self.s.workers[idx].exit_fd().expect("a pidfd on Linux");
        assert!(crate::fd::wait_ready(fd, libc::POLLIN, Some(Duration::from_secs(10))).unwrap());
        self.s.workers[idx].try_reap().unwrap().expect("it has exited")
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for w in &mut self.s.workers {
            w.kill_and_reap();
        }
    }
}

/// A scheduler with no workers, and the channel its outcomes go to.
fn empty_sched(run_initializer: bool) -> (Sched, Receiver<Vec<Completion>>) {
    let (tx, results) = unbounded();
    let cfg = EngineConfig {
        spec: WorkerSpec {
            argv: Vec::new(),
            forkserver: None,
            output: None,
            started: 0,
        },
        // the harness adds workers itself; the engine starts none
        workers: 0,
        init: None,
        run_initializer,
        max_tasks_per_child: None,
        max_memory_per_child: 0,
    };
    (Sched::new(cfg, tx).unwrap(), results)
}

/// An engine's shared state taken from a harness; its workers are killed and reaped at the end.
struct SharedState(Arc<EngineState>);

impl Drop for SharedState {
    fn drop(&mut self) {
        for w in &mut self.0.lock().workers {
            w.kill_and_reap();
        }
    }
}

/// An instant `d` in the past: a task that started then (no sleeping in tests).
fn ago(d: Duration) -> Instant {
    Instant::now().checked_sub(d).expect("the clock goes back that far")
}

/// One started worker and tasks `1..=n` submitted and dispatched: the worker holds the first
/// two (the window before any task time is measured).
fn one_worker_with_tasks(n: u64) -> (Harness, FakeWorker) {
    let mut h = Harness::new();
    let mut worker = h.add_worker();
    for id in 1..=n {
        h.submit(id, None);
    }
    h.dispatch();
    assert_eq!(worker.calls(), vec![1, 2]);
    (h, worker)
}

/// One worker running task 1 as its only task, and tasks 2..=1+queued waiting in the pool: a
/// round trip a caller may read itself (`claim.rs`).
fn one_worker_running_one(queued: u64) -> (Harness, FakeWorker) {
    let mut h = Harness::new();
    let mut worker = h.add_worker();
    h.submit(1, None);
    h.dispatch();
    assert_eq!(worker.calls(), vec![1]);
    for id in 2..=1 + queued {
        h.submit(id, None);
    }
    (h, worker)
}

fn ids(outcomes: &[Completion]) -> Vec<u64> {
    outcomes.iter().map(|c| c.id).collect()
}

#[test]
fn dispatch_gives_each_task_to_the_worker_holding_fewest_up_to_the_window() {
    let mut h = Harness::new();
    let mut a = h.add_worker();
    let mut b = h.add_worker();
    for id in 1..=10 {
        h.submit(id, None);
    }
    h.dispatch();
    // nothing measured yet: each worker holds WINDOW_INITIAL (2), taking turns
    assert_eq!(a.calls(), vec![1, 3]);
    assert_eq!(b.calls(), vec![2, 4]);
    assert_eq!(h.s.pending.len(), 6);
    assert_eq!(h.s.workers[0].inflight.len(), WINDOW_INITIAL);
    // the first task of an idle, started worker is running from the moment it was sent
    assert!(h.s.workers[0].head_started.is_some());
    // a second round sends nothing: every window is full
    h.dispatch();
    assert!(a.calls().is_empty() && b.calls().is_empty());
}

#[test]
fn a_call_frame_carries_the_task_as_submitted() {
    let mut h = Harness::new();
    let mut a = h.add_worker();
    h.submit(7, None);
    h.dispatch();
    let frames = a.received();
    assert_eq!(frames.len(), 1);
    let call = &frames[0];
    assert_eq!((call.kind, call.id, call.fn_len()), (kind::CALL, 7, 2));
    assert_eq!(call.body, b"fn7");
}

#[test]
fn results_complete_tasks_in_order_and_widen_the_window_for_quick_tasks() {
    let (mut h, mut a) = one_worker_with_tasks(30);
    a.send(kind::OK, 1, 100);
    a.send(kind::ERR, 2, 100);
    h.read(0);
    let done = h.outcomes();
    assert_eq!(ids(&done), vec![1, 2]);
    assert!(matches!(&done[0].outcome, Outcome::Ok(body, _) if body == b"result"));
    assert!(matches!(&done[1].outcome, Outcome::Err(body) if body == b"result"));
    // tasks of 100 µs: 20 of them cover the 2 ms a worker should hold
    assert_eq!(h.s.window(), 20);
    h.dispatch();
    assert_eq!(a.calls(), (3..=22).collect::<Vec<_>>());
    assert_eq!(h.s.pending.len(), 8);
    assert_eq!(h.s.workers[0].counters.tasks_done, 2);
}

#[test]
fn a_cancelled_task_is_never_sent() {
    let mut h = Harness::new();
    let mut a = h.add_worker();
    h.submit(1, None);
    let cancelled = h.submit(2, None);
    h.submit(3, None);
    assert!(cancelled.cancel());
    h.dispatch();
    assert_eq!(a.calls(), vec![1, 3]);
    let done = h.outcomes();
    assert_eq!(ids(&done), vec![2]);
    assert!(matches!(done[0].outcome, Outcome::Cancelled));
}

#[test]
fn a_worker_answering_for_another_task_is_cut_off_and_killed() {
    let (mut h, mut a) = one_worker_with_tasks(2);
    a.send(kind::OK, 2, 10);
    h.read(0);
    let w = &h.s.workers[0];
    assert!(w.link_closed);
    assert!(w.bad_frame.as_deref().unwrap().contains("task 2 while running task 1"));
    assert_eq!(h.exit_of(0).signal, Some(libc::SIGKILL));
    assert!(
        h.outcomes().is_empty(),
        "its tasks fail when its exit is handled, not before"
    );
}

#[test]
fn a_task_past_its_time_limit_kills_its_worker_and_requeues_those_behind_it() {
    let mut h = Harness::new();
    let mut a = h.add_worker();
    let limit = Duration::from_millis(500);
    h.submit(1, Some(limit));
    h.submit(2, None);
    h.dispatch();
    assert_eq!(a.calls(), vec![1, 2]);
    // not due yet: the engine is told how long it may sleep
    let left = h.s.enforce_time_limits().expect("a limit is running");
    assert!(left <= limit);
    assert!(h.outcomes().is_empty());
    // the task started long enough ago (no sleeping: its start is moved back)
    h.s.workers[0].head_started = Some(ago(Duration::from_secs(1)));
    assert_eq!(h.s.enforce_time_limits(), None);
    let pid = h.s.workers[0].pid();
    let done = h.outcomes();
    assert_eq!(ids(&done), vec![1]);
    assert!(matches!(done[0].outcome, Outcome::TimedOut { limit: l, pid: p } if l == limit && p == pid));
    // the task behind it never started: it goes back to the front of the queue
    assert_eq!(h.s.pending.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
    let w = &h.s.workers[0];
    assert!(w.stopping && w.inflight.is_empty());
    assert_eq!(h.exit_of(0).signal, Some(libc::SIGKILL));
}

#[test]
fn a_time_limit_counts_from_the_start_not_from_the_submit() {
    let mut h = Harness::new();
    let mut a = h.add_worker();
    h.submit(1, None);
    h.submit(2, Some(Duration::from_millis(500)));
    h.dispatch();
    assert_eq!(a.calls(), vec![1, 2]);
    // task 2 waits behind task 1: however long that takes, its limit has not begun
    h.s.workers[0].head_started = Some(ago(Duration::from_secs(60)));
    assert_eq!(h.s.enforce_time_limits(), None);
    assert!(h.outcomes().is_empty());
    a.send(kind::OK, 1, 10);
    h.read(0);
    assert_eq!(ids(&h.outcomes()), vec![1]);
    assert!(
        h.s.enforce_time_limits().is_some(),
        "task 2 is running now, under its limit"
    );
}

#[test]
fn kill_task_drops_a_queued_task_and_kills_a_waiting_one_when_it_starts() {
    let (mut h, mut a) = one_worker_with_tasks(3);
    // queued: dropped at once, and its state cancelled
    let queued = Arc::clone(&h.s.pending[0].state);
    assert!(h.s.kill_task(3));
    assert!(queued.cancel(), "cancelled (or already)");
    let done = h.outcomes();
    assert_eq!(ids(&done), vec![3]);
    assert!(matches!(done[0].outcome, Outcome::Killed));
    // waiting behind task 1 in the worker: killed the moment task 1's result arrives
    assert!(h.s.kill_task(2));
    assert!(h.outcomes().is_empty());
    a.send(kind::OK, 1, 10);
    h.read(0);
    let done = h.outcomes();
    assert_eq!(ids(&done), vec![1, 2]);
    assert!(matches!(done[1].outcome, Outcome::Killed));
    assert_eq!(h.exit_of(0).signal, Some(libc::SIGKILL));
    assert!(!h.s.kill_task(99), "unknown task");
}

#[test]
fn a_worker_that_dies_fails_its_running_task_and_requeues_the_rest() {
    let (mut h, _worker) = one_worker_with_tasks(2);
    h.s.workers[0].signal_group(libc::SIGKILL);
    let info = h.exit_of(0);
    h.s.on_exit(0, info);
    let done = h.outcomes();
    assert_eq!(ids(&done), vec![1]);
    assert!(matches!(done[0].outcome, Outcome::Died(i, None) if i.signal == Some(libc::SIGKILL)));
    assert_eq!(h.s.pending.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2]);
    assert!(h.s.workers.is_empty());
    assert_eq!(h.s.counters.exits_by_cause.iter().sum::<u64>(), 1);
}

#[test]
fn stopping_kills_a_worker_still_starting_unless_the_user_gave_an_initializer() {
    let mut h = Harness::new();
    let mut starting = h.add_unready_worker();
    h.s.phase = Phase::Draining;
    h.s.maintain();
    assert_eq!(h.s.phase, Phase::Stopping);
    assert!(starting.received().is_empty(), "no STOP: it is killed");
    assert_eq!(h.exit_of(0).signal, Some(libc::SIGKILL));

    let mut h = Harness::with_initializer(true);
    let mut starting = h.add_unready_worker();
    h.s.phase = Phase::Draining;
    h.s.maintain();
    assert_eq!(h.s.phase, Phase::Stopping);
    let frames = starting.received();
    assert_eq!(frames.iter().map(|f| f.kind).collect::<Vec<_>>(), vec![kind::STOP]);
    assert!(
        h.s.workers[0].try_reap().unwrap().is_none(),
        "it runs the initializer, then stops"
    );
}

#[test]
fn while_workers_are_still_starting_each_holds_one_task() {
    let mut h = Harness::new();
    h.s.cfg.workers = 2;
    let mut first = h.add_worker();
    for id in 1..=3 {
        h.submit(id, None);
    }
    h.dispatch();
    assert_eq!(
        first.calls(),
        vec![1],
        "the others wait for the next worker, not behind task 1"
    );
    let mut second = h.add_worker();
    h.dispatch();
    assert_eq!(second.calls(), vec![2]);
    assert_eq!(first.calls(), vec![3], "the pool is whole: the usual window again");
}

#[test]
fn a_worker_that_finished_starting_after_the_pool_was_terminated_is_killed_at_once() {
    let mut h = Harness::new();
    h.s.cfg.workers = 1;
    h.s.terminate();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut command = Command::new("sleep");
    command.arg("60").process_group(0);
    h.s.add_worker(Ok((ChildHandle::spawn(&mut command).unwrap(), ours)));
    drop(theirs);
    assert!(h.s.workers[0].stopping);
    assert_eq!(h.exit_of(0).signal, Some(libc::SIGKILL));
    assert!(!h.s.lacks_worker(), "a terminated pool starts no worker");
}

#[test]
fn a_waiting_caller_takes_its_own_result_and_the_rest_goes_on_as_usual() {
    let (mut h, mut a) = one_worker_running_one(2);
    a.send(kind::OK, 1, 100);
    let shared = h.share();
    let own = shared
        .0
        .wait_own(1, Duration::from_secs(10))
        .expect("its result was on the link");
    assert_eq!(own.id, 1);
    assert!(matches!(&own.outcome, Outcome::Ok(body, _) if body == b"result"));
    {
        let s = shared.0.lock();
        let w = &s.workers[0];
        assert_eq!(w.reader_at, ReaderAt::Slot, "the reader is back in its slot");
        assert_eq!(w.inflight.iter().map(|t| t.id).collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(w.counters.tasks_done, 1, "counted as any result is");
    }
    // the room it left was filled, as the engine would have: the queued tasks went to the worker
    assert_eq!(a.calls(), vec![2, 3]);
    assert!(
        h.results.try_iter().flatten().next().is_none(),
        "the caller's outcome never reaches the completion thread"
    );
    // task 2 runs with task 3 sent behind it (a flood): the engine reads it, not a caller
    assert!(!shared.0.may_wait_own(2));
    assert!(shared.0.wait_own(2, Duration::ZERO).is_none());
    // task 3 is not its worker's running task, and a queued task is on no worker
    assert!(shared.0.wait_own(3, Duration::ZERO).is_none());
    assert!(!shared.0.may_wait_own(99));
    assert!(shared.0.wait_own(99, Duration::ZERO).is_none());
}

#[test]
fn a_caller_whose_worker_dies_stops_waiting_and_the_engine_reports_the_death() {
    let (mut h, mut a) = one_worker_running_one(1);
    let shared = h.share();
    let pid = shared.0.lock().workers[0].pid();
    // SAFETY: plain kill(2) of the test's own `sleep` child, which is not reaped yet
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    // it returns on the exit, not after the time given
    assert!(shared.0.wait_own(1, Duration::from_secs(3600)).is_none());
    let mut s = shared.0.lock();
    assert_eq!(s.workers[0].reader_at, ReaderAt::Slot);
    assert!(s.wake_sent, "the engine is told to reap it");
    s.handle_exits(vec![0]);
    s.send_out();
    drop(s);
    let done: Vec<Completion> = h.results.try_iter().flatten().collect();
    assert_eq!(ids(&done), vec![1]);
    assert!(matches!(done[0].outcome, Outcome::Died(..)));
    assert!(a.calls().is_empty());
}

#[test]
fn while_a_caller_reads_a_link_the_engine_neither_reads_nor_reaps_that_worker() {
    let (mut h, _a) = one_worker_running_one(1);
    let shared = h.share();
    let waiter = {
        let state = Arc::clone(&shared.0);
        thread::spawn(move || state.wait_own(1, Duration::from_secs(3600)))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while shared.0.lock().workers[0].reader_at != ReaderAt::Caller {
        assert!(Instant::now() < deadline, "the caller never claimed the link");
        thread::yield_now();
    }
    // the engine stops the task (Future.kill()): the worker is killed, the task fails
    assert!(shared.0.stop(1));
    {
        let mut s = shared.0.lock();
        let fd = s.workers[0].exit_fd().expect("a pidfd");
        assert!(crate::fd::wait_ready(fd, libc::POLLIN, Some(Duration::from_secs(10))).unwrap());
        // the engine's round finds the exit but leaves the worker to the caller
        s.handle_exits(vec![0]);
        assert_eq!(s.workers.len(), 1, "not reaped while the caller has its reader");
        assert!(s.claim_skipped);
    }
    assert!(
        waiter.join().unwrap().is_none(),
        "the task is no longer the caller's to complete"
    );
    let mut s = shared.0.lock();
    s.handle_exits(vec![0]);
    assert!(s.workers.is_empty(), "reaped once the reader is back");
    s.send_out();
    drop(s);
    let done: Vec<Completion> = h.results.try_iter().flatten().collect();
    assert_eq!(ids(&done), vec![1]);
    assert!(matches!(done[0].outcome, Outcome::Killed));
}
