#!/usr/bin/env python3
"""Benchmark ferropool against the standard library, side by side, in one run.

Usage (from the repository root)::

    python benches/run.py                           # every workload, 5 repeats, markdown to stdout
    python benches/run.py --repeat 5 --out BENCHMARKS.md
    python benches/run.py --quick --out /tmp/bench-quick.md
    python benches/run.py --workload submit,latency --anchors --json raw.json

How it measures, and why:

* Every measurement runs in a fresh child process (``run.py --child SPEC``). Pools, fork
  servers, imported modules and leaked threads from one measurement can then never slow down or
  speed up the next, and each library starts from the state a real program starts from.
* Repeats are round-robin: one repeat of every implementation, then the next repeat (with the
  order rotated each time). Slow drift on the machine (thermal, other jobs) then hits every
  implementation alike instead of whichever happened to run last.
* Steady-state timings start only after the pool is warm: ``2 * workers`` tasks that sleep
  20 ms have completed, so every worker process is up. Pool creation and shutdown are timed
  only by the ``startup`` workload.
* Every result is checked (outside the timed region), so a fast but wrong run cannot pass.

This file imports only the standard library at import time. ferropool and the anchors (loky,
mpire, pebble) are imported inside the child that measures them, so the script runs, and
reports "n/a", wherever one of them is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
RESULT_MARKER = "@@ferropool-bench-result@@ "
WARMUP_SLEEP_S = 0.02
THREAD_WORKERS = 4
ANCHORS = ("loky", "mpire", "pebble")

FULL_SIZES = {
    "submit": 20_000,
    "latency": 2_000,
    "latency_warmup": 50,
    "map": 20_000,
    "map_chunked": 1_000_000,
    "cpu_tasks": 16,
    "fib_n": 27,
    "threads": 100_000,
    "imap": 20_000,
    "respawn": 20,
    "sweep_work_ms": 400,
    "sweep_max_tasks": 20_000,
    "imap_stream": 10_000_000,
    "imap_slow": 200_000,
    "idle_s": 2,
    "settle_ms": 1_000,
}
QUICK_SIZES = {
    "submit": 2_000,
    "latency": 200,
    "latency_warmup": 20,
    "map": 2_000,
    "map_chunked": 100_000,
    "cpu_tasks": 8,
    "fib_n": 25,
    "threads": 10_000,
    "imap": 2_000,
    "respawn": 5,
    "sweep_work_ms": 100,
    "sweep_max_tasks": 2_000,
    "imap_stream": 1_000_000,
    "imap_slow": 20_000,
    "idle_s": 2,
    "settle_ms": 300,
}
# The sweep's task durations: the variant names of its cases, and the seconds each one spins.
SWEEP_DURATIONS = {"1us": 1e-6, "10us": 1e-5, "100us": 1e-4, "1ms": 1e-3, "10ms": 1e-2}
SWEEP_LABELS = {"1us": "1 µs", "10us": "10 µs", "100us": "100 µs", "1ms": "1 ms", "10ms": "10 ms"}
MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------
# Child side: implementations behind one small interface
# --------------------------------------------------------------------------------------------


class NotAvailable(Exception):
    """The implementation (or this API of it) does not exist here; reported as "n/a"."""


def _import(name: str) -> Any:
    """Import a module, turning a missing one into ``NotAvailable`` rather than an error."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise NotAvailable(f"{name} is not importable ({exc})") from None


