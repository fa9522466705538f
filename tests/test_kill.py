"""Stopping calls: ``Future.kill()``, ``cancel_running=True``, and idempotent endings.

``kill()`` stops a running call by killing its worker with the worker's process group (a fresh
worker takes its place); a queued call is cancelled; a finished one is left alone. With
``cancel_running=True``, ``cancel()`` does the same, so cancelling the asyncio side of
``run_in_executor`` stops the call in its worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures

import ferropool
import psutil
import pytest

from tests import _tasks
from tests.conftest import WAIT, wait_gone, worker_pids


def _proc(pid):
    try:
        return [psutil.Process(pid)]
    except psutil.NoSuchProcess:
        return []


def _check_pool_works(ex):
    assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(10)]] == [
        i * i for i in range(10)
    ]
    assert list(ex.map(_tasks.square, range(5))) == [0, 1, 4, 9, 16]


def _assert_cancelled(fut):
    assert fut.cancelled()
    assert fut.done()
    assert not fut.running()
    with pytest.raises(concurrent.futures.CancelledError):
        fut.result(timeout=WAIT)
    with pytest.raises(concurrent.futures.CancelledError):
        fut.exception(timeout=WAIT)


# --------------------------------------------------------------------------------------------
# kill() of a running call


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "idle_pool"])
def test_kill_running_call_kills_worker_and_its_process_group(beacon, gate, warm):
    """kill() of a running call returns True; the worker and the ``sleep`` it started are gone;
    the future is cancelled; calls queued behind it in the only worker succeed elsewhere."""
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        if warm:
            assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4
        fut = ex.submit(_tasks.start_sleeper_then_wait, beacon.path, 60, gate.path)
        behind = [ex.submit(_tasks.get_pid) for _ in range(3)]
        calls = []
        fut.add_done_callback(calls.append)
        worker_pid, sleep_pid = map(int, beacon.wait().split())
        watched = _proc(worker_pid) + _proc(sleep_pid)
        assert fut.running()
        assert fut.kill() is True
        _assert_cancelled(fut)
        assert calls == [fut]
        alive = wait_gone(watched, 5)
        assert not alive, f"still running after kill(): {alive}"
        pids = {f.result(timeout=WAIT) for f in behind}
        assert worker_pid not in pids
        assert worker_pid not in worker_pids(ex)
        assert fut.kill() is True  # still cancelled; nothing else happens
        assert calls == [fut]
        _check_pool_works(ex)


def test_kill_one_of_several_running_calls_spares_the_others(beacon, gate):
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex, gate:
        a = ex.submit(_tasks.wait_gate, gate.path, "a", beacon.path)
        b = ex.submit(_tasks.wait_gate, gate.path, "b", beacon.path)
        pids = {int(beacon.wait()), int(beacon.wait())}
        assert len(pids) == 2
        assert b.kill() is True
        _assert_cancelled(b)
        gate.open()
        assert a.result(timeout=WAIT) == "a"
        _check_pool_works(ex)


@pytest.mark.parametrize("executor", [ferropool.ProcessPoolExecutor, ferropool.ThreadPoolExecutor])
def test_kill_call_waiting_behind_another_in_a_worker(executor, beacon, gate):
    """The only worker (or thread) runs ``first``; ``second`` waits behind it (perhaps already
    sent to that worker). kill() of ``second`` cancels it at once; ``first`` finishes; the pool
    goes on."""
    with executor(max_workers=1) as ex, gate:
        first = ex.submit(_tasks.wait_gate, gate.path, "first", beacon.path)
        second = ex.submit(_tasks.square, 5)
        third = ex.submit(_tasks.square, 6)
        beacon.wait()
        assert second.kill() is True
        _assert_cancelled(second)
        gate.open()
        assert first.result(timeout=WAIT) == "first"
        assert third.result(timeout=WAIT) == 36
        _check_pool_works(ex)


def test_kill_queued_call_cancels_it_and_it_never_runs(tmp_path, beacon, gate):
    trace = tmp_path / "ran"
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        blockers = [ex.submit(_tasks.wait_gate, gate.path, i, beacon.path) for i in range(3)]
        queued = ex.submit(_tasks.touch, str(trace))
        beacon.wait()
        assert queued.kill() is True
        _assert_cancelled(queued)
        gate.open()
        assert [f.result(timeout=WAIT) for f in blockers] == [0, 1, 2]
        _check_pool_works(ex)
    assert not trace.exists()


def test_kill_finished_call_returns_false_and_changes_nothing():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        ok = ex.submit(_tasks.square, 7)
        bad = ex.submit(_tasks.fail, "kept")
        assert ok.result(timeout=WAIT) == 49
        assert isinstance(bad.exception(timeout=WAIT), ValueError)
        pids = worker_pids(ex)
        assert ok.kill() is False
        assert bad.kill() is False
        assert not ok.cancelled() and ok.result() == 49
        assert not bad.cancelled() and str(bad.exception()) == "kept"
        assert worker_pids(ex) == pids
        _check_pool_works(ex)


def test_kill_on_a_running_thread_pool_call_returns_false(beacon, gate):
    with ferropool.ThreadPoolExecutor(max_workers=1) as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "thread", beacon.path)
        beacon.wait()
        assert fut.kill() is False
        assert not fut.cancelled() and fut.running()
        gate.open()
        assert fut.result(timeout=WAIT) == "thread"
        assert fut.kill() is False


# --------------------------------------------------------------------------------------------
# cancel(): stdlib semantics by default, kill() semantics with cancel_running=True


def test_cancel_of_running_call_returns_false_by_default(beacon, gate):
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "survived", beacon.path)
        pid = int(beacon.wait())
        assert fut.cancel() is False
        assert not fut.cancelled()
        assert pid in worker_pids(ex)
        gate.open()
        assert fut.result(timeout=WAIT) == "survived"


@pytest.mark.parametrize("warm", [False, True], ids=["first_call", "idle_pool"])
def test_cancel_running_stops_a_running_call(beacon, gate, warm):
    with ferropool.ProcessPoolExecutor(max_workers=1, cancel_running=True) as ex, gate:
        if warm:
            assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4
        fut = ex.submit(_tasks.start_sleeper_then_wait, beacon.path, 60, gate.path)
        behind = ex.submit(_tasks.get_pid)
        worker_pid, sleep_pid = map(int, beacon.wait().split())
        watched = _proc(worker_pid) + _proc(sleep_pid)
        assert fut.cancel() is True
        _assert_cancelled(fut)
        alive = wait_gone(watched, 5)
        assert not alive, f"still running after cancel(): {alive}"
        assert behind.result(timeout=WAIT) != worker_pid
        _check_pool_works(ex)


def test_cancel_running_still_cancels_queued_calls_and_leaves_finished_ones(beacon, gate):
    with ferropool.ProcessPoolExecutor(max_workers=1, cancel_running=True) as ex, gate:
        done = ex.submit(_tasks.square, 4)
        assert done.result(timeout=WAIT) == 16
        running = ex.submit(_tasks.wait_gate, gate.path, "ran", beacon.path)
        queued = [ex.submit(_tasks.square, i) for i in range(3)]
        beacon.wait()
        assert done.cancel() is False and done.result() == 16
        assert queued[-1].cancel() is True
        _assert_cancelled(queued[-1])
        gate.open()
        assert running.result(timeout=WAIT) == "ran"
        assert [f.result(timeout=WAIT) for f in queued[:-1]] == [0, 1]


@pytest.mark.parametrize("via", ["run_in_executor", "wrap_future"])
def test_cancelling_the_asyncio_task_stops_the_call_in_its_worker(beacon, via):
    """cancel_running=True: cancelling the asyncio task awaiting ``run_in_executor`` stops the
    call; its worker is gone within a few seconds and a later call succeeds."""

    async def main(ex):
        loop = asyncio.get_running_loop()
        if via == "run_in_executor":
            awaitable = loop.run_in_executor(ex, _tasks.beacon_then_sleep, beacon.path, 30)
        else:
            awaitable = asyncio.wrap_future(ex.submit(_tasks.beacon_then_sleep, beacon.path, 30))

        async def call():
            return await awaitable

        task = asyncio.create_task(call())
        worker_pid = await loop.run_in_executor(None, beacon.wait)
        watched = _proc(int(worker_pid))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        alive = await loop.run_in_executor(None, wait_gone, watched, 5)
        assert not alive, f"the worker still runs the cancelled call: {alive}"
        return await loop.run_in_executor(ex, _tasks.square, 11)

    with ferropool.ProcessPoolExecutor(max_workers=1, cancel_running=True) as ex:
        assert asyncio.run(main(ex)) == 121
        _check_pool_works(ex)


def test_without_cancel_running_the_asyncio_cancel_leaves_the_call_running(beacon, gate):
    async def main(ex):
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.run_in_executor(ex, _tasks.wait_gate, gate.path, "kept", beacon.path))
        worker_pid = int(await loop.run_in_executor(None, beacon.wait))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return worker_pid

    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        worker_pid = asyncio.run(main(ex))
        assert psutil.pid_exists(worker_pid) and worker_pid in worker_pids(ex)
        gate.open()
        assert ex.submit(_tasks.get_pid).result(timeout=WAIT) == worker_pid


# --------------------------------------------------------------------------------------------
# endings that must be harmless


def test_terminate_on_a_closed_pool_is_harmless():
    pool = ferropool.Pool(2)
    assert pool.map(_tasks.square, range(4)) == [0, 1, 4, 9]
    pool.close()
    pool.terminate()
    pool.terminate()
    pool.join()
    pool.join()


def test_close_terminate_join_in_any_order_after_terminate():
    pool = ferropool.Pool(2)
    pool.terminate()
    pool.close()
    pool.join()
    pool.terminate()


@pytest.mark.parametrize("cls", [ferropool.ProcessPoolExecutor, ferropool.ThreadPoolExecutor])
def test_shutdown_twice_is_harmless(cls):
    ex = cls(max_workers=2)
    assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9
    ex.shutdown(wait=True)
    ex.shutdown(wait=True)
    ex.shutdown(wait=False, cancel_futures=True)
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.square, 3)


def test_kill_after_shutdown_of_a_finished_call_returns_false():
    ex = ferropool.ProcessPoolExecutor(max_workers=1)
    fut = ex.submit(_tasks.square, 3)
    ex.shutdown(wait=True)
    assert fut.result() == 9
    assert fut.kill() is False
    assert fut.cancel() is False


def test_kill_workers_then_shutdown_is_harmless(beacon, gate):
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    with gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        pid = int(beacon.wait())
        watched = _proc(pid)
        ex.kill_workers()
        assert not wait_gone(watched, 5)
        assert isinstance(fut.exception(timeout=WAIT), ferropool.BrokenProcessPool)
        assert fut.kill() is False
        ex.shutdown(wait=True)
        ex.kill_workers()
