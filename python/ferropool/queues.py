"""Queues between processes, as ``multiprocessing.queues``.

A queue is a ring of pickled messages in an anonymous shared segment, read and written by the
Rust core (``src/queue.rs``): ``put`` pickles in the calling thread and copies the bytes into the
ring, ``get`` copies them out and unpickles, with no feeder thread and no pipe. An object that
cannot be pickled raises at the ``put`` call. Queues pickle, so they can be passed to a
``Process`` or to pool tasks; the sending process must still hold its queue when the receiver
unpickles it.

A queue holds up to 4 MiB of pickled data (``capacity`` changes that) besides its ``maxsize``
limit: a ``put`` that finds the ring full waits for a reader, as one on a full ``maxsize`` queue
does. A message larger than a quarter of the ring travels in parts.
"""

from __future__ import annotations

from . import _core

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["JoinableQueue", "Queue", "SimpleQueue"]


def _rebuild(cls: Any, handle: tuple[int, int, int, int]) -> Any:
    return cls(handle=handle)


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

    def __new__(
        cls,
        maxsize: int = 0,
        *,
        capacity: int | None = None,
        handle: tuple[int, int, int, int] | None = None,
    ) -> Queue:
        return super().__new__(cls, maxsize, False, capacity, handle)

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
        """Waits for the feeder thread; ferropool has none (``put`` writes to shared memory
        itself), so this only checks, as the stdlib does, that ``close()`` was called."""
        if not self._closed:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self) -> None:
        """Kept for the stdlib's API: with no feeder thread there is nothing to cancel."""


class JoinableQueue(Queue):
    """A ``Queue`` whose consumers confirm each item with ``task_done()``, so that ``join()``
    can wait until all of them are processed, as ``multiprocessing.JoinableQueue``."""

    def __new__(
        cls,
        maxsize: int = 0,
        *,
        capacity: int | None = None,
        handle: tuple[int, int, int, int] | None = None,
    ) -> JoinableQueue:
        return _core.Queue.__new__(cls, maxsize, True, capacity, handle)  # type: ignore[return-value]

    def join(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Blocks until every item put has been marked done with ``task_done()``.

        Returns:
            ``True``, or ``False`` if ``timeout`` (a ferropool extension) expired first.
        """
        return super().join(timeout)


class SimpleQueue(_core.Queue):
    """An unbounded queue with only ``put``, ``get``, ``empty`` and ``close``, as
    ``multiprocessing.SimpleQueue``."""

    def __new__(cls, *, handle: tuple[int, int, int, int] | None = None) -> SimpleQueue:
        return super().__new__(cls, 0, False, None, handle)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def put(self, obj: object) -> None:  # type: ignore[override]
        """Puts ``obj`` into the queue."""
        super().put(obj)

    def get(self) -> Any:  # type: ignore[override]
        """Removes and returns an item, waiting for one."""
        return super().get()
