"""On the Dask cluster: the one task every ferropool call or chunk becomes, and the scheduler plugin.

A ``ClusterBackend`` (``_pool/cluster.py``) submits :func:`run` once per call or chunk, with the
function and its arguments already pickled by ferropool (``_serialize.dumps``), so functions
from ``__main__`` and lambdas travel by value exactly as they do to a local worker. :func:`run`
runs in a Dask worker's task thread and returns ``(kind, payload, output, records)``:

- ``kind`` says what ``payload`` holds: the pickled value, the pickled exception with its
  traceback, the time limit that stopped the call, or the initializer's exception;
- ``output`` is what the call printed, ``[(stream, text), ...]``, when the pool forwards output,
  each line with the pool's prefix (``{name}``: the Dask worker's name; ``{pid}``: its pid);
- ``records`` are the log records the call emitted at or above the pool's level.

The pool's initializer runs once per Dask worker process and pool (keyed by the pool's token),
at the first task of that pool the process runs, so workers that join later run it too.

:class:`NoRetryOnDeath` (a scheduler plugin) makes a task of ferropool's fail at the first death
of the worker running it, where Dask would run it again on another worker up to
``distributed.scheduler.allowed-failures`` times.

Every Dask worker (and the scheduler, for the plugin) needs ferropool installed.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
import time
from typing import Any

from .._runtime import by_value as _by_value
from .._runtime.serialize import (
    FLAG_CACHEABLE,
    FLAG_ITEM_CHUNK,
    FLAG_OUTCOMES,
    FLAG_POOL_ERRORS,
    FLAG_STAR_CHUNK,
    FLAG_TIMED,
    dump_exception,
    dump_outcomes,
    dumps,
    encoding_error,
    exception_with_traceback,
    loads,
)
from . import state as _state

#: Outcome kinds of :func:`run`.
KIND_OK, KIND_ERR, KIND_TIMED_OUT, KIND_INIT_FAILED = range(4)
#: The prefix of every task key ferropool submits (the plugin acts on these only).
KEY_PREFIX = "ferropool-"

_init_lock = threading.Lock()
#: per pool token: (True, what the initializer returned) or (False, its pickled exception)
_inits: dict[str, tuple[bool, Any]] = {}
_functions: dict[bytes, Any] = {}
_FN_CACHE_MAX = 1024
_MISSING: Any = object()


class _Expired(BaseException):
    """Raised inside a call that ran past its time limit.

    A ``BaseException``, so an ``except Exception`` in the call does not swallow it.
    """


def run(
    spec: tuple[str, bytes | None, str | None, int | None],
    fn_bytes: bytes,
    flags: int,
    payload: bytes,
    limit: float | None,
) -> tuple[int, Any, list[tuple[str, str]], list[dict[str, Any]]]:
    """Runs one call or chunk in this Dask worker; see the module docstring."""
    token, init, output_prefix, log_level = spec
    if not _by_value.installed:
        _by_value.install()  # before the first function shipped by value is rebuilt
    capture = _Capture(output_prefix, log_level)
    try:
        state = _MISSING
        if init is not None:
            ok, state = _initialized(token, init)
            if not ok:
                return KIND_INIT_FAILED, state, *capture.taken()
        previous = getattr(_state._thread, "value", _MISSING)
        if state is _MISSING:
            _state._thread.__dict__.pop("value", None)
        else:
            _state._thread.value = state
        try:
            return (*_call_limited(fn_bytes, flags, payload, limit), *capture.taken())
        finally:
            if previous is _MISSING:
                _state._thread.__dict__.pop("value", None)
            else:
                _state._thread.value = previous
    finally:
        capture.stop()


def _initialized(token: str, init: bytes) -> tuple[bool, Any]:
    """Runs the pool's initializer once in this process; its value, or its pickled exception."""
    with _init_lock:
        done = _inits.get(token)
        if done is None:
            try:
                initializer, initargs = loads(init)
                done = (True, initializer(*initargs))
            except BaseException as exc:
                done = (False, dump_exception(exc))
            _inits[token] = done
        return done


def _call_limited(fn_bytes: bytes, flags: int, payload: bytes, limit: float | None) -> tuple[int, Any]:
    if limit is None:
        return _call(fn_bytes, flags, payload)
    guard = threading.Lock()
    finished = False
    thread_id = threading.get_ident()

    def expire() -> None:
        with guard:
            if not finished:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(_Expired))

    timer = threading.Timer(limit, expire)
    timer.daemon = True
    outcome: tuple[int, Any] | None = None
    try:
        try:
            timer.start()
            outcome = _call(fn_bytes, flags, payload)
        finally:
            with guard:
                finished = True
            timer.cancel()
    except _Expired:
        pass  # the limit passed; if the call had already returned, its outcome stands
    return outcome if outcome is not None else (KIND_TIMED_OUT, limit)


def _function(fn_bytes: bytes, flags: int) -> Any:
    if not flags & FLAG_CACHEABLE:
        return loads(fn_bytes)
    fn = _functions.get(fn_bytes)
    if fn is None:
        fn = loads(fn_bytes)
        if len(_functions) >= _FN_CACHE_MAX:
            _functions.clear()
        _functions[fn_bytes] = fn
    return fn


