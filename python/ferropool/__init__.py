"""ferropool: multiprocessing and concurrent.futures with a Rust core.

``import ferropool as multiprocessing`` or ``from ferropool import ProcessPoolExecutor``: the
same names and semantics as the stdlib, plus lambdas that just work, crashed workers that cost
one task, and waits that never hang. Submodules load on first use, so a worker process that
imports ``ferropool._worker.main`` pays only for what it runs.
"""

from __future__ import annotations

from ._core import __version__, cpu_count

# nothing here may import typing, re or concurrent.futures eagerly: every worker process imports
# this package, and its start-up time is the pool's start-up time
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from . import reduction as reducer
    from ._pool.logs import get_logger, log_to_stderr
    from ._pool.stats import PoolStats
    from ._worker.state import worker_state
    from .connection import AuthenticationError, BufferTooShort, Pipe
    from .context import (
        allow_connection_pickling,
        freeze_support,
        get_all_start_methods,
        get_context,
        get_start_method,
        set_executable,
        set_forkserver_preload,
        set_start_method,
    )
    from .errors import (
        BrokenExecutor,
        BrokenProcessPool,
        BrokenThreadPool,
        CancelledError,
        InvalidStateError,
        TimeoutError,
        WorkerDiedError,
    )
    from .futures import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_EXCEPTION,
        Executor,
        Future,
        ProcessPoolExecutor,
        ThreadPoolExecutor,
        as_completed,
        wait,
    )
    from .managers import Manager
    from .pool import AsyncResult, Pool, ThreadPool
    from .process import Process, ProcessError, active_children, current_process, parent_process
    from .queues import JoinableQueue, Queue, SimpleQueue
    from .sharedctypes import Array, RawArray, RawValue, Value
    from .synchronize import Barrier, BoundedSemaphore, Condition, Event, Lock, RLock, Semaphore

__all__ = [
    "ALL_COMPLETED",
    "Array",
    "AsyncResult",
    "AuthenticationError",
    "BufferTooShort",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Queue",
    "RLock",
    "RawArray",
    "RawValue",
    "Semaphore",
    "SimpleQueue",
    "Value",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "BrokenExecutor",
    "BrokenProcessPool",
    "BrokenThreadPool",
    "CancelledError",
    "Executor",
    "Future",
    "InvalidStateError",
    "Pipe",
    "Pool",
    "Process",
    "ProcessError",
    "PoolStats",
    "ProcessPoolExecutor",
    "SUBDEBUG",
    "SUBWARNING",
    "ThreadPool",
    "ThreadPoolExecutor",
    "TimeoutError",
    "WorkerDiedError",
    "__version__",
    "active_children",
    "allow_connection_pickling",
    "as_completed",
    "cpu_count",
    "current_process",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_start_method",
    "parent_process",
    "reducer",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
    "get_logger",
    "log_to_stderr",
    "wait",
    "worker_state",
]

_LAZY = {
    "AsyncResult": "pool",
    "Pool": "pool",
    "ThreadPool": "pool",
    "ALL_COMPLETED": "futures",
    "FIRST_COMPLETED": "futures",
    "FIRST_EXCEPTION": "futures",
    "Executor": "futures",
    "Future": "futures",
    "ProcessPoolExecutor": "futures",
    "ThreadPoolExecutor": "futures",
    "as_completed": "futures",
    "wait": "futures",
    "BrokenExecutor": "errors",
    "BrokenProcessPool": "errors",
    "BrokenThreadPool": "errors",
    "CancelledError": "errors",
    "InvalidStateError": "errors",
    "TimeoutError": "errors",
    "WorkerDiedError": "errors",
    "Process": "process",
    "ProcessError": "process",
    "active_children": "process",
    "current_process": "process",
    "parent_process": "process",
    "Pipe": "connection",
    "AuthenticationError": "connection",
    "BufferTooShort": "connection",
    "freeze_support": "context",
    "get_all_start_methods": "context",
    "get_context": "context",
    "get_start_method": "context",
    "set_start_method": "context",
    "set_executable": "context",
    "set_forkserver_preload": "context",
    "allow_connection_pickling": "context",
    "Lock": "synchronize",
    "RLock": "synchronize",
    "Semaphore": "synchronize",
    "BoundedSemaphore": "synchronize",
    "Condition": "synchronize",
    "Event": "synchronize",
    "Barrier": "synchronize",
    "Value": "sharedctypes",
    "Array": "sharedctypes",
    "RawValue": "sharedctypes",
    "RawArray": "sharedctypes",
    "Queue": "queues",
    "SimpleQueue": "queues",
    "JoinableQueue": "queues",
    "get_logger": "_pool.logs",
    "log_to_stderr": "_pool.logs",
    "worker_state": "_worker.state",
    "PoolStats": "_pool.stats",
    "Manager": "managers",
}


#: logging levels below DEBUG and between INFO and WARNING, as ``multiprocessing.util`` has
SUBDEBUG = 5
SUBWARNING = 25


def __getattr__(name: str) -> object:
    import importlib

    if name == "reducer":  # the stdlib's is its reduction module, too
        value: object = importlib.import_module(".reduction", __name__)
        globals()[name] = value
        return value
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'ferropool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
