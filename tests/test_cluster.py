"""``Pool(cluster=...)`` and ``ProcessPoolExecutor(cluster=...)`` on real Dask clusters.

The front-end behaviour shared with local pools runs on the ``cluster`` kind of the shared
fixtures (conftest's ``kind``, test_pool.py's ``pool_cls``). This file checks what is particular
to a cluster: how it is named (client, address, scheduler file), the initializer on workers that
join later, calls never merged, the in-flight limit, time limits, and Dask workers that die
mid-task, killed from outside or by the task itself.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import signal
import sys
import time
import uuid

import ferropool
import pytest

from tests import _cluster_tasks, _tasks
from tests.cluster_support import cli_cluster, distributed
from tests.conftest import WAIT, program_report, run_program


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """A scheduler and two workers started with ``dask scheduler`` / ``dask worker``, for the
    module: tests that kill its workers leave it to the nannies to restart them."""
    with cli_cluster(tmp_path_factory.mktemp("dask-cli")) as cluster:
        yield cluster


@pytest.fixture
def own_cli(tmp_path):
    """A CLI cluster for one test that stops part of it (its scheduler)."""
    with cli_cluster(tmp_path) as cluster:
        yield cluster


# --------------------------------------------------------------------------------------------
# naming the cluster


def test_scheduler_file_and_address_and_client_all_reach_the_cli_cluster(cli):
    with distributed.Client(scheduler_file=cli.scheduler_file, set_as_default=False) as client:
        dask_pids = set(cli.worker_pids(client))
        with ferropool.Pool(cluster=cli.scheduler_file) as pool:
            assert pool.map(_tasks.square, range(50)) == [x * x for x in range(50)]
            assert set(pool.map(_tasks.get_pid, range(20), chunksize=1)) <= dask_pids
        with ferropool.ProcessPoolExecutor(cluster=cli.address) as ex:
            assert ex.submit(_tasks.get_pid).result(timeout=WAIT) in dask_pids
        with ferropool.ProcessPoolExecutor(cluster=client) as ex:
            assert list(ex.map(_tasks.add, range(5), range(5))) == [0, 2, 4, 6, 8]
        assert client.status == "running"  # a client the caller passed stays the caller's


def test_default_size_is_the_clusters_threads(local_cluster):
    with ferropool.Pool(cluster=local_cluster) as pool:
        assert pool._processes == 2
    with ferropool.ProcessPoolExecutor(max_workers=5, cluster=local_cluster) as ex:
        assert ex._max_workers == 5


def test_bad_cluster_values_are_refused_at_the_call(local_cluster, tmp_path):
    with pytest.raises(TypeError, match="cluster must be a distributed.Client"):
        ferropool.Pool(cluster=42)
    with pytest.raises(ValueError, match="neither a scheduler address"):
        ferropool.ProcessPoolExecutor(cluster=str(tmp_path / "missing.json"))


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda c: ferropool.Pool(cluster=c, maxtasksperchild=3), "maxtasksperchild"),
        (lambda c: ferropool.Pool(cluster=c, context="spawn"), "context"),
        (lambda c: ferropool.ProcessPoolExecutor(cluster=c, max_memory_per_child=1 << 30), "max_memory_per_child"),
        (lambda c: ferropool.ProcessPoolExecutor(cluster=c, cancel_running=True), "cancel_running"),
    ],
)
def test_options_a_cluster_cannot_honour_raise_valueerror(local_cluster, make, option):
    with pytest.raises(ValueError, match=f"does not support {option}="):
        make(local_cluster)


def test_stats_is_not_available_on_a_cluster(local_cluster):
    with ferropool.ProcessPoolExecutor(cluster=local_cluster) as ex, pytest.raises(NotImplementedError, match="Dask"):
        ex.stats()


def test_without_the_extra_cluster_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'ferropool\[dask\]'"):
        ferropool.Pool(cluster="tcp://127.0.0.1:8786")


# --------------------------------------------------------------------------------------------
# semantics


def test_identical_calls_are_never_merged(local_cluster):
    with ferropool.ProcessPoolExecutor(cluster=local_cluster) as ex:
        fs = [ex.submit(uuid.uuid4) for _ in range(4)]
        assert len({f.result(timeout=WAIT) for f in fs}) == 4


def test_max_workers_limits_the_tasks_sent_to_dask(local_cluster, gate, beacon):
    with ferropool.ProcessPoolExecutor(max_workers=1, cluster=local_cluster) as ex, gate:
        first = ex.submit(_tasks.wait_gate, gate.path, "first", beacon.path)
        second = ex.submit(_tasks.square, 3)
        beacon.wait()
        processing = [k for keys in local_cluster.processing().values() for k in keys if k.startswith("ferropool-")]
        assert len(processing) == 1
        assert not second.running()  # still queued here, not at the scheduler
    assert (first.result(timeout=WAIT), second.result(timeout=WAIT)) == ("first", 9)


def test_cancel_of_a_queued_call_never_runs_it(local_cluster, gate, beacon, tmp_path):
    marker = tmp_path / "ran"
    with ferropool.ProcessPoolExecutor(max_workers=1, cluster=local_cluster) as ex, gate:
        ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        beacon.wait()
        queued = ex.submit(_tasks.touch, str(marker))
        assert queued.cancel()
        done, _ = ferropool.wait([queued], timeout=WAIT)  # waiters learn of it at once
        assert done == {queued}
    assert not marker.exists()


def test_task_timeout_stops_the_call_on_the_worker_and_the_pool_goes_on(local_cluster, tmp_path):
    never = str(tmp_path / "never-opened")
    with ferropool.ProcessPoolExecutor(cluster=local_cluster, task_timeout=0.5) as ex:
        with pytest.raises(ferropool.TimeoutError, match="0.5 s limit"):
            ex.submit(_tasks.wait_gate, never).result(timeout=WAIT)
        assert ex.submit(_tasks.square, 4).result(timeout=WAIT) == 16
    with ferropool.Pool(cluster=local_cluster) as pool:
        with pytest.raises(ferropool.TimeoutError):
            pool.options(timeout=0.5).apply(_tasks.wait_gate, (never,))
        assert pool.apply(_tasks.square, (5,)) == 25


def test_kill_stops_a_running_call_on_its_dask_worker_and_the_cluster_goes_on(local_cluster, gate, beacon, tmp_path):
    log = tmp_path / "starts"
    with ferropool.ProcessPoolExecutor(cluster=local_cluster) as ex, gate:
        finished = ex.submit(_tasks.square, 2)
        assert finished.result(timeout=WAIT) == 4
        # both Dask worker threads busy: the call to kill, and one waiting at the gate
        victim = ex.submit(_cluster_tasks.start_then_wait, str(log), gate.path, beacon.path)
        other = ex.submit(_tasks.wait_gate, gate.path, "other", beacon.path)
        beacon.wait()
        beacon.wait()
        calls = []
        victim.add_done_callback(calls.append)
        assert victim.running()
        assert victim.kill() is True
        assert victim.cancelled() and victim.done() and not victim.running()
        with pytest.raises(concurrent.futures.CancelledError):
            victim.result(timeout=WAIT)
        assert calls == [victim]
        # its thread on the cluster is free: a call runs while the other still waits at the gate
        assert ex.submit(_tasks.square, 7).result(timeout=WAIT) == 49
        assert not other.done()
        assert victim.kill() is True  # still cancelled; nothing else happens
        assert calls == [victim]
        assert finished.kill() is False
    assert other.result(timeout=WAIT) == "other"
    assert len(log.read_text().splitlines()) == 1  # stopped, not run again elsewhere


def test_a_call_stuck_in_c_code_still_times_out_for_the_caller(local_cluster, monkeypatch):
    import ferropool._pool.cluster

    monkeypatch.setattr(ferropool._pool.cluster, "TIMEOUT_GRACE_S", 0.2)
    with ferropool.ProcessPoolExecutor(cluster=local_cluster, task_timeout=0.3) as ex:
        stuck = ex.submit(time.sleep, 2)  # in C: the exception raised into the thread waits for it
        with pytest.raises(ferropool.TimeoutError, match="could not interrupt"):
            stuck.result(timeout=1.5)


def test_worker_prints_and_log_records_reach_the_caller(local_cluster, capsys, caplog):
    caplog.set_level(logging.INFO)
    with ferropool.Pool(cluster=local_cluster, worker_output="[{name} {pid}] ", worker_logs=logging.INFO) as pool:
        pid = pool.apply(_cluster_tasks.print_and_return_pid, ("hello from a Dask worker",))
        pool.apply(logging.getLogger("cluster-test").info, ("a record from %s", "a worker"))
    names = {w["name"] for w in local_cluster.scheduler_info()["workers"].values()}
    assert capsys.readouterr().out in {f"[{name} {pid}] hello from a Dask worker\n" for name in names}
    assert [r.getMessage() for r in caplog.records if r.name == "cluster-test"] == ["a record from a worker"]


def test_initializer_runs_once_per_worker_process_and_on_workers_that_join_later():
    lc = distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0", host="127.0.0.1")
    client = distributed.Client(lc, set_as_default=False)
    try:
        with ferropool.Pool(cluster=client, processes=2, initializer=_tasks.init_record, initargs=("ready",)) as pool:
            assert set(pool.map(_tasks.pid_and_init_state, range(20), chunksize=1)) == {
                (pid, "ready") for pid in client.run(os.getpid).values()
            }
            first = set(client.scheduler_info()["workers"])
            lc.scale(2)
            client.wait_for_workers(2, timeout=WAIT)
            client.retire_workers(list(first))  # from now on, only the worker that joined later
            late_pids = set(client.run(os.getpid).values())
            results = pool.map(_tasks.pid_and_init_state, range(10), chunksize=1)
        assert set(results) == {(pid, "ready") for pid in late_pids}
    finally:
        client.close()
        lc.close()


def test_a_script_with_lambdas_and_main_functions_runs_on_the_cluster(tmp_path, local_cluster):
    result = run_program(
        tmp_path,
        """
        import ferropool

        def cube(x):
            return x ** 3

        with ferropool.Pool(cluster=ADDRESS) as pool:
            print(pool.map(cube, range(5)))
            print(pool.apply(lambda: "lambda ran"))
            pool.apply(print, ("printed on a Dask worker",))
        with ferropool.ProcessPoolExecutor(cluster=ADDRESS) as ex:
            print(list(ex.map(lambda x: -x, range(3))))
        """.replace("ADDRESS", repr(local_cluster.scheduler.address)),
    )
    assert result.returncode == 0, program_report(result)
    assert result.stdout.splitlines() == [
        "[0, 1, 8, 27, 64]",
        "lambda ran",
        "printed on a Dask worker",
        "[0, -1, -2]",
    ], program_report(result)


# --------------------------------------------------------------------------------------------
# Dask workers that die mid-task


def test_a_dask_worker_killed_mid_task_fails_that_task_with_worker_died(cli, gate, beacon, tmp_path):
    log = tmp_path / "starts"
    with ferropool.ProcessPoolExecutor(cluster=cli.scheduler_file) as ex, gate:
        fut = ex.submit(_cluster_tasks.start_then_wait, str(log), gate.path, beacon.path)
        pid = int(beacon.wait())
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ferropool.WorkerDiedError, match="died before the task finished"):
            fut.result(timeout=WAIT)
        assert ex.submit(_tasks.square, 6).result(timeout=WAIT) == 36  # the cluster goes on
    assert log.read_text().splitlines() == [str(pid)]  # not run again elsewhere


@pytest.mark.parametrize("task", [_tasks.segfault, _tasks.exit_now], ids=["segfault", "os._exit"])
def test_a_task_that_ends_its_dask_worker_fails_with_worker_died(cli, task):
    with ferropool.Pool(cluster=cli.scheduler_file) as pool:
        with pytest.raises(ferropool.WorkerDiedError):
            pool.apply(task)
        assert pool.map(_tasks.square, range(4)) == [0, 1, 4, 9]


def test_losing_the_scheduler_fails_pending_futures_with_broken_process_pool(own_cli, gate, beacon):
    with ferropool.ProcessPoolExecutor(cluster=own_cli.scheduler_file) as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        beacon.wait()
        own_cli.procs[0].kill()  # the scheduler
        with pytest.raises(ferropool.BrokenProcessPool, match="lost this task"):
            fut.result(timeout=WAIT)


def test_a_script_that_exits_without_shutdown_still_runs_its_calls(tmp_path, local_cluster):
    result = run_program(
        tmp_path,
        f"""
        import ferropool

        ex = ferropool.ProcessPoolExecutor(cluster={local_cluster.scheduler.address!r})
        for i in range(3):
            ex.submit(print, "ran", i)
        print("leaving")
        """,
    )
    assert result.returncode == 0, program_report(result)
    lines = result.stdout.splitlines()
    assert lines[0] == "leaving" and sorted(lines[1:]) == ["ran 0", "ran 1", "ran 2"], program_report(result)
