#!/usr/bin/env python3
"""Where the CPU of a flood of tiny tasks goes: the parent's threads against the workers'.

Usage (from the repository root)::

    python benches/submit_profile.py             # 20,000 abs() calls on 2 workers, median of 5
    python benches/submit_profile.py --main      # the same with a function defined in __main__
    python benches/submit_profile.py --pool      # Pool.apply_async(...).get() instead of submit

On a machine with as many cores as the pool has workers, the parent and the workers share the
cores, so tasks/s can never beat ``cores / (parent CPU per task + worker CPU per task)``. This
prints both per-task CPU costs (process CPU time from ``/proc``, all threads), the bound they
set, the measured rate, the parent's CPU by thread (the caller, the engine thread, the
completion thread), and the parent's hottest Python functions (cProfile), which is what a
faster ``submit`` has to shave.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import ferropool
import psutil
from scaling import thread_cpu  # benches/, the script's directory

N = 20_000
WORKERS = 2
REPEAT = 5


def _cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def identity(x: int) -> int:
    """A task defined in ``__main__``, as a script's are: it travels by value (cloudpickle)."""
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--main", action="store_true", help="submit a function defined in __main__, not abs")
    parser.add_argument("--pool", action="store_true", help="Pool.apply_async(...).get(), not executor.submit")
    options = parser.parse_args()
    fn = identity if options.main else abs
    rates, parent_us, worker_us = [], [], []
    me = psutil.Process()
    with ferropool.Pool(WORKERS) if options.pool else ferropool.ProcessPoolExecutor(WORKERS) as ex:
        if options.pool:

            def flood() -> int:
                return sum(r.get() for r in [ex.apply_async(fn, (i,)) for i in range(N)])
        else:

            def flood() -> int:
                return sum(f.result() for f in [ex.submit(fn, i) for i in range(N)])

        flood()  # the workers are up, and a function from __main__ has been pickled
        workers = [psutil.Process(pid) for pid in ex._backend.engine.pids]
        by_thread: dict[str, list[float]] = {}
        for _ in range(REPEAT):
            threads0 = thread_cpu()
            parent0 = _cpu_seconds(me)
            worker0 = sum(map(_cpu_seconds, workers))
            start = time.perf_counter()
            total = flood()
            wall = time.perf_counter() - start
            assert total == N * (N - 1) // 2
            rates.append(N / wall)
            parent_us.append((_cpu_seconds(me) - parent0) / N * 1e6)
            worker_us.append((sum(map(_cpu_seconds, workers)) - worker0) / N * 1e6)
            for name, seconds in thread_cpu().items():
                by_thread.setdefault(name, []).append((seconds - threads0.get(name, 0.0)) / N * 1e6)
        profile = cProfile.Profile()
        profile.enable()
        flood()
        profile.disable()
    cores = len(os.sched_getaffinity(0))
    p, w = statistics.median(parent_us), statistics.median(worker_us)
    print(f"tasks/s (median of {REPEAT}): {statistics.median(rates):,.0f}")
    print(f"parent CPU per task: {p:.1f} us (all threads); workers' CPU per task: {w:.1f} us")
    print(f"bound from CPU on {cores} cores: {cores / (p + w) * 1e6:,.0f} tasks/s")
    # the main thread and the Python threads share the process's name ("python": the caller)
    threads = ", ".join(f"{name} {statistics.median(us):.1f}" for name, us in sorted(by_thread.items()))
    print(f"parent CPU per task by thread, us: {threads}")
    out = io.StringIO()
    pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(10)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
