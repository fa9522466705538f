"""How calls, results and exceptions become bytes, and back.

Data travels with the stdlib's ``pickle`` (protocol 5). Callables and objects that plain pickle
cannot ship to a fresh interpreter (lambdas, closures, anything defined in ``__main__`` or in a
notebook) travel by value with ``cloudpickle``; that is why a script needs no
``if __name__ == "__main__":`` guard: workers never re-run the main module.

This module is the pickling policy of every path that ships Python objects: pool calls and
results, ``Connection``, and ``Queue`` (whose Rust ring calls ``dumps`` here). The call flags
below are written by the parent (``_pool/backend.py``) and read by the worker
(``_worker/main.py``); the Rust core carries them without reading them. The outcome kinds
the core delivers are Rust's, exported as ``ferropool._core.OUT_*``.
"""

from __future__ import annotations

import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)

# the C pickler itself: importing the `pickle` module would also import `re`, which a worker
# does not otherwise need (this module is on every worker's start-up path)
try:
    import _pickle as pickle
except ImportError:  # pragma: no cover - CPython always has it
    import pickle  # type: ignore[no-redef]

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

PROTOCOL = 5

# Flags of a CALL frame (opaque to the core; read in _worker/main.py).
FLAG_CACHEABLE = 1  # the function bytes stand for the same function every time: a worker may keep it
FLAG_STAR_CHUNK = 2  # the arguments are a list of tuples: return [fn(*a) for a in them]
FLAG_ITEM_CHUNK = 4  # the arguments are a list of items: return [fn(x) for x in them]
FLAG_OUTCOMES = 8  # with a chunk flag: return (seconds, [(True, value) | (False, (exc, tb))])
FLAG_TIMED = 16  # with a chunk flag: return (seconds, [values]), for adaptive chunking
FLAG_POOL_ERRORS = 32  # a result that cannot be pickled fails with MaybeEncodingError (Pool's)
FLAG_BY_VALUE = 64  # with FLAG_CACHEABLE: shipped by value; kept while its tasks leave it unchanged

loads = pickle.loads


def load_in_child(data: Any, buffers: list[Any] | None = None) -> Any:
    """``loads`` in a child started with ``python -S`` (a pool worker, a ``Process`` child).

    If the data names a module only ``site`` would have made importable (an editable install's
    import hook, say), ``site`` runs once and the load is tried again.
    """
    try:
        return loads(data, buffers=buffers)
    except ModuleNotFoundError:
        if "site" in sys.modules:
            raise
        import site

        site.main()
        return loads(data, buffers=buffers)


#: The policy's first step: the C pickler, protocol ``PROTOCOL``. ``Queue.put``
#: (``src/queue/binding.rs``) takes this step itself while ``extra_reducers`` is empty and keeps
#: the bytes unless they name ``__main__``, exactly as ``dumps`` does, and calls ``dumps`` for
#: everything else.
plain_dumps = _plain_dumps = pickle.dumps
PickleError = pickle.PickleError
_MAIN = b"__main__"
#: Values the C pickler writes itself, whatever reducers are registered: never out of band, never
#: by value (a ``str`` naming ``__main__`` pickles the same either way)
PLAIN_TYPES = frozenset({int, float, str, bool, type(None), complex})
_FN_CACHE_MAX = 1024
_fn_cache: dict[Any, Any] = {}  # fn -> (bytes, flags), or a function_cache.Entry
_CACHEABLE_TYPES = (types.FunctionType, types.BuiltinFunctionType)


def _cloudpickle() -> Any:
    import cloudpickle  # type: ignore[import-untyped]

    return cloudpickle


def dumps(obj: Any, buffers: list[memoryview] | None = None) -> bytes:
    """Pickles ``obj`` so that a fresh worker interpreter can load it.

    Plain pickle first; cloudpickle when plain pickle fails or would refer to ``__main__``,
    which a worker does not share with the parent. With ``buffers``, the large buffers pickle
    protocol 5 can move out of band (``bytearray``, numpy arrays, ``LargeBytes``) are left out
    of the bytes and appended there instead (see ``_runtime/buffers.py``).
    """
    try:
        if buffers is None and not extra_reducers:  # the common case, kept short: Queue.put
            data = _plain_dumps(obj, PROTOCOL)
        elif extra_reducers:
            data = _with_reducers(pickle.Pickler, obj, None if buffers is None else _out_of_band(buffers))
        else:
            data = _plain_dumps(obj, PROTOCOL, buffer_callback=_out_of_band(buffers))  # type: ignore[arg-type]
    except Exception as plain_error:
        try:
            return _cloud_dumps(obj, buffers)
        except Exception:
            raise plain_error from None
    if _MAIN in data:
        data = _cloud_dumps(obj, buffers)
    return data


