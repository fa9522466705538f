#!/usr/bin/env python3
"""Where a pool's parent-side CPU goes per task, by thread, as workers and task lengths grow.

Usage (from the repository root)::

    python benches/scaling.py                  # workers 2, 16, 64; tasks of 0, 10, 100 us

The parent runs three threads that every task crosses: the caller's (``submit`` and
``result``), the engine thread (dispatch and reading worker links) and the completion thread
(turning results into finished futures). Each is one core at most, so each sets a ceiling on
tasks/s no matter how many cores the workers have: ``1 / (its CPU per task)``. This measures
the CPU each thread spends per task (``/proc/self/task/*/stat``, so the figure holds on a shared
machine), for several pool sizes and task lengths; docs/tuning.md ("How far it scales") turns
the figures into a model of which thread saturates first on a machine with many cores.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import ferropool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _bench_tasks import spin  # importable, so it is pickled by reference

N = 40_000
REPEAT = 3
WORKERS = (2, 16, 64)
TASK_US = (0, 10, 100)
TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of each of this process's threads, summed by thread name."""
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended between listdir and open
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return out


def role(name: str) -> str:
    if name.startswith("ferropool-engin"):
        return "engine"
    if name.startswith("ferropool-resul"):
        return "completion"
    if name == "python" or name.startswith("python"):
        return "caller"
    return "other"


def measure(workers: int, task_us: int) -> dict[str, float]:
    per_task: dict[str, list[float]] = {}
    with ferropool.ProcessPoolExecutor(workers) as ex:
        for f in [ex.submit(time.sleep, 0.05) for _ in range(2 * workers)]:
            f.result()  # every worker started before timing begins
        for _ in range(REPEAT):
            before = thread_cpu()
            fs = [ex.submit(spin, task_us / 1e6) for _ in range(N)]
            for f in fs:
                f.result()
            after = thread_cpu()
            sums: dict[str, float] = {}
            for name, seconds in after.items():
                sums[role(name)] = sums.get(role(name), 0.0) + seconds - before.get(name, 0.0)
            for key, seconds in sums.items():
                per_task.setdefault(key, []).append(seconds / N * 1e6)
    return {key: statistics.median(values) for key, values in per_task.items()}


def main() -> int:
    print(f"parent CPU per task in us, by thread (median of {REPEAT} floods of {N:,} submits)")
    print("| workers | task | caller | engine | completion | ceiling (tasks/s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for workers in WORKERS:
        for task_us in TASK_US:
            m = measure(workers, task_us)
            worst = max(m.get("caller", 0), m.get("engine", 0), m.get("completion", 0))
            ceiling = f"{1e6 / worst:,.0f}" if worst else "-"
            print(
                f"| {workers} | {task_us} us | {m.get('caller', 0):.2f} | {m.get('engine', 0):.2f} "
                f"| {m.get('completion', 0):.2f} | {ceiling} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
