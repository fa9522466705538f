"""The Python half of a worker process: unpickle a call, run it, pickle what came of it.

The loop around it (reading frames, batching results, exiting with the parent) is Rust:
``worker_main`` in ``src/worker.rs``. A worker is started as ``python -S -c ...`` by
``_runtime/spawn.worker_argv()`` with the parent's ``sys.path``; skipping ``site`` halves start-up time.
If an unpickle then fails for a module only ``site`` would have made importable (an editable
install's import hook, say), the worker runs ``site`` once and tries again.
"""

from __future__ import annotations

import os
import sys

from .. import _core
from .._runtime import by_value
from .._runtime.buffers import from_segments, pack, pack_outcomes, release_received
from .._runtime.serialize import (
    FLAG_BY_VALUE,
    FLAG_CACHEABLE,
    FLAG_ITEM_CHUNK,
    FLAG_OUTCOMES,
    FLAG_POOL_ERRORS,
    FLAG_STAR_CHUNK,
    FLAG_TIMED,
    dump_exception,
    encoding_error,
    exception_with_traceback,
    load_in_child,
    loads,
)
from . import chunk

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)

if TYPE_CHECKING:
    from typing import Any

    #: ``(ok, pickled payload, descriptors of its shared-memory buffers or None)``
    Result = tuple[bool, bytes, list[int] | None]

_FN_CACHE_MAX = 1024
CHUNK_FLAGS = FLAG_ITEM_CHUNK | FLAG_STAR_CHUNK


class Handler:
    """Runs calls for ``worker_main``; each method returns ``(ok, payload)``.

    A Dask worker runs calls with it too (``_worker/cluster.py``), with its own ``pack``,
    ``pack_outcomes`` and ``capture``: results there travel without shared memory.
    """

    pack = staticmethod(pack)
    pack_outcomes = staticmethod(pack_outcomes)
    capture = staticmethod(exception_with_traceback)

    def __init__(self) -> None:
        self._functions: dict[bytes, Any] = {}

    def _function(self, fn_bytes: bytes, flags: int, kept: Any) -> Any:
        """The function of a call whose bytes are not kept, or whose kept function changed."""
        if not flags & FLAG_CACHEABLE:
            return load_in_child(fn_bytes)
        if kept is not None and hasattr(kept, "unchanged") and kept.unchanged():  # see function_cache.Rebuilt
            return kept.fn
        fn = load_in_child(fn_bytes)
        if flags & FLAG_BY_VALUE:
            from .._runtime.function_cache import Rebuilt

            kept = Rebuilt(fn)
        else:
            kept = fn
        if len(self._functions) >= _FN_CACHE_MAX:
            self._functions.clear()
        self._functions[fn_bytes] = kept
        return fn

    def call(
        self, body: bytes, fn_len: int, flags: int, fds: list[int] | None = None, *, _held: bool = False
    ) -> Result:
        """Runs one call: ``body`` is the function's bytes (``fn_len`` of them), then the arguments'.

        This is the worker's per-task path, kept to one Python frame when no descriptors came.
        """
        if fds and not _held:
            try:
                return self.call(body, fn_len, flags, fds, _held=True)
            finally:  # the call's objects are gone with that call's frame: its segments can go too
                release_received()
        if not by_value.installed and ("cloudpickle" in sys.modules or body.find(b"cloudpickle") >= 0):
            by_value.install()  # before the first function shipped by value is rebuilt
        try:
            buffers = from_segments(fds, keep=True) if fds else None
            fn_bytes = body[:fn_len]
            fn = self._functions.get(fn_bytes) if flags & FLAG_CACHEABLE else None
            if fn is None or flags & FLAG_BY_VALUE:
                fn = self._function(fn_bytes, flags, fn)
            try:
                args = loads(memoryview(body)[fn_len:], buffers=buffers)
            except ModuleNotFoundError:
                args = load_in_child(memoryview(body)[fn_len:], buffers)
            del buffers
            if not flags & CHUNK_FLAGS:
                result = value = fn(*args[0], **args[1])
            elif flags & FLAG_OUTCOMES:
                seconds, outcomes = chunk.per_item(fn, args, bool(flags & FLAG_STAR_CHUNK), self.capture)
                return (True, *self.pack_outcomes(seconds, outcomes, bool(flags & FLAG_POOL_ERRORS)))
            elif flags & FLAG_TIMED:
                result = chunk.timed(fn, args, bool(flags & FLAG_STAR_CHUNK))
                value = result[1]
            else:
                result = value = chunk.values(fn, args, bool(flags & FLAG_STAR_CHUNK))
        except BaseException as exc:
            return False, dump_exception(exc, bool(flags & FLAG_POOL_ERRORS)), None
        try:
            payload, out_fds = self.pack(result)
            return True, payload, out_fds
        except BaseException as exc:
            if flags & FLAG_POOL_ERRORS:
                return False, dump_exception(encoding_error(exc, value), True), None
            return False, dump_exception(exc), None

    init = call

    @staticmethod
    def catch_up_output() -> None:
        """Waits while the parent takes the output this worker has queued.

        ``worker_main`` calls it before it sends a result while ``_core.worker_output_behind``
        says output is queued: a task's prints reach the parent before its result.
        """
        from .forwarding import catch_up

        catch_up()


def main(parent_pid: int) -> None:
    """Entry point of a worker process."""
    from .start import finish_output, name_worker

    name_worker()
    code = _core.worker_main(Handler(), parent_pid)
    finish_output()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # like multiprocessing's forked children: no interpreter teardown, the parent waits on us
    os._exit(code)
