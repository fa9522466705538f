"""On the Dask cluster: the one task every ferropool call or chunk becomes, and the scheduler plugin.

A ``ClusterBackend`` (``_pool/cluster.py``) submits :func:`run` once per call or chunk, with the
function and its arguments already pickled by ferropool (``_serialize.dumps``), so functions
from ``__main__`` and lambdas travel by value exactly as they do to a local worker, and are run
by a local worker's own call interpreter (``main.Handler``). :func:`run` runs in a Dask worker's
task thread and returns ``(kind, payload, output, records)``, or only the pickled value for a
call that returned without printing or logging (the common case, and the cheapest for Dask):

- ``kind`` says what ``payload`` holds: the pickled value, the pickled exception with its
  traceback, the time limit that stopped the call, the initializer's exception, or nothing
  for a call ``kill()`` stopped;
- ``output`` is what the call printed, ``[(stream, text), ...]``, when the pool forwards output,
  each line with the pool's prefix (``{name}``: the Dask worker's name; ``{pid}``: its pid);
- ``records`` are the log records the call emitted at or above the pool's level.

A time limit and ``kill()`` (:func:`stop`, sent to every worker with ``client.run``) stop a
call the same way: an exception raised into its thread, which lands when the call next runs
Python code (a call blocked in C code stops when that returns).

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
from typing import Any

from .._runtime import by_value as _by_value
from .._runtime.serialize import dump_exception, dump_outcomes, dumps, exception_with_traceback, loads
from . import main as _main
from . import state as _state

#: Outcome kinds of :func:`run`.
KIND_OK, KIND_ERR, KIND_TIMED_OUT, KIND_INIT_FAILED, KIND_KILLED = range(5)
#: The prefix of every task key ferropool submits (the plugin acts on these only).
KEY_PREFIX = "ferropool-"
#: Keys of tasks killed before they started in this process that are remembered (see ``stop``).
KILLED_MAX = 4096

_init_lock = threading.Lock()
#: per pool token: (True, what the initializer returned) or (False, its pickled exception)
_inits: dict[str, tuple[bool, Any]] = {}
_MISSING: Any = object()

_running_lock = threading.Lock()
_running: dict[str, _Running] = {}  # key -> the call of that task running in this process
_killed: dict[str, None] = {}  # keys stopped before they started here, oldest first


class _Interrupted(BaseException):
    """Raised inside a call that is stopped.

    A ``BaseException``, so an ``except Exception`` in the call does not swallow it.
    """


class _Expired(_Interrupted):
    """The call ran past its time limit."""


class _Killed(_Interrupted):
    """``kill()`` of the call's future."""


class _Handler(_main.Handler):
    """A local worker's call interpreter, with results pickled whole: no shared memory here."""

    @staticmethod
    def pack(result: Any) -> tuple[bytes, None]:
        return dumps(result), None

    @staticmethod
    def pack_outcomes(seconds: float, outcomes: list[tuple[bool, Any]], pool: bool = False) -> tuple[bytes, None]:
        return dump_outcomes(seconds, outcomes, None, pool), None

    @staticmethod
    def capture(exc: BaseException) -> tuple[BaseException, Any]:
        if isinstance(exc, _Interrupted):
            raise exc  # stops the chunk, not only its item
        return exception_with_traceback(exc)


_handler = _Handler()


class _Running:
    """A call running in a Dask task thread, which a time limit or ``kill()`` can stop.

    At most one exception is raised into the thread, and none once the call has finished.
    """

    __slots__ = ("thread_id", "lock", "finished", "stopped_by")

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.finished = False
        self.stopped_by: type[_Interrupted] | None = None

    def interrupt(self, why: type[_Interrupted]) -> bool:
        with self.lock:
            if self.finished or self.stopped_by is not None:
                return False
            self.stopped_by = why
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.thread_id), ctypes.py_object(why))
            return True

    def finish(self) -> None:
        with self.lock:
            self.finished = True


def run(
    spec: tuple[str, bytes | None, str | None, int | None],
    key: str,
    fn_bytes: bytes,
    flags: int,
    payload: bytes,
    limit: float | None,
) -> bytes | tuple[int, Any, list[tuple[str, str]], list[dict[str, Any]]]:
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
            kind, value = _call_stoppable(key, fn_bytes, flags, payload, limit)
            output, records = capture.taken()
            if kind == KIND_OK and type(value) is bytes and not output and not records:
                # the pickled value alone: Dask sizes and sends bytes as they are, where a
                # tuple costs the worker a walk through it and a pickle per item
                return value
            return kind, value, output, records
        finally:
            if previous is _MISSING:
                _state._thread.__dict__.pop("value", None)
            else:
                _state._thread.value = previous
    finally:
        capture.stop()


def stop(key: str) -> bool:
    """Stops the task ``key`` if it runs in this process (``kill()``, through ``client.run``).

    A task that has not started here yet is remembered, so that it does not start later: the
    client asks every worker, since only the scheduler knows where a task went.
    """
    with _running_lock:
        running = _running.get(key)
        if running is None:
            _killed[key] = None
            while len(_killed) > KILLED_MAX:
                del _killed[next(iter(_killed))]
            return False
    return running.interrupt(_Killed)


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


def _call_stoppable(key: str, fn_bytes: bytes, flags: int, payload: bytes, limit: float | None) -> tuple[int, Any]:
    running = _Running()
    with _running_lock:
        if key in _killed:
            del _killed[key]
            return KIND_KILLED, None
        _running[key] = running
    timer = None
    if limit is not None:
        timer = threading.Timer(limit, running.interrupt, (_Expired,))
        timer.daemon = True
    outcome: tuple[bool, bytes, Any] | None = None
    try:
        try:
            if timer is not None:
                timer.start()
            outcome = _handler.call(fn_bytes + payload, len(fn_bytes), flags)
        finally:
            running.finish()
    except _Interrupted:
        pass  # raised into the call, or just after it returned: the call counts as stopped
    if timer is not None:
        timer.cancel()
    with _running_lock:
        _running.pop(key, None)
    if running.stopped_by is _Killed:
        return KIND_KILLED, None
    if running.stopped_by is not None or outcome is None:
        return KIND_TIMED_OUT, limit
    return KIND_OK if outcome[0] else KIND_ERR, outcome[1]


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
    if _installed:  # every call of every captured task comes here: no lock once done
        return
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

    __slots__ = ("prefix", "active", "root_level")

    def __init__(self, prefix: str | None, level: int | None) -> None:
        output = prefix is not None
        self.prefix = prefix
        self.active = output or level is not None
        self.root_level: int | None = None
        if not self.active:
            return
        _install()
        _capturing.output = [] if output else None
        _capturing.records = [] if level is not None else None
        _capturing.level = level
        if level is not None:
            root = logging.root
            if root.level > level:  # the pool asked for records the worker's level would drop
                self.root_level = root.level
                root.setLevel(level)

    def taken(self) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
        if not self.active:
            return [], []
        output, records = _capturing.output, _capturing.records
        if not output and not records:  # nothing printed or logged: the common case, nothing to reset
            return [], []
        _capturing.output, _capturing.records = (
            ([] if output is not None else None),
            ([] if records is not None else None),
        )
        return _merged(output or [], self.prefix), records or []

    def stop(self) -> None:
        if not self.active:
            return
        _capturing.output = _capturing.records = None
        if self.root_level is not None:
            logging.root.setLevel(self.root_level)


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
