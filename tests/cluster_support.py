"""Real Dask clusters for the tests: one started with Dask's own CLI, one in-process.

``cli_cluster()`` starts ``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` on
127.0.0.1, exactly as a user would, waits until both workers have joined, and stops every process
it started (the conftest's leak check sees them otherwise). ``local_cluster`` is a
``LocalCluster(processes=True, n_workers=2)`` and its client, made once per session; the
``cluster`` kind of the shared front-end fixtures (conftest's ``kind``) runs on it.

With ``FERROPOOL_TEST_CLUSTER=0`` in the environment, every test that needs a cluster is
skipped (``.ci/run`` sets it for the Pythons other than the main one).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

if os.environ.get("FERROPOOL_TEST_CLUSTER") == "0":
    # .ci/run: the cluster tests take over a minute; they run on the main Python only
    pytest.skip("cluster tests are off here (FERROPOOL_TEST_CLUSTER=0)", allow_module_level=True)
distributed = pytest.importorskip("distributed", reason="the dask extra is not installed: pip install -e '.[dask]'")

#: Seconds a cluster may take to start (two cores shared with other work) or to stop.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
DASK = str(Path(sys.executable).with_name("dask"))
ROOT = str(Path(__file__).resolve().parent.parent)


class CliCluster:
    """A scheduler and two single-threaded workers started with Dask's CLI."""

    def __init__(self, directory: Path) -> None:
        self.scheduler_file = str(directory / "scheduler.json")
        self.directory = directory
        self.procs: list[subprocess.Popen[bytes]] = []
        self.address = ""

    def start(self) -> None:
        # the workers import the tests' task modules by name, as a user's workers import theirs
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        common = {"cwd": self.directory, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env}
        self.procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    self.scheduler_file,
                ],
                **common,  # type: ignore[call-overload]
            )
        )
        self.procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "worker",
                    "--nthreads",
                    "1",
                    "--nworkers",
                    "2",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--scheduler-file",
                    self.scheduler_file,
                ],
                **common,  # type: ignore[call-overload]
            )
        )
        # the scheduler file appears once the scheduler listens; the client then waits for workers
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(self.scheduler_file):
            if time.monotonic() > deadline or self.procs[0].poll() is not None:
                raise RuntimeError("dask scheduler did not start")
            time.sleep(0.05)  # polling for a file another process writes
        with distributed.Client(scheduler_file=self.scheduler_file, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=START_TIMEOUT)
            self.address = client.scheduler.address

    def worker_pids(self, client: distributed.Client) -> list[int]:
        """The process ids of the Dask worker processes (not their nannies)."""
        return sorted(client.run(os.getpid).values())

    def stop(self) -> None:
        """Stops the workers, then the scheduler; kills whatever is left of them."""
        tree = []
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                tree += psutil.Process(proc.pid).children(recursive=True)
        for proc in reversed(self.procs):  # workers first: they leave without rescheduling noise
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for p in tree:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(tree, timeout=STOP_TIMEOUT)


@contextlib.contextmanager
def cli_cluster(directory: Path) -> Iterator[CliCluster]:
    """A started ``CliCluster``; its processes count as the cluster's, not a test's, in the leak
    check (a nanny restarts a worker a test killed), and are all stopped on exit."""
    from tests.conftest import cluster_pids

    cluster = CliCluster(directory)
    try:
        cluster.start()
        pids = {proc.pid for proc in cluster.procs}
        cluster_pids.update(pids)
        yield cluster
    finally:
        cluster.stop()
        cluster_pids.difference_update(proc.pid for proc in cluster.procs)


def start_local_cluster() -> tuple[object, distributed.Client]:
    """A ``LocalCluster`` of two worker processes with one thread each, and a client of it."""
    lc = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", host="127.0.0.1"
    )
    client = distributed.Client(lc, set_as_default=False)
    warm_up(client)
    return lc, client


def warm_up(client: distributed.Client) -> None:
    """Opens the connections a Dask client keeps pooled (to the scheduler, to the workers), by
    the calls ferropool makes, so that the leak check does not count them against the first test."""
    import ferropool

    with ferropool.ProcessPoolExecutor(cluster=client) as ex:
        fs = [ex.submit(abs, -i) for i in range(200)]
        assert [f.result(timeout=START_TIMEOUT) for f in fs] == list(range(200))
        assert list(ex.map(abs, range(-1000, 0))) == list(range(1000, 0, -1))
        assert ex.submit(len, b"x" * (2 << 20)).result(timeout=START_TIMEOUT) == 2 << 20
