"""shutdown, cancel_futures, terminate_workers, and the end of an interpreter with pools alive."""

from __future__ import annotations

import gc
import os
import threading

import ferropool
import psutil
import pytest

from tests import _tasks
from tests.conftest import WAIT, fd_count, run_program, running_and_queued


def test_shutdown_wait_finishes_pending_work(make_executor):
    ex = make_executor()
    futures = [ex.submit(_tasks.sleep_then, 0.02, i) for i in range(8)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(8))


def test_context_manager_exit_waits(make_executor):
    with make_executor() as ex:
        futures = [ex.submit(_tasks.sleep_then, 0.02, i) for i in range(4)]
    assert all(f.done() for f in futures)
    assert [f.result() for f in futures] == list(range(4))


def test_shutdown_twice_is_fine(make_executor):
    ex = make_executor()
    assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4
    ex.shutdown(wait=False)
    ex.shutdown(wait=True)
    ex.shutdown()


def test_shutdown_of_unused_executor(make_executor):
    ex = make_executor()
    ex.shutdown(wait=True)


def test_submit_after_shutdown_raises(make_executor):
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.square, 2)
    with pytest.raises(RuntimeError):
        list(ex.map(_tasks.square, range(3)))


def test_submit_after_context_exit_raises(make_executor):
    with make_executor() as ex:
        pass
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.square, 2)


def test_submit_unpicklable_after_shutdown_raises():
    ex = ferropool.ProcessPoolExecutor(max_workers=1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(_tasks.identity, threading.Lock())


def test_shutdown_without_wait_returns_while_task_runs(make_executor, gate, beacon):
    with make_executor() as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "late", beacon.path)
        beacon.wait()
        ex.shutdown(wait=False)  # must not wait for the gate
        assert not fut.done()
        with pytest.raises(RuntimeError):
            ex.submit(_tasks.square, 1)
        gate.open()
        assert fut.result(timeout=WAIT) == "late"


def test_shutdown_cancel_futures(make_executor, gate, beacon):
    with make_executor(max_workers=1) as ex, gate:
        running, queued = running_and_queued(ex, gate, beacon, 6)
        ex.shutdown(wait=False, cancel_futures=True)
        # the running task still holds the only worker: the queued ones finish by cancellation
        done, _ = ferropool.wait([queued[-1]], timeout=WAIT)
        assert done == {queued[-1]}
        assert not running.cancelled()
        assert queued[-1].cancelled()
        assert sum(f.cancelled() for f in queued) >= len(queued) - 2
        gate.open()
        assert running.result(timeout=WAIT) == "first"
        for i, fut in enumerate(queued):
            if fut.cancelled():
                with pytest.raises(ferropool.CancelledError):
                    fut.result(timeout=WAIT)
            else:
                assert fut.result(timeout=WAIT) == i * i


def test_shutdown_cancel_futures_has_cancelled_when_it_returns(make_executor, gate, beacon):
    """As with the stdlib, the pending futures are cancelled by the time shutdown() returns."""
    with make_executor(max_workers=1) as ex, gate:
        running, queued = running_and_queued(ex, gate, beacon, 6)
        ex.shutdown(wait=False, cancel_futures=True)
        states = [f.cancelled() for f in queued]
        gate.open()
        assert running.result(timeout=WAIT) == "first"
        assert states[-1], f"cancelled() right after shutdown(cancel_futures=True): {states}"


def test_shutdown_cancel_futures_with_wait(make_executor, gate, beacon):
    with make_executor(max_workers=1) as ex, gate:
        running, queued = running_and_queued(ex, gate, beacon, 6)
        gate.open()  # let the running task end so that shutdown(wait=True) can return
        ex.shutdown(wait=True, cancel_futures=True)
        assert running.result() == "first"
        assert all(f.done() for f in queued)


def test_process_workers_are_gone_after_shutdown():
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    pids = {f.result(timeout=WAIT) for f in [ex.submit(_tasks.get_pid) for _ in range(20)]}
    ex.shutdown(wait=True)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not pids & children, f"workers {pids & children} still exist after shutdown(wait=True)"


