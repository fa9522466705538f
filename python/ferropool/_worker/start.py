"""What a process worker does at start-up, before its first task (``start_worker``).

1. set the BLAS/OpenMP thread variables the parent chose (``_runtime/env.py``);
2. take the output socket the worker was started with (its other end is the pool's output
   thread; see ``_core.WORKER_OUTPUT_FD_VAR``) and let what the worker prints and logs go there:
   ``sys.stdout``/``sys.stderr`` become text streams that stay for the worker's life and set
   up their forwarding at the first write, and
   ``logging`` gets a forwarding handler (now if it is loaded, else when a task imports it);
3. run the user's initializer and keep its value for ``ferropool.worker_state()``.

Start-up time is a pool's start-up time, and under ``spawn`` every worker pays it again, so this
module is small and imports nothing a bare worker lacks. The machinery (``output.py``)
loads at the first print or log record; a worker that does neither never loads it. The parent's
side, and the design, are in ``_pool/logs.py``.
"""

from __future__ import annotations

import _thread
import os
import sys

# the C module: the `socket` wrapper imports enum and selectors, a start-up cost in every worker
from _socket import socket as _Socket

from .._core import WORKER_NUMBER_VAR, WORKER_OUTPUT_FD_VAR
from .._runtime import naming
from . import state as worker_state

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

#: Largest piece of a line on the output socket (a line longer than this goes in pieces).
PIECE = 32 * 1024
#: Largest log record message: a record that would be longer is cut down to fit.
RECORD_MAX = 128 * 1024
#: Largest message the parent accepts; one that is longer is junk, and dropped.
MESSAGE_MAX = RECORD_MAX + 64
#: Output a worker keeps while the parent is behind; more is dropped.
PENDING_MAX = 4 * 1024 * 1024
#: Message kinds: the first byte of each message.
STDOUT, STDERR, RECORD, DROPPED = b"o", b"e", b"r", b"d"


#: The non-blocking socket to the pool's output thread, once taken over.
connection: _Socket | None = None


def name_worker() -> None:
    """Names this worker ``PoolWorker-<n>`` (its number in its pool), first thing in the worker."""
    number = os.environ.pop(WORKER_NUMBER_VAR, None)
    if number is not None:
        naming.rename(f"PoolWorker-{number}")


class WorkerConfig:
    """What a pool asks of each of its workers at start-up; pickled to the worker.

    ``env``: variables to set (the BLAS thread limits); ``log_level``: forward log records at
    this level and above to the parent (``None``: none); ``forward_output``: send what the
    worker prints to the parent; ``authkey``: the parent's key, for a spawned worker (a forked
    one has it already). It travels only on the worker's own link, never on a command line.
    """

    __slots__ = ("authkey", "env", "forward_output", "log_level")

    def __init__(
        self, env: dict[str, str], log_level: int | None, forward_output: bool, authkey: bytes | None = None
    ) -> None:
        self.env = env
        self.log_level = log_level
        self.forward_output = forward_output
        self.authkey = authkey

    def __reduce__(self) -> tuple[Any, ...]:
        return WorkerConfig, (self.env, self.log_level, self.forward_output, self.authkey)


def start_worker(config: WorkerConfig, initializer: Any, *initargs: Any) -> None:
    """Runs in each worker at start-up, as its pool's initializer (see the module docstring).

    Steps 1 and 2 never fail the worker: at worst output stays where it was. If the user's
    initializer raises, the pool is broken, as in the stdlib.
    """
    if config.env:
        os.environ.update(config.env)
    if config.authkey is not None:
        naming.adopt_authkey(config.authkey)
    fd = os.environ.pop(WORKER_OUTPUT_FD_VAR, None)  # not for the processes the worker's tasks start
    if fd is not None:
        try:
            _take_output_socket(int(fd), config.log_level, config.forward_output)
        except Exception:
            pass  # output stays where it was; the pool's work matters more
    if initializer is not None:
        worker_state.set_for_process(initializer(*initargs))


