#!/usr/bin/env python3
"""Where the CPU of a flood of tiny tasks goes: the parent's threads against the workers'.

Usage (from the repository root)::

    python benches/submit_profile.py             # 20,000 abs() calls on 2 workers, median of 5

On a machine with as many cores as the pool has workers, the parent and the workers share the
cores, so tasks/s can never beat ``cores / (parent CPU per task + worker CPU per task)``. This
prints both per-task CPU costs (process CPU time from ``/proc``, all threads), the bound they
set, the measured rate, and the parent's hottest Python functions (cProfile), which is what a
faster ``submit`` has to shave.
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import ferropool
import psutil

N = 20_000
WORKERS = 2
REPEAT = 5


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def main() -> int:
    rates, parent_us, worker_us = [], [], []
    me = psutil.Process()
    with ferropool.ProcessPoolExecutor(WORKERS) as ex:
        for f in [ex.submit(time.sleep, 0.02) for _ in range(2 * WORKERS)]:
            f.result()
        workers = [psutil.Process(pid) for pid in ex._backend.engine.pids]
        for _ in range(REPEAT):
            parent0 = _cpu_seconds(me)
            worker0 = sum(map(_cpu_seconds, workers))
            start = time.perf_counter()
            total = sum(f.result() for f in [ex.submit(abs, i) for i in range(N)])
            wall = time.perf_counter() - start
            assert total == N * (N - 1) // 2
            rates.append(N / wall)
            parent_us.append((_cpu_seconds(me) - parent0) / N * 1e6)
            worker_us.append((sum(map(_cpu_seconds, workers)) - worker0) / N * 1e6)
        profile = cProfile.Profile()
        profile.enable()
        for f in [ex.submit(abs, i) for i in range(N)]:
            f.result()
        profile.disable()
    cores = len(os.sched_getaffinity(0))
    p, w = statistics.median(parent_us), statistics.median(worker_us)
    print(f"tasks/s (median of {REPEAT}): {statistics.median(rates):,.0f}")
    print(f"parent CPU per task: {p:.1f} us (all threads); workers' CPU per task: {w:.1f} us")
    print(f"bound from CPU on {cores} cores: {cores / (p + w) * 1e6:,.0f} tasks/s")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(10)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