def test_threads_are_gone_after_shutdown():
    ex = ferropool.ThreadPoolExecutor(max_workers=2, thread_name_prefix="gone-after")
    assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(10)]] == [
        i * i for i in range(10)
    ]
    ex.shutdown(wait=True)
    names = [t.name for t in threading.enumerate()]
    assert not [n for n in names if n.startswith("gone-after")], names


def test_shutdown_releases_file_descriptors_while_executor_is_referenced(executor_cls):
    """The stdlib's executors close their pipes in shutdown(); code that keeps a reference to a
    shut-down executor must not keep its descriptors."""
    gc.collect()
    before = fd_count()
    ex = executor_cls(max_workers=2)
    assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9
    ex.shutdown(wait=True)
    gc.collect()
    after = fd_count()
    assert after <= before, f"{after - before} descriptors still open after shutdown(wait=True)"
    del ex


def test_shutdown_from_done_callback_does_not_deadlock():
    finished = threading.Event()
    errors = []
    ex = ferropool.ProcessPoolExecutor(max_workers=1)

    def callback(_):
        try:
            ex.shutdown(wait=True)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            finished.set()

    try:
        fut = ex.submit(_tasks.square, 5)
        fut.add_done_callback(callback)
        assert finished.wait(WAIT), "shutdown(wait=True) in a done-callback did not return"
        assert not errors, errors
        assert fut.result() == 25
    finally:
        ex.shutdown(wait=True)


def test_terminate_workers(gate, beacon):
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        running = ex.submit(_tasks.wait_gate, gate.path, "never", beacon.path)
        worker_pid = int(beacon.wait())
        queued = [ex.submit(_tasks.square, i) for i in range(4)]
        ex.terminate_workers()
        with pytest.raises(ferropool.BrokenProcessPool):
            running.result(timeout=WAIT)
        assert queued[-1].cancelled()
        for fut in queued:
            assert fut.cancelled() or isinstance(fut.exception(timeout=WAIT), ferropool.BrokenProcessPool)
        children = {p.pid for p in psutil.Process().children(recursive=True)}
        assert worker_pid not in children
        with pytest.raises(RuntimeError):
            ex.submit(_tasks.square, 1)


def test_kill_workers_is_terminate_workers(gate, beacon):
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        running = ex.submit(_tasks.wait_gate, gate.path, "never", beacon.path)
        beacon.wait()
        ex.kill_workers()
        with pytest.raises(ferropool.BrokenProcessPool):
            running.result(timeout=WAIT)
        with pytest.raises(RuntimeError):
            ex.submit(_tasks.square, 1)


def test_terminate_idle_pool_then_shutdown():
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4
    ex.terminate_workers()
    ex.shutdown(wait=True)


EXIT_SCRIPT = """
import os, sys
import ferropool
sys.path.insert(0, {root!r})
from tests import _tasks

ex = ferropool.{cls}(max_workers=2)
fut = ex.submit(_tasks.get_pid)
print("worker", fut.result(timeout=30), flush=True)
futs = [ex.submit(_tasks.sleep_then, 0.05, i) for i in range(4)]
print("submitted", flush=True)
# no shutdown: the interpreter ends with the pool alive and work queued
"""


@pytest.mark.parametrize("cls", ["ProcessPoolExecutor", "ThreadPoolExecutor"])
def test_interpreter_exit_without_shutdown(tmp_path, cls):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = run_program(tmp_path, EXIT_SCRIPT.format(root=root, cls=cls), name="no_shutdown.py")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "submitted" in proc.stdout
    assert proc.stderr == "", proc.stderr
    worker_pid = int(proc.stdout.split()[1])
    if cls == "ProcessPoolExecutor":
        try:
            worker = psutil.Process(worker_pid)
        except psutil.NoSuchProcess:
            return
        _, alive = psutil.wait_procs([worker], timeout=5)
        assert not alive, f"worker {worker_pid} outlived its parent interpreter"