def _take_output_socket(fd: int, level: int | None, output: bool) -> None:
    """Sends what the worker prints (``output``) and logs (``level``) on the socket ``fd``.

    The engine made the socket pair and handed this end over before the worker started, so
    the other end can only be the pool's output thread.
    """
    global connection
    sock = _Socket(fileno=fd)
    os.set_inheritable(fd, False)
    sock.setblocking(False)
    connection = sock
    from .._runtime import lifecycle

    lifecycle.after_fork_in_child(_forget_after_fork)
    if output:
        sys.stdout = _text_stream(STDOUT, sys.stdout, 1)
        sys.stderr = _text_stream(STDERR, sys.stderr, 2)
    if level is not None:
        if "logging" in sys.modules:
            _load_forwarding().forward_records(sys.modules["logging"], level)
        else:
            # importing logging now would cost most of a fresh worker's start-up, and tasks
            # that never log never need it: set it up when something imports it
            sys.meta_path.insert(0, _WhenLoggingIsImported(level))


def _text_stream(kind: bytes, old: Any, fd: int) -> Any:
    """The worker's ``sys.stdout`` (or ``sys.stderr``) for the rest of its life.

    It is installed once and never replaced: ``print()`` holds only a borrowed reference to
    ``sys.stdout`` while it writes, so swapping the object during a call would free it under
    the caller. What is lazy is the sink beneath it.
    """
    import io

    if old is not None:
        try:
            old.flush()  # what the worker wrote before forwarding began goes where it was going
        except Exception:
            pass
    encoding = getattr(old, "encoding", None) or "utf-8"
    # write_through: every write reaches the sink at once, which keeps whole lines together
    return io.TextIOWrapper(_Sink(kind, fd), encoding=encoding, errors="backslashreplace", write_through=True)


#: ``forwarding.py`` once loaded: at the first print or log record, never before.
_forwarding: Any = None


def _load_forwarding() -> Any:
    global _forwarding
    if _forwarding is None:
        from . import forwarding

        _forwarding = forwarding
    return _forwarding


def finish_output() -> None:
    """At the worker's end: sends what it printed or logged and is still queued, if anything."""
    if _forwarding is not None:
        _forwarding.finish_in_worker()


_sinks: list[_Sink] = []
_make_lock = _thread.allocate_lock()


class _Sink:
    """The binary stream under a worker's ``sys.stdout``/``sys.stderr``.

    Its target, made at the first write, is the forwarding ``_LineSink`` of
    ``forwarding.py``; in a process a task forked, it is the original descriptor, as it would
    be without ferropool.
    """

    closed = False

    def __init__(self, kind: bytes, fd: int) -> None:
        self._kind, self._fd = kind, fd
        self._target: Any = None
        _sinks.append(self)

    def _made(self) -> Any:
        target = self._target
        if target is None:
            with _make_lock:
                if self._target is None:
                    self._target = _load_forwarding().line_sink(self._kind) or _FdWriter(self._fd)
                target = self._target
        return target

    def write(self, data: Any) -> int:
        return self._made().write(data)  # type: ignore[no-any-return]

    def flush(self) -> None:
        target = self._target
        if target is not None:
            target.flush()

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.flush()


class _FdWriter:
    """Writes whole lines straight to a descriptor: the sink's target once output is not forwarded.

    A line is written in one ``write``, as a buffered stdout would flush it: ``print()`` writes
    the text and the newline separately, and another process's line must not land in between.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._partial = bytearray()

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        self._partial += data
        end = self._partial.rfind(b"\n") + 1
        if end:
            self._write(end)
        return size

    def flush(self) -> None:
        self._write(len(self._partial))

    def _write(self, end: int) -> None:
        view = memoryview(bytes(self._partial[:end]))
        del self._partial[:end]
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            pass  # as writing to a closed stdout in a child: the output is lost, the task goes on


def _forget_after_fork() -> None:
    """In a process a task forked: the pool's output socket is not its to keep open.

    A child that outlived its task would otherwise hold the parent's side open (and make pool
    shutdown wait for it); its prints go to the original descriptors instead, as they would
    without ferropool.
    """
    global connection, _make_lock
    _make_lock = _thread.allocate_lock()  # another thread may have held it at the fork
    if connection is not None:
        connection.close()
        connection = None
    if _forwarding is not None:
        _forwarding.forget_after_fork()
    for sink in _sinks:
        sink._target = _FdWriter(sink._fd)


class _WhenLoggingIsImported:
    """An import hook: forwards log records from the moment ``logging`` is first imported."""

    def __init__(self, level: int) -> None:
        self._level = level

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if loader is None:
            return spec
        run_module = loader.exec_module
        level = self._level

        def exec_module(module: Any) -> None:
            run_module(module)
            _load_forwarding().forward_records(module, level)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
