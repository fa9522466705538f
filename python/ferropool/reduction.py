"""``multiprocessing.reduction`` for ferropool: how a type is pickled on its way to a process.

``register(type, reduce)`` makes everything ferropool pickles in this process (task arguments
and results, queue items, pipe messages, process objects) reduce instances of ``type`` with
``reduce``, as the stdlib's ``ForkingPickler.register`` does for ``multiprocessing``; other
pickling in the process is not affected. A worker pickles its results with the registrations
made in the worker (an initializer can make them); workers forked from the fork server also
have those made in the parent before the server started.
"""

from __future__ import annotations

import copyreg
import io
import pickle
from collections import ChainMap
from typing import Any

from ._runtime.handles import recv_handle, send_handle
from ._runtime.serialize import extra_reducers

__all__ = ["HAVE_SEND_HANDLE", "ForkingPickler", "dump", "recv_handle", "register", "send_handle"]

#: file descriptors travel between processes (``send_handle``/``recv_handle``), as on the stdlib's POSIX
HAVE_SEND_HANDLE = True


class ForkingPickler(pickle.Pickler):
    """The pickler with ferropool's registered reducers (``register``) before ``copyreg``'s."""

    _extra_reducers = extra_reducers

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dispatch_table = ChainMap(self._extra_reducers, copyreg.dispatch_table)  # type: ignore[arg-type]

    @classmethod
    def register(cls, type: type, reduce: Any) -> None:
        """Pickles instances of ``type`` with ``reduce`` in everything ferropool sends."""
        cls._extra_reducers[type] = reduce

    @classmethod
    def dumps(cls, obj: Any, protocol: int | None = None) -> memoryview:
        """``obj`` pickled with the registered reducers."""
        buf = io.BytesIO()
        cls(buf, protocol).dump(obj)
        return buf.getbuffer()

    loads = pickle.loads


register = ForkingPickler.register


def dump(obj: Any, file: Any, protocol: int | None = None) -> None:
    """Pickles ``obj`` to ``file`` with the registered reducers."""
    ForkingPickler(file, protocol).dump(obj)
