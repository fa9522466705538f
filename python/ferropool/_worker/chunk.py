"""How one task of a map runs: the chunk interpreter of process workers and pool threads.

A map is cut into chunks; each chunk is one task, run by one of the functions here, in a
process worker (``main.Handler``, which picks one from the call's flags) or on a pool thread
(``_pool/backend.ThreadBackend``, which submits one as the task itself). There is no other
copy of this loop, so a thread pool and a process pool run a chunk the same way.

``star`` calls ``fn(*item)``, else ``fn(item)``. Per-item outcomes are
``(True, value)`` or ``(False, captured)``, where ``capture`` decides what of an exception
travels: in a worker its formatted traceback goes with it (``serialize.exception_with_traceback``,
since a traceback object cannot be pickled); on a thread the exception keeps its own
``__traceback__`` and travels as ``(exception, None)``.
"""

from __future__ import annotations

import time

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any


def values(fn: Callable[..., Any], items: Iterable[Any], star: bool) -> list[Any]:
    """``[fn(item) for item in items]``; the first exception fails the whole chunk."""
    return [fn(*item) for item in items] if star else list(map(fn, items))


def timed(fn: Callable[..., Any], items: Iterable[Any], star: bool) -> tuple[float, list[Any]]:
    """``(seconds, values)``: the run time feeds adaptive chunking (``_pool/batching.py``)."""
    started = time.perf_counter()
    result = values(fn, items, star)
    return time.perf_counter() - started, result


def in_thread(exc: BaseException) -> tuple[BaseException, None]:
    """What an item's exception leaves behind on a pool thread: itself, traceback attached."""
    return exc, None


def per_item(
    fn: Callable[..., Any],
    items: Iterable[Any],
    star: bool,
    capture: Callable[[BaseException], tuple[BaseException, Any]] = in_thread,
) -> tuple[float, list[tuple[bool, Any]]]:
    """``(seconds, outcomes)``: each item keeps its own value or exception (``Executor.map``)."""
    started = time.perf_counter()
    outcomes: list[tuple[bool, Any]] = []
    for item in items:
        try:
            outcomes.append((True, fn(*item) if star else fn(item)))
        except BaseException as exc:
            outcomes.append((False, capture(exc)))
    return time.perf_counter() - started, outcomes
