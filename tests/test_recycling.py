"""Recycling workers: ``max_memory_per_child`` (resident memory) and ``max_tasks_per_child``.

The memory a task leaks is retained in the worker by ``_tasks.retain_memory`` (a list in the
importable ``tests._tasks`` module), so it stays resident after the call returns.
"""

from __future__ import annotations

import collections

import ferropool
import psutil
import pytest

from tests import _tasks
from tests.conftest import WAIT, wait_gone

MB = 1_000_000


@pytest.fixture(scope="module")
def base_rss():
    """A fresh worker's resident memory, measured in a pool like the ones the tests make."""
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        return max(ex.submit(_tasks.pid_and_rss).result(timeout=WAIT)[1] for _ in range(3))


def _gone(pid, timeout=5.0):
    try:
        procs = [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return True
    return not wait_gone(procs, timeout)


def _check_pool_works(ex):
    assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(10)]] == [
        i * i for i in range(10)
    ]


# --------------------------------------------------------------------------------------------
# max_memory_per_child


def test_worker_over_its_memory_limit_is_replaced_after_that_call(base_rss):
    limit = base_rss + 32 * MB
    with ferropool.ProcessPoolExecutor(max_workers=1, max_memory_per_child=limit) as ex:
        pid, rss = ex.submit(_tasks.retain_memory, 64 * MB).result(timeout=WAIT)
        assert rss > limit, "the task did not leak enough to test anything"
        next_pid, next_rss = ex.submit(_tasks.pid_and_rss).result(timeout=WAIT)
        assert next_pid != pid
        assert next_rss < limit
        assert _gone(pid), f"the worker over its limit (pid {pid}) still runs"
        _check_pool_works(ex)


def test_pool_worker_over_its_memory_limit_is_replaced_after_that_call(base_rss):
    limit = base_rss + 32 * MB
    with ferropool.Pool(1, max_memory_per_child=limit) as pool:
        pid, rss = pool.apply(_tasks.retain_memory, (64 * MB,))
        assert rss > limit
        assert pool.apply(_tasks.get_pid) != pid
        assert _gone(pid)
        assert pool.map(_tasks.square, range(8), chunksize=2) == [i * i for i in range(8)]


def test_workers_under_the_limit_are_kept(base_rss):
    limit = base_rss + 64 * MB
    with ferropool.ProcessPoolExecutor(max_workers=1, max_memory_per_child=limit) as ex:
        pids = set()
        for _ in range(5):
            pid, rss = ex.submit(_tasks.retain_memory, 1 * MB).result(timeout=WAIT)
            assert rss < limit
            pids.add(pid)
        assert len(pids) == 1


def test_quick_leak_right_after_another_call_still_retires_the_worker(base_rss):
    """The worker has just answered a call when a quick call takes it over its limit: the next
    call must run in a fresh worker all the same (the limit holds after *every* call)."""
    limit = base_rss + 4 * MB
    with ferropool.ProcessPoolExecutor(max_workers=1, max_memory_per_child=limit) as ex:
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9
        first = ex.submit(_tasks.get_pid)
        leak = ex.submit(_tasks.retain_memory, 10 * MB)
        pid, rss = leak.result(timeout=WAIT)
        assert first.result(timeout=WAIT) == pid
        assert rss > limit
        later = [ex.submit(_tasks.pid_and_rss).result(timeout=WAIT) for _ in range(3)]
        assert later[0][0] != pid, (
            f"after a call left worker {pid} at {rss / MB:.0f} MB (limit {limit / MB:.0f} MB), the next "
            f"calls still ran in it: {[(p, round(r / MB)) for p, r in later]}"
        )


def test_calls_queued_behind_a_retiring_worker_all_succeed(base_rss):
    limit = base_rss + 32 * MB
    with ferropool.ProcessPoolExecutor(max_workers=1, max_memory_per_child=limit) as ex:
        leak = ex.submit(_tasks.retain_memory, 64 * MB)
        behind = [ex.submit(_tasks.square, i) for i in range(20)]
        pid, _ = leak.result(timeout=WAIT)
        assert [f.result(timeout=WAIT) for f in behind] == [i * i for i in range(20)]
        assert ex.submit(_tasks.get_pid).result(timeout=WAIT) != pid
        assert _gone(pid)


def test_a_stream_of_small_leaks_keeps_memory_bounded(base_rss):
    """Each call leaks 2 MB; with a limit 16 MB above a fresh worker, workers are replaced as
    the stream goes on and every result arrives. (How far a worker overshoots is not bounded
    here: it finishes the calls it already holds, and it checks at most every 20 ms.)"""
    limit = base_rss + 16 * MB
    with ferropool.ProcessPoolExecutor(max_workers=2, max_memory_per_child=limit) as ex:
        outcomes = list(ex.map(_tasks.retain_memory, [2 * MB] * 60))
        pids = {pid for pid, _ in outcomes}
        assert len(pids) >= 3, pids
        _check_pool_works(ex)


# --------------------------------------------------------------------------------------------
# max_tasks_per_child / maxtasksperchild


def test_max_tasks_per_child():
    with ferropool.ProcessPoolExecutor(max_workers=1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(_tasks.get_pid).result(timeout=WAIT) for _ in range(6)]
        counts = collections.Counter(pids)
        assert len(counts) == 3 and set(counts.values()) == {2}, pids
        assert all(_gone(pid) for pid in pids[:4])


def test_max_tasks_per_child_with_concurrent_submits():
    with ferropool.ProcessPoolExecutor(max_workers=2, max_tasks_per_child=3) as ex:
        pids = [f.result(timeout=WAIT) for f in [ex.submit(_tasks.get_pid) for _ in range(30)]]
        counts = collections.Counter(pids)
        assert max(counts.values()) <= 3, counts
        assert len(counts) >= 10


def test_pool_maxtasksperchild_counts_chunks():
    with ferropool.Pool(2, maxtasksperchild=1) as pool:
        pids = pool.map(_tasks.get_pid, range(8), chunksize=2)
        per_chunk = [pids[i : i + 2] for i in range(0, 8, 2)]
        assert all(len(set(chunk)) == 1 for chunk in per_chunk), per_chunk
        assert len({chunk[0] for chunk in per_chunk}) == 4, per_chunk
        assert len({pool.apply(_tasks.get_pid) for _ in range(3)}) == 3


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(("value", "error"), [(0, ValueError), (-1, ValueError), ("1", TypeError), (1.5, TypeError)])
def test_bad_max_memory_per_child(value, error):
    with pytest.raises(error):
        ferropool.ProcessPoolExecutor(max_workers=1, max_memory_per_child=value)
    with pytest.raises(error):
        ferropool.Pool(1, max_memory_per_child=value)


@pytest.mark.parametrize("value", [0, -1])
def test_bad_max_tasks_per_child(value):
    with pytest.raises(ValueError):
        ferropool.ProcessPoolExecutor(max_workers=1, max_tasks_per_child=value)
    with pytest.raises(ValueError):
        ferropool.Pool(1, maxtasksperchild=value)
