"""The objects a ``SyncManager``'s server makes that are not the stdlib's own types.

Kept apart from ``managers`` so that the server process, which unpickles its registry, imports
only these (and ``server``), not the client side's proxies.
"""

from __future__ import annotations

import array
import queue

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

__all__ = ["Array", "JoinableQueue", "Namespace", "Value", "make_pool"]


class Namespace:
    """A bag of attributes, shown as ``Namespace(a=1, b=2)`` (names starting with ``_`` hidden)."""

    def __init__(self, /, **kwds: Any) -> None:
        self.__dict__.update(kwds)

    def __repr__(self) -> str:
        items = sorted((k, v) for k, v in self.__dict__.items() if not k.startswith("_"))
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in items)})"


class Value:
    """The object behind ``SyncManager.Value``: a typecode and a value (no lock of its own)."""

    def __init__(self, typecode: str, value: Any, lock: Any = True) -> None:
        self._typecode = typecode
        self._value = value

    def get(self) -> Any:
        """The value."""
        return self._value

    def set(self, value: Any) -> None:
        """Replaces the value."""
        self._value = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._typecode!r}, {self._value!r})"

    value = property(get, set)


def Array(typecode: str, sequence: Iterable[Any], lock: Any = True) -> array.array[Any]:
    """The object behind ``SyncManager.Array``: an ``array.array``."""
    return array.array(typecode, sequence)


def make_pool(*args: Any, **kwds: Any) -> Any:
    """The object behind ``SyncManager.Pool``: a ``ferropool.Pool`` in the server."""
    from ..pool import Pool

    return Pool(*args, **kwds)


class JoinableQueue(queue.Queue):  # type: ignore[type-arg]
    """``queue.Queue`` already has ``task_done`` and ``join``; a distinct name for the registry."""
