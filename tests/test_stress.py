"""Many short tasks while a chaos thread SIGKILLs random workers."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading

import ferropool
import psutil
import pytest

from tests import _tasks
from tests.conftest import WAIT, broken_reason, engine_of

N_TASKS = 100_000
BATCH = 1_000
CHAOS_INTERVAL = 0.05
STARTED_AFTER = 0.5  # s since a worker's start before the chaos monkey may kill it


def _age(pid: int) -> float:
    """Seconds since ``pid`` started, from the kernel's clock ticks (psutil's ``create_time`` adds
    the boot time rounded to whole seconds, so its ages can be a second off)."""
    with open(f"/proc/{pid}/stat") as f:
        started = int(f.read().rpartition(")")[2].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - started / os.sysconf("SC_CLK_TCK")


class Chaos(threading.Thread):
    """Every ``CHAOS_INTERVAL`` s, SIGKILLs one random worker of ``engine`` (through a pidfd, and
    only a child of this process, so a recycled pid is never hit)."""

    def __init__(self, engine) -> None:
        super().__init__(name="chaos", daemon=True)
        self.engine = engine
        self.stop = threading.Event()
        self.killed: list[int] = []
        self.rng = random.Random(20240601)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            me = os.getpid()
            while not self.stop.wait(CHAOS_INTERVAL):
                pids = self.engine.pids
                if not pids:
                    continue
                pid = self.rng.choice(pids)
                try:
                    fd = os.pidfd_open(pid)
                except ProcessLookupError:
                    continue
                try:
                    victim = psutil.Process(pid)
                    if victim.ppid() != me:
                        continue
                    # chaos among running workers: three kills in a row of workers still
                    # starting is what the pool rightly reads as a start-up that cannot work
                    if _age(pid) < STARTED_AFTER:
                        continue
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
                    self.killed.append(pid)
                except (ProcessLookupError, psutil.NoSuchProcess, FileNotFoundError):
                    pass  # gone already (FileNotFoundError: reaped before _age read /proc)
                finally:
                    os.close(fd)
        except BaseException as exc:  # reported by the test, not as a thread warning
            self.error = exc

    def finish(self) -> None:
        """Stops the killing; the test fails if the thread met an error."""
        self.stop.set()
        self.join(timeout=WAIT)
        assert self.error is None, repr(self.error)


@contextlib.contextmanager
def chaos_in_executor():
    """A two-worker ``ProcessPoolExecutor``, checked to work, with a ``Chaos`` thread started on
    it; on exit, the thread is stopped and the executor shut down."""
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    chaos = Chaos(engine_of(ex))
    try:
        assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4
        chaos.start()
        yield ex, chaos
    finally:
        chaos.stop.set()
        if chaos.is_alive():
            chaos.join(timeout=WAIT)
        ex.shutdown(wait=True, cancel_futures=True)


def assert_still_works(ex) -> None:
    """The pool is not broken and runs new calls."""
    assert broken_reason(ex) is None
    assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(20)]] == [
        i * i for i in range(20)
    ]


@pytest.mark.timeout(120)
def test_chaos_monkey_during_100k_tasks():
    completed: list[ferropool.Future] = []
    with chaos_in_executor() as (ex, chaos):
        futures = []
        for start in range(0, N_TASKS, BATCH):
            batch = [ex.submit(_tasks.square, i) for i in range(start, start + BATCH)]
            for fut in batch:
                fut.add_done_callback(completed.append)
            futures.extend(batch)
        ferropool.wait(futures, timeout=90)
        chaos.finish()

        not_done = [i for i, f in enumerate(futures) if not f.done()]
        assert not not_done, f"{len(not_done)} futures never completed (first: {not_done[:5]})"
        ok = died = 0
        wrong = []
        for i, fut in enumerate(futures):
            assert not fut.cancelled(), i
            exc = fut.exception()
            if exc is None:
                ok += 1
                if fut.result() != i * i:
                    wrong.append((i, fut.result()))
            else:
                assert isinstance(exc, ferropool.WorkerDiedError), f"task {i}: {exc!r}"
                assert exc.signal == signal.SIGKILL, repr(exc)
                assert exc.pid in chaos.killed, repr(exc)
                died += 1
        assert not wrong, f"wrong results: {wrong[:10]}"
        # every future completed exactly once: one done-callback each
        assert len(completed) == N_TASKS
        assert len({id(f) for f in completed}) == N_TASKS
        assert died >= 1, f"no task died in {len(chaos.killed)} kills"
        # a kill costs at most the one task that worker was running
        assert died <= len(chaos.killed), (died, len(chaos.killed))
        assert ok + died == N_TASKS
        assert_still_works(ex)
        assert list(ex.map(_tasks.square, range(100), chunksize=10)) == [i * i for i in range(100)]
        print(f"chaos: {len(chaos.killed)} kills, {died} tasks died, {ok} succeeded")


@pytest.mark.timeout(120)
def test_chaos_with_kills_and_time_limits():
    """Chaos SIGKILLs, ``kill()`` of random futures and calls past their time limit, all at once:
    each future ends exactly once with the outcome its own story allows, and the pool works."""
    rng = random.Random(7)
    completed: list[ferropool.Future] = []
    with chaos_in_executor() as (ex, chaos):
        limited = ex.options(timeout=0.2)
        futures, slow, killed = [], set(), {}
        for i in range(20_000):
            if i % 500 == 250:
                fut = limited.submit(_tasks.sleep_then, 5, i)
                slow.add(i)
            else:
                fut = ex.submit(_tasks.square, i)
            fut.add_done_callback(completed.append)
            futures.append(fut)
            if rng.random() < 0.005:
                victim = rng.randrange(len(futures))
                if victim not in killed:
                    killed[victim] = futures[victim].kill()
        ferropool.wait(futures, timeout=90)
        chaos.finish()

        counts = {"ok": 0, "died": 0, "timed_out": 0, "cancelled": 0}
        for i, fut in enumerate(futures):
            assert fut.done(), i
            if fut.cancelled():
                assert killed.get(i) is True, f"task {i} was cancelled but never killed"
                counts["cancelled"] += 1
                continue
            assert killed.get(i) is not True, f"kill() of task {i} returned True, yet it ended: {fut!r}"
            exc = fut.exception()
            if exc is None:
                assert i not in slow, f"slow task {i} returned past its limit"
                assert fut.result() == i * i
                counts["ok"] += 1
            elif isinstance(exc, ferropool.WorkerDiedError):
                assert exc.signal == signal.SIGKILL and exc.pid in chaos.killed, repr(exc)
                counts["died"] += 1
            else:
                assert isinstance(exc, ferropool.TimeoutError) and i in slow, f"task {i}: {exc!r}"
                counts["timed_out"] += 1
        assert len(completed) == len(futures)
        assert len({id(f) for f in completed}) == len(futures)
        assert counts["died"] <= len(chaos.killed), (counts, len(chaos.killed))
        assert counts["timed_out"] >= 1 and counts["cancelled"] >= 1, counts
        assert_still_works(ex)
        print(f"chaos: {len(chaos.killed)} kills; outcomes {counts}")
