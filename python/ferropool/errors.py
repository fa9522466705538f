"""Exceptions ferropool raises.

Each is the stdlib's own class or a subclass of it, so ``except`` clauses written for
``concurrent.futures`` and ``multiprocessing`` keep catching them after the import swap.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import multiprocessing
import multiprocessing.pool
import signal as _signal
from concurrent.futures import BrokenExecutor, CancelledError, InvalidStateError
from concurrent.futures.process import BrokenProcessPool
from concurrent.futures.thread import BrokenThreadPool
from typing import Any

__all__ = [
    "BrokenExecutor",
    "BrokenProcessPool",
    "BrokenThreadPool",
    "CancelledError",
    "InvalidStateError",
    "MaybeEncodingError",
    "TimeoutError",
    "WorkerDiedError",
]


def _timeout_bases() -> tuple[type, ...]:
    bases: list[type] = [multiprocessing.TimeoutError]
    # concurrent.futures.TimeoutError is the builtin since 3.11 and its own class before
    for cls in (concurrent.futures.TimeoutError, builtins.TimeoutError):
        if cls not in bases:
            bases.append(cls)
    return tuple(bases)


class TimeoutError(*_timeout_bases()):  # type: ignore[misc]
    """A wait ran out of time.

    Caught by ``except TimeoutError``, ``except concurrent.futures.TimeoutError`` and
    ``except multiprocessing.TimeoutError`` alike.
    """


class WorkerDiedError(BrokenProcessPool):
    """The worker process running a task died before the task finished.

    Only the tasks that worker held fail with this error; the pool starts a replacement and goes
    on. A subclass of ``BrokenProcessPool``, so code written for the stdlib still catches it.

    Attributes:
        pid: the process id of the worker that died.
        exitcode: its exit code, or ``None`` when a signal killed it.
        signal: the number of the signal that killed it, or ``None``.
    """

    def __init__(
        self, message: str, pid: int | None = None, exitcode: int | None = None, signal: int | None = None
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.pid, self.exitcode, self.signal))

    @property
    def signal_name(self) -> str | None:
        """The signal's name (``"SIGKILL"``), or ``None``."""
        if self.signal is None:
            return None
        try:
            return _signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"

    @classmethod
    def from_exit(
        cls, pid: int, exitcode: int | None, signal: int | None, reason: str | None = None
    ) -> WorkerDiedError:
        """The error for a worker that ended with this status while running a task.

        ``reason``: why the pool killed it, when it did (the worker broke the protocol).
        """
        if reason is not None:
            message = (
                f"the worker process (pid {pid}) running this task was killed because {reason}: "
                "bytes that are not ferropool's protocol reached its link to the parent (the task "
                "may have written to that descriptor). The pool has started a replacement; "
                "resubmit the task if it is safe to run again."
            )
            return cls(message, pid, exitcode, signal)
        if signal is not None:
            try:
                name = _signal.Signals(signal).name
            except ValueError:
                name = "unknown"
            how = f"was killed by signal {signal} ({name})"
            if signal == _signal.SIGKILL:
                how += "; the kernel's OOM killer or a kill from outside sends this"
        else:
            how = f"exited with code {exitcode}"
        message = (
            f"the worker process (pid {pid}) running this task {how} before the task finished. "
            "The pool has started a replacement; resubmit the task if it is safe to run again."
        )
        return cls(message, pid, exitcode, signal)


#: the most characters of a repr an encoding error keeps: the value may be huge
_REPR_MAX = 2000


def _short_repr(obj: object) -> str:
    try:
        text = repr(obj)
    except Exception as exc:
        text = f"<{type(obj).__qualname__} object; repr() raised {type(exc).__name__}>"
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


class MaybeEncodingError(multiprocessing.pool.MaybeEncodingError):  # type: ignore[name-defined,misc]
    """A pool task's result (or exception) could not be pickled back to the parent.

    ``multiprocessing.pool.MaybeEncodingError``, with ``exc`` (the pickling error) and ``value``
    (the result) as ``repr`` strings. ``Pool`` raises it from ``get()``; executors raise the
    pickling error itself, as ``concurrent.futures`` does.
    """

    def __init__(self, exc: object, value: object) -> None:
        self.exc = _short_repr(exc)
        self.value = _short_repr(value)
        Exception.__init__(self, self.exc, self.value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_encoding_error, (type(self), self.exc, self.value))


def _encoding_error(cls: type[MaybeEncodingError], exc: str, value: str) -> MaybeEncodingError:
    # the reprs travel as they are: __init__ would take a repr of each again
    err = cls.__new__(cls)
    err.exc, err.value = exc, value
    Exception.__init__(err, exc, value)
    return err
