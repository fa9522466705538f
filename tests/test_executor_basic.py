"""Submitting work to both executors: arguments, many tasks, where the work runs."""

from __future__ import annotations

import functools
import os
import threading

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT


def test_submit_positional_and_keyword_arguments(make_executor):
    with make_executor() as ex:
        assert ex.submit(_tasks.add, 2, 3).result(timeout=WAIT) == 5
        assert ex.submit(_tasks.add, a=2, b=5).result(timeout=WAIT) == 7
        args, kwargs = ex.submit(_tasks.echo, 1, "two", three=3).result(timeout=WAIT)
        assert args == (1, "two") and kwargs == {"three": 3}


def test_submit_fn_is_positional_only(make_executor):
    # "fn" and "self" are free to be keyword arguments of the task itself
    with make_executor() as ex:
        args, kwargs = ex.submit(_tasks.echo, fn=1, self=2).result(timeout=WAIT)
        assert args == () and kwargs == {"fn": 1, "self": 2}


def test_context_manager_returns_the_executor(executor_cls):
    ex = executor_cls(max_workers=2)
    with ex as entered:
        assert entered is ex
        assert entered.submit(_tasks.square, 2).result(timeout=WAIT) == 4


def test_many_tasks(make_executor):
    with make_executor() as ex:
        futures = [ex.submit(_tasks.square, i) for i in range(300)]
        assert [f.result(timeout=WAIT) for f in futures] == [i * i for i in range(300)]


def test_other_callables(make_executor):
    with make_executor() as ex:
        assert ex.submit(pow, 2, 10).result(timeout=WAIT) == 1024
        assert ex.submit(functools.partial(_tasks.add, 10), 5).result(timeout=WAIT) == 15
        assert ex.submit(_tasks.Multiplier(3), 4).result(timeout=WAIT) == 12
        assert ex.submit(_tasks.Multiplier(5).times, 4).result(timeout=WAIT) == 20
        assert ex.submit(dict, a=1).result(timeout=WAIT) == {"a": 1}


def test_process_tasks_run_in_other_processes_within_max_workers():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        pids = {f.result(timeout=WAIT) for f in [ex.submit(_tasks.get_pid) for _ in range(40)]}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_process_pool_default_max_workers():
    with ferropool.ProcessPoolExecutor() as ex:
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9
        pids = {f.result(timeout=WAIT) for f in [ex.submit(_tasks.get_pid) for _ in range(20)]}
    assert len(pids) <= ferropool.cpu_count()


def test_thread_tasks_run_in_this_process_on_pool_threads():
    with ferropool.ThreadPoolExecutor(max_workers=2) as ex:
        assert ex.submit(_tasks.get_pid).result(timeout=WAIT) == os.getpid()
        name = ex.submit(_tasks.thread_name).result(timeout=WAIT)
    assert name != threading.current_thread().name


def test_thread_pool_default_max_workers():
    with ferropool.ThreadPoolExecutor() as ex:
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9


def test_thread_name_prefix():
    with ferropool.ThreadPoolExecutor(max_workers=2, thread_name_prefix="ferro-test") as ex:
        names = {f.result(timeout=WAIT) for f in [ex.submit(_tasks.thread_name) for _ in range(10)]}
    assert names
    assert all(name.startswith("ferro-test") for name in names), names


def test_thread_default_names():
    with ferropool.ThreadPoolExecutor(max_workers=1) as ex:
        name = ex.submit(_tasks.thread_name).result(timeout=WAIT)
    assert name.startswith("ThreadPoolExecutor-"), name


def test_thread_pool_threads_visible_to_threading_while_running(gate, beacon):
    with ferropool.ThreadPoolExecutor(max_workers=1, thread_name_prefix="visible") as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        beacon.wait()
        names = [t.name for t in threading.enumerate()]
        assert any(n.startswith("visible") for n in names), names
        gate.open()
        fut.result(timeout=WAIT)