def _cloud_dumps(obj: Any, buffers: list[memoryview] | None) -> bytes:
    if buffers is not None:
        buffers.clear()  # the failed plain attempt may have collected some
    callback = None if buffers is None else _out_of_band(buffers)
    if extra_reducers:
        return _with_reducers(_cloudpickle().Pickler, obj, callback)
    return _cloudpickle().dumps(obj, PROTOCOL, buffer_callback=callback)  # type: ignore[no-any-return]


#: ``reduction.register``'s reducers, consulted before ``copyreg``'s (type -> reduce function)
extra_reducers: dict[type, Any] = {}


_reducing: dict[Any, Any] = {}  # pickler class -> its subclass that consults extra_reducers


def _with_reducers(pickler: Any, obj: Any, callback: Any) -> bytes:
    import io

    cls = _reducing.get(pickler)
    if cls is None:
        import copyreg
        from collections import ChainMap
        from collections.abc import Mapping

        # a class attribute, read when the pickler is made (an instance attribute set later
        # is not seen by a pickler whose class already has a table, as cloudpickle's has)
        base = pickler.__dict__.get("dispatch_table")  # the C pickler's is a slot: copyreg's then
        table: Any = ChainMap(extra_reducers, base if isinstance(base, Mapping) else copyreg.dispatch_table)  # type: ignore[arg-type]
        cls = _reducing[pickler] = type("ReducingPickler", (pickler,), {"dispatch_table": table})
    buf = io.BytesIO()
    cls(buf, PROTOCOL, buffer_callback=callback).dump(obj)
    return buf.getvalue()


#: Buffers at least this large travel out of band, through shared memory.
OUT_OF_BAND_MIN = 1 << 20


def _out_of_band(buffers: list[memoryview]) -> Callable[[Any], bool]:
    def keep_in_band(buffer: Any) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: pickle copies it in band
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False

    return keep_in_band


