"""ferropool on a Dask cluster against Dask's own API, side by side, on one local cluster.

Starts ``dask scheduler`` and ``dask worker --nworkers 2 --nthreads 1`` on 127.0.0.1 (as
tests/test_cluster.py does), then measures, each ``--repeat`` times, reporting the median:

- ``map``: Dask's ``client.map`` + ``gather`` of 2,000 trivial tasks, and
  ``Pool(cluster=...).map`` of 100,000 no-op items (adaptive chunking): items per second;
- ``submit``: 2,000 trivial calls, ``client.submit`` + ``gather`` against
  ``ProcessPoolExecutor(cluster=...).submit`` + ``result``: microseconds per call, and the CPU
  time per call of each process (this one, the scheduler, the workers): where the time goes;
- ``cpu``: 16 x fib(30), serially, on a local ``Pool(2)`` and on ``Pool(cluster=...)``: speedup;
- ``connect``: a new client (or pool) on the scheduler address until the first result arrives.

    python benches/cluster.py [--repeat 5] [--workload submit] [--out FILE]

``--workload`` (repeatable) runs only the named workloads; the report then has their rows only.

Needs the dask extra (``pip install -e '.[dask]'``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import distributed
import ferropool
import psutil
from ferropool._pool import cluster as ferropool_cluster

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_tasks import fib, noop

DASK = str(Path(sys.executable).with_name("dask"))
ROOT = str(Path(__file__).resolve().parent)


def start_cluster(directory: str) -> tuple[list[subprocess.Popen[bytes]], str]:
    scheduler_file = os.path.join(directory, "scheduler.json")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": env, "cwd": directory}
    procs = [
        subprocess.Popen(
            [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
            + ["--scheduler-file", scheduler_file],
            **quiet,  # type: ignore[call-overload]
        ),
        subprocess.Popen(
            [DASK, "worker", "--nthreads", "1", "--nworkers", "2", "--no-dashboard", "--host", "127.0.0.1"]
            + ["--scheduler-file", scheduler_file],
            **quiet,  # type: ignore[call-overload]
        ),
    ]
    deadline = time.monotonic() + 60
    while not os.path.exists(scheduler_file):
        if time.monotonic() > deadline:
            raise RuntimeError("dask scheduler did not start")
        time.sleep(0.05)  # polling for the file the scheduler writes
    with distributed.Client(scheduler_file=scheduler_file, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        address = client.scheduler.address
    return procs, address


def stop_cluster(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def cpu_seconds(procs: dict[str, list[psutil.Process]]) -> dict[str, float]:
    """CPU time (user + system) each group of processes has used so far."""
    return {name: sum(sum(p.cpu_times()[:2]) for p in group) for name, group in procs.items()}


WORKLOADS = ("map", "submit", "cpu", "connect")


def scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


def wait_until_forgotten(client: distributed.Client, timeout: float = 30.0) -> None:
    """Waits until the scheduler holds no task: the last run's results are freed everywhere."""
    deadline = time.monotonic() + timeout
    while client.run_on_scheduler(scheduler_tasks) and time.monotonic() < deadline:
        time.sleep(0.005)  # polling the scheduler: it has no event for "all tasks forgotten"


@contextlib.contextmanager
def counting_round_trips() -> Iterator[dict[str, int]]:
    """Counts the graphs ferropool's cluster backend sends and the result fetches it makes.

    Each is one round trip through the scheduler whatever its size: the figures say how well
    the backend batches them (it wraps two private methods for the duration).
    """
    backend = ferropool_cluster.ClusterBackend
    counts = {"graphs": 0, "fetches": 0}
    send, settle = backend._send, backend._settle_batch

    def counted_send(self: Any, batch: Any) -> None:
        counts["graphs"] += 1
        send(self, batch)

    def counted_settle(self: Any, batch: Any) -> None:
        counts["fetches"] += any(d.status == "finished" for d in batch)
        settle(self, batch)

    backend._send, backend._settle_batch = counted_send, counted_settle  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        backend._send, backend._settle_batch = send, settle  # type: ignore[method-assign]


