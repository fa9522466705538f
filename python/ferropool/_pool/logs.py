"""Prints and log records of worker processes, delivered to the parent; ferropool's own logger.

::

    worker process (_worker/start.py, forwarding.py)    parent (here)
    ────────────────────────────────────────────────────  ─────────────
    print() ─▶ sys.stdout (_LineSink: whole lines) ─┐
    logging ─▶ forwarding handler (record as JSON) ─┴─▶ socket ─▶ output thread ─▶ sys.stdout /
                                                        (one per    (one per pool)   sys.stderr /
                         engine: a socket pair per worker ─▶ worker)   ▲             logging
                                 └─ the parent's end, with the pid ────┘ (registrar)

Why a socket of its own rather than a frame kind on the worker's task link: the task path stays
exactly as fast as before (nothing is added to a result, nothing is parsed by the engine), a
flood of output can never delay a result frame or the engine's reading, and the engine stays
free of Python. The price is ordering across the two channels, which two waits restore: a worker
sends a task's result only once the task's output has left it (``forwarding._Link.catch_up``),
and the pool's result thread writes whatever output already arrived before it completes a batch
of futures, so what a task printed is written before its result is handed to you.

Each worker is started holding its end of a ``SOCK_SEQPACKET`` socket pair the engine made for
it; the engine sends the other end to the output thread. Nothing has an address, so no process
but the pool's own can write to the output thread (``docs/failures.md``, "Security model").
Every message arrives whole, so a line is never split between two writes, and lines of
different workers never interleave. A line message is at most ``PIECE`` (32 KiB) bytes; a
longer line travels in pieces written one after the other. A log record is at most
``RECORD_MAX`` (the worker cuts a longer message or traceback down to fit); the output thread
drops anything longer, and junk, and never creates a logger for a worker's record.

Backpressure and drop policy: what the socket cannot take at once waits in the worker, up to
``PENDING_MAX`` (4 MiB), and a small thread sends it as the parent catches up. Beyond that, a
print waits for room while the parent keeps taking output. A parent that takes nothing from
the worker for ``forwarding.STALL`` (5 s) is stuck: nothing waits for it any more, new output
beyond the queue is dropped and counted, and the parent writes ``[ferropool] <worker>: <n>
lines (<m> bytes) of output dropped`` to ``sys.stderr`` where the lines would have been.
Bytes that are not UTF-8 are written with replacement characters.
"""

from __future__ import annotations

import _thread
import array
import json
import logging
import os
import select
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable

from .. import _core
from .._runtime import lifecycle, logger_setup
from .._worker.start import DROPPED, MESSAGE_MAX, RECORD, STDERR, STDOUT

__all__ = ["get_logger", "log_to_stderr"]

LOGGER_NAME = "ferropool"
_log = logging.getLogger(LOGGER_NAME)
logger_setup.logger = _log


# --------------------------------------------------------------------------------------------
# the public logger (multiprocessing.get_logger / log_to_stderr)

DEFAULT_FORMAT = "[%(levelname)s/%(processName)s] %(message)s"


def get_logger() -> logging.Logger:
    """Returns ferropool's logger, ``logging.getLogger("ferropool")``.

    Pool and worker life-cycle events go to it: pool start and shutdown and worker starts at
    ``DEBUG``; workers that ended for a reason other than shutdown (recycled, timed out, killed,
    died, with their exit code) and their replacements at ``INFO``; callbacks that raised at
    ``ERROR``. Unlike ``multiprocessing``'s logger it propagates to the root logger, so
    ``logging.basicConfig(level=logging.DEBUG)`` shows it, until ``log_to_stderr()`` gives it a
    handler of its own.
    """
    return _log


