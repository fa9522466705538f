#!/usr/bin/env python3
"""Benchmark ferropool's queues, locks and shared values against multiprocessing's.

Usage (from the repository root)::

    python benches/ipc.py                       # 5 repeats, markdown to stdout
    python benches/ipc.py --repeat 5 --out docs/ipc-bench.md
    python benches/ipc.py --quick

Every measurement runs in a fresh child interpreter (``ipc.py --child IMPL WORKLOAD N``), and
repeats are round-robin across implementations, as in ``run.py``. Both libraries use real
processes started with the spawn method:

* ``queue``: one producer process puts ``n`` small ints (``for i in range(n): q.put(i)``), the
  measuring process gets them; timed from the start signal to the last ``get``.
* ``lock``: one process, ``n`` uncontended ``acquire()``/``release()`` pairs.
* ``lock_contended``: two processes each do ``n / 2`` pairs on the same lock; pairs per second
  of wall time from the start signal until both are done.
* ``value``: one process, ``n`` times ``with v.get_lock(): v.value += 1``.

Every result is checked (outside the timed region). This file imports only the standard library
at import time; ferropool is imported inside the child that measures it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time

from _report import publish

RESULT_MARKER = "@@ferropool-ipc-result@@ "
IMPLS = ("multiprocessing", "ferropool")
SIZES = {"queue": 300_000, "lock": 1_000_000, "lock_contended": 200_000, "value": 300_000}
QUICK = {"queue": 50_000, "lock": 100_000, "lock_contended": 20_000, "value": 50_000}
UNITS = {"queue": "msgs/s", "lock": "pairs/s", "lock_contended": "pairs/s", "value": "increments/s"}


def _lib(impl: str):
    if impl == "ferropool":
        import ferropool

        return ferropool
    return multiprocessing.get_context("spawn")


def _producer(q, start, n):
    start.wait()
    for i in range(n):
        q.put(i)


def _contender(lock, start, n, done):
    start.wait()
    for _ in range(n):
        lock.acquire()
        lock.release()
    done.put(n)


def measure(impl: str, workload: str, n: int) -> float:
    """Operations per second of one run."""
    lib = _lib(impl)
    ctx = multiprocessing.get_context("spawn")
    if workload == "queue":
        q, start = lib.Queue(), lib.Event()
        p = ctx.Process(target=_producer, args=(q, start, n))
        p.start()
        start.set()
        t0 = time.perf_counter()
        got = [q.get() for _ in range(n)]
        elapsed = time.perf_counter() - t0
        p.join()
        assert got == list(range(n))
    elif workload == "lock":
        lock = lib.Lock()
        acquire, release = lock.acquire, lock.release
        t0 = time.perf_counter()
        for _ in range(n):
            acquire()
            release()
        elapsed = time.perf_counter() - t0
        assert acquire(False)
    elif workload == "lock_contended":
        lock, start, done = lib.Lock(), lib.Event(), lib.Queue()
        procs = [ctx.Process(target=_contender, args=(lock, start, n // 2, done)) for _ in range(2)]
        for p in procs:
            p.start()
        t0 = time.perf_counter()
        start.set()
        total = done.get() + done.get()
        elapsed = time.perf_counter() - t0
        for p in procs:
            p.join()
        assert total == 2 * (n // 2)
    elif workload == "value":
        v = lib.Value("i", 0)
        t0 = time.perf_counter()
        for _ in range(n):
            with v.get_lock():
                v.value += 1
        elapsed = time.perf_counter() - t0
        assert v.value == n
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return n / elapsed


def run_child(impl: str, workload: str, n: int) -> float:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", impl, workload, str(n)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    for line in out.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return float(json.loads(line[len(RESULT_MARKER) :]))
    raise RuntimeError(f"{impl} {workload} failed:\n{out.stdout}\n{out.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=3, metavar=("IMPL", "WORKLOAD", "N"))
    args = parser.parse_args()
    if args.child:
        impl, workload, n = args.child
        print(RESULT_MARKER + json.dumps(measure(impl, workload, int(n))), flush=True)
        return
    sizes = QUICK if args.quick else SIZES
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.repeat):
        for workload, n in sizes.items():
            impls = IMPLS if r % 2 == 0 else tuple(reversed(IMPLS))
            for impl in impls:
                results.setdefault((impl, workload), []).append(run_child(impl, workload, n))
                print(f"repeat {r + 1}: {impl:16} {workload:15} {results[impl, workload][-1]:14,.0f}", file=sys.stderr)
    import ferropool

    lines = [
        "# IPC benchmarks: ferropool vs multiprocessing",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs "
        f"(shared with other jobs); Python {platform.python_version()}; ferropool {ferropool.__version__}; "
        f"median of {args.repeat} repeats, each in a fresh process; spawn start method; "
        "`python benches/ipc.py" + (" --quick" if args.quick else "") + "`.",
        "",
        "| workload | n | multiprocessing | ferropool | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for workload, n in sizes.items():
        mp_med = statistics.median(results["multiprocessing", workload])
        fp_med = statistics.median(results["ferropool", workload])
        unit = UNITS[workload]
        lines.append(f"| {workload} | {n:,} | {mp_med:,.0f} {unit} | {fp_med:,.0f} {unit} | {fp_med / mp_med:.1f}x |")
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
