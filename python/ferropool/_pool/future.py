"""``ferropool.Future``: a ``concurrent.futures.Future`` that the core starts and cancels.

Its lock is made only when someone waits on it (see ``Future``'s comment).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import _base
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from time import monotonic
from typing import Any, TypeVar

from ..errors import CancelledError, InvalidStateError, TimeoutError

__all__ = ["Future"]

T = TypeVar("T")

_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
#: Seconds a wait without a timeout sleeps before it lets the interpreter look at signals.
_SIGNAL_SLICE = 0.05
_condition_lock = threading.Lock()


def slice_until(deadline: float | None) -> float:
    """Seconds the next slice of a wait on futures may sleep; ``<= 0`` once ``deadline`` passed.

    At most ``_SIGNAL_SLICE``, and no further than ``deadline`` (a ``time.monotonic()`` instant,
    or ``None`` for none): every wait on futures sleeps in such slices (``Future._wait_finished``).
    """
    if deadline is None:
        return _SIGNAL_SLICE
    return min(_SIGNAL_SLICE, deadline - monotonic())


class Future(_base.Future[T]):
    """The result of a call that runs elsewhere; a ``concurrent.futures.Future``.

    Everything the stdlib offers works on it (``concurrent.futures.wait``, ``as_completed``,
    ``asyncio.wrap_future``). Beyond it, it can be awaited directly, and ``cancel()`` takes effect
    at once: a cancelled task never reaches a worker.
    """

    # How a ferropool future differs inside (see docs/ARCHITECTURE.md, "Futures"): whether a
    # task is cancelled or started is decided by one atomic compare-and-swap in the core
    # (`_ferro_task`), not under this future's lock. The only transition left to the engine is
    # PENDING/RUNNING -> FINISHED, which it makes without the lock while nobody waits: it
    # stores the outcome, then the state, then looks for a condition; a waiter makes the
    # condition first, then reads the state. Under the GIL one of them always sees the other,
    # so the condition (and its lock) exists only for futures someone actually waits on.
    # The stdlib's state is in slots too: a future then never needs an instance dict.
    __slots__ = ("_cond", "_done_callbacks", "_exception", "_ferro_task", "_result", "_state", "_waiters")
    _cond: threading.Condition | None

    def __init__(self) -> None:
        self._ferro_task: Any = None
        self._cond = None
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is not None:
            return cond
        with _condition_lock:
            cond = self._cond
            if cond is None:
                cond = self._cond = threading.Condition()
            return cond

    def _finish_unlocked(self) -> None:
        """Wakes whoever started waiting while the outcome was being stored."""
        cond = self._cond
        if cond is not None:
            with cond:
                for waiter in self._waiters:
                    if self._exception is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
                cond.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()  # type: ignore[attr-defined]

    def set_result(self, result: Any) -> None:
        """Sets the future's value and wakes its waiters (executors and tests only)."""
        if self._ferro_task is None or self._cond is not None:
            return super().set_result(result)
        if self._state in _DONE:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._state = FINISHED
        self._finish_unlocked()

    def set_exception(self, exception: BaseException | None) -> None:
        """Sets the future's exception and wakes its waiters (executors and tests only)."""
        if self._ferro_task is None or self._cond is not None:
            return super().set_exception(exception)
        if self._state in _DONE:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._exception = exception
        self._state = FINISHED
        self._finish_unlocked()

    def cancel(self) -> bool:
        """Cancels the call if it has not started running.

        Returns:
            ``False`` if the call is running or finished, otherwise ``True``.
        """
        task = self._ferro_task
        if task is None:
            return super().cancel()
        if not task.cancel():
            # a worker already has it: too late, as with the stdlib's running futures, unless
            # the pool was made with cancel_running=True
            if task.cancel_stops and not self.done() and task.stop():
                self._stopped()
                return True
            return self.cancelled()
        if not super().cancel():
            return False
        with self._condition:
            if self._state == CANCELLED:
                # no executor thread will ever pick this task up to notify waiters: do it now
                self.set_running_or_notify_cancel()
        return True

    def add_done_callback(self, fn: Callable[[Future[T]], object]) -> None:
        """Calls ``fn(future)`` when the future finishes or is cancelled (at once if it has)."""
        super().add_done_callback(fn)  # type: ignore[arg-type]

    def kill(self) -> bool:
        """Stops the call even if it is already running (process pools).

        A queued call is cancelled as by ``cancel()``. A running call is stopped by killing the
        worker process running it (with its process group, so processes it started go too); a
        fresh worker takes its place, and calls that were waiting behind it run elsewhere. The
        future ends cancelled.

        Returns:
            ``True`` if the future is now cancelled; ``False`` if the call had already finished,
            or runs on a thread, which cannot be stopped.
        """
        if self.cancel():
            return True
        task = self._ferro_task
        if task is None or self.done() or not task.stop():
            return self.cancelled()
        self._stopped()
        return True

    def _stopped(self) -> None:
        """The core stopped this call while it ran: the future ends cancelled."""
        with self._condition:
            if self._state in _DONE:
                return
            self._state = CANCELLED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        with self._condition:
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()

    def done(self) -> bool:
        """``True`` if the call finished or was cancelled."""
        return self._state in _DONE

    def running(self) -> bool:
        """``True`` if the call is being run by a worker (or was sent to one)."""
        if self._state == RUNNING:
            return True
        task = self._ferro_task
        return task is not None and self._state == PENDING and task.running()

    def _wait_finished(self, timeout: float | None) -> None:
        """Waits (with the GIL released) until the call finished; raises if it cannot."""
        deadline = None if timeout is None else monotonic() + timeout
        task = self._ferro_task
        if task is not None and not self._done_callbacks and self._state not in _DONE:
            # A process pool's call: for its first slice this thread reads the outcome off the
            # worker's link itself and completes the future (two thread hand-offs fewer per
            # round trip; see scheduler/claim.rs). Not with done-callbacks, which then would
            # run in this thread instead of the pool's completion thread.
            if task.wait_own(max(0.0, slice_until(deadline))) and self._state == FINISHED:
                return
        with self._condition:
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                raise CancelledError()
            if self._state != FINISHED:
                # In slices, with a timeout or without: a lock wait is interrupted by a signal
                # only if the signal comes while it sleeps. Ctrl-C landing just before the wait
                # begins would otherwise go unnoticed until the call finished or the timeout
                # passed (a hang, with tasks that wait for the program). After a slice the
                # interpreter runs the handler.
                while self._state not in _DONE:
                    left = slice_until(deadline)
                    if left <= 0:
                        break
                    self._condition.wait(left)
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise CancelledError()
                if self._state != FINISHED:
                    raise TimeoutError()

    def result(self, timeout: float | None = None) -> Any:
        """Returns the call's value, waiting up to ``timeout`` seconds for it.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: the call did not finish in time.
            Exception: whatever the call raised, with the worker's traceback as ``__cause__``.
        """
        if self._state != FINISHED:
            self._wait_finished(timeout)
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # type: ignore[assignment]  # break the cycle through the traceback
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Returns the exception the call raised, waiting up to ``timeout`` seconds.

        Returns:
            The exception, or ``None`` if the call returned.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: the call did not finish in time.
        """
        if self._state != FINISHED:
            self._wait_finished(timeout)
        return self._exception

    def __await__(self) -> Any:
        import asyncio

        return asyncio.wrap_future(self).__await__()