def check_level(level: object, what: str = "level") -> int:
    """A logging level from an int or a level name (``"INFO"``).

    Raises:
        ValueError: an unknown name, or a negative number.
        TypeError: neither an int nor a str.
    """
    if isinstance(level, bool) or not isinstance(level, (int, str)):
        raise TypeError(f"{what} must be a logging level (an int or a name like 'INFO'), not {type(level).__name__!r}")
    if isinstance(level, str):
        value = logging.getLevelName(level.upper())
        if not isinstance(value, int):
            raise ValueError(f"{what} {level!r} is not a logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
        return value
    if level < 0:
        raise ValueError(f"{what} must be a logging level >= 0, not {level}")
    return level


def log_to_stderr(level: int | str | None = None) -> logging.Logger:
    """Makes ferropool's logger write to ``sys.stderr``; returns the logger.

    As ``multiprocessing.log_to_stderr``: a handler with the format
    ``[%(levelname)s/%(processName)s] %(message)s`` is added once, and the logger stops
    propagating to the root logger so nothing is written twice.

    Args:
        level: if given, the logger's level (an int or a name like ``"DEBUG"``).

    Raises:
        ValueError: ``level`` is not a logging level.
    """
    if level is not None:
        _log.setLevel(check_level(level))
    if logger_setup.stderr_handler not in _log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(DEFAULT_FORMAT))
        logger_setup.stderr_handler = handler
        _log.addHandler(handler)
        _log.propagate = False
    return _log


# --------------------------------------------------------------------------------------------
# options


def worker_logs_level(worker_logs: object) -> int | None:
    """The level workers forward records at, from a pool's ``worker_logs`` argument.

    ``True``: the parent's root logger level now; ``False``/``None``: no forwarding; else a
    level (int or name).
    """
    if worker_logs is None or worker_logs is False:
        return None
    if worker_logs is True:
        return logging.getLogger().getEffectiveLevel()
    return check_level(worker_logs, "worker_logs")


def output_prefix(worker_output: object) -> str | None:
    """The line prefix template from a pool's ``worker_output`` argument (``""``: none).

    ``True``: forward without a prefix; ``False``/``None``: do not forward; a ``str``: forward
    with that prefix, formatted with ``{name}`` (``PoolWorker-3``) and ``{pid}``.
    """
    if worker_output is None or worker_output is False:
        return None
    if worker_output is True:
        return ""
    if isinstance(worker_output, str):
        try:
            worker_output.format(name="", pid=0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"worker_output {worker_output!r} is not a valid prefix: only {{name}} and {{pid}} can be used"
            ) from exc
        return worker_output
    raise TypeError(
        f"worker_output must be True, False or a prefix string like '[{{name}}] ', not {type(worker_output).__name__!r}"
    )


# --------------------------------------------------------------------------------------------
# in the parent


class _Conn:
    """One worker's output socket, as the output thread sees it."""

    __slots__ = ("at_line_start", "name", "pid", "sock")

    def __init__(self, sock: socket.socket, pid: int, name: str) -> None:
        self.sock = sock
        self.pid = pid
        self.name = name
        self.at_line_start = {STDOUT: True, STDERR: True}


_collectors: weakref.WeakSet[Collector] = weakref.WeakSet()

#: Messages, and bytes, read from one worker before the others get a turn: a worker waits for
#: the parent to take its output (``_worker/forwarding._Link``), and takes a parent that takes
#: nothing of it for seconds as stuck, so turns stay short even on a slow terminal.
_BURST = 1024
_BURST_BYTES = 256 * 1024


