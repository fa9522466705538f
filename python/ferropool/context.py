"""Start methods and contexts: ``get_context()``, ``set_start_method()`` and friends.

ferropool never forks a threaded parent, so the start methods name ferropool's safe starts:

* ``"forkserver"`` (the default) and ``"fork"``: pool workers are forked from ferropool's fork
  server (a copy of the parent made while it had one thread), or spawned when there is none.
* ``"spawn"``: pool workers are fresh interpreters.

A ``Process`` is a fresh interpreter whatever the method: it receives its target by pickle
(cloudpickle for ``__main__`` code and lambdas), as with the stdlib's ``"spawn"``.

A context is ferropool itself seen through one start method: ``ctx.Process``, ``ctx.Pipe``,
``ctx.Pool`` (which starts its workers by the context's method) and every other ferropool name.
"""

from __future__ import annotations

from ._runtime import start_methods

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = [
    "allow_connection_pickling",
    "freeze_support",
    "get_all_start_methods",
    "get_context",
    "get_start_method",
    "set_executable",
    "set_forkserver_preload",
    "set_start_method",
]


class Context:
    """ferropool under one start method; the object ``get_context()`` returns.

    There is one context per method (``ForkServerContext``, ``SpawnContext``, ``ForkContext``),
    as in the stdlib, so ``get_context("spawn") is get_context("spawn")``.
    """

    _name = ""

    @property
    def _method(self) -> str:
        return self._name

    def get_start_method(self, allow_none: bool = False) -> str:
        """The context's start method."""
        return self._name

    def get_context(self, method: str | None = None) -> Context:
        """This context, or the one for ``method``."""
        return self if method is None else get_context(method)

    def set_start_method(self, method: str | None, force: bool = False) -> None:
        """Raises ``ValueError``: a context's start method is fixed; use ``ferropool.set_start_method()``."""
        raise ValueError("cannot set start method of concrete context")

    def Pool(self, *args: Any, **kwargs: Any) -> Any:
        """``ferropool.Pool`` whose workers start by this context's method."""
        from .pool import Pool

        kwargs.setdefault("context", self)
        return Pool(*args, **kwargs)

    @property
    def Process(self) -> type:
        """``ferropool.Process``, started by this context's method."""
        from . import process

        return {
            "spawn": process.SpawnProcess,
            "fork": process.ForkProcess,
            "forkserver": process.ForkServerProcess,
        }[self._name]

    def __getattr__(self, name: str) -> Any:
        import ferropool

        try:
            return getattr(ferropool, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    def __repr__(self) -> str:
        return f"<ferropool.context.{type(self).__name__} {self._name!r}>"


class ForkServerContext(Context):
    """The ``"forkserver"`` context (the default): workers forked from ferropool's fork server."""

    _name = "forkserver"


class SpawnContext(Context):
    """The ``"spawn"`` context: children are fresh interpreters."""

    _name = "spawn"


class ForkContext(Context):
    """The ``"fork"`` context: as ``"forkserver"``, since ferropool never forks a threaded parent."""

    _name = "fork"


_CONTEXTS: dict[str, Context] = {c._name: c() for c in (SpawnContext, ForkServerContext, ForkContext)}


def get_context(method: str | None = None) -> Context:
    """The context for ``method`` (``"forkserver"``, ``"spawn"`` or ``"fork"``), or the current one.

    Raises:
        ValueError: ``method`` is not a start method.
    """
    return _CONTEXTS[start_methods.current() if method is None else start_methods.check(method)]


def get_start_method(allow_none: bool = False) -> str | None:
    """The start method in use; fixes the default (``"forkserver"``) unless ``allow_none``."""
    return start_methods.chosen() if allow_none else start_methods.current()


def set_start_method(method: str | None, force: bool = False) -> None:
    """Sets the default start method; only once unless ``force`` (``None`` with ``force`` resets).

    Raises:
        RuntimeError: A method was already set (or used) and ``force`` is false.
        ValueError: ``method`` is not a start method.
    """
    start_methods.choose(method, force)


def get_all_start_methods() -> list[str]:
    """The start methods ferropool accepts, the default first."""
    default = start_methods.DEFAULT
    return [default, *(m for m in start_methods.METHODS if m != default)]


def freeze_support() -> None:
    """Does nothing: ferropool's children never re-run the main module, frozen or not."""


def set_executable(executable: Any) -> None:
    """Sets the Python interpreter that children started as fresh interpreters run.

    That is pool workers and processes started by ``"spawn"``, or when there is no fork server.
    Children forked from the fork server are copies of this interpreter and are not affected.
    """
    from ._runtime.spawn import set_executable as set_in_spawn

    set_in_spawn(executable)


def set_forkserver_preload(module_names: Any) -> None:
    """Modules the fork server imports when it starts, so that its workers start with them.

    The fork server is a copy of this process, so it already has every module imported here
    when it starts; this adds others. A module that cannot be imported is skipped, as in the
    stdlib. Takes effect for a fork server started after the call.

    Raises:
        TypeError: ``module_names`` is not a list of strings.
    """
    from ._runtime import forkserver

    try:
        names = None if isinstance(module_names, str) else list(module_names)
    except TypeError:
        names = None
    if names is None or not all(type(name) is str for name in names):
        raise TypeError("module_names must be a list of strings")
    forkserver.preload = names


def allow_connection_pickling() -> None:
    """Does nothing: kept for programs written for the stdlib, where it is a no-op too."""
