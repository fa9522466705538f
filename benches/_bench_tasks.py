"""Task functions the benchmarks send to workers.

They live in their own small module (not in ``run.py``) so that every pool can pickle them by
reference and every worker, forked or spawned, can import them by name: ``run.py`` puts this
directory on ``PYTHONPATH`` for the child processes it starts. The module imports only ``os``
and ``time`` so that importing it in a freshly spawned worker costs next to nothing.
"""

from __future__ import annotations

import os
import time


def noop(x: object = None) -> object:
    """Do nothing but hand the argument back.

    Returning the argument (rather than ``None``) lets the harness check, outside the timed
    region, that every result arrived and in the right order, so a fast but wrong run cannot
    pass for a fast one.
    """
    return x


def sleep_task(seconds: float) -> float:
    """Sleep; used to warm a pool up so that every worker is started before timing begins.

    A task that sleeps holds its worker, so ``2 * workers`` of them cannot all be served by the
    first worker to come up: the pool has to start all of them.
    """
    time.sleep(seconds)
    return seconds


def sleep_pid(seconds: float) -> int:
    """Sleep, then say which process ran the task: how the footprint workloads find the workers.

    Sleeping holds the worker, as in ``sleep_task``, so a round of ``2 * workers`` of them
    reaches every worker of the pool.
    """
    time.sleep(seconds)
    return os.getpid()


def spin(seconds: float, tag: object = None) -> object:
    """Keep the CPU busy for ``seconds`` (a busy wait, not a sleep), then hand ``tag`` back.

    The ``sweep`` workload's task: unlike ``time.sleep`` it really uses the core, so a pool
    cannot overlap more of these tasks than it has workers (and free cores). ``perf_counter``
    costs well under a microsecond, so even a 1 µs task is mostly busy waiting, not clock reads.
    """
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return tag


def fib(n: int) -> int:
    """Naive recursive Fibonacci: pure-Python CPU work that holds the GIL throughout.

    ``fib(27)`` takes roughly 30-50 ms on a current x86 core under CPython 3.11, long enough
    that the cost of moving the task is negligible and the pool's parallel speedup shows.
    """
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def exit_now() -> None:
    """End the worker process at once, as a crash would: the ``respawn`` workload's victim."""
    os._exit(1)
