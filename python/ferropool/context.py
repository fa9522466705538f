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
    """ferropool under one start method; the object ``get_context()`` returns."""

    def __init__(self, method: str) -> None:
        self._method = method

    def get_start_method(self, allow_none: bool = False) -> str:
        """The context's start method."""
        return self._method

    def get_context(self, method: str | None = None) -> Context:
        """Same as ``ferropool.get_context()``."""
        return get_context(method)

    def Pool(self, *args: Any, **kwargs: Any) -> Any:
        """``ferropool.Pool`` whose workers start by this context's method."""
        from .pool import Pool

        kwargs.setdefault("context", self)
        return Pool(*args, **kwargs)

    @property
    def Process(self) -> type:
        """``ferropool.Process``, started by this context's method."""
        from .process import Process, SpawnProcess

        return SpawnProcess if self._method == "spawn" else Process

    def __getattr__(self, name: str) -> Any:
        import ferropool

        try:
            return getattr(ferropool, name)
        except AttributeError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    def __repr__(self) -> str:
        return f"<ferropool.context.Context {self._method!r}>"


def get_context(method: str | None = None) -> Context:
    """The context for ``method`` (``"forkserver"``, ``"spawn"`` or ``"fork"``), or the current one.

    Raises:
        ValueError: ``method`` is not a start method.
    """
    return Context(start_methods.current() if method is None else start_methods.check(method))


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
