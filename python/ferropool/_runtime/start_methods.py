"""How children start: the one place that decides a start method.

ferropool never forks a threaded parent, so the start methods name ferropool's safe starts:
``"forkserver"`` (the default) and ``"fork"`` fork the child from ferropool's fork server when
this process has one or can make one, else start a fresh interpreter; ``"spawn"`` always starts
a fresh interpreter. Every question about a method is answered here: the method
``set_start_method()`` chose (``context.py`` is its public face), the method a pool's
``context``/``mp_context`` argument means (``for_pool``), and how a child really starts
(``how_to_start``: ``"spawn"`` or ``"forkserver"``), for pool workers and ``Process`` alike.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

#: Every method ferropool accepts.
METHODS = ("spawn", "forkserver", "fork")
#: The method in use when none was chosen.
DEFAULT = "forkserver"

_chosen: str | None = None  # fixed by set_start_method() or by the first get_start_method()


def check(method: str) -> str:
    """``method`` itself, if ferropool has it.

    Raises:
        ValueError: ``method`` is not a start method.
    """
    if method not in METHODS:
        raise ValueError(f"cannot find context for {method!r}")
    return method


def chosen() -> str | None:
    """The method ``set_start_method()`` (or a first ``current()``) fixed, if any."""
    return _chosen


def current() -> str:
    """The start method in use, fixing the default if none was chosen (as the stdlib does)."""
    global _chosen
    if _chosen is None:
        _chosen = DEFAULT
    return _chosen


def choose(method: str | None, force: bool = False) -> None:
    """Fixes the start method (``set_start_method``); ``None`` with ``force`` forgets it.

    Raises:
        RuntimeError: A method was already fixed and ``force`` is false.
        ValueError: ``method`` is not a start method.
    """
    global _chosen
    if _chosen is not None and not force:
        raise RuntimeError("context has already been set")
    _chosen = None if method is None else check(method)


def how_to_start(method: str | None = None) -> str:
    """How a child of ``method`` (``None``: the chosen one) starts: ``"spawn"`` or ``"forkserver"``."""
    if method is None:
        method = _chosen
    return "spawn" if method == "spawn" else "forkserver"


def for_pool(context: Any, what: str = "mp_context") -> str:
    """How a pool's workers start, from its ``context`` argument: ``"spawn"`` or ``"forkserver"``.

    ``context`` is ``None`` (the chosen method), a method's name, or any object with
    ``get_start_method()`` (a ferropool or ``multiprocessing`` context).

    Raises:
        ValueError: ``context`` names no start method.
    """
    if context is None:
        return how_to_start()
    method = context if isinstance(context, str) else None
    get = getattr(context, "get_start_method", None)
    if method is None and callable(get):
        method = get()
    if method not in METHODS:
        raise ValueError(
            f"{what} must be None, one of {', '.join(map(repr, METHODS))}, or a "
            f"multiprocessing context (multiprocessing.get_context(...)), not {context!r}"
        )
    return how_to_start(method)