def measure(
    address: str, repeat: int, procs: dict[str, list[psutil.Process]], workloads: tuple[str, ...] = WORKLOADS
) -> dict[str, list[float]]:
    r: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        r.setdefault(name, []).append(value)

    def per_call(who: str, run: Callable[[], object], calls: int) -> float:
        """Runs ``run``; records each process's CPU microseconds per call; its wall seconds.

        Starts once the scheduler has forgotten every task: the freeing of the previous run's
        results (Dask's own, after its ``gather`` returned) is then timed in neither run.
        Also records the wall time per call until the cluster has freed this run's results:
        ferropool frees each fetched batch while the run goes on, Dask's ``gather`` returns
        before any is freed, so only this figure has both pay for the same work.
        """
        wait_until_forgotten(client)
        before = cpu_seconds(procs)
        seconds = timed(run)
        ended = time.perf_counter()
        after = cpu_seconds(procs)
        for name in procs:
            add(f"{who} CPU us/call: {name}", (after[name] - before[name]) / calls * 1e6)
        # the freeing of the results once the run is over (Dask's: its futures are dropped
        # when its gather returns): how much of each run's cost lies outside its time
        wait_until_forgotten(client)
        add(f"{who} us/call until the results are freed", (seconds + time.perf_counter() - ended) / calls * 1e6)
        freed = cpu_seconds(procs)
        add(f"{who} CPU us/call after the run (freeing), all", sum(freed[n] - after[n] for n in procs) / calls * 1e6)
        return seconds

    with distributed.Client(address, set_as_default=False) as client:
        pool = ferropool.Pool(cluster=client)
        ex = ferropool.ProcessPoolExecutor(cluster=client)
        local = ferropool.Pool(2)
        try:
            pool.map(noop, range(1000))  # warm: functions cached on the workers
            local.map(noop, range(1000))
            [f.result() for f in [ex.submit(noop, n) for n in range(200)]]
            for i in range(repeat):
                if "map" in workloads:
                    s = timed(lambda: client.gather(client.map(noop, range(2000), pure=False)))
                    add("dask client.map+gather, items/s", 2000 / s)
                    s = timed(lambda: pool.map(noop, range(100_000)))
                    add("Pool(cluster=).map, items/s", 100_000 / s)

                if "submit" in workloads:
                    # alternated, so that neither always runs while the cluster still frees the
                    # other's 2,000 results
                    for who in ("dask", "ferropool") if i % 2 == 0 else ("ferropool", "dask"):
                        if who == "dask":
                            s = per_call(
                                "dask",
                                lambda: client.gather([client.submit(noop, n, pure=False) for n in range(2000)]),
                                2000,
                            )
                            add("dask client.submit+gather, us/call", s / 2000 * 1e6)
                        else:
                            with counting_round_trips() as trips:
                                s = per_call(
                                    "ferropool",
                                    lambda: [f.result() for f in [ex.submit(noop, n) for n in range(2000)]],
                                    2000,
                                )
                            add("Executor(cluster=).submit, us/call", s / 2000 * 1e6)
                            add("ferropool graphs sent (client.map) per 2,000 calls", trips["graphs"])
                            add("ferropool result fetches (gather) per 2,000 calls", trips["fetches"])
                    # this repeat's ratios: both ran back to back, so under about the same load
                    add(
                        "submit time ratio, ferropool/dask, same repeat",
                        r["Executor(cluster=).submit, us/call"][-1] / r["dask client.submit+gather, us/call"][-1],
                    )
                    add(
                        "submit time until freed, ratio ferropool/dask, same repeat",
                        r["ferropool us/call until the results are freed"][-1]
                        / r["dask us/call until the results are freed"][-1],
                    )
                    # a lone call: fetching results in batches must not hold it back
                    add("dask one submit+result, ms", 1e3 * timed(lambda: client.submit(noop, 1, pure=False).result()))
                    add("ferropool one submit+result, ms", 1e3 * timed(lambda: ex.submit(noop, 1).result()))

                if "cpu" in workloads:
                    serial = timed(lambda: [fib(30) for _ in range(16)])
                    add("cpu serial, s", serial)
                    add("cpu local Pool(2) speedup", serial / timed(lambda: local.map(fib, [30] * 16)))
                    add("cpu Pool(cluster=) speedup", serial / timed(lambda: pool.map(fib, [30] * 16)))

                def dask_first() -> None:
                    with distributed.Client(address, set_as_default=False) as c:
                        c.submit(noop, 1, pure=False).result()

                def ours_first() -> None:
                    with ferropool.ProcessPoolExecutor(cluster=address) as e:
                        e.submit(noop, 1).result()

                if "connect" in workloads:
                    add("connect+first result, dask, s", timed(dask_first))
                    add("connect+first result, ferropool, s", timed(ours_first))
        finally:
            pool.close()
            pool.join()
            ex.shutdown()
            local.close()
            local.join()
    return r


