"""Per-worker state: what a pool's initializer returned, for every task on that worker.

``Pool(initializer=load_model)`` runs ``load_model()`` once in each worker; a task then reaches
the model with ``ferropool.worker_state()``. A worker process keeps one value (stored by
``_worker/start.start_worker``); in a thread pool each thread keeps its own (the initializer
runs once per thread), so the value never needs a lock of its own.
"""

from __future__ import annotations

import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_MISSING: object = object()
_thread = threading.local()
#: What this worker process's initializer returned (``set_for_process``).
_process_value: Any = _MISSING


def set_for_process(value: Any) -> None:
    """Keeps what a worker process's initializer returned, for every task of the process."""
    global _process_value
    _process_value = value


def worker_state() -> Any:
    """Returns what the pool's ``initializer`` returned in this worker.

    In a process pool, the value of this worker process; in a thread pool, the value of this
    thread. Built once per worker, it serves every task the worker runs: a model, a database
    connection, a large table.

    Raises:
        LookupError: this is not a pool worker, or its pool has no initializer.
    """
    value = getattr(_thread, "value", _process_value)
    if value is _MISSING:
        raise LookupError(
            "worker_state() is only set in the workers of a pool created with an initializer: "
            "Pool(initializer=f) or ProcessPoolExecutor(initializer=f) stores what f returns"
        )
    return value


def _run_thread_initializer(initializer: Callable[..., object], *args: Any) -> None:
    _thread.value = initializer(*args)


def for_threads(initializer: Callable[..., object] | None) -> Callable[..., object] | None:
    """``initializer`` made to store its value for ``worker_state()`` in each pool thread."""
    if initializer is None:
        return None
    import functools

    return functools.partial(_run_thread_initializer, initializer)