def _call(fn_bytes: bytes, flags: int, payload: bytes) -> tuple[int, Any]:
    pool = bool(flags & FLAG_POOL_ERRORS)
    try:
        fn = _function(fn_bytes, flags)
        args = loads(payload)
        started = time.perf_counter()
        if flags & FLAG_OUTCOMES:
            outcomes: list[tuple[bool, Any]] = []
            for item in args:
                try:
                    outcomes.append((True, fn(*item) if flags & FLAG_STAR_CHUNK else fn(item)))
                except _Expired:
                    raise
                except BaseException as exc:
                    outcomes.append((False, exception_with_traceback(exc)))
            return KIND_OK, dump_outcomes(time.perf_counter() - started, outcomes, None, pool)
        if flags & FLAG_ITEM_CHUNK:
            value: Any = list(map(fn, args))
        elif flags & FLAG_STAR_CHUNK:
            value = [fn(*a) for a in args]
        else:
            value = fn(*args[0], **args[1])
        result = (time.perf_counter() - started, value) if flags & FLAG_TIMED else value
    except _Expired:
        raise
    except BaseException as exc:  # SystemExit too: it ends the call, not the Dask worker
        return KIND_ERR, dump_exception(exc, pool)
    try:
        return KIND_OK, dumps(result)
    except Exception as exc:
        return KIND_ERR, dump_exception(encoding_error(exc, value) if pool else exc, pool)


# --------------------------------------------------------------------------------------------
# output and log records of one call


_capturing = threading.local()  # .output: list of (stream, text); .records; .level
_install_lock = threading.Lock()
_installed = False


class _ThreadStream:
    """Stands in for ``sys.stdout``/``sys.stderr`` in a Dask worker.

    What a thread capturing its output writes is kept for its call's result; everything else
    goes to the real stream.
    """

    def __init__(self, stream: Any, name: str) -> None:
        self._stream = stream
        self._name = name

    def write(self, text: str) -> int:
        output = getattr(_capturing, "output", None)
        if output is None:
            return self._stream.write(text)  # type: ignore[no-any-return]
        output.append((self._name, text))
        return len(text)

    def flush(self) -> None:
        if getattr(_capturing, "output", None) is None:
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class _RecordHandler(logging.Handler):
    """Keeps the records a capturing thread emits, as plain dicts, for its call's result."""

    def emit(self, record: logging.LogRecord) -> None:
        records = getattr(_capturing, "records", None)
        if records is None or record.levelno < _capturing.level:
            return
        data = dict(record.__dict__)
        data["msg"] = record.getMessage()
        data["args"] = None
        if record.exc_info:
            data["exc_text"] = logging.Formatter().formatException(record.exc_info)
        data["exc_info"] = None
        records.append(data)


def _install() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
        sys.stdout = _ThreadStream(sys.stdout, "stdout")
        sys.stderr = _ThreadStream(sys.stderr, "stderr")
        logging.getLogger().addHandler(_RecordHandler())


def _merged(output: list[tuple[str, str]], prefix: str | None) -> list[tuple[str, str]]:
    """``output`` with consecutive writes to one stream joined.

    ``print`` writes a line and its end apart; joined, each line gets one ``prefix``.
    """
    merged: list[tuple[str, str]] = []
    for stream, text in output:
        if merged and merged[-1][0] == stream:
            merged[-1] = (stream, merged[-1][1] + text)
        else:
            merged.append((stream, text))
    if not prefix:
        return merged
    start = prefix.format(name=_worker_name(), pid=os.getpid())
    return [(stream, "".join(start + line for line in text.splitlines(keepends=True))) for stream, text in merged]


def _worker_name() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except Exception:  # not in a Dask worker (called directly)
        return "dask-worker"


class _Capture:
    """Captures this thread's output and records while one call runs."""

    def __init__(self, prefix: str | None, level: int | None) -> None:
        output = prefix is not None
        self.prefix = prefix
        self.active = output or level is not None
        if not self.active:
            return
        _install()
        self.root_level = None
        _capturing.output = [] if output else None
        _capturing.records = [] if level is not None else None
        _capturing.level = level
        if level is not None:
            root = logging.getLogger()
            if root.level > level:  # the pool asked for records the worker's level would drop
                self.root_level = root.level
                root.setLevel(level)

    def taken(self) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        if not self.active:
            return [], []
        output, records = _merged(_capturing.output or [], self.prefix), _capturing.records or []
        _capturing.output, _capturing.records = (
            ([] if _capturing.output is not None else None),
            ([] if _capturing.records is not None else None),
        )
        return output, records

    def stop(self) -> None:
        if not self.active:
            return
        _capturing.output = _capturing.records = None
        if self.root_level is not None:
            logging.getLogger().setLevel(self.root_level)


# --------------------------------------------------------------------------------------------
# on the scheduler


def no_retry_plugin() -> Any:
    """A scheduler plugin: ferropool's tasks fail at the first death of their worker."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class NoRetryOnDeath(SchedulerPlugin):
        name = "ferropool-no-retry-on-death"
        idempotent = True  # registered by every pool: the first registration stays

        def update_graph(self, scheduler: Any, *, keys: Any = (), tasks: Any = (), **kwargs: Any) -> None:
            # the scheduler fails a task with KilledWorker once its count of workers that died
            # running it exceeds allowed_failures: start ours at the limit
            for key in tasks:
                if isinstance(key, str) and key.startswith(KEY_PREFIX):
                    ts = scheduler.tasks.get(key)
                    if ts is not None:
                        ts.suspicious = max(ts.suspicious, scheduler.allowed_failures)

    return NoRetryOnDeath()