def test_max_tasks_per_child_replaces_workers():
    with ferropool.ProcessPoolExecutor(max_workers=1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(_tasks.get_pid).result(timeout=WAIT) for _ in range(6)]
    assert len(set(pids)) == 3, pids
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5], pids


def test_max_tasks_per_child_with_burst_of_tasks():
    with ferropool.ProcessPoolExecutor(max_workers=2, max_tasks_per_child=3) as ex:
        futures = [ex.submit(_tasks.pid_and_init_state, i) for i in range(30)]
        results = [f.result(timeout=WAIT) for f in futures]
    counts: dict[int, int] = {}
    for pid, _ in results:
        counts[pid] = counts.get(pid, 0) + 1
    assert all(n <= 3 for n in counts.values()), counts
    assert len(counts) >= 10, counts


def test_large_arguments_and_results(make_executor):
    size = 16 * 1024 * 1024
    with make_executor() as ex:
        assert ex.submit(_tasks.length, b"y" * size).result(timeout=WAIT) == size
        data = ex.submit(_tasks.make_bytes, size).result(timeout=WAIT)
    assert len(data) == size and data[:3] == b"xxx"


def test_concurrent_submitters(make_executor):
    errors = []
    results: dict[int, list[int]] = {}

    def submitter(ex, k):
        try:
            futures = [ex.submit(_tasks.add, k, i) for i in range(50)]
            results[k] = [f.result(timeout=WAIT) for f in futures]
        except BaseException as exc:  # reported below
            errors.append(exc)

    with make_executor() as ex:
        threads = [threading.Thread(target=submitter, args=(ex, k * 1000)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert results == {k * 1000: [k * 1000 + i for i in range(50)] for k in range(4)}


def test_thread_task_can_submit_to_its_own_pool():
    with ferropool.ThreadPoolExecutor(max_workers=2) as ex:

        def outer():
            return ex.submit(_tasks.square, 9).result(timeout=WAIT)

        assert ex.submit(outer).result(timeout=WAIT) == 81


def test_workers_inherit_environment(monkeypatch):
    monkeypatch.setenv("FERROPOOL_TEST_VAR", "inherited")
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        assert ex.submit(_tasks.getenv, "FERROPOOL_TEST_VAR").result(timeout=WAIT) == "inherited"


def test_workers_do_not_share_parent_globals():
    _tasks.init_record("parent value")
    try:
        with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
            assert ex.submit(_tasks.get_init_state).result(timeout=WAIT) is None
    finally:
        _tasks.init_record(None)


@pytest.mark.parametrize("workers", [1, 3])
def test_process_pool_sizes(workers):
    with ferropool.ProcessPoolExecutor(max_workers=workers) as ex:
        assert list(ex.map(_tasks.square, range(10))) == [i * i for i in range(10)]


def test_idle_worker_takes_task_while_other_worker_is_busy(gate, beacon):
    """With two warm workers and one busy with a long task, a new quick task must run on the
    idle worker, not wait behind the long one."""
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex, gate:
        # warm up: both workers started, and many quick tasks measured
        assert list(ex.map(_tasks.square, range(300))) == [i * i for i in range(300)]
        slow = ex.submit(_tasks.wait_gate, gate.path, "slow", beacon.path)
        busy_pid = int(beacon.wait())
        fast = ex.submit(_tasks.get_pid)
        try:
            fast_pid = fast.result(timeout=5)
        finally:
            gate.open()
        assert fast_pid != busy_pid
        assert slow.result(timeout=WAIT) == "slow"


def test_workers_import_the_tasks_module_by_name():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        name, path = ex.submit(_tasks.module_name).result(timeout=WAIT)
        pid = ex.submit(_tasks.get_pid).result(timeout=WAIT)
    assert name == "tests._tasks"
    assert os.path.samefile(path, _tasks.__file__)
    assert pid != os.getpid()
