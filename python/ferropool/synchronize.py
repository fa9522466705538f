"""Locks, semaphores, conditions, events and barriers shared between processes.

The same classes and semantics as ``multiprocessing.synchronize``. Each object lives in an
anonymous shared-memory segment and blocks with futexes in the Rust core (``src/sync/``), with
the GIL released and Ctrl-C honoured. Objects pickle, so they can be passed to a ``Process``, to
pool tasks, or through a ``Queue``; the sending process must still hold its object when the
receiver unpickles it.

Beyond the stdlib: a ``Lock``, ``RLock`` or ``Semaphore`` whose holder process dies is not lost.
The next process that waits for it takes it over and gets a ``RuntimeWarning`` naming the dead
pid (see ``docs/ipc.md``).
"""

from __future__ import annotations

import os
import threading
import time

from . import _core
from .process import current_process

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")
    _Handle = tuple[int, int, int, int]

__all__ = ["Barrier", "BoundedSemaphore", "Condition", "Event", "Lock", "RLock", "Semaphore"]


def _rebuild(cls: Any, handle: _Handle) -> Any:
    return cls(handle=handle)


def _owner_name(lock: _core.Lock | _core.RLock) -> str | None:
    """Who holds ``lock``, in the words of the stdlib's reprs; ``None`` when it is free."""
    if lock._is_mine():
        name = current_process().name
        thread = threading.current_thread().name
        return name if thread == "MainThread" else f"{name}|{thread}"
    owner = lock._owner()
    if owner == 0:
        return None
    return "SomeOtherThread" if owner == os.getpid() else "SomeOtherProcess"


class Lock(_core.Lock):
    """A non-recursive lock shared between processes, as ``multiprocessing.Lock``.

    ``acquire(block=True, timeout=None)`` returns whether the lock was acquired; ``release()``
    raises ``ValueError`` when the lock is not held. Any process or thread may release it.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(owner={_owner_name(self)})>"


class RLock(_core.RLock):
    """A recursive lock shared between processes, as ``multiprocessing.RLock``.

    The thread that holds it may acquire it again; it is free once released as many times.
    ``release()`` by any other thread raises ``AssertionError``, as the stdlib does.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        owner = _owner_name(self)
        if owner is None:
            return f"<{type(self).__name__}(None, 0)>"
        count = self._count() if self._is_mine() else "nonzero"
        return f"<{type(self).__name__}({owner}, {count})>"


class Semaphore(_core.Semaphore):
    """A counter of units shared between processes, as ``multiprocessing.Semaphore``.

    Args:
        value: the units available at first (``ValueError`` if negative).
    """

    def __new__(cls, value: int = 1, *, handle: _Handle | None = None) -> Semaphore:
        """Creates the object, or attaches to an existing one by its ``handle`` (pickling)."""
        return super().__new__(cls, value, None, handle)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self.get_value()})>"


class BoundedSemaphore(Semaphore):
    """A semaphore that cannot rise above its initial value, as ``multiprocessing.BoundedSemaphore``.

    One release too many raises ``ValueError``.
    """

    def __new__(cls, value: int = 1, *, handle: _Handle | None = None) -> BoundedSemaphore:
        """Creates the object, or attaches to an existing one by its ``handle`` (pickling)."""
        return _core.Semaphore.__new__(cls, value, value, handle)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}(value={self.get_value()}, maxvalue={self._maxvalue})>"