def report(results: dict[str, list[float]], repeat: int) -> str:
    lines = [
        f"Dask cluster: `dask scheduler` + `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, distributed {distributed.__version__}; "
        f"median of {repeat}.",
        "",
        "| measure | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    for name, values in results.items():
        lines.append(f"| {name} | {statistics.median(values):,.3g} | {min(values):,.3g} | {max(values):,.3g} |")
    med = {k: statistics.median(v) for k, v in results.items()}
    lines.append("")
    if "Pool(cluster=).map, items/s" in med:
        ratio = med["Pool(cluster=).map, items/s"] / med["dask client.map+gather, items/s"]
        lines.append(f"- map: ferropool {ratio:.0f}x Dask's items/s")
    if "Executor(cluster=).submit, us/call" in med:
        submit_ratio = med["Executor(cluster=).submit, us/call"] / med["dask client.submit+gather, us/call"]
        freed_ratios = results["submit time until freed, ratio ferropool/dask, same repeat"]
        cpu = {
            who: [med[f"{who} CPU us/call: {n}"] for n in ("client", "scheduler", "workers")]
            for who in ("dask", "ferropool")
        }
        lines += [
            f"- submit: ferropool {submit_ratio:.2f}x Dask's time per call; CPU per call (client, scheduler, "
            "workers), Dask: "
            + ", ".join(f"{v:.0f}" for v in cpu["dask"])
            + f" us (total {sum(cpu['dask']):.0f}); ferropool: "
            + ", ".join(f"{v:.0f}" for v in cpu["ferropool"])
            + f" us (total {sum(cpu['ferropool']):.0f}, {sum(cpu['ferropool']) / sum(cpu['dask']):.2f}x)",
            "- submit, repeat by repeat (ferropool/Dask): "
            + ", ".join(f"{v:.2f}" for v in results["submit time ratio, ferropool/dask, same repeat"])
            + f"; ferropool faster in {sum(v < 1 for v in results['submit time ratio, ferropool/dask, same repeat'])}"
            f" of {len(results['submit time ratio, ferropool/dask, same repeat'])}",
            "- submit until the cluster has freed the results, repeat by repeat (ferropool/Dask): "
            + ", ".join(f"{v:.2f}" for v in freed_ratios)
            + f"; median {statistics.median(freed_ratios):.2f}",
            f"- one call alone: ferropool {med['ferropool one submit+result, ms']:.1f} ms, "
            f"Dask {med['dask one submit+result, ms']:.1f} ms",
        ]
    if "cpu Pool(cluster=) speedup" in med:
        ratio = med["cpu Pool(cluster=) speedup"] / med["cpu local Pool(2) speedup"]
        lines.append(f"- cpu: cluster speedup {ratio:.2f}x the local pool's")
    if "connect+first result, ferropool, s" in med:
        ratio = med["connect+first result, ferropool, s"] / med["connect+first result, dask, s"]
        lines.append(f"- connect: ferropool {ratio:.2f}x Dask's time")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", help="write the markdown here (default: stdout)")
    parser.add_argument(
        "--workload", action="append", choices=WORKLOADS, help="run only this workload (repeatable; default: all)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        procs, address = start_cluster(directory)
        try:
            scheduler, workers = (psutil.Process(proc.pid) for proc in procs)
            # the workers: both worker processes, their nannies and the `dask worker` process
            watched = {
                "client": [psutil.Process()],
                "scheduler": [scheduler],
                "workers": [workers, *workers.children(recursive=True)],
            }
            workloads = tuple(args.workload or WORKLOADS)
            text = report(measure(address, args.repeat, watched, workloads), args.repeat)
        finally:
            stop_cluster(procs)
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
