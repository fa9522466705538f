"""Adaptive chunking: how many items one task carries when the user gave no chunk size.

Workers report how long the items of each task took; later tasks are sized to carry about
``TARGET_S`` of work (joblib's ``batch_size='auto'`` idea). Tiny calls then travel thousands to a
task, and slow calls one to a task, so no worker starves at the end of a map.

``EagerMap`` serves ``Executor.map`` and ``Pool.map``/``starmap``/``map_async`` without a chunk
size. Like the stdlib, it takes every item at the call and runs them all whether or not the
results are read; unlike it, it submits them a few tasks at a time as earlier tasks complete,
which is what lets it size them. ``flush_all`` submits whatever is still held back before a pool
stops taking work.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .._runtime import lifecycle
from .._runtime.serialize import attach_traceback
from ..errors import CancelledError, TimeoutError
from . import progress as _progress
from .future import Future

#: Work one task should carry once item times are known.
TARGET_S = 0.001
#: Tasks an eager map keeps submitted per worker: enough to keep each worker's window full.
IN_FLIGHT_PER_WORKER = 4

_live: weakref.WeakSet[EagerMap] = weakref.WeakSet()


class BatchSizer:
    """Sizes tasks from how long their items took."""

    __slots__ = ("item_seconds", "maximum", "minimum", "per_task")

    def __init__(self, minimum: int, maximum: int) -> None:
        self.minimum = minimum
        self.maximum = max(minimum, maximum)
        self.per_task = minimum
        self.item_seconds: float | None = None

    def learn(self, seconds: float, items: int) -> None:
        """Takes in that ``items`` items took ``seconds``; updates ``per_task``."""
        item_seconds = seconds / max(items, 1)
        if self.item_seconds is None:
            self.item_seconds = item_seconds
        else:  # smoothed, so one slow item does not collapse the batch size
            self.item_seconds = 0.7 * self.item_seconds + 0.3 * item_seconds
        wanted = int(TARGET_S / max(self.item_seconds, 1e-8))
        self.per_task = max(self.minimum, min(wanted, self.maximum))


def unpack_outcomes(outcomes: list[tuple[bool, Any]], pool: bool = False) -> list[tuple[bool, Any]]:
    """A worker's per-item outcomes as ``(ok, value or exception with its remote traceback)``.

    ``pool``: see ``_runtime/serialize.attach_traceback``.
    """
    return [
        (True, v) if ok else (False, v[0] if v[1] is None else attach_traceback(v[0], v[1], pool)) for ok, v in outcomes
    ]


class EagerMap:
    """Every item of one map call, fed to the pool in adaptively sized tasks.

    ``submit(items)`` queues one task; its future holds ``(seconds, values)``, or
    ``(seconds, outcomes)`` with ``per_item=True`` (each item keeps its own exception, as
    ``Executor.map`` needs). Completion callbacks submit the next tasks, so the map runs to the
    end even if nobody reads it.
    """

    def __init__(
        self,
        submit: Callable[[Sequence[Any]], Future[Any]],
        items: Sequence[Any],
        workers: int,
        *,
        per_item: bool,
        owner: object,
        progress: Any = False,
    ) -> None:
        track = _progress.tracker(progress, len(items))
        if track is not None:  # the bar counts each task's items before its future completes
            submit = track.submitter(submit, len)
        self._track = track
        self._submit = submit
        self.owner = owner  # the backend whose shutdown flushes this map
        self._items = items
        self._per_item = per_item
        self._next = 0  # index of the first item not submitted yet
        self._target = IN_FLIGHT_PER_WORKER * workers
        # never more than the stdlib's four chunks per worker, so the work spreads evenly
        self._sizer = BatchSizer(1, -(-len(items) // (4 * workers)))
        self._tasks: deque[tuple[Future[Any], int]] = deque()  # submitted, not yet read
        self._in_flight = 0
        self._lock = threading.RLock()  # callbacks may run inside _feed (a future done at once)
        self._feeding = False
        self._stopped = False
        self.whole: Future[list[Any]] | None = None  # Pool.map's result (see deliver_to)
        _live.add(self)
        self._feed()

    # -- feeding ----------------------------------------------------------------------------

    def _feed(self, everything: bool = False) -> None:
        with self._lock:
            if self._feeding:
                return
            self._feeding = True
            try:
                while not self._stopped and self._next < len(self._items):
                    if not everything and self._in_flight >= self._target:
                        break
                    n = self._sizer.per_task
                    batch = self._items[self._next : self._next + n]
                    self._next += len(batch)
                    fut = self._submit(batch)
                    if len(batch) > 1 and fut.done() and not fut.cancelled() and fut.exception() is not None:
                        # an item could not be pickled: one task per item, so only that item fails
                        self._sizer.maximum = self._sizer.per_task = 1
                        self._next -= len(batch) - 1
                        batch = batch[:1]
                        fut = self._submit(batch)
                    self._in_flight += 1
                    self._tasks.append((fut, len(batch)))
                    fut.add_done_callback(self._task_done)
            finally:
                self._feeding = False
            if self._next >= len(self._items):
                self._all_submitted()

    def _all_submitted(self) -> None:
        _live.discard(self)
        if self._track is not None:
            self._track.seal()

    def _task_done(self, fut: Future[Any]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            seconds, values = fut.result()
            with self._lock:
                self._sizer.learn(seconds, len(values))
        with self._lock:
            self._in_flight -= 1
        self._feed()
        if self.whole is not None:
            self._settle_whole(fut)

    def flush(self) -> None:
        """Submits every item still held back (the pool is about to stop taking work)."""
        self._feed(everything=True)

    def close(self) -> None:
        """Stops feeding and cancels the tasks not yet started (the reader went away)."""
        with self._lock:
            self._stopped = True
            tasks = list(self._tasks)
        self._all_submitted()
        for fut, _ in tasks:
            fut.cancel()

    # -- reading ----------------------------------------------------------------------------

    def _head(self) -> tuple[Future[Any], int] | None:
        with self._lock:
            if not self._tasks and self._next < len(self._items) and not self._stopped:
                self._feed()  # the last completion's callback may not have fed yet
            return self._tasks[0] if self._tasks else None

    def results(self, end_time: float | None) -> Iterator[Any]:
        """Yields the values in order; an item's exception is raised at its place.

        ``end_time`` (``time.monotonic()``) bounds the whole iteration: past it, TimeoutError.
        """
        try:
            while (head := self._head()) is not None:
                fut, n = head
                timeout = None if end_time is None else end_time - time.monotonic()
                try:
                    fut.exception(timeout)
                except TimeoutError:
                    raise TimeoutError() from None
                with self._lock:
                    self._tasks.popleft()
                try:
                    _, values = fut.result()
                except BaseException as exc:  # the whole task failed: a dead worker, say
                    raise exc from None
                if not self._per_item:
                    yield from values
                    continue
                for ok, value in unpack_outcomes(values):
                    if not ok:
                        raise value
                    yield value
                del fut, values
        finally:
            self.close()

    def deliver_to(self, whole: Future[list[Any]]) -> None:
        """Completes ``whole`` with all values in order, or with the first failure (``Pool.map``)."""
        with self._lock:
            self.whole = whole
            done = [fut for fut, _ in self._tasks if fut.done()]
            if not self._items:
                whole.set_result([])
        for fut in done:
            self._settle_whole(fut)

    def _settle_whole(self, fut: Future[Any]) -> None:
        whole = self.whole
        assert whole is not None
        with self._lock:
            if whole.done():
                return
            if fut.cancelled() or fut.exception() is not None:
                exc = fut.exception() if not fut.cancelled() else None
                whole.set_exception(exc if exc is not None else CancelledError())
                self._stopped = True
                return
            if self._next < len(self._items) or self._in_flight:
                return
            values = list(itertools.chain.from_iterable(f.result()[1] for f, _ in self._tasks))
            self._tasks.clear()
        whole.set_result(values)


def flush_all(owner: object = None) -> None:
    """Submits what the eager maps of ``owner`` (``None``: every pool) still hold back.

    Called before that pool stops taking work.
    """
    for eager in list(_live):
        if owner is None or eager.owner is owner:
            eager.flush()


lifecycle.flush_at_exit(flush_all)