class LargeBytes:
    """A ``bytes`` argument or result big enough for shared memory.

    Pickle always copies ``bytes`` in band; this wrapper pickles it as a protocol 5 buffer
    instead, and unpickles to an ordinary ``bytes`` again.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return bytes, (pickle.PickleBuffer(self.data),)


def wrap_large(value: Any) -> Any:
    """``value``, with a large ``bytes`` (itself, or an item of a tuple or list) in ``LargeBytes``."""
    kind = type(value)
    if kind is bytes:
        return LargeBytes(value) if len(value) >= OUT_OF_BAND_MIN else value
    if kind is tuple or kind is list:
        for v in value:  # a plain loop: this runs for every submit, mostly on one or two items
            if type(v) is bytes and len(v) >= OUT_OF_BAND_MIN:
                return kind(LargeBytes(v) if type(v) is bytes and len(v) >= OUT_OF_BAND_MIN else v for v in value)
    return value


def dump_function(fn: Any) -> tuple[bytes, int]:
    """Pickles a task's callable; returns the bytes and the frame flags that go with them.

    Importable module-level functions are pickled by reference once and cached, here and in each
    worker. A function shipped by value (defined in ``__main__``, a lambda, a closure) is cached
    too while nothing its pickle holds has changed (see ``function_cache.py``). Everything else
    is pickled on every call, as the stdlib does, so bound methods and callable objects see the
    state they have at submit time.
    """
    try:
        cached = _fn_cache[fn]
    except (KeyError, TypeError):
        cached = None
    else:
        if type(cached) is tuple:
            return cached
        if cached.valid():
            return cached.data, cached.flags
    try:
        data = _plain_dumps(fn, PROTOCOL)
        by_reference = _MAIN not in data
    except Exception:
        by_reference = False
    if not by_reference:
        return _dump_by_value(fn, cached)
    flags = FLAG_CACHEABLE if isinstance(fn, _CACHEABLE_TYPES) else 0
    if flags:
        _remember(fn, (data, flags))
    return data, flags


def _remember(fn: Any, entry: Any) -> None:
    if len(_fn_cache) >= _FN_CACHE_MAX:
        _fn_cache.clear()
    _fn_cache[fn] = entry


def _dump_by_value(fn: Any, stale: Any) -> tuple[bytes, int]:
    cloudpickle = _cloudpickle()
    by_reference = getattr(cloudpickle.cloudpickle, "_should_pickle_by_reference", None)
    if type(fn) is not types.FunctionType or by_reference is None:
        return cloudpickle.dumps(fn, PROTOCOL), 0
    from . import function_cache

    data, entry = function_cache.pickle(fn, stale, lambda f: cloudpickle.dumps(f, PROTOCOL), by_reference)
    if entry is None:
        _fn_cache.pop(fn, None)
        return data, 0
    _remember(fn, entry)
    return data, entry.flags


def dump_exception(exc: BaseException, pool: bool = False) -> bytes:
    """Pickles an exception with its formatted traceback.

    An exception that cannot be pickled is replaced by a RuntimeError that names it and the
    pickling error (``pool``: by ``MaybeEncodingError``, as ``multiprocessing.Pool`` does); its
    traceback still travels.
    """
    exc, tb = exception_with_traceback(exc)
    try:
        return dumps((exc, tb))
    except Exception as pickling_error:
        return dumps((_unpicklable(exc, pickling_error, pool), tb))


def _unpicklable(exc: BaseException, pickling_error: Exception, pool: bool) -> BaseException:
    if pool:
        return encoding_error(pickling_error, exc)
    return RuntimeError(
        f"the task raised {type(exc).__qualname__}: {exc}, and that exception could not be pickled "
        f"back to the parent ({type(pickling_error).__name__}: {pickling_error})"
    )


def encoding_error(pickling_error: BaseException, value: Any) -> BaseException:
    """``multiprocessing.pool.MaybeEncodingError`` for a value that could not be pickled.

    The pickling error is its ``__cause__``, so its traceback travels with it.
    """
    from ..errors import MaybeEncodingError

    err = MaybeEncodingError(pickling_error, value)
    err.__cause__ = pickling_error
    return err


def dump_outcomes(
    seconds: float, outcomes: list[tuple[bool, Any]], buffers: list[memoryview] | None = None, pool: bool = False
) -> bytes:
    """Pickles per-item outcomes (``buffers``: as for ``dumps``).

    An item whose value or exception cannot be pickled becomes a failed item carrying the
    pickling error (``pool``: a ``MaybeEncodingError``); the others travel intact.
    """
    try:
        return dumps((seconds, outcomes), buffers)
    except Exception:
        if buffers is not None:
            buffers.clear()
    safe: list[tuple[bool, Any]] = []
    for ok, value in outcomes:
        try:
            dumps(value)
            safe.append((ok, value))
        except Exception as pickling_error:
            if ok:
                safe.append(
                    (False, exception_with_traceback(encoding_error(pickling_error, value) if pool else pickling_error))
                )
            else:
                safe.append((False, (_unpicklable(value[0], pickling_error, pool), value[1])))
    return dumps((seconds, safe), buffers)


def exception_with_traceback(exc: BaseException) -> tuple[BaseException, str]:
    """The exception and its formatted traceback, ready to travel (see ``dump_exception``)."""
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return exc, f'\n"""\n{tb}"""'


def attach_traceback(exc: BaseException, tb: str, pool: bool = False) -> BaseException:
    """``exc`` with the worker's traceback text as its ``__cause__`` (in the parent).

    The cause is the class the stdlib's front end uses: ``multiprocessing.pool.RemoteTraceback``
    for a ``Pool`` (``pool``), ``concurrent.futures.process._RemoteTraceback`` for an executor.
    """
    if pool:
        from multiprocessing.pool import RemoteTraceback  # type: ignore[attr-defined]
    else:
        from concurrent.futures.process import _RemoteTraceback as RemoteTraceback

    exc.__cause__ = RemoteTraceback(tb)
    return exc


def load_exception(payload: bytes, pool: bool = False) -> BaseException:
    """The exception a worker sent, with its remote traceback as ``__cause__``."""
    exc, tb = loads(payload)
    return attach_traceback(exc, tb, pool)