class Condition:
    """A condition variable shared between processes, as ``multiprocessing.Condition``.

    Args:
        lock: a ferropool ``Lock`` or ``RLock`` (a new ``RLock`` when omitted).
    """

    def __init__(self, lock: Lock | RLock | None = None, *, _cv: _core.CondVar | None = None) -> None:
        if lock is None:
            lock = RLock()
        elif not isinstance(lock, (_core.Lock, _core.RLock)):
            raise TypeError(f"Condition needs a ferropool Lock or RLock, not {type(lock).__name__}")
        self._lock = lock
        self._cv = _cv if _cv is not None else _core.CondVar()
        self.acquire = lock.acquire
        self.release = lock.release

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_condition, (self._lock, self._cv._handle)

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.release()

    def __repr__(self) -> str:
        return f"<Condition({self._lock!r}, {self._cv._sleepers()})>"

    def _check_owned(self) -> None:
        if not self._lock._is_mine():
            raise AssertionError("must acquire() lock first")

    def wait(self, timeout: float | None = None) -> bool:
        """Releases the lock and blocks until notified or until ``timeout`` seconds pass.

        The lock is then acquired again, as many times as it was held.

        Returns:
            ``False`` if the timeout expired, else ``True``.

        Raises:
            AssertionError: the calling thread does not hold the lock.
        """
        self._check_owned()
        seq = self._cv.prepare()
        count = self._lock._release_save()
        notified = False
        try:
            notified = self._cv.sleep(seq, timeout)
        finally:
            self._lock._acquire_restore(count)
            if not notified:
                notified = self._cv.cancel(seq)
        return notified

    def wait_for(self, predicate: Callable[[], T], timeout: float | None = None) -> T:
        """Waits until ``predicate()`` is true, or until ``timeout`` seconds pass.

        Returns:
            The last value of ``predicate()``.
        """
        result = predicate()
        if result or timeout is not None and timeout <= 0:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        while not result:
            if deadline is None:
                self.wait()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.wait(left)
            result = predicate()
        return result

    def notify(self, n: int = 1) -> None:
        """Wakes up to ``n`` processes or threads waiting on the condition.

        Raises:
            AssertionError: the calling thread does not hold the lock.
        """
        self._check_owned()
        self._cv.notify(max(0, min(n, 2**31)))

    def notify_all(self) -> None:
        """Wakes every process and thread waiting on the condition."""
        self.notify(2**31)


def _rebuild_condition(lock: Lock | RLock, cv_handle: _Handle) -> Condition:
    return Condition(lock, _cv=_core.CondVar(handle=cv_handle))


class Event(_core.Event):
    """A flag shared between processes, as ``multiprocessing.Event``.

    ``set()``, ``clear()``, ``is_set()`` and ``wait(timeout=None)``, which returns the flag.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (type(self), self._handle)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} at {id(self):#x} {'set' if self.is_set() else 'unset'}>"


class Barrier(_core.Barrier):
    """A meeting point for a fixed number of processes, as ``multiprocessing.Barrier``.

    Args:
        parties: how many calls to ``wait()`` release the barrier.
        action: called (with no arguments) by the last process to arrive, before the others go
            on; it must pickle to reach other processes.
        timeout: the default timeout of ``wait()``.

    ``wait()`` returns an index from 0 to ``parties - 1``, different in each process of a
    round. A timeout, ``abort()``, ``reset()`` during a round, or an action that raises breaks
    the barrier: waiters get ``threading.BrokenBarrierError``.
    """

    _action: Callable[[], object] | None
    _timeout: float | None

    def __new__(
        cls,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        handle: _Handle | None = None,
    ) -> Barrier:
        """Creates the object, or attaches to an existing one by its ``handle`` (pickling)."""
        self = super().__new__(cls, parties, handle)
        self._action = action
        self._timeout = timeout
        return self

    def wait(self, timeout: float | None = None) -> int:
        """Waits until ``parties`` processes have called it; ``timeout`` defaults to the barrier's.

        Returns:
            This caller's index in the round, from 0 to ``parties - 1``.

        Raises:
            threading.BrokenBarrierError: the barrier broke (timeout, abort, reset, action).
        """
        return self._wait(self._timeout if timeout is None else timeout, self._action)

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_barrier, (type(self), self._handle, self._action, self._timeout)

    def __repr__(self) -> str:
        cls = type(self)
        state = "broken" if self.broken else f"waiters={self.n_waiting}/{self.parties}"
        return f"<{cls.__module__}.{cls.__qualname__} at {id(self):#x}: {state}>"


def _rebuild_barrier(cls: Any, handle: _Handle, action: Any, timeout: float | None) -> Barrier:
    return cls(1, action, timeout, handle=handle)  # type: ignore[no-any-return]