class Collector:
    """A pool's output thread: takes each new worker's output socket and delivers what it sends.

    The engine makes a socket pair per worker, hands the worker one end before it starts and
    sends the other here, with the worker's pid and number, on the *registrar* (a socket pair of this
    object's, one end given to the engine): there is no address, so no other process can
    reach the thread. When the engine has finished, it closes its end, which is how the thread
    knows no worker is left.

    Lines go to whatever ``sys.stdout``/``sys.stderr`` is at the time (so pytest's capture
    and Jupyter's cells see them), each message in one ``write()``; a record goes to the logger
    of its name if the parent has that logger, else to its nearest ancestor that exists (as
    propagation would), if enabled for its level, with ``processName`` set to the worker's name
    and ``process`` to its pid. No logger is ever created for a worker.
    """

    def __init__(self, prefix: str | None, on_exit: Callable[[int], tuple[str, int | None, int | None] | None]) -> None:
        self.prefix = prefix
        self._on_exit = on_exit
        self._registrar, self._engine_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._registrar.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        # the result thread's quick look: the registrar and every connection, for _core.any_readable
        self._fds = [self._registrar.fileno()]
        self._buffer = bytearray(MESSAGE_MAX + 1)
        self._gone: dict[int, tuple[str, int]] = {}  # pid -> (name, checks left) awaiting exit info
        self._engine_done = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._launched = threading.Event()
        _collectors.add(self)

    def engine_end(self) -> int:
        """The descriptor the engine sends new workers' sockets to; the caller owns it now."""
        return self._engine_end.detach()

    def start(self) -> None:
        """Starts the thread (after the fork server exists: it must be made single-threaded).

        Without waiting for it to run, as ``Thread.start()`` would: on a busy machine that is a
        round of the scheduler in every pool's start-up. A short-lived helper starts it instead.
        """
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="ferropool-output", daemon=True)
            _thread.start_new_thread(self._launch, (self._thread,))

    def _launch(self, thread: threading.Thread) -> None:
        try:
            thread.start()
        except BaseException:
            self._close_sockets()  # no thread (interpreter shutdown, no resources): nothing forwards
        finally:
            self._launched.set()

    def close(self, wait: float = 0.0) -> None:
        """Delivers what arrived and stops; waits up to ``wait`` seconds for that.

        Call it once the engine has finished (its workers have all exited): what they sent
        is all here. Output still sent after that, by a process a task left behind, is not.
        """
        self._closing = True
        self._wake()
        thread = self._thread
        deadline = time.monotonic() + wait
        if thread is None:
            self._close_sockets()
        elif wait > 0 and thread is not threading.current_thread() and self._launched.wait(wait) and thread.ident:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # a byte is already waiting, or the thread has ended

    def _close_sockets(self) -> None:
        with self._lock:
            if self._registrar.fileno() < 0:
                return  # closed already
            self._fds = []
            for conn in self._conns.values():
                conn.sock.close()
            self._conns.clear()
            for sock in (self._registrar, self._engine_end, self._wake_r, self._wake_w):
                sock.close()

    def _forget_after_fork(self) -> None:
        """In a forked child (the fork server, or the user's): these descriptors are not ours."""
        self._closing = True
        for conn in self._conns.values():
            conn.sock.close()
        for sock in (self._registrar, self._engine_end, self._wake_r, self._wake_w):
            sock.close()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    watched = [self._registrar.fileno(), self._wake_r.fileno(), *self._conns]
                # poll, not select: descriptor numbers past FD_SETSIZE (1024) are common
                poller = select.poll()
                for fd in watched:
                    poller.register(fd, select.POLLIN)
                ready = poller.poll(50 if self._gone else None)
                with self._lock:
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                    self._register()
                    for fd, _ in ready:
                        conn = self._conns.get(fd)
                        if conn is not None:
                            self._read(conn)
                    if self._closing or self._engine_done:
                        # every worker has exited, so all it sent is here: deliver it, then stop
                        self._register()
                        for conn in list(self._conns.values()):
                            while self._read(conn):
                                pass
                            if conn.sock.fileno() >= 0:
                                self._hang_up(conn)  # a process a task left behind holds it open
                        self._closing = True
                        self._report_exits()
                        break
                    self._report_exits()
        finally:
            self._close_sockets()

    def _register(self) -> bool:
        """Takes the sockets of workers the engine started; ``True`` if there were any."""
        added = False
        while not self._engine_done:
            try:
                data, ancillary, _, _ = self._registrar.recvmsg(16, _FDS_SPACE, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                data, ancillary = b"", []
            fds = _received_fds(ancillary)
            if not data and not fds:
                self._engine_done = True  # the engine has finished: no worker is left
                break
            if len(data) != 8 or len(fds) != 1:
                for fd in fds:  # only the engine writes here; still, never keep what is not understood
                    os.close(fd)
                continue
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            pid, number = int.from_bytes(data[:4], "little"), int.from_bytes(data[4:], "little")
            conn = _Conn(sock, pid, f"PoolWorker-{number}")  # the name the worker gives itself
            self._conns[sock.fileno()] = conn
            _log.debug("worker %s (pid %d) started", conn.name, conn.pid)
            added = True
        self._fds = [self._registrar.fileno(), *self._conns]
        return added

    def drain(self) -> None:
        """Delivers whatever output already arrived (the result thread, before futures complete).

        The output thread holds the lock while it writes what it took, which may be the lines of
        a task whose result is in this batch: that write ends first. Gives up after a short wait
        if the output thread is stuck writing to a slow stream, so results are never held up by
        output.
        """
        if not self._lock.acquire(timeout=0.05):
            return
        try:
            if not _core.any_readable(self._fds):
                return  # the common case: nothing arrived; one poll, and the GIL kept
            if self._register():
                self._wake()  # the output thread must wait on the new sockets too
            for conn in list(self._conns.values()):
                self._read(conn, hang_up=False)
        finally:
            self._lock.release()

    def _read(self, conn: _Conn, hang_up: bool = True) -> bool:
        """Delivers up to ``_BURST`` messages (``_BURST_BYTES``) from ``conn``; ``True`` if more wait.

        At its end, forgets it (``hang_up``). Only the output thread hangs up: it may be waiting
        in ``poll`` on the socket.
        """
        taken = 0
        for _ in range(_BURST):
            if taken >= _BURST_BYTES:
                break
            try:
                size = conn.sock.recv_into(self._buffer)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                size = 0
            if not size and _hung_up(conn.sock):
                if hang_up:
                    self._hang_up(conn)
                return False
            taken += size
            if size > MESSAGE_MAX:
                continue  # longer than any message a worker sends (the kernel dropped the rest)
            message = bytes(self._buffer[:size])
            try:
                self._deliver(conn, message[:1], message[1:])
            except Exception:
                pass  # junk, or a stream or handler that raised: the other messages still go
        return True

    def _hang_up(self, conn: _Conn) -> None:
        del self._conns[conn.sock.fileno()]
        self._fds = [self._registrar.fileno(), *self._conns]
        conn.sock.close()
        self._gone[conn.pid] = (conn.name, 20)

    def _report_exits(self) -> None:
        """Logs how each worker that hung up ended, once the engine has reaped it."""
        for pid, (name, checks) in list(self._gone.items()):
            info = self._on_exit(pid)
            if info is None and checks > 0 and not self._closing:
                self._gone[pid] = (name, checks - 1)
                continue
            del self._gone[pid]
            if info is None:
                _log.debug("worker %s (pid %d) ended", name, pid)
                continue
            cause, code, signal = info
            how = f"was killed by signal {signal}" if signal is not None else f"exited with code {code}"
            if cause == "shutdown":
                _log.debug("worker %s (pid %d) %s at shutdown", name, pid, how)
            else:
                _log.info("worker %s (pid %d) %s (%s); a fresh worker takes its place", name, pid, how, cause)

    def _deliver(self, conn: _Conn, kind: bytes, payload: bytes) -> None:
        if kind in (STDOUT, STDERR):
            self._write(conn, kind, payload.decode("utf-8", "replace"))
        elif kind == RECORD:
            record = _record(json.loads(payload))
            if record is None:
                return
            record.processName = conn.name
            record.process = conn.pid
            logger = _existing_logger(record.name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        elif kind == DROPPED:
            lines, nbytes = payload.split()
            text = f"[ferropool] {conn.name}: {int(lines)} lines ({int(nbytes)} bytes) of output dropped\n"
            if not conn.at_line_start[STDERR]:
                text = "\n" + text
            conn.at_line_start[STDERR] = True
            sys.stderr.write(text)

    def _write(self, conn: _Conn, kind: bytes, text: str) -> None:
        stream = sys.stdout if kind == STDOUT else sys.stderr
        if self.prefix:
            prefix = self.prefix.format(name=conn.name, pid=conn.pid)
            lines = text.splitlines(keepends=True)
            start = 0 if conn.at_line_start[kind] else 1
            text = "".join(lines[:start] + [prefix + line for line in lines[start:]])
        conn.at_line_start[kind] = text.endswith("\n")
        stream.write(text)
        try:
            stream.flush()
        except Exception:
            pass


def _hung_up(sock: socket.socket) -> bool:
    """Whether the worker's end is closed, after a read of nothing: an empty message reads the same."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, events in poller.poll(0))


_FDS_SPACE = socket.CMSG_SPACE(4 * array.array("i").itemsize)  # room for a few, though one is sent


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


#: A record's standard attributes and their types, from a record made with no arguments.
_FIELD_TYPES = {
    key: (int, float) if isinstance(value, (int, float)) else str
    for key, value in logging.makeLogRecord({}).__dict__.items()
    if isinstance(value, (int, float, str))
}


def _record(fields: object) -> logging.LogRecord | None:
    """The log record a worker sent, or ``None`` if it is not one.

    A standard attribute of the wrong type, or a number no formatter can print (NaN, infinite,
    huge, a ``created`` before 1970), is left at its default, so no handler or formatter meets
    a value it does not expect; ``args`` and ``exc_info`` are always empty (the worker
    formatted both).
    """
    if not isinstance(fields, dict):
        return None
    name, levelno = fields.get("name"), fields.get("levelno")
    if not isinstance(name, str) or isinstance(levelno, bool) or not isinstance(levelno, int):
        return None
    for key, types in _FIELD_TYPES.items():
        value = fields.get(key, "")
        if key in fields and (
            value is None
            or isinstance(value, bool)
            or not isinstance(value, types)
            or (isinstance(value, (int, float)) and not _plain_number(key, value))
        ):
            del fields[key]
    for key in ("msg", "exc_text", "stack_info", "funcName"):
        if not isinstance(fields.get(key), (str, type(None))):
            fields[key] = str(fields[key])
    fields["args"] = None
    fields["exc_info"] = None
    return logging.makeLogRecord(fields)


#: The largest number a record's numeric field may hold (``%d`` and ``%f`` take it, as does
#: ``time.localtime`` for ``created``, up to the year 2286)
_NUMBER_MAX = 1e10


def _plain_number(key: str, value: float) -> bool:
    """Whether a formatter can print ``value``.

    It must be finite and not huge; ``created`` and ``msecs`` not negative, ``msecs`` under a
    second.
    """
    if not -_NUMBER_MAX <= value <= _NUMBER_MAX:  # NaN fails both comparisons
        return key in ("thread", "process") and isinstance(value, int) and 0 <= value < 2**64
    if key in ("created", "msecs"):
        return 0 <= value < (1000 if key == "msecs" else _NUMBER_MAX)
    return True


#: Longest logger name looked up part by part; a longer one reaches the root logger.
_NAME_MAX = 512


def _existing_logger(name: str) -> logging.Logger:
    """The logger a record called ``name`` reaches in the parent, without creating one.

    That is the logger itself if it exists, else its nearest existing ancestor, which is where
    propagation would take the record: a logger that was never made has no handlers, filters or
    level of its own. So a worker sending records under any number of names grows nothing.
    """
    if len(name) <= _NAME_MAX and name != "root":
        loggers = logging.Logger.manager.loggerDict
        while name:
            logger = loggers.get(name)
            if isinstance(logger, logging.Logger):
                return logger
            name = name.rpartition(".")[0]
    return logging.getLogger()


def _forget_collectors_after_fork() -> None:
    for collector in list(_collectors):
        collector._forget_after_fork()
    _collectors.clear()


def _deliver_at_exit(interrupted: bool) -> None:
    """At exit, every pool has shut down: each output thread writes what arrived and ends.

    Within 5 s in all; not waited for when the program dies of Ctrl-C (a terminal that stopped
    taking output is a common reason to press it).
    """
    deadline = time.monotonic() + 5.0
    for collector in list(_collectors):
        collector.close(wait=0.0 if interrupted else max(0.0, deadline - time.monotonic()))


lifecycle.after_fork_in_child(_forget_collectors_after_fork)
lifecycle.deliver_at_exit(_deliver_at_exit)
