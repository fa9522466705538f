"""Typical user code on every public front end, checked with ``mypy --strict`` (not run).

If a signature in ferropool loses or breaks its types, this file stops type-checking: the
annotations below are what users write and expect to hold.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing.pool

import ferropool
from ferropool import (
    FIRST_COMPLETED,
    AsyncResult,
    Future,
    Pool,
    PoolStats,
    ProcessPoolExecutor,
    ThreadPool,
    ThreadPoolExecutor,
    as_completed,
    wait,
)


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def load_table(size: int) -> dict[int, int]:
    return {i: i * i for i in range(size)}


def lookup(key: int) -> int:
    table: dict[int, int] = ferropool.worker_state()
    return table[key]


def pools() -> None:
    with Pool(processes=2, initializer=load_table, initargs=(100,), worker_output="[{name}] ") as pool:
        squares: list[int] = pool.map(square, range(10), progress=True)
        sums: list[int] = pool.starmap(add, [(1, 2), (3, 4)], chunksize=1)
        one: int = pool.apply(square, (3,))
        pending: AsyncResult[int] = pool.apply_async(square, (4,), callback=print, error_callback=print)
        many = pool.map_async(square, range(5), progress={"desc": "squares"})
        in_order: list[int] = list(pool.imap(lookup, range(10), chunksize=2, progress=True))
        any_order: set[int] = set(pool.imap_unordered(square, iter(range(10)), buffersize=4))
        limited: list[int] = pool.options(timeout=5.0).map(square, [1, 2])
        stats: PoolStats = pool.stats()
        busy: float = sum(w.busy_seconds for w in stats.workers) + stats.queued + stats.in_flight
        print(squares, sums, one, pending.get(timeout=1.0), many.get(), in_order, any_order, limited, busy)
        pool.close()
        pool.join()
    with ThreadPool(4) as threads:
        lengths: list[int] = threads.map(len, ["a", "bb"])
        print(lengths, threads.stats().tasks_done)
    stdlib_alike: multiprocessing.pool.Pool | Pool = Pool(1, worker_logs=logging.INFO, limit_blas_threads=False)
    stdlib_alike.terminate()


def executors() -> None:
    with ProcessPoolExecutor(max_workers=2, cancel_running=True, worker_logs="DEBUG") as ex:
        fut: Future[int] = ex.submit(square, 5)
        value: int = fut.result(timeout=10)
        mapped: list[int] = list(ex.map(add, [1, 2], [3, 4], chunksize=2, progress=True))
        done, not_done = wait([fut], timeout=1.0, return_when=FIRST_COMPLETED)
        for f in as_completed([ex.submit(square, i) for i in range(3)], timeout=5, progress=True):
            print(f.result())
        print(value, mapped, done, not_done, fut.kill(), ex.stats().exits_by_cause)
        ex.options(timeout=2.0).submit(square, 1).result()
    base: concurrent.futures.Executor = ThreadPoolExecutor(max_workers=3, thread_name_prefix="io")
    base.shutdown(wait=True)


async def with_asyncio() -> int:
    with ProcessPoolExecutor(2) as ex, Pool(2) as pool:
        a: int = await ex.run(square, 3)
        b: int = await ex.submit(square, 4)
        c: int = await pool.run(add, 1, 2)
        d: int = await asyncio.get_running_loop().run_in_executor(ex, square, 5)
        total = 0
        async for item in pool.imap_unordered(square, range(10)):
            total += item
        return a + b + c + d + total


def on_a_cluster(scheduler: str) -> list[int]:
    """Type-checked only: the same calls on a Dask cluster (docs/scale-out.md)."""
    with ProcessPoolExecutor(max_workers=8, cluster=scheduler, task_timeout=60) as ex:
        first: int = ex.submit(square, 2).result()
    with Pool(cluster=scheduler, initializer=load_table, initargs=(10,)) as pool:
        return [first, *pool.map(square, range(10))]


def logs() -> None:
    log: logging.Logger = ferropool.log_to_stderr(logging.DEBUG)
    log.info("%s CPUs", ferropool.cpu_count())
    assert ferropool.get_logger() is log


def managers() -> None:
    from ferropool.connection import Client, Listener
    from ferropool.managers import BaseManager, SharedMemoryManager, SyncManager

    with ferropool.Manager() as manager:
        shared = manager.dict()
        shared["k"] = manager.list([1])
        lock = manager.Lock()
        with lock:
            print(shared["k"], manager.address)
    sync: SyncManager = SyncManager(address=("127.0.0.1", 0), authkey=b"key")
    server = sync.get_server()
    print(server.address, isinstance(sync, BaseManager))
    with SharedMemoryManager() as smm:
        smm.SharedMemory(16).close()
    with Listener(authkey=b"key") as listener:
        print(listener.address)
        if listener.address is None:
            Client(listener.address, authkey=b"key").close()


if __name__ == "__main__":
    managers()
    pools()
    executors()
    print(asyncio.run(with_asyncio()))
    logs()
