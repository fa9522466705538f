"""``multiprocessing.dummy`` on ferropool: the multiprocessing API backed by threads.

Switching a program between processes and threads is one import line, as the stdlib promises::

    from .. import Pool  # processes
    from . import Pool      # threads

``Pool`` is ferropool's ``ThreadPool`` (threads owned by the Rust core); everything else is the
stdlib's ``multiprocessing.dummy``, whose ``Process`` is a thread and whose queues and locks are
``queue`` and ``threading`` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from multiprocessing.dummy import (
    Array,
    Barrier,
    BoundedSemaphore,
    Condition,
    DummyProcess,
    Event,
    JoinableQueue,
    Lock,
    Namespace,
    Pipe,
    Process,
    Queue,
    RLock,
    Semaphore,
    Value,
    active_children,
    current_process,
    freeze_support,
)
from typing import Any

from ..pool import ThreadPool
from . import connection
from ._manager import Manager

__all__ = [
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "Condition",
    "DummyProcess",
    "Event",
    "JoinableQueue",
    "Lock",
    "Manager",
    "Namespace",
    "Pipe",
    "Pool",
    "Process",
    "Queue",
    "RLock",
    "Semaphore",
    "Value",
    "active_children",
    "connection",
    "current_process",
    "freeze_support",
    "shutdown",
]


def Pool(
    processes: int | None = None, initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = ()
) -> ThreadPool:
    """A pool of threads with the ``multiprocessing.Pool`` API (``ferropool.ThreadPool``)."""
    return ThreadPool(processes, initializer, initargs)


def shutdown() -> None:
    """Kept for the stdlib's ``multiprocessing.dummy.shutdown``; nothing to do."""
