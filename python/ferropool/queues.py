"""Queues between processes, as ``multiprocessing.queues``.

A queue is a ring of pickled messages in an anonymous shared segment, read and written by the
Rust core (``src/queue.rs``): ``put`` pickles in the calling thread and copies the bytes into the
ring, ``get`` copies them out and unpickles, with no feeder thread and no pipe. An object that
cannot be pickled raises at the ``put`` call, unless a subclass overrides
``_on_queue_feeder_error(e, obj)``, the stdlib's hook for it. Queues pickle, so they can be passed to a
``Process`` or to pool tasks; the sending process must still hold its queue when the receiver
unpickles it.

The shared ring holds 4 MiB of pickled data (``capacity`` changes that); what does not fit
waits in the putting process, and a feeder thread writes it as readers make room, so ``put``
never waits for a reader unless ``maxsize`` says so (as with the stdlib). A message larger than
a quarter of the ring travels in parts.
"""

from __future__ import annotations

import weakref

from . import _core
from ._runtime import lifecycle

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any, Self, TypeVar

    _Q = TypeVar("_Q", bound=_core.Queue)

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]


def _rebuild(cls: Any, handle: tuple[int, int, int, int, int]) -> Any:
    return cls(handle=handle)


# Every queue handle in this process: at exit, items still in a handle's backlog are written to
# the shared ring first (the stdlib joins its feeder thread the same way), unless
# cancel_join_thread() was called on it.
_live: weakref.WeakSet[_core.Queue] = weakref.WeakSet()


def _flush_all() -> None:
    for q in list(_live):
        if not getattr(q, "_cancelled", False):
            q._flush()


lifecycle.after_exit(_flush_all)


def _track(q: _Q) -> _Q:
    _live.add(q)
    return q


class Queue(_core.Queue):
    """A FIFO queue shared between processes, as ``multiprocessing.Queue``.

    Args:
        maxsize: the most items the queue holds; ``put`` blocks while it is full. ``0`` or
            less means no limit.
        capacity: bytes of shared memory for pickled items not yet read (4 MiB by default).

    ``put(obj, block=True, timeout=None)`` raises ``queue.Full`` and ``get(block=True,
    timeout=None)`` raises ``queue.Empty`` when their wait runs out; both raise ``ValueError``
    after ``close()``.
    """

    _joinable = False  # whether the ring counts unfinished items for task_done() and join()

    def __new__(
        cls,
        maxsize: int = 0,
        *,
        capacity: int | None = None,
        handle: tuple[int, int, int, int, int] | None = None,
        ctx: Any = None,
    ) -> Self:
        """Creates the object, or attaches to an existing one by its ``handle`` (pickling).

        ``ctx`` is accepted for ``multiprocessing.queues.Queue(ctx=...)`` and not needed.
        """
        return _track(super().__new__(cls, maxsize, cls._joinable, capacity, handle))

    @staticmethod
    def _on_queue_feeder_error(e: Exception, obj: object) -> None:
        """Called by ``put()`` with the error when ``obj`` cannot be pickled.

        This default raises ``e`` from ``put()``. A subclass may override it, as with the
        stdlib, to handle the error instead: ``put()`` then returns normally and ``obj`` is
        not queued.
        """
        raise e

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} maxsize={self._maxsize} qsize={self.qsize()}>"

    def put_nowait(self, obj: object) -> None:
        """``put(obj, False)``: raises ``queue.Full`` at once if there is no room."""
        self.put(obj, False)

    def get_nowait(self) -> Any:
        """``get(False)``: raises ``queue.Empty`` at once if there is no item."""
        return self.get(False)

    def join_thread(self) -> None:
        """Waits until every item this process put is in shared memory; only after ``close()``.

        Items go straight to shared memory while it has room; the rest wait in this process
        and a feeder thread writes them as readers make room, as the stdlib's does. Interpreter
        exit also waits for them, unless ``cancel_join_thread()`` was called.
        """
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")
        self._flush()

    def cancel_join_thread(self) -> None:
        """Lets this process exit without waiting for its items not yet in shared memory.

        Those items are lost, as with the stdlib.
        """
        self._cancelled = True


class JoinableQueue(Queue):
    """A ``Queue`` with ``task_done()`` and ``join()``, as ``multiprocessing.JoinableQueue``.

    Consumers confirm each item with ``task_done()``, so that ``join()`` can wait until all of
    them are processed.
    """

    _joinable = True

    def join(self, timeout: float | None = None) -> bool:
        """Blocks until every item put has been marked done with ``task_done()``.

        Returns:
            ``True``, or ``False`` if ``timeout`` (a ferropool extension) expired first.
        """
        return super().join(timeout)


class SimpleQueue(_core.Queue):
    """An unbounded queue with only ``put``, ``get``, ``empty`` and ``close``.

    As ``multiprocessing.SimpleQueue``.
    """

    _cancelled = False

    def __new__(cls, *, handle: tuple[int, int, int, int, int] | None = None, ctx: Any = None) -> SimpleQueue:
        """Creates the object, or attaches to an existing one by its ``handle`` (pickling)."""
        return _track(super().__new__(cls, 0, False, None, handle))

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def put(self, obj: object) -> None:  # type: ignore[override]
        """Puts ``obj`` into the queue."""
        super().put(obj)

    def empty(self) -> bool:
        """Whether the queue is empty; ``OSError`` after ``close()``, used or not (as the stdlib's)."""
        if self._closed:
            raise OSError("handle is closed")
        return super().empty()

    def get(self) -> Any:  # type: ignore[override]
        """Removes and returns an item, waiting for one."""
        return super().get()
