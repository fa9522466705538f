"""``ferropool.dummy.Manager()``: the manager of the thread world, where nothing needs a server.

The stdlib's ``multiprocessing.dummy.Manager()`` returns the ``multiprocessing.dummy`` module,
whose ``dict()``, ``list()``, ``Lock()`` ... are the plain objects threads share. This one
answers the same names (``Pool`` is ferropool's thread pool) and also does what code written for
``multiprocessing.Manager()`` does with it: ``with Manager() as m:``, ``start()``,
``shutdown()``, ``join()``.
"""

from __future__ import annotations

import multiprocessing.dummy

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["DummyManager", "Manager"]


class DummyManager:
    """Makes the objects threads share.

    ``dict()``, ``list()``, ``Namespace()``, ``Value()``, ``Array()``, ``Queue()``, ``Lock()``,
    ``Event()``, ``Pool()`` and the rest.
    """

    def __getattr__(self, name: str) -> Any:
        if name == "Pool":
            from . import Pool

            return Pool
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(multiprocessing.dummy, name)

    def start(self, initializer: Any = None, initargs: Any = ()) -> None:
        """Runs ``initializer(*initargs)``; there is no server to start."""
        if initializer is not None:
            initializer(*initargs)

    def shutdown(self) -> None:
        """Nothing to stop."""

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for."""

    def __enter__(self) -> DummyManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def Manager() -> DummyManager:
    """A ``DummyManager``: the thread world's shared objects, usable as a ``Manager()`` is."""
    return DummyManager()
