"""Per-call time limits: ``task_timeout=`` and ``options(timeout=)``, on every front end.

A call that runs past its limit (counted from when a worker starts it) fails with
``ferropool.TimeoutError``; its worker is killed with its process group and replaced; the calls
queued behind it run normally and the pool keeps working.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import math
import multiprocessing
import threading

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, live_processes, wait_gone, worker_pids

LIMIT = 0.5  # seconds: far above what a quick call takes, far below a slow call
# A slow call lasts SLOW seconds: long past LIMIT, yet short enough that a limit the pool fails
# to enforce shows up as a failed assertion (the call returned) rather than a hung test.
SLOW = 3.0


def _assert_timeout_error(err, limit=LIMIT, pid=None):
    assert isinstance(err, ferropool.TimeoutError), repr(err)
    assert isinstance(err, builtins.TimeoutError)
    assert isinstance(err, multiprocessing.TimeoutError)
    assert f"{limit:g} s" in str(err), str(err)
    if pid is not None:
        assert f"pid {pid}" in str(err), str(err)


def _keep_busy(ex, gate):
    """Occupies one worker until the gate opens (no limit), so the pool is not idle: calls then
    go through the engine's queue rather than the idle-pool fast path (see
    test_limit_holds_for_a_lone_call_to_an_idle_pool), whatever else a test checks."""
    fut = ex.options(timeout=None).submit(_tasks.wait_gate, gate.path, "busy")
    return fut


def _check_executor_works(ex):
    assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(10)]] == [
        i * i for i in range(10)
    ]
    assert list(ex.map(_tasks.square, range(5))) == [0, 1, 4, 9, 16]


def _check_pool_works(pool):
    assert pool.map(_tasks.square, range(10)) == [i * i for i in range(10)]
    assert pool.apply_async(_tasks.add, (2, 3)).get(timeout=WAIT) == 5


# --------------------------------------------------------------------------------------------
# the worker and everything it started are killed; calls queued behind run normally


class _Front:
    """One front end with a time limit: ``call(fn, *args)`` returns ``wait(timeout)``, which
    returns the outcome (value or exception); ``works()`` checks the pool; ``close()`` ends it."""

    def __init__(self, name, workers=1):
        self.name = name
        self.executor = name.startswith("executor")
        by_constructor = name.endswith("task_timeout")
        kwargs = {"task_timeout": LIMIT} if by_constructor else {}
        if self.executor:
            self.pool = ferropool.ProcessPoolExecutor(max_workers=workers, **kwargs)
        else:
            self.pool = ferropool.Pool(workers, **kwargs)
        self.limited = None
        try:
            self.limited = self.pool if by_constructor else self.pool.options(timeout=LIMIT)
        except BaseException:
            self.close()
            raise

    def call(self, fn, *args):
        if self.executor:
            fut = self.limited.submit(fn, *args)
            get = fut.result
        else:
            get = self.limited.apply_async(fn, args).get

        def outcome(timeout=WAIT):
            try:
                return get(timeout)
            except Exception as exc:
                return exc

        return outcome

    def works(self):
        if self.executor:
            _check_executor_works(self.pool)
        else:
            _check_pool_works(self.pool)

    def close(self):
        if self.executor:
            self.pool.shutdown(wait=True, cancel_futures=True)
        else:
            self.pool.terminate()
            self.pool.join()


FRONTS = ["executor_options", "executor_task_timeout", "pool_options", "pool_task_timeout"]


@pytest.mark.parametrize("front", FRONTS)
def test_timed_out_call_kills_worker_and_its_process_group(front, beacon, gate):
    """The slow call (the pool's first) starts ``sleep 60`` and waits on a gate that never
    opens: past the limit it fails with TimeoutError naming the limit and the pid, the worker
    and the sleep are gone, and the calls queued behind it in the only worker succeed in a new
    worker."""
    f = _Front(front)
    try:
        slow = f.call(_tasks.start_sleeper_then_wait, beacon.path, 60, gate.path, SLOW)
        queued = [f.call(_tasks.get_pid) for _ in range(3)]
        worker_pid, sleep_pid = map(int, beacon.wait().split())
        watched = live_processes([worker_pid, sleep_pid])
        _assert_timeout_error(slow(), pid=worker_pid)
        alive = wait_gone(watched, 5)
        assert not alive, f"still running after the time limit: {alive}"
        new_pids = {outcome() for outcome in queued}
        assert all(isinstance(pid, int) for pid in new_pids), new_pids
        assert worker_pid not in new_pids
        f.works()
    finally:
        f.close()


@pytest.mark.parametrize("front", FRONTS)
def test_limit_holds_for_a_lone_call_to_an_idle_pool(front):
    """The usual case: the pool has run calls and is idle when a limited call arrives. The call
    must still be stopped at its limit (not run its SLOW seconds to the end)."""
    f = _Front(front)
    try:
        f.works()  # every worker is up and idle now
        outcome = f.call(_tasks.sleep_then, SLOW, "ran to the end")
        err = outcome()
        assert isinstance(err, ferropool.TimeoutError), (
            f"a {SLOW} s call with a {LIMIT} s limit sent to an idle pool returned {err!r}: the limit was not enforced"
        )
        _assert_timeout_error(err)
        f.works()
    finally:
        f.close()


def test_builtin_and_multiprocessing_except_clauses_catch_it(gate):
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex, gate:
        busy = _keep_busy(ex, gate)
        limited = ex.options(timeout=LIMIT)
        for cls in (builtins.TimeoutError, multiprocessing.TimeoutError, ferropool.TimeoutError):
            with pytest.raises(cls):
                limited.submit(_tasks.sleep_then, SLOW).result(timeout=WAIT)
        gate.open()
        assert busy.result(timeout=WAIT) == "busy"
        _check_executor_works(ex)


# --------------------------------------------------------------------------------------------
# map, Pool.map (per chunk), Pool.imap (per item)


def test_executor_map_with_a_limit_raises_at_the_slow_item():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        it = ex.options(timeout=LIMIT).map(_tasks.sleep_if, range(6), [2] * 6, [SLOW] * 6)
        assert [next(it), next(it)] == [0, 1]
        with pytest.raises(ferropool.TimeoutError) as excinfo:
            next(it)
        _assert_timeout_error(excinfo.value)
        del it
        _check_executor_works(ex)


def test_executor_map_chunks_are_limited_as_a_whole():
    """chunksize=3 of 0.3 s items: each item is under the 0.5 s limit, each chunk over it."""
    with ferropool.ProcessPoolExecutor(max_workers=2, task_timeout=LIMIT) as ex:
        with pytest.raises(ferropool.TimeoutError):
            list(ex.map(_tasks.sleep_then, [0.3] * 6, chunksize=3))
        assert list(ex.map(_tasks.square, range(6), chunksize=3)) == [0, 1, 4, 9, 16, 25]


@pytest.mark.parametrize("how", ["options", "task_timeout"])
def test_pool_map_fails_with_the_timed_out_chunk(how):
    slow_at_5 = functools.partial(_tasks.sleep_if, bad=5, seconds=SLOW)
    pool = ferropool.Pool(2, task_timeout=LIMIT) if how == "task_timeout" else ferropool.Pool(2)
    with pool:
        limited = pool if how == "task_timeout" else pool.options(timeout=LIMIT)
        with pytest.raises(ferropool.TimeoutError) as excinfo:
            limited.map(slow_at_5, range(12), chunksize=3)
        _assert_timeout_error(excinfo.value)
        with pytest.raises(multiprocessing.TimeoutError):
            limited.map_async(slow_at_5, range(12), chunksize=3).get(timeout=WAIT)
        assert limited.map(_tasks.square, range(12), chunksize=3) == [i * i for i in range(12)]
        _check_pool_works(pool)


@pytest.mark.parametrize("how", ["options", "task_timeout"])
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_pool_imap_with_a_limit_fails_only_the_slow_item(how, method):
    """With a limit imap does not batch items: only the slow item fails, the rest succeed."""
    slow_at_3 = functools.partial(_tasks.sleep_if, bad=3, seconds=SLOW)
    pool = ferropool.Pool(2, task_timeout=LIMIT) if how == "task_timeout" else ferropool.Pool(2)
    with pool:
        limited = pool if how == "task_timeout" else pool.options(timeout=LIMIT)
        it = getattr(limited, method)(slow_at_3, range(40))
        values, errors = [], []
        while True:
            try:
                values.append(it.next(timeout=WAIT))
            except StopIteration:
                break
            except ferropool.TimeoutError as exc:
                errors.append(exc)
        assert len(errors) == 1, errors
        _assert_timeout_error(errors[0])
        expected = [x for x in range(40) if x != 3]
        assert (values if method == "imap" else sorted(values)) == expected
        _check_pool_works(pool)


def test_pool_apply_async_error_callback_gets_the_timeout_error():
    got = []
    with ferropool.Pool(1, task_timeout=LIMIT) as pool:
        r = pool.apply_async(_tasks.sleep_then, (SLOW,), error_callback=got.append)
        with pytest.raises(ferropool.TimeoutError):
            r.get(timeout=WAIT)
        assert not r.successful()
        _check_pool_works(pool)
        pool.close()
        pool.join()  # the callback thread has run every callback
    assert len(got) == 1 and isinstance(got[0], ferropool.TimeoutError), got


# --------------------------------------------------------------------------------------------
# what the limit counts, and what it applies to


def test_limit_counts_from_the_start_not_from_submit():
    """A limited quick call queued 1 s behind an unlimited slow one in the only worker: its
    0.5 s limit does not include the wait."""
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        slow = ex.submit(_tasks.sleep_then, 1.0, "slow")
        quick = ex.options(timeout=LIMIT).submit(_tasks.square, 9)
        assert slow.result(timeout=WAIT) == "slow"
        assert quick.result(timeout=WAIT) == 81


def test_options_none_lifts_the_executors_limit(gate):
    with ferropool.ProcessPoolExecutor(max_workers=2, task_timeout=LIMIT) as ex, gate:
        _keep_busy(ex, gate)
        assert ex.options(timeout=None).submit(_tasks.sleep_then, 0.8, "done").result(timeout=WAIT) == "done"
        assert ex.options(timeout=5).submit(_tasks.sleep_then, 0.8, "done").result(timeout=WAIT) == "done"
        with pytest.raises(ferropool.TimeoutError):
            ex.submit(_tasks.sleep_then, SLOW).result(timeout=WAIT)


def test_limit_applies_only_to_calls_made_through_the_view():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        view = ex.options(timeout=LIMIT)
        unlimited = ex.submit(_tasks.sleep_then, 1.0, "unlimited")
        limited = view.submit(_tasks.sleep_then, SLOW)
        assert unlimited.result(timeout=WAIT) == "unlimited"
        _assert_timeout_error(limited.exception(timeout=WAIT))


def test_view_shares_the_workers_and_shutting_it_down_shuts_the_pool():
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    view = ex.options(timeout=5)
    pid = view.submit(_tasks.get_pid).result(timeout=WAIT)
    assert pid in worker_pids(ex)
    view.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.square, 2)


def test_pool_view_shares_the_workers_and_closing_it_closes_the_pool():
    pool = ferropool.Pool(2)
    try:
        view = pool.options(timeout=5)
        assert view.apply(_tasks.get_pid) in worker_pids(pool)
        view.close()
        view.join()
        with pytest.raises(ValueError):
            view.apply_async(_tasks.square, (2,))
    finally:
        pool.terminate()  # the original object still thinks it runs; ending it is harmless
        pool.join()


def test_run_in_executor_through_options(gate):
    async def main(view):
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(view, _tasks.square, 12)
        with pytest.raises(ferropool.TimeoutError):
            await loop.run_in_executor(view, _tasks.sleep_then, SLOW)
        return ok

    with ferropool.ProcessPoolExecutor(max_workers=2) as ex, gate:
        busy = _keep_busy(ex, gate)
        assert asyncio.run(main(ex.options(timeout=LIMIT))) == 144
        gate.open()
        assert busy.result(timeout=WAIT) == "busy"
        _check_executor_works(ex)


def test_repeated_timeouts_do_not_break_the_pool():
    with ferropool.ProcessPoolExecutor(max_workers=2, task_timeout=0.2) as ex:
        slow = [ex.submit(_tasks.sleep_then, SLOW) for _ in range(6)]
        quick = [ex.submit(_tasks.square, i) for i in range(20)]
        for fut in slow:
            _assert_timeout_error(fut.exception(timeout=WAIT), limit=0.2)
        assert [f.result(timeout=WAIT) for f in quick] == [i * i for i in range(20)]
        _check_executor_works(ex)


# --------------------------------------------------------------------------------------------
# bad input


BAD_TIMEOUTS = [(0, ValueError), (-1, ValueError), (-0.5, ValueError), (math.nan, ValueError), ("1", TypeError)]


@pytest.mark.parametrize(("value", "error"), BAD_TIMEOUTS)
def test_bad_task_timeout(value, error):
    with pytest.raises(error):
        ferropool.ProcessPoolExecutor(max_workers=1, task_timeout=value)
    with pytest.raises(error):
        ferropool.Pool(1, task_timeout=value)


def test_bad_executor_options_timeout():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        for value, error in BAD_TIMEOUTS:
            with pytest.raises(error):
                ex.options(timeout=value)
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9


def test_bad_pool_options_timeout():
    with ferropool.Pool(1) as pool:
        for value, error in BAD_TIMEOUTS:
            with pytest.raises(error):
                pool.options(timeout=value)
        assert pool.apply(_tasks.square, (3,)) == 9


def test_thread_pool_options_is_refused():
    with ferropool.ThreadPool(1) as pool:
        with pytest.raises(TypeError):
            pool.options(timeout=1)
        with pytest.raises(TypeError):
            pool.options()


def test_an_options_view_shares_the_pools_callback_thread_and_its_end():
    with ferropool.Pool(1) as pool:
        view = pool.options(timeout=WAIT)
        threads: list[int] = []
        done = threading.Event()

        def record(_):
            threads.append(threading.get_ident())
            if len(threads) == 2:
                done.set()

        pool.apply_async(_tasks.square, (2,), callback=record)
        view.apply_async(_tasks.square, (3,), callback=record)
        assert done.wait(WAIT)
        assert threads[0] == threads[1]
        view.close()
        with pytest.raises(ValueError, match="Pool not running"):
            pool.apply_async(_tasks.square, (4,))
        pool.join()


def test_an_executor_view_shut_down_shuts_down_the_executor():
    ex = ferropool.ProcessPoolExecutor(1)
    view = ex.options(timeout=WAIT)
    assert view.submit(_tasks.square, 5).result(timeout=WAIT) == 25
    view.shutdown(wait=True)
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.submit(_tasks.square, 6)