class Impl:
    """One pool implementation, seen through the handful of operations the workloads use.

    Each workload is written once and driven against every implementation, so the timed code
    differs between rows only in the library call itself, never in the harness around it.
    """

    warm_up = True

    def load(self) -> None:
        """Import what the implementation needs; called before any timer starts."""

    def open(self, workers: int, context: str | None = None) -> Any:
        raise NotImplementedError

    def submit(self, pool: Any, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotAvailable(f"{type(self).__name__} has no single-task submit")

    def wait(self, handle: Any) -> Any:
        raise NotImplementedError

    def map(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        raise NotAvailable(f"{type(self).__name__} has no map")

    def imap(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        raise NotAvailable(f"{type(self).__name__} has no imap")

    def close(self, pool: Any) -> None:
        raise NotImplementedError


class SerialImpl(Impl):
    """No pool at all: the reference point for the CPU workload's speedup."""

    warm_up = False

    def open(self, workers: int, context: str | None = None) -> None:
        return None

    def map(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        return [fn(x) for x in items]

    def close(self, pool: Any) -> None:
        pass


class ExecutorImpl(Impl):
    """A ``concurrent.futures.Executor``: ferropool's, the stdlib's, loky's.

    ``context_style`` says how a start method is passed: ``"name"`` as the string itself (what
    ferropool documents), ``"object"`` as ``multiprocessing.get_context(name)`` (the stdlib),
    ``None`` when the implementation takes none (thread pools, loky).
    """

    def __init__(self, module: str, cls: str, context_style: str | None) -> None:
        self.module_name, self.cls_name, self.context_style = module, cls, context_style

    def load(self) -> None:
        module = _import(self.module_name)
        if not hasattr(module, self.cls_name):
            raise NotAvailable(f"{self.module_name} has no {self.cls_name}")
        self.cls = getattr(module, self.cls_name)

    def open(self, workers: int, context: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"max_workers": workers}
        if context is not None:
            if self.context_style == "name":
                kwargs["mp_context"] = context
            elif self.context_style == "object":
                kwargs["mp_context"] = multiprocessing.get_context(context)
            else:
                raise NotAvailable(f"{self.module_name}.{self.cls_name} takes no start method")
        return self.cls(**kwargs)

    def submit(self, pool: Any, fn: Callable[..., Any], *args: Any) -> Any:
        return pool.submit(fn, *args)

    def wait(self, handle: Any) -> Any:
        return handle.result()

    def map(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        if chunksize is None:
            return list(pool.map(fn, items))
        return list(pool.map(fn, items, chunksize=chunksize))

    def close(self, pool: Any) -> None:
        pool.shutdown(wait=True)


class MpPoolImpl(Impl):
    """A ``multiprocessing.Pool``-style pool: the stdlib's, or ``ferropool.Pool`` once it exists."""

    def __init__(self, module: str) -> None:
        self.module_name = module

    def load(self) -> None:
        module = _import(self.module_name)
        if not hasattr(module, "Pool"):
            raise NotAvailable(f"{self.module_name} has no Pool")
        self.pool_cls = module.Pool

    def open(self, workers: int, context: str | None = None) -> Any:
        if context is None:
            return self.pool_cls(processes=workers)
        if self.module_name == "multiprocessing":
            # ``multiprocessing.Pool`` is the default context's method: it takes no context
            return multiprocessing.get_context(context).Pool(processes=workers)
        return self.pool_cls(processes=workers, context=context)

    def submit(self, pool: Any, fn: Callable[..., Any], *args: Any) -> Any:
        return pool.apply_async(fn, args)

    def wait(self, handle: Any) -> Any:
        return handle.get()

    def map(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        return list(pool.map(fn, items, chunksize))

    def imap(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        return iter(pool.imap(fn, items, chunksize=chunksize))

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()


class PebbleImpl(Impl):
    """pebble's ``ProcessPool`` or ``ThreadPool`` (``schedule`` returns a future)."""

    def __init__(self, cls: str) -> None:
        self.cls_name = cls

    def load(self) -> None:
        self.cls = getattr(_import("pebble"), self.cls_name)

    def open(self, workers: int, context: str | None = None) -> Any:
        if context is None:
            return self.cls(max_workers=workers)
        return self.cls(max_workers=workers, context=multiprocessing.get_context(context))

    def submit(self, pool: Any, fn: Callable[..., Any], *args: Any) -> Any:
        return pool.schedule(fn, args=args)

    def wait(self, handle: Any) -> Any:
        return handle.result()

    def map(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        return list(pool.map(fn, items, chunksize=chunksize or 1).result())

    def close(self, pool: Any) -> None:
        pool.close()
        pool.join()


class MpireImpl(Impl):
    """mpire's ``WorkerPool``, kept alive between calls so that warming it up means something.

    Without ``keep_alive`` mpire starts and stops its workers around every ``map`` call.
    """

    def load(self) -> None:
        self.cls = _import("mpire").WorkerPool

    def open(self, workers: int, context: str | None = None) -> Any:
        kwargs: dict[str, Any] = {"n_jobs": workers, "keep_alive": True}
        if context is not None:
            kwargs["start_method"] = context
        return self.cls(**kwargs)

    def submit(self, pool: Any, fn: Callable[..., Any], *args: Any) -> Any:
        return pool.apply_async(fn, args=args)

    def wait(self, handle: Any) -> Any:
        return handle.get()

    def map(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int | None) -> list[Any]:
        if chunksize is None:
            return list(pool.map(fn, items))
        return list(pool.map(fn, items, chunk_size=chunksize))

    def imap(self, pool: Any, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> Iterator[Any]:
        return iter(pool.imap(fn, items, chunk_size=chunksize))

    def close(self, pool: Any) -> None:
        pool.stop_and_join()


IMPLS: dict[str, Impl] = {
    "serial": SerialImpl(),
    "stdlib.PPE": ExecutorImpl("concurrent.futures", "ProcessPoolExecutor", "object"),
    "ferropool.PPE": ExecutorImpl("ferropool", "ProcessPoolExecutor", "name"),
    "stdlib.Pool": MpPoolImpl("multiprocessing"),
    "ferropool.Pool": MpPoolImpl("ferropool"),
    "stdlib.TPE": ExecutorImpl("concurrent.futures", "ThreadPoolExecutor", None),
    "ferropool.TPE": ExecutorImpl("ferropool", "ThreadPoolExecutor", None),
    "loky.PPE": ExecutorImpl("loky", "ProcessPoolExecutor", None),
    "pebble.ProcessPool": PebbleImpl("ProcessPool"),
    "pebble.ThreadPool": PebbleImpl("ThreadPool"),
    "mpire.WorkerPool": MpireImpl(),
}


# --------------------------------------------------------------------------------------------
# Child side: the workloads
# --------------------------------------------------------------------------------------------


def _tasks() -> Any:
    """The task module, imported by name so that workers unpickle the same functions."""
    if BENCH_DIR not in sys.path:
        sys.path.insert(0, BENCH_DIR)
    return importlib.import_module("_bench_tasks")


@contextlib.contextmanager
def warm_pool(impl: Impl, workers: int, context: str | None = None) -> Iterator[Any]:
    """Open a pool, make sure every worker is up, yield it, and shut it down afterwards.

    Sleeping tasks hold their worker, so ``2 * workers`` of them force the pool to start all
    of its workers before the timed part begins, whether it starts them eagerly or on demand.
    """
    impl.load()
    pool = impl.open(workers, context)
    try:
        if impl.warm_up:
            sleep_task = _tasks().sleep_task
            handles = [impl.submit(pool, sleep_task, WARMUP_SLEEP_S) for _ in range(2 * workers)]
            for handle in handles:
                impl.wait(handle)
        yield pool
    finally:
        impl.close(pool)


def _check(ok: bool, what: str) -> None:
    """Fail the measurement (not silently skew it) when an implementation returned wrong results."""
    if not ok:
        raise RuntimeError(f"wrong results: {what}")


def _percentile(samples: list[int], pct: float) -> float:
    """Nearest-rank percentile: the smallest sample with ``pct`` percent at or below it."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return float(ordered[rank - 1])


def _submit_all(impl: Impl, workers: int, n: int, fn: Callable[..., Any], *args: Any) -> float:
    """Tasks/s of ``n`` single-task submissions of ``fn(*args, i)`` to a warm pool, all awaited.

    Every task is submitted before the first result is awaited, so the pool can keep its
    workers busy; the results must come back as ``0 .. n-1``.
    """
    with warm_pool(impl, workers) as pool:
        start = time.perf_counter()
        handles = [impl.submit(pool, fn, *args, i) for i in range(n)]
        results = [impl.wait(handle) for handle in handles]
        elapsed = time.perf_counter() - start
    _check(results == list(range(n)), "submit")
    return n / elapsed


def bench_submit(
    impl: Impl, spec: dict[str, Any], n: int | None = None, workers: int | None = None
) -> dict[str, float]:
    """Throughput of many independent single-task submissions, all awaited at the end."""
    n = spec["sizes"]["submit"] if n is None else n
    workers = spec["workers"] if workers is None else workers
    return {"tasks_per_s": _submit_all(impl, workers, n, _tasks().noop)}


def sweep_tasks(seconds: float, sizes: dict[str, int]) -> int:
    """How many tasks one sweep point runs: ``sweep_work_ms`` of busy waiting in all.

    Capped at ``sweep_max_tasks`` (the short tasks, where dispatch and not the work sets the
    pace, would otherwise take minutes on the slower pools) and at least 8.
    """
    return max(8, min(sizes["sweep_max_tasks"], round(sizes["sweep_work_ms"] / 1000 / seconds)))


def bench_sweep(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """The submit workload with busy-waiting tasks of one duration: where does a pool pay off."""
    seconds = SWEEP_DURATIONS[spec["variant"]]
    n = sweep_tasks(seconds, spec["sizes"])
    return {"tasks_per_s": _submit_all(impl, spec["workers"], n, _tasks().spin, seconds)}


def bench_latency(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """Round trip of one task at a time through an idle pool: submit, then block on the result."""
    n, warmup = spec["sizes"]["latency"], spec["sizes"]["latency_warmup"]
    noop = _tasks().noop
    samples: list[int] = []
    with warm_pool(impl, spec["workers"]) as pool:
        for i in range(warmup):
            impl.wait(impl.submit(pool, noop, i))
        for i in range(n):
            start = time.perf_counter_ns()
            result = impl.wait(impl.submit(pool, noop, i))
            samples.append(time.perf_counter_ns() - start)
            _check(result == i, "latency")
    return {"p50_us": _percentile(samples, 50) / 1000, "p99_us": _percentile(samples, 99) / 1000}


def map_chunksize(n: int, workers: int) -> int:
    """The chunked ``map`` variant's chunk size: four chunks per worker."""
    return max(1, n // (4 * workers))


def bench_map(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """``map`` over a range: per-item overhead (default chunksize) or bulk transfer (chunked)."""
    workers = spec["workers"]
    if spec["variant"] == "chunked":
        n = spec["sizes"]["map_chunked"]
        chunksize: int | None = map_chunksize(n, workers)
    else:
        n, chunksize = spec["sizes"]["map"], None
    noop = _tasks().noop
    with warm_pool(impl, workers) as pool:
        start = time.perf_counter()
        results = impl.map(pool, noop, range(n), chunksize)
        elapsed = time.perf_counter() - start
    _check(results == list(range(n)), "map")
    return {"items_per_s": n / elapsed}


def _fib_reference(n: int) -> int:
    """fib(n) computed the fast way, to check the pool's answers without redoing the work."""
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def bench_cpu(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """Wall time of a batch of equal CPU-bound tasks, one task per chunk."""
    count, fib_n = spec["sizes"]["cpu_tasks"], spec["sizes"]["fib_n"]
    fib = _tasks().fib
    with warm_pool(impl, spec["workers"]) as pool:
        start = time.perf_counter()
        results = impl.map(pool, fib, [fib_n] * count, 1)
        elapsed = time.perf_counter() - start
    _check(results == [_fib_reference(fib_n)] * count, "cpu")
    return {"wall_s": elapsed}


def bench_startup(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """Cost of a pool's whole life in a fresh process: create, run one no-op, shut down, wait.

    The library is imported before the timer starts; what is timed is what a program pays for
    a short-lived pool (for ferropool's default, that includes starting its fork server).
    """
    context = None if spec["variant"] == "default" else spec["variant"]
    noop = _tasks().noop
    impl.load()
    start = time.perf_counter()
    pool = impl.open(spec["workers"], context)
    result = impl.wait(impl.submit(pool, noop, 0))
    impl.close(pool)
    elapsed = time.perf_counter() - start
    _check(result == 0, "startup")
    return {"ms": elapsed * 1000}


def bench_threads(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """The submit workload on a thread pool: pure dispatch overhead, no pickling, no processes."""
    return bench_submit(impl, spec, n=spec["sizes"]["threads"], workers=THREAD_WORKERS)


def bench_imap(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """Lazy ordered iteration with one item per message, consumed as results arrive."""
    n = spec["sizes"]["imap"]
    noop = _tasks().noop
    with warm_pool(impl, spec["workers"]) as pool:
        start = time.perf_counter()
        results = list(impl.imap(pool, noop, range(n), 1))
        elapsed = time.perf_counter() - start
    _check(results == list(range(n)), "imap")
    return {"items_per_s": n / elapsed}


def bench_respawn(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """How long a crash costs: from a worker's death to its replacement finishing a task.

    A 1-worker pool runs a task that ends its worker (``os._exit``) with a no-op queued behind
    it; the clock runs from the moment the crashed task's future fails to the moment the no-op's
    result is back, which a fresh worker had to start for. Only pools that survive a dead worker
    can be measured: the stdlib's break for good.
    """
    if not isinstance(impl, ExecutorImpl) or impl.module_name != "ferropool":
        raise NotAvailable("the pool does not survive a dead worker")
    context = None if spec["variant"] == "default" else spec["variant"]
    tasks = _tasks()
    impl.load()
    pool = impl.open(1, context)
    samples: list[float] = []
    try:
        impl.wait(impl.submit(pool, tasks.noop, 0))
        for i in range(spec["sizes"]["respawn"]):
            dying = pool.submit(tasks.exit_now)
            after = pool.submit(tasks.noop, i)
            _check(dying.exception(timeout=30) is not None, "respawn: the crash was not reported")
            start = time.perf_counter()
            _check(after.result(timeout=30) == i, "respawn")
            samples.append(time.perf_counter() - start)
    finally:
        impl.close(pool)
    samples.sort()
    return {"ms": samples[len(samples) // 2] * 1000}


def _psutil() -> Any:
    """psutil (a ``bench`` extra), or ``NotAvailable`` so the row reads "n/a" without it."""
    return _import("psutil")


def _require_psutil() -> None:
    """``NotAvailable`` now, before any pool starts, when psutil is missing; without importing it."""
    if importlib.util.find_spec("psutil") is None:
        raise NotAvailable("psutil is not installed (pip install psutil, or the bench extra)")


def _worker_pids(impl: Impl, pool: Any, workers: int) -> list[int]:
    """The pids of a warm pool's workers, learned from tasks that report where they ran.

    Each round is ``2 * workers`` tasks that sleep 50 ms and return their pid: a sleeping task
    holds its worker, so a round reaches every worker; more rounds cover a pool that hands
    several tasks to one worker at once.
    """
    sleep_pid = _tasks().sleep_pid
    pids: set[int] = set()
    for _ in range(10):
        handles = [impl.submit(pool, sleep_pid, 0.05) for _ in range(2 * workers)]
        pids.update(impl.wait(handle) for handle in handles)
        if len(pids) >= workers:
            break
    _check(len(pids) == workers, f"found {len(pids)} worker processes, expected {workers}")
    return sorted(pids)


def _helper_processes(psutil: Any, workers: list[int]) -> list[Any]:
    """This process's other live descendants: fork servers, resource trackers, managers."""
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in workers and p.is_running()]


def _helpers_memory(psutil: Any, workers: list[int]) -> list[Any]:
    """``memory_full_info`` of each helper process, leaving out one that ends meanwhile."""
    infos = []
    for helper in _helper_processes(psutil, workers):
        with contextlib.suppress(psutil.NoSuchProcess):
            infos.append(helper.memory_full_info())
    return infos


def bench_footprint_worker(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """Memory of one idle worker of a warm pool, and of the helper processes the pool needs.

    USS (memory unique to the process, what ending it would give back) is the fair number for
    workers that share copy-on-write pages with a parent or fork server; RSS counts those
    shared pages in every process. psutil is imported only after the workers exist, so forked
    workers do not inherit it.
    """
    context = None if spec["variant"] == "default" else spec["variant"]
    workers = spec["workers"]
    _require_psutil()
    with warm_pool(impl, workers, context) as pool:
        pids = _worker_pids(impl, pool, workers)
        time.sleep(spec["sizes"]["settle_ms"] / 1000)
        psutil = _psutil()
        infos = [psutil.Process(pid).memory_full_info() for pid in pids]
        helpers = _helpers_memory(psutil, pids)
    out = {"rss_mib": statistics.mean(i.rss for i in infos) / MIB}
    if all(hasattr(i, "uss") for i in infos + helpers):
        out["uss_mib"] = statistics.mean(i.uss for i in infos) / MIB
        out["helpers_uss_mib"] = sum(i.uss for i in helpers) / MIB
    return out


def bench_footprint_imap(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """The parent's memory while ``imap`` streams a long range through a warm pool.

    RSS is sampled before the first item and after every tenth of the items; reported is the
    largest sample minus the first, and the most input items drawn but not yet read back as
    results (read-ahead) at those samples. A pool that reads its input lazily stays flat; one
    that reads ahead holds the pending tasks and results in the parent, which shows once the
    reader is slower than the workers (the ``slow`` variant: 1 ms pause every 10 items).
    """
    process = _psutil().Process()
    slow = spec["variant"] == "slow"
    n = spec["sizes"]["imap_slow" if slow else "imap_stream"]
    step = max(1, n // 10)
    noop = _tasks().noop
    drawn = count = wrong = ahead = 0

    def source() -> Iterator[int]:
        nonlocal drawn
        for i in range(n):
            drawn = i + 1
            yield i

    with warm_pool(impl, spec["workers"]) as pool:
        start_rss = peak_rss = process.memory_info().rss
        start = time.perf_counter()
        for count, result in enumerate(impl.imap(pool, noop, source(), 1), 1):
            wrong += result != count - 1
            if slow and count % 10 == 0:
                time.sleep(0.001)
            if count % step == 0:
                peak_rss = max(peak_rss, process.memory_info().rss)
                ahead = max(ahead, drawn - count)
        elapsed = time.perf_counter() - start
    _check(count == n and wrong == 0, "imap stream")
    return {"peak_growth_mib": (peak_rss - start_rss) / MIB, "read_ahead": ahead, "items_per_s": n / elapsed}


def _cpu_seconds(psutil: Any, pid: int) -> float:
    """CPU time a process has used so far, all its threads.

    The sum of its threads' run time in ``/proc/PID/task/*/schedstat`` (nanoseconds) where
    Linux has it; otherwise psutil's ``cpu_times`` (user + system, in 10 ms clock ticks).
    """
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return float(times.user + times.system)


def bench_footprint_cpu(impl: Impl, spec: dict[str, Any]) -> dict[str, float]:
    """CPU used by a warm pool left idle: its parent (all threads), its workers, its helpers.

    An idle pool should use next to nothing; polling loops and timers show up here. The
    parent's time is ``time.process_time()`` (every thread, nanosecond clock).
    """
    workers = spec["workers"]
    _require_psutil()
    with warm_pool(impl, workers) as pool:
        pids = _worker_pids(impl, pool, workers)
        time.sleep(spec["sizes"]["settle_ms"] / 1000)
        psutil = _psutil()
        children = pids + [p.pid for p in _helper_processes(psutil, pids)]
        # the parent's clock is read right around the idle window, so that reading the
        # children's times (files in /proc) is not counted as the pool's own use
        before = [_cpu_seconds(psutil, pid) for pid in children]
        parent_before = time.process_time()
        time.sleep(spec["sizes"]["idle_s"])
        parent_used = time.process_time() - parent_before
        after = [_cpu_seconds(psutil, pid) for pid in children]
    used = [(b - a) * 1000 for a, b in zip(before, after, strict=True)]
    return {
        "parent_cpu_ms": parent_used * 1000,
        "workers_cpu_ms": sum(used[: len(pids)]),
        "helpers_cpu_ms": sum(used[len(pids) :]),
    }


BENCH_FUNCS: dict[str, Callable[[Impl, dict[str, Any]], dict[str, float]]] = {
    "submit": bench_submit,
    "latency": bench_latency,
    "map": bench_map,
    "cpu": bench_cpu,
    "startup": bench_startup,
    "threads": bench_threads,
    "imap": bench_imap,
    "respawn": bench_respawn,
    "sweep": bench_sweep,
    "footprint_worker": bench_footprint_worker,
    "footprint_imap": bench_footprint_imap,
    "footprint_cpu": bench_footprint_cpu,
}


def child_main(spec_json: str) -> int:
    """Run one measurement and print its result as one marked JSON line on stdout.

    The marker lets the parent find the result even if a library prints something of its own.
    """
    spec = json.loads(spec_json)
    try:
        out: dict[str, Any] = {"metrics": BENCH_FUNCS[spec["workload"]](IMPLS[spec["impl"]], spec)}
    except NotAvailable as exc:
        out = {"na": str(exc)}
    print(RESULT_MARKER + json.dumps(out), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Parent side: what is compared with what
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metric:
    """One number a workload reports, and which direction is better."""

    key: str
    label: str
    higher_is_better: bool
    digits: int


@dataclass(frozen=True)
class Case:
    """One row group: an implementation (and variant) measured within a workload.

    ``baseline`` names the stdlib case its ratio is taken against (``None`` for the stdlib rows
    themselves and for the serial reference). ``anchor`` marks third-party rows, which run only
    with ``--anchors``.
    """

    impl: str
    label: str
    variant: str = "default"
    baseline: str | None = None
    anchor: str | None = None

    @property
    def key(self) -> str:
        return self.impl if self.variant == "default" else f"{self.impl}/{self.variant}"


@dataclass(frozen=True)
class Workload:
    """A workload: its title, what it measures (a template over the sizes), metrics, cases."""

    name: str
    title: str
    what: str
    metrics: tuple[Metric, ...]
    cases: tuple[Case, ...]
    #: "table" (a row per case and metric) or "sweep" (a row per implementation, a column per
    #: task duration, then the "table" layout folded away)
    layout: str = "table"
    #: fewer repeats than ``--repeat`` asks for, for a workload whose runs are long
    max_repeat: int | None = None


TASKS_PER_S = Metric("tasks_per_s", "tasks/s", True, 0)
ITEMS_PER_S = Metric("items_per_s", "items/s", True, 0)


def _submit_like_cases(executor_api: str, pool_api: str, pebble_api: str, mpire_api: str) -> tuple[Case, ...]:
    """The row set shared by ``submit`` and ``latency``: the executor API and the Pool API."""
    return (
        Case("stdlib.PPE", f"concurrent.futures `ProcessPoolExecutor.{executor_api}`"),
        Case("ferropool.PPE", f"ferropool `ProcessPoolExecutor.{executor_api}`", baseline="stdlib.PPE"),
        Case("stdlib.Pool", f"multiprocessing `Pool.{pool_api}`"),
        Case("ferropool.Pool", f"ferropool `Pool.{pool_api}`", baseline="stdlib.Pool"),
        Case("loky.PPE", f"loky `ProcessPoolExecutor.{executor_api}`", baseline="stdlib.PPE", anchor="loky"),
        Case("pebble.ProcessPool", f"pebble `ProcessPool.{pebble_api}`", baseline="stdlib.PPE", anchor="pebble"),
        Case("mpire.WorkerPool", f"mpire `WorkerPool.{mpire_api}`", baseline="stdlib.Pool", anchor="mpire"),
    )


def _sweep_rows() -> tuple[Case, ...]:
    """The sweep's implementations (the ``submit`` rows), before they are split by duration."""
    return _submit_like_cases("submit", "apply_async", "schedule", "apply_async")


def _sweep_cases() -> tuple[Case, ...]:
    """One case per implementation and task duration, each compared with the stdlib's same point."""
    return tuple(
        replace(
            row,
            label=f"{row.label}, {SWEEP_LABELS[duration]}",
            variant=duration,
            baseline=None if row.baseline is None else f"{row.baseline}/{duration}",
        )
        for duration in SWEEP_DURATIONS
        for row in _sweep_rows()
    )


def _footprint_worker_cases() -> tuple[Case, ...]:
    """Each pool API under each start method; ferropool's default against the stdlib's fork."""
    cases: list[Case] = []
    for api, stdlib, ferropool, context_arg in (
        ("Pool", "multiprocessing `Pool`", "ferropool `Pool`", "context"),
        ("PPE", "concurrent.futures `ProcessPoolExecutor`", "ferropool `ProcessPoolExecutor`", "mp_context"),
    ):
        cases += [
            Case(f"stdlib.{api}", f"{stdlib}, fork", "fork"),
            Case(f"ferropool.{api}", f"{ferropool}, default (fork server)", "default", f"stdlib.{api}/fork"),
            Case(f"stdlib.{api}", f"{stdlib}, forkserver", "forkserver"),
            Case(f"stdlib.{api}", f"{stdlib}, spawn", "spawn"),
            Case(f"ferropool.{api}", f'{ferropool}, `{context_arg}="spawn"`', "spawn", f"stdlib.{api}/spawn"),
        ]
    return tuple(cases)


def _map_cases(variant: str, note: str) -> tuple[Case, ...]:
    """The ``map`` rows for one chunking variant, each compared with the stdlib's same variant."""
    base = Case("stdlib.PPE", "", variant).key
    return (
        Case("stdlib.PPE", f"concurrent.futures `ProcessPoolExecutor.map`, {note}", variant),
        Case("ferropool.PPE", f"ferropool `ProcessPoolExecutor.map`, {note}", variant, base),
        Case("loky.PPE", f"loky `ProcessPoolExecutor.map`, {note}", variant, base, "loky"),
        Case("pebble.ProcessPool", f"pebble `ProcessPool.map`, {note}", variant, base, "pebble"),
        Case("mpire.WorkerPool", f"mpire `WorkerPool.map`, {note}", variant, base, "mpire"),
    )


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "submit",
            "submit: single-task throughput",
            "{submit:,} no-op tasks submitted one by one to a warm {workers}-worker process pool, then all awaited.",
            (TASKS_PER_S,),
            _submit_like_cases("submit", "apply_async", "schedule", "apply_async"),
        ),
        Workload(
            "latency",
            "latency: one task's round trip",
            "{latency:,} sequential `submit(noop, i).result()` calls (after {latency_warmup} "
            "unmeasured ones) on a warm, otherwise idle {workers}-worker process pool.",
            (Metric("p50_us", "p50 µs", False, 1), Metric("p99_us", "p99 µs", False, 1)),
            _submit_like_cases(
                "submit().result()", "apply_async().get()", "schedule().result()", "apply_async().get()"
            ),
        ),
        Workload(
            "map",
            "map: bulk throughput",
            "`map(noop, range(n))` on a warm {workers}-worker process pool: n = {map:,} with each "
            "library's default chunksize (per-item overhead; mpire's default chunks automatically), "
            "and n = {map_chunked:,} with chunksize = {map_chunk:,} (= n // (4 × workers); bulk "
            "transfer).",
            (ITEMS_PER_S,),
            _map_cases("default", "default chunksize") + _map_cases("chunked", "chunksize = n/(4·workers)"),
        ),
        Workload(
            "cpu",
            "cpu: parallel speedup on CPU-bound tasks",
            "{cpu_tasks} × `fib({fib_n})` (pure-Python recursion that holds the GIL), one task per "
            "chunk, serially in the measuring process and on a warm {workers}-worker process pool. "
            "*Speedup vs serial* is the serial median over the row's median (higher is better; "
            "it cannot exceed the number of workers or of free cores).",
            (Metric("wall_s", "wall s", False, 3),),
            (
                Case("serial", "serial (no pool)"),
                Case("stdlib.PPE", "concurrent.futures `ProcessPoolExecutor.map`"),
                Case("ferropool.PPE", "ferropool `ProcessPoolExecutor.map`", baseline="stdlib.PPE"),
                Case("loky.PPE", "loky `ProcessPoolExecutor.map`", baseline="stdlib.PPE", anchor="loky"),
                Case("pebble.ProcessPool", "pebble `ProcessPool.map`", baseline="stdlib.PPE", anchor="pebble"),
                Case("mpire.WorkerPool", "mpire `WorkerPool.map`", baseline="stdlib.PPE", anchor="mpire"),
            ),
        ),
        Workload(
            "startup",
            "startup: a short-lived pool",
            "In a fresh process, with the library already imported: create a {workers}-worker pool, "
            "run one no-op, `shutdown(wait=True)`. ferropool's default forks workers from its fork "
            "server (started by the first pool, so included here). The stdlib starts spawn workers "
            "on demand, so its spawn row may start only one.",
            (Metric("ms", "ms", False, 1),),
            (
                Case("stdlib.PPE", "concurrent.futures `ProcessPoolExecutor`, fork", "fork"),
                Case("ferropool.PPE", "ferropool `ProcessPoolExecutor`, default", "default", "stdlib.PPE/fork"),
                Case("stdlib.PPE", "concurrent.futures `ProcessPoolExecutor`, spawn", "spawn"),
                Case(
                    "ferropool.PPE",
                    'ferropool `ProcessPoolExecutor`, `mp_context="spawn"`',
                    "spawn",
                    "stdlib.PPE/spawn",
                ),
                Case("loky.PPE", "loky `ProcessPoolExecutor`, its default", "default", "stdlib.PPE/fork", "loky"),
                Case("pebble.ProcessPool", "pebble `ProcessPool`, its default", "default", "stdlib.PPE/fork", "pebble"),
                Case("mpire.WorkerPool", "mpire `WorkerPool`, its default", "default", "stdlib.PPE/fork", "mpire"),
            ),
        ),
        Workload(
            "threads",
            "threads: thread-pool dispatch",
            "{threads:,} no-op tasks submitted one by one to a warm {thread_workers}-thread pool, then all awaited.",
            (TASKS_PER_S,),
            (
                Case("stdlib.TPE", "concurrent.futures `ThreadPoolExecutor.submit`"),
                Case("ferropool.TPE", "ferropool `ThreadPoolExecutor.submit`", baseline="stdlib.TPE"),
                Case("pebble.ThreadPool", "pebble `ThreadPool.schedule`", baseline="stdlib.TPE", anchor="pebble"),
            ),
        ),
        Workload(
            "imap",
            "imap: lazy ordered iteration",
            "`Pool.imap(noop, range({imap:,}), chunksize=1)` on a warm {workers}-worker pool, "
            "results consumed as they arrive.",
            (ITEMS_PER_S,),
            (
                Case("stdlib.Pool", "multiprocessing `Pool.imap`"),
                Case("ferropool.Pool", "ferropool `Pool.imap`", baseline="stdlib.Pool"),
                Case("mpire.WorkerPool", "mpire `WorkerPool.imap`", baseline="stdlib.Pool", anchor="mpire"),
            ),
        ),
        Workload(
            "respawn",
            "respawn: the cost of a crashed worker",
            "A 1-worker pool whose task ends its worker (`os._exit`), a no-op queued behind it: time "
            "from the crashed task's failure to the no-op's result, which a replacement worker "
            "served; median of {respawn} crashes per run. The stdlib's pools cannot be measured: a "
            "dead worker breaks them for good.",
            (Metric("ms", "ms", False, 2),),
            (
                Case("ferropool.PPE", "ferropool `ProcessPoolExecutor`, default (fork server)", "default"),
                Case("ferropool.PPE", 'ferropool `ProcessPoolExecutor`, `mp_context="spawn"`', "spawn"),
            ),
        ),
        Workload(
            "sweep",
            "sweep: throughput against task duration",
            "Tasks that busy-wait (`spin`: they use the CPU, unlike a sleep) for 1 µs to 10 ms, "
            "submitted one by one to a warm {workers}-worker process pool, then all awaited; one "
            "fresh process per implementation and duration. Each point runs about "
            "{sweep_work_ms:,} ms of busy waiting in all ({sweep_max_tasks:,} tasks at most, so "
            "the short durations measure dispatch). *Ideal* is {workers} workers kept busy "
            "({workers} / duration); *serial* is one core doing the work with no pool "
            "(1 / duration): a pool pays off where its line rises above serial.",
            (TASKS_PER_S,),
            _sweep_cases(),
            layout="sweep",
        ),
        Workload(
            "footprint_worker",
            "footprint: memory of an idle worker",
            "A warm {workers}-worker pool, idle for {settle_ms:,} ms, in a fresh process: per "
            "worker (mean of the {workers}), its resident set (RSS, which counts pages shared "
            "copy-on-write with a parent or fork server in every process) and its unique set "
            "(USS, what ending the worker gives back); and the USS of the pool's helper "
            "processes (fork server, resource tracker), summed. Lower is better. psutil's "
            "`memory_full_info`; USS needs Linux, macOS or Windows.",
            (
                Metric("rss_mib", "worker RSS MiB", False, 1),
                Metric("uss_mib", "worker USS MiB", False, 1),
                Metric("helpers_uss_mib", "helpers USS MiB", False, 1),
            ),
            _footprint_worker_cases(),
        ),
        Workload(
            "footprint_imap",
            "footprint: the parent's memory while imap streams",
            "`Pool.imap(noop, items)` (chunksize 1) on a warm {workers}-worker pool, results read "
            "as they arrive; `items` yields `range(n)` and counts what the pool has drawn. "
            "*Stream*: n = {imap_stream:,}. *Slow reader*: n = {imap_slow:,}, the reader pauses "
            "1 ms every 10 results (under 10,000 items/s, slower than the workers). Sampled before "
            "the first result and after every tenth of them: the parent's peak RSS growth over the "
            "first sample, and the most items drawn from the input but not yet read back "
            "(read-ahead); lower is better. The stdlib's task-handler thread draws the input as "
            "fast as its workers take tasks, whatever the reader does, and keeps the results "
            "until they are read; ferropool draws only a bounded buffer ahead of the reader. At "
            "most 3 repeats: the stdlib's stream is long.",
            (
                Metric("peak_growth_mib", "peak RSS growth MiB", False, 1),
                Metric("read_ahead", "max read-ahead items", False, 0),
                ITEMS_PER_S,
            ),
            (
                Case("stdlib.Pool", "multiprocessing `Pool.imap`, stream"),
                Case("ferropool.Pool", "ferropool `Pool.imap`, stream", baseline="stdlib.Pool"),
                Case("stdlib.Pool", "multiprocessing `Pool.imap`, slow reader", "slow"),
                Case("ferropool.Pool", "ferropool `Pool.imap`, slow reader", "slow", "stdlib.Pool/slow"),
            ),
            max_repeat=3,
        ),
        Workload(
            "footprint_cpu",
            "footprint: CPU used by an idle pool",
            "A warm {workers}-worker pool left idle for {idle_s} s (after {settle_ms:,} ms to "
            "settle): CPU milliseconds used in that window by the parent process (all threads, "
            "`time.process_time`), by the workers (summed) and by helper processes (fork "
            "server, resource tracker; summed). Children's CPU time is the sum of their threads' "
            "`/proc/PID/task/*/schedstat` run time (ns), else psutil `cpu_times` (10 ms ticks). "
            "Lower is better; an idle pool should use next to none.",
            (
                Metric("parent_cpu_ms", "parent CPU ms", False, 2),
                Metric("workers_cpu_ms", "workers CPU ms", False, 2),
                Metric("helpers_cpu_ms", "helpers CPU ms", False, 2),
            ),
            (
                Case("stdlib.PPE", "concurrent.futures `ProcessPoolExecutor`"),
                Case("ferropool.PPE", "ferropool `ProcessPoolExecutor`", baseline="stdlib.PPE"),
                Case("stdlib.Pool", "multiprocessing `Pool`"),
                Case("ferropool.Pool", "ferropool `Pool`", baseline="stdlib.Pool"),
            ),
        ),
    )
}
# Names that stand for several workloads on the command line.
WORKLOAD_GROUPS = {"footprint": ("footprint_worker", "footprint_imap", "footprint_cpu")}


# --------------------------------------------------------------------------------------------
# Parent side: running the children
# --------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    """Everything measured for one case: raw values per metric, or why there are none."""

    case: Case
    values: dict[str, list[float]]
    na: str | None = None
    error: str | None = None


def run_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Measure one case in a fresh interpreter and return its parsed result.

    The benches directory goes on ``PYTHONPATH`` so that workers of any start method can
    import ``_bench_tasks`` to unpickle the task functions.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (BENCH_DIR, env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARKER) and proc.returncode == 0:
            result: dict[str, Any] = json.loads(line[len(RESULT_MARKER) :])
            return result
    tail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return {"error": tail, "stderr": proc.stderr}


def rotated(cases: list[Case], shift: int) -> list[Case]:
    """The cases in round-robin order, started one place later on each repeat.

    Rotating spreads "who runs first / right after whom" evenly over the repeats.
    """
    if not cases:
        return cases
    shift %= len(cases)
    return cases[shift:] + cases[:shift]


def anchor_installed(name: str) -> bool:
    """Whether an anchor library could be imported, without importing it here."""
    return importlib.util.find_spec(name) is not None


def cases_to_run(workload: Workload, anchors: bool) -> list[Case]:
    """The workload's cases; anchor rows only when ``--anchors`` was given."""
    return [c for c in workload.cases if c.anchor is None or anchors]


def run_workload(workload: Workload, opts: argparse.Namespace, sizes: dict[str, int]) -> dict[str, CaseResult]:
    """All repeats of one workload, round-robin across its implementations."""
    cases = cases_to_run(workload, opts.anchors)
    results = {c.key: CaseResult(c, {m.key: [] for m in workload.metrics}) for c in cases}
    for case in cases:
        if case.anchor is not None and not anchor_installed(case.anchor):
            results[case.key].na = f"{case.anchor} is not installed"
    repeats = min(opts.repeat, workload.max_repeat or opts.repeat)
    for repeat in range(repeats):
        for case in rotated(cases, repeat):
            result = results[case.key]
            if result.na or result.error:
                continue
            spec = {
                "workload": workload.name,
                "impl": case.impl,
                "variant": case.variant,
                "workers": opts.workers,
                "sizes": sizes,
            }
            out = run_child(spec, opts.timeout)
            _record(result, out)
            _progress(workload, case, repeat, repeats, result, out)
    return results


def _record(result: CaseResult, out: dict[str, Any]) -> None:
    """File one child's answer under its case."""
    if "na" in out:
        result.na = out["na"]
    elif "error" in out:
        result.error = out["error"]
        if out.get("stderr"):
            sys.stderr.write(out["stderr"])
    else:
        for key, value in out["metrics"].items():
            result.values[key].append(value)


def _progress(
    workload: Workload, case: Case, repeat: int, repeats: int, result: CaseResult, out: dict[str, Any]
) -> None:
    """One line per measurement on stderr, so a long run shows it is alive."""
    if "metrics" in out:
        shown = ", ".join(f"{m.label} {_fmt(out['metrics'][m.key], m.digits)}" for m in workload.metrics)
    else:
        shown = f"n/a ({result.na})" if result.na else f"ERROR: {result.error}"
    print(f"[{workload.name} {repeat + 1}/{repeats}] {case.label}: {shown}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Parent side: the report
# --------------------------------------------------------------------------------------------


def _fmt(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}"


def _cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else whatever platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_revision() -> str | None:
    """The checkout's commit (and whether it has local changes), to tie numbers to code."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def collect_meta(opts: argparse.Namespace, sizes: dict[str, int]) -> dict[str, Any]:
    """The facts a reader needs to judge and reproduce the numbers."""
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    anchors = {name: (_version(name) or "not installed") if opts.anchors else "not requested" for name in ANCHORS}
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "cpu_model": _cpu_model(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "ferropool": _version("ferropool") or "not installed",
        "git": _git_revision(),
        "anchors": anchors,
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "workers": opts.workers,
        "thread_workers": THREAD_WORKERS,
        "repeats": opts.repeat,
        "quick": opts.quick,
        "sizes": sizes,
    }


def _template_values(sizes: dict[str, int], workers: int) -> dict[str, Any]:
    """What the workload descriptions may refer to."""
    return {
        **sizes,
        "workers": workers,
        "thread_workers": THREAD_WORKERS,
        "map_chunk": map_chunksize(sizes["map_chunked"], workers),
        "imap_step": max(1, sizes["imap_stream"] // 10),
    }


def render_header(meta: dict[str, Any]) -> list[str]:
    """The run's facts as a two-column table, then how to read the rest."""
    anchors = ", ".join(f"{k} {v}" for k, v in meta["anchors"].items())
    load = ", ".join(f"{x:.2f}" for x in meta["load_avg"]) if meta["load_avg"] else "unknown"
    sizes = meta["sizes"]
    ferropool = meta["ferropool"] + (f" (git {meta['git']})" if meta["git"] else "")
    rows = [
        ("Date (UTC)", meta["date_utc"]),
        ("CPU", f"{meta['cpu_count']} × {meta['cpu_model']} ({meta['cpu_usable']} usable by this process)"),
        ("Load average at start", load),
        ("Platform", meta["platform"]),
        ("Python", meta["python"]),
        ("ferropool", ferropool),
        ("Anchors", anchors),
        ("Command", f"`{meta['command']}`"),
        ("Workers", f"{meta['workers']} per process pool; {meta['thread_workers']} threads per thread pool"),
        ("Repeats", f"{meta['repeats']} per implementation, round-robin, each in a fresh process"),
        (
            "Sizes",
            f"submit {sizes['submit']:,}; latency {sizes['latency']:,} (+{sizes['latency_warmup']} warm-up); "
            f"map {sizes['map']:,} and {sizes['map_chunked']:,}; cpu {sizes['cpu_tasks']} × fib({sizes['fib_n']}); "
            f"threads {sizes['threads']:,}; imap {sizes['imap']:,}; sweep {sizes['sweep_work_ms']:,} ms of "
            f"busy waiting per point (at most {sizes['sweep_max_tasks']:,} tasks); imap stream "
            f"{sizes['imap_stream']:,} (slow reader {sizes['imap_slow']:,}); idle {sizes['idle_s']} s"
            + (" (`--quick`)" if meta["quick"] else ""),
        ),
    ]
    lines = ["# ferropool benchmarks", "", "Generated by `benches/run.py`; see `benches/README.md`.", ""]
    lines += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += [
        "",
        "**How to read.** Each cell is the median (and min, max) over the repeats. *vs stdlib* is "
        "this row's median divided by the median of the standard-library row it is compared with "
        "(the row marked *baseline* with the same API): for throughput (tasks/s, items/s) a ratio "
        "above 1 means faster than the stdlib; for latency and time (µs, ms, s) a ratio below 1 "
        "means faster. Where a table has several baselines, a letter says which one a ratio "
        "divides by. The machine, its load and the sizes above all move these numbers; compare "
        "rows of one run, not runs of different machines.",
        "",
    ]
    return lines


def _baseline_tags(results: dict[str, CaseResult]) -> dict[str, str]:
    """Letters naming the baseline rows, needed only when a table has more than one baseline.

    With one baseline every ratio is plainly against it; with several (executor API vs Pool API,
    fork vs spawn) each ratio says which row it divides by.
    """
    keys = [r.case.key for r in results.values() if r.case.baseline is None and r.case.impl != "serial"]
    return {key: chr(ord("a") + i) for i, key in enumerate(keys)} if len(keys) > 1 else {}


def _ratio_cell(result: CaseResult, metric: Metric, results: dict[str, CaseResult], tags: dict[str, str]) -> str:
    """The row's median over its baseline's median, or why there is none."""
    case = result.case
    if case.baseline is None:
        if case.impl == "serial":
            return ""
        return f"baseline ({tags[case.key]})" if case.key in tags else "baseline"
    base = results.get(case.baseline)
    if base is None or not base.values[metric.key] or not result.values[metric.key]:
        return "n/a"
    base_median = statistics.median(base.values[metric.key])
    if base_median == 0:
        return "n/a"
    ratio = statistics.median(result.values[metric.key]) / base_median
    return f"{ratio:.2f}×" + (f" vs ({tags[case.baseline]})" if case.baseline in tags else "")


def render_workload(workload: Workload, results: dict[str, CaseResult], template: dict[str, Any]) -> list[str]:
    """One workload's section: what it measures and a table with a row per case and metric."""
    lines = [f"## {workload.title}", "", workload.what.format(**template), ""]
    return lines + render_table(workload, results) + [""]


def render_table(workload: Workload, results: dict[str, CaseResult]) -> list[str]:
    """A row per case and metric: median, min, max, ratio to the stdlib; then what is missing."""
    serial = results.get("serial")
    tags = _baseline_tags(results)
    with_speedup = serial is not None
    header = "| Implementation | Metric | Median | Min | Max | vs stdlib |" + (
        " Speedup vs serial |" if with_speedup else ""
    )
    lines = [header]
    lines.append("|---|---|---:|---:|---:|---:|" + ("---:|" if with_speedup else ""))
    for result in results.values():
        for metric in workload.metrics:
            values = result.values[metric.key]
            if values:
                cells = [
                    _fmt(statistics.median(values), metric.digits),
                    _fmt(min(values), metric.digits),
                    _fmt(max(values), metric.digits),
                    _ratio_cell(result, metric, results, tags),
                ]
            else:
                reason = "error" if result.error else "n/a"
                cells = [reason, "", "", ""]
            if with_speedup:
                cells.append(_speedup_cell(values, serial.values[metric.key] if serial else []))
            lines.append(f"| {result.case.label} | {metric.label} | " + " | ".join(cells) + " |")
    notes = [f"{r.case.label}: {r.na or r.error}" for r in results.values() if r.na or r.error]
    if notes:
        lines += ["", "Not measured or incomplete: " + "; ".join(notes) + "."]
    return lines


def _sweep_medians(results: dict[str, CaseResult], impl: str) -> dict[str, float]:
    """One implementation's median tasks/s per duration (variant name), where it was measured."""
    medians = {}
    for duration in SWEEP_DURATIONS:
        result = results.get(f"{impl}/{duration}")
        if result is not None and result.values["tasks_per_s"]:
            medians[duration] = statistics.median(result.values["tasks_per_s"])
    return medians


def _pays_off_from(medians: dict[str, float]) -> str:
    """The shortest duration from which the pool beats serial execution at every longer one."""
    if len(medians) < len(SWEEP_DURATIONS):
        return ""
    found = ""
    for duration in reversed(SWEEP_DURATIONS):
        if medians[duration] <= 1 / SWEEP_DURATIONS[duration]:
            break
        found = SWEEP_LABELS[duration]
    return found or "never"


def _share(fraction: float) -> str:
    """A share of the ideal as a percentage, with a decimal below 10 % so small ones are not 0 %."""
    return f"{fraction:.0%}" if fraction >= 0.1 else f"{fraction:.1%}"


def render_sweep(workload: Workload, results: dict[str, CaseResult], template: dict[str, Any]) -> list[str]:
    """The sweep as a row per implementation and a column per task duration.

    Each cell is the median tasks/s and, in parentheses, its share of the ideal; the full
    per-case table (min, max, ratio to the stdlib) follows, folded away.
    """
    workers = template["workers"]
    lines = [f"## {workload.title}", "", workload.what.format(**template), ""]
    if template.get("sweep_plot"):
        lines += [template["sweep_plot"], ""]
    lines.append("| Implementation | " + " | ".join(SWEEP_LABELS.values()) + " | Pays off from |")
    lines.append("|---|" + "---:|" * len(SWEEP_DURATIONS) + "---:|")
    ideal = [f"{workers / seconds:,.0f}" for seconds in SWEEP_DURATIONS.values()]
    serial = [f"{1 / seconds:,.0f}" for seconds in SWEEP_DURATIONS.values()]
    lines.append(f"| *ideal: {workers} / duration* | " + " | ".join(ideal) + " | |")
    lines.append("| *serial: 1 / duration* | " + " | ".join(serial) + " | |")
    for row in _sweep_rows():
        if not any(key.startswith(f"{row.impl}/") for key in results):
            continue  # an anchor that was not requested
        medians = _sweep_medians(results, row.impl)
        cells = []
        for duration, seconds in SWEEP_DURATIONS.items():
            result = results[f"{row.impl}/{duration}"]
            if duration in medians:
                cells.append(f"{medians[duration]:,.0f} ({_share(medians[duration] * seconds / workers)})")
            else:
                cells.append("error" if result.error else "n/a")
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {_pays_off_from(medians)} |")
    lines += [
        "",
        "Cells: median tasks/s (share of the ideal). *Pays off from*: the shortest duration from "
        "which the pool beats serial execution at every longer one.",
        "",
        "<details><summary>Every point: min, max, ratio to the stdlib</summary>",
        "",
        *render_table(workload, results),
        "",
        "</details>",
        "",
    ]
    return lines


def plot_sweep(results: dict[str, CaseResult], meta: dict[str, Any], path: str) -> str | None:
    """Draw the sweep as a log-log chart in ``path``; the reason when it cannot, else ``None``.

    One line per implementation (median tasks/s), the ideal dashed, serial dotted.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed"
    workers = meta["workers"]
    xs = list(SWEEP_DURATIONS.values())
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.plot(xs, [workers / x for x in xs], "k--", linewidth=1.2, label=f"ideal ({workers} / duration)")
    ax.plot(xs, [1 / x for x in xs], color="grey", linestyle=":", linewidth=1.5, label="serial (1 / duration)")
    for row in _sweep_rows():
        medians = _sweep_medians(results, row.impl)
        if medians:
            points = [(SWEEP_DURATIONS[d], v) for d, v in medians.items()]
            ferropool = row.impl.startswith("ferropool.")
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                marker="o",
                markersize=4,
                linewidth=2.2 if ferropool else 1.2,
                label=row.label.replace("`", ""),
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs, list(SWEEP_LABELS.values()))
    ax.minorticks_off()
    ax.set_xlabel("task duration (busy wait)")
    ax.set_ylabel("tasks/s (median)")
    ax.set_title(f"Throughput against task duration, {workers} workers ({meta['cpu_usable']} usable cores)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _speedup_cell(values: list[float], serial: list[float]) -> str:
    """Serial wall time over this row's wall time (medians)."""
    if not values or not serial:
        return ""
    return f"{statistics.median(serial) / statistics.median(values):.2f}×"


def render_markdown(
    meta: dict[str, Any], all_results: dict[str, dict[str, CaseResult]], sweep_plot: str | None = None
) -> str:
    """The whole report; ``sweep_plot`` is the markdown line the sweep section shows its chart with."""
    template = {**_template_values(meta["sizes"], meta["workers"]), "sweep_plot": sweep_plot}
    lines = render_header(meta)
    for name, results in all_results.items():
        workload = WORKLOADS[name]
        render = render_sweep if workload.layout == "sweep" else render_workload
        lines += render(workload, results, template)
    return "\n".join(lines)


def to_json(meta: dict[str, Any], all_results: dict[str, dict[str, CaseResult]]) -> dict[str, Any]:
    """Raw values, for anyone who wants to redo the statistics."""
    return {
        "meta": meta,
        "workloads": {
            name: {
                key: {
                    "label": r.case.label,
                    "impl": r.case.impl,
                    "variant": r.case.variant,
                    "baseline": r.case.baseline,
                    "values": r.values,
                    "na": r.na,
                    "error": r.error,
                }
                for key, r in results.items()
            }
            for name, results in all_results.items()
        },
    }


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeat", type=int, default=None, help="repeats per implementation (default 5; 1 with --quick)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes and one repeat: a smoke run")
    parser.add_argument(
        "--workload",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of: {', '.join(WORKLOADS)}; "
        + "; ".join(f"{name} = {','.join(members)}" for name, members in WORKLOAD_GROUPS.items()),
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per process pool (default 2)")
    parser.add_argument("--anchors", action="store_true", help="also measure loky, mpire and pebble where installed")
    parser.add_argument("--out", help="write the markdown report to this file (e.g. BENCHMARKS.md)")
    parser.add_argument("--json", help="write the raw values to this file")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw the sweep workload as a log-log chart (needs matplotlib)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per measurement (default 600)")
    opts = parser.parse_args(argv)
    names = [w.strip() for w in opts.workload.split(",") if w.strip()]
    expanded = [member for w in names for member in WORKLOAD_GROUPS.get(w, (w,))]
    opts.workloads = list(dict.fromkeys(expanded))
    unknown = [w for w in opts.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}")
    if opts.repeat is None:
        opts.repeat = 1 if opts.quick else 5
    if opts.repeat < 1 or opts.workers < 1:
        parser.error("--repeat and --workers must be at least 1")
    return opts


def sweep_plot(opts: argparse.Namespace, meta: dict[str, Any], all_results: dict[str, Any]) -> str | None:
    """Draw ``--plot`` if asked; the markdown the sweep section shows instead of or with it.

    The image link is relative to the ``--out`` file, so the report embeds it wherever both go.
    """
    if not opts.plot:
        return None
    if "sweep" not in all_results:
        print("no plot: --plot draws the sweep workload, which did not run", file=sys.stderr)
        return None
    why_not = plot_sweep(all_results["sweep"], meta, opts.plot)
    if why_not is not None:
        print(f"no plot: {why_not}", file=sys.stderr)
        return f"(no plot: {why_not})"
    print(f"plot written to {opts.plot}", file=sys.stderr)
    base = os.path.dirname(os.path.abspath(opts.out)) if opts.out else os.getcwd()
    link = os.path.relpath(os.path.abspath(opts.plot), base).replace(os.sep, "/")
    return f"![Throughput against task duration, log-log]({link})"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child_main(argv[1])
    opts = parse_args(argv)
    sizes = QUICK_SIZES if opts.quick else FULL_SIZES
    meta = collect_meta(opts, sizes)
    all_results = {name: run_workload(WORKLOADS[name], opts, sizes) for name in opts.workloads}
    markdown = render_markdown(meta, all_results, sweep_plot(opts, meta, all_results))
    if opts.out:
        with open(opts.out, "w", encoding="utf-8") as f:
            f.write(markdown + "\n")
    if opts.json:
        with open(opts.json, "w", encoding="utf-8") as f:
            json.dump(to_json(meta, all_results), f, indent=2)
            f.write("\n")
    print(markdown)
    failed = any(r.error for results in all_results.values() for r in results.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
