"""A worker process that dies costs only the task(s) it held; the pool replaces it."""

from __future__ import annotations

import os
import pickle
import signal

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT


def _check_pool_works(ex):
    assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(10)]] == [
        i * i for i in range(10)
    ]
    assert list(ex.map(_tasks.square, range(5))) == [0, 1, 4, 9, 16]


def test_os_exit_fails_only_that_task():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(_tasks.exit_now, 3)
        with pytest.raises(ferropool.WorkerDiedError) as excinfo:
            fut.result(timeout=WAIT)
        err = excinfo.value
        assert isinstance(err, ferropool.BrokenProcessPool)
        assert isinstance(err, ferropool.BrokenExecutor)
        assert err.exitcode == 3
        assert err.signal is None
        assert isinstance(err.pid, int) and err.pid != os.getpid()
        assert str(err.pid) in str(err)
        _check_pool_works(ex)


def test_sigkill_from_inside_the_task():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(_tasks.kill_self, signal.SIGKILL)
        err = fut.exception(timeout=WAIT)
        assert isinstance(err, ferropool.WorkerDiedError), repr(err)
        assert err.signal == signal.SIGKILL
        assert err.exitcode is None
        assert err.signal_name == "SIGKILL"
        _check_pool_works(ex)


def test_segfault():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(_tasks.segfault)
        err = fut.exception(timeout=WAIT)
        assert isinstance(err, ferropool.WorkerDiedError), repr(err)
        assert err.signal == signal.SIGSEGV
        assert err.exitcode is None
        _check_pool_works(ex)


def test_worker_killed_from_outside_while_running(gate, beacon):
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "never", beacon.path)
        worker_pid = int(beacon.wait())
        os.kill(worker_pid, signal.SIGKILL)
        err = fut.exception(timeout=WAIT)
        assert isinstance(err, ferropool.WorkerDiedError), repr(err)
        assert err.pid == worker_pid
        assert err.signal == signal.SIGKILL
        assert "SIGKILL" in str(err)
        _check_pool_works(ex)


def test_later_tasks_run_in_a_replacement_worker():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        first_pid = ex.submit(_tasks.get_pid).result(timeout=WAIT)
        with pytest.raises(ferropool.WorkerDiedError) as excinfo:
            ex.submit(_tasks.exit_now, 1).result(timeout=WAIT)
        assert excinfo.value.pid == first_pid
        second_pid = ex.submit(_tasks.get_pid).result(timeout=WAIT)
        assert second_pid != first_pid


def test_repeated_crashes_do_not_break_the_pool():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        for _ in range(6):
            with pytest.raises(ferropool.WorkerDiedError):
                ex.submit(_tasks.exit_now, 7).result(timeout=WAIT)
        _check_pool_works(ex)


def test_crash_among_concurrent_tasks():
    """Tasks the dying worker did not hold succeed; any it held fail with its WorkerDiedError."""
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        crash = ex.submit(_tasks.exit_now, 5)
        others = [ex.submit(_tasks.sleep_then, 0.01, i) for i in range(20)]
        err = crash.exception(timeout=WAIT)
        assert isinstance(err, ferropool.WorkerDiedError)
        succeeded = 0
        for i, fut in enumerate(others):
            exc = fut.exception(timeout=WAIT)
            if exc is None:
                assert fut.result() == i
                succeeded += 1
            else:
                assert isinstance(exc, ferropool.WorkerDiedError), repr(exc)
                assert exc.pid == err.pid
        assert succeeded > 0
        _check_pool_works(ex)


def test_crash_in_map_raises_at_that_item():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        it = ex.map(_tasks.exit_if, range(6), [0] * 6)
        with pytest.raises(ferropool.WorkerDiedError) as excinfo:
            next(it)
        assert excinfo.value.exitcode == 4
        del it
        _check_pool_works(ex)


def test_results_finished_before_a_crash_are_not_lost():
    """Quick tasks that completed on a worker before it died keep their results: only the task
    that was running when it died (and ones it never started) may fail."""
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        assert list(ex.map(_tasks.square, range(300))) == [i * i for i in range(300)]  # warm
        for _ in range(5):
            futures = [ex.submit(_tasks.exit_if, i, 5) for i in range(8)]
            outcomes = []
            for fut in futures:
                exc = fut.exception(timeout=WAIT)
                outcomes.append("ok" if exc is None else type(exc).__name__)
            assert outcomes[:5] == ["ok"] * 5, f"tasks 0-4 returned before task 5 crashed: {outcomes}"
            assert outcomes[5] == "WorkerDiedError", outcomes
            assert set(outcomes[6:]) <= {"ok", "WorkerDiedError"}, outcomes
        _check_pool_works(ex)


def test_worker_died_error_pickles_with_its_attributes():
    err = ferropool.WorkerDiedError.from_exit(1234, None, signal.SIGKILL)
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ferropool.WorkerDiedError
    assert (copy.pid, copy.exitcode, copy.signal) == (1234, None, signal.SIGKILL)
    assert str(copy) == str(err)
    exited = ferropool.WorkerDiedError.from_exit(99, 3, None)
    assert exited.exitcode == 3 and exited.signal is None and exited.signal_name is None
    assert "3" in str(exited)


def test_shutdown_after_crash_is_clean():
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    with pytest.raises(ferropool.WorkerDiedError):
        ex.submit(_tasks.exit_now, 2).result(timeout=WAIT)
    ex.shutdown(wait=True)
