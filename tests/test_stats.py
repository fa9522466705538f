"""stats(): per-worker counters, queue depth, tasks in flight, and why workers ended."""

from __future__ import annotations

import json

import ferropool
import pytest
from ferropool._pool.stats import PoolStats

from tests import _tasks
from tests.conftest import WAIT


@pytest.mark.parametrize("cls", [ferropool.Pool, ferropool.ThreadPool])
def test_pool_counts_every_task_once(cls):
    with cls(2) as p:
        assert p.map(_tasks.square, range(40), chunksize=1) == [i * i for i in range(40)]
        p.close()
        p.join()
        st = p.stats()
    assert isinstance(st, PoolStats)
    assert st.tasks_done == 40
    assert st.queued == 0 and st.in_flight == 0
    for w in st.workers:
        assert w.busy_seconds >= 0 and w.idle_seconds >= 0
    if cls is ferropool.ThreadPool:
        assert sum(w.tasks_done for w in st.workers) == 40
        assert all(w.name.startswith("ThreadPool_") and w.pid is None for w in st.workers)
    else:
        assert st.workers == ()  # all exited at join
        assert sum(e.tasks_done for e in st.exits) == 40
        assert st.exits_by_cause == {"shutdown": 2}


def test_live_process_workers_are_listed_with_their_pids():
    with ferropool.ProcessPoolExecutor(2) as ex:
        pids = set(ex.map(_tasks.get_pid, range(20), chunksize=1))  # one task per item
        st = ex.stats()
        assert {w.pid for w in st.workers} >= pids
        assert sum(w.tasks_done for w in st.workers) == 20
        assert all(w.ready and w.name == f"pid {w.pid}" for w in st.workers)


def test_busy_time_is_measured_in_the_worker():
    with ferropool.ProcessPoolExecutor(1) as ex:
        ex.submit(_tasks.sleep_then, 0.05).result(timeout=WAIT)  # work that lasts, not sync
        (worker,) = ex.stats().workers
    assert worker.busy_seconds >= 0.04


def test_queue_depth_and_in_flight(kind, make_executor, gate):
    if kind == "cluster":
        pytest.skip("stats() raises NotImplementedError on a Dask cluster (tests/test_cluster.py)")
    ex = make_executor(max_workers=1)
    with gate:
        fs = [ex.submit(_tasks.wait_gate, gate.path, i) for i in range(6)]
        st = ex.stats()
        if kind == "process":
            assert st.queued + st.in_flight == 6  # held by the worker, or waiting for it
        else:
            # the thread may be between taking the first job and starting it
            assert 5 <= st.queued + st.in_flight <= 6
        assert st.queued >= 4
    assert [f.result(timeout=WAIT) for f in fs] == list(range(6))


def test_recycled_workers_are_counted_as_respawns():
    with ferropool.Pool(1, maxtasksperchild=2) as p:
        assert p.map(_tasks.square, range(6), chunksize=1) == [i * i for i in range(6)]
        p.close()
        p.join()
        st = p.stats()
    assert st.exits_by_cause.get("max_tasks_per_child", 0) >= 2
    assert st.respawns >= 2
    assert st.workers_started == 1 + st.respawns
    assert {e.cause for e in st.exits} <= {"max_tasks_per_child", "shutdown"}
    assert all(e.exitcode == 0 for e in st.exits if e.cause == "max_tasks_per_child")


@pytest.mark.broken_pool
def test_a_crash_is_recorded_with_its_exit_code():
    ex = ferropool.ProcessPoolExecutor(1)
    with pytest.raises(ferropool.WorkerDiedError):
        ex.submit(_tasks.exit_now, 7).result(timeout=WAIT)
    assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9
    ex.shutdown(wait=True)
    st = ex.stats()
    died = [e for e in st.exits if e.cause == "died"]
    assert len(died) == 1 and died[0].exitcode == 7 and died[0].signal is None
    assert st.exits_by_cause["died"] == 1
    assert st.respawns == 1


def test_a_timed_out_task_is_recorded(gate):
    with ferropool.ProcessPoolExecutor(1, task_timeout=0.2) as ex:
        with pytest.raises(ferropool.TimeoutError):
            ex.submit(_tasks.wait_gate, gate.path).result(timeout=WAIT)
        assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4
        ex.shutdown(wait=True)
        st = ex.stats()
    assert st.exits_by_cause.get("timeout") == 1
    assert [e.signal for e in st.exits if e.cause == "timeout"] == [9]


def test_stats_as_dict_is_json_ready(kind, make_executor):
    if kind == "cluster":
        pytest.skip("stats() raises NotImplementedError on a Dask cluster (tests/test_cluster.py)")
    with make_executor() as ex:
        ex.submit(_tasks.square, 2).result(timeout=WAIT)
        data = ex.stats().as_dict()
    assert json.loads(json.dumps(data))["tasks_done"] == 1
