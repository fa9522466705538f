"""Prints and log records of worker processes, delivered to the parent; ferropool's own logger.

::

    worker process (_worker_start.py, _worker_output.py)  parent (here)
    ────────────────────────────────────────────────────  ─────────────
    print() ─▶ sys.stdout (_LineSink: whole lines) ─┐
    logging ─▶ forwarding handler (record as JSON) ─┼─▶ socket ─▶ output thread ─▶ sys.stdout /
                                                    │   (one per    (one per pool)   sys.stderr /
    start ─▶ hello (pid) ───────────────────────────┘    worker)                     logging

Why a socket of its own rather than a frame kind on the worker's task link: the task path stays
exactly as fast as before (nothing is added to a result, nothing is parsed by the engine), a
flood of output can never delay a result frame or the engine's reading, and the engine stays
free of Python. The price is ordering across the two channels; the pool's result thread reads
whatever output already arrived before it completes a batch of futures, so what a task printed
is written before its result is handed to you.

Each worker connects, in its initializer, to an abstract Unix socket (no file on disk) of type
``SOCK_SEQPACKET``: every message arrives whole, so a line is never split between two writes,
and lines of different workers never interleave. A message is at most ``PIECE`` (32 KiB) bytes;
a longer line travels in pieces written one after the other.

Drop policy: a worker never blocks on its output. What the socket cannot take at once waits in
the worker, up to ``PENDING_MAX`` (4 MiB), and a small thread sends it as the parent catches up.
Beyond that, new output is dropped and counted, and once the backlog has halved the parent
writes ``[ferropool] <worker>: <n> lines (<m> bytes) of output dropped`` to ``sys.stderr``.
Bytes that are not UTF-8 are written with replacement characters.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import secrets
import select
import socket
import sys
import threading
import weakref
from collections.abc import Callable

from . import _core
from ._worker_start import DROPPED, HELLO, PIECE, RECORD, STDERR, STDOUT

__all__ = ["get_logger", "log_to_stderr"]

LOGGER_NAME = "ferropool"
_log = logging.getLogger(LOGGER_NAME)


# --------------------------------------------------------------------------------------------
# the public logger (multiprocessing.get_logger / log_to_stderr)

DEFAULT_FORMAT = "[%(levelname)s/%(processName)s] %(message)s"
_stderr_handler: logging.Handler | None = None


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
    global _stderr_handler
    if level is not None:
        _log.setLevel(check_level(level))
    if _stderr_handler is None:
        _stderr_handler = logging.StreamHandler()
        _stderr_handler.setFormatter(logging.Formatter(DEFAULT_FORMAT))
        _log.addHandler(_stderr_handler)
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
    """One worker's connection, as the output thread sees it."""

    __slots__ = ("at_line_start", "name", "pid", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = 0
        self.name = "PoolWorker-?"
        self.at_line_start = {STDOUT: True, STDERR: True}


_collectors: weakref.WeakSet[Collector] = weakref.WeakSet()


class Collector:
    """A pool's output thread: accepts its workers' connections and delivers what they send.

    Lines go to whatever ``sys.stdout``/``sys.stderr`` is at the time (so pytest's capture
    and Jupyter's cells see them), each message in one ``write()``; records go to
    ``logging.getLogger(record.name).handle()`` if that logger is enabled for their level, with
    ``processName`` set to the worker's name and ``process`` to its pid.
    """

    def __init__(self, prefix: str | None, on_exit: Callable[[int], tuple[str, int | None, int | None] | None]) -> None:
        self.prefix = prefix
        self.address = f"\0ferropool-{os.getpid()}-{secrets.token_hex(8)}"
        self._on_exit = on_exit
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(self.address)
        self._listener.listen(256)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._lock = threading.Lock()
        self._conns: dict[int, _Conn] = {}
        # the result thread's quick look: the listener and every connection, for _core.any_readable
        self._fds = [self._listener.fileno()]
        self._names = itertools.count(1)
        self._gone: dict[int, tuple[str, int]] = {}  # pid -> (name, checks left) awaiting exit info
        self._closing = False
        self._thread: threading.Thread | None = None
        _collectors.add(self)

    def start(self) -> None:
        """Starts the thread (after the fork server exists: it must be made single-threaded)."""
        if self._thread is None and not self._closing:
            self._thread = threading.Thread(target=self._run, name="ferropool-output", daemon=True)
            self._thread.start()

    def close(self, wait: bool = False) -> None:
        """Stops once every connected worker has hung up; ``wait``: wait for that (5 s at most)."""
        self._closing = True
        self._wake()
        thread = self._thread
        if thread is None:
            self._close_sockets()
        elif wait and thread is not threading.current_thread():
            thread.join(5.0)

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # a byte is already waiting, or the thread has ended

    def _close_sockets(self) -> None:
        with self._lock:
            if self._listener.fileno() < 0:
                return  # closed already
            self._fds = []
            for conn in self._conns.values():
                conn.sock.close()
            self._conns.clear()
            for sock in (self._listener, self._wake_r, self._wake_w):
                sock.close()

    def _forget_after_fork(self) -> None:
        """In a forked child (the fork server, or the user's): these descriptors are not ours."""
        self._closing = True
        for conn in self._conns.values():
            conn.sock.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def _run(self) -> None:
        try:
            while True:
                socks = [self._listener, self._wake_r, *(c.sock for c in self._conns.values())]
                try:
                    ready, _, _ = select.select(socks, [], [], 0.05 if self._gone else None)
                except (OSError, ValueError):  # a socket closed meanwhile: look again
                    continue
                with self._lock:
                    if self._wake_r in ready:
                        try:
                            self._wake_r.recv(64)
                        except OSError:
                            pass
                    self._accept()
                    for sock in ready:
                        conn = self._conns.get(sock.fileno()) if sock.fileno() >= 0 else None
                        if conn is not None:
                            self._read(conn)
                    self._report_exits()
                if self._closing and not self._conns:
                    self._accept_last()
                    if not self._conns:
                        with self._lock:
                            self._report_exits()
                        break
        finally:
            self._close_sockets()

    def _accept(self) -> bool:
        """Takes the workers' new connections; ``True`` if there were any."""
        accepted = False
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, OSError):
                return accepted
            sock.setblocking(False)
            self._conns[sock.fileno()] = _Conn(sock)
            self._fds = [self._listener.fileno(), *self._conns]
            accepted = True

    def _accept_last(self) -> None:
        with self._lock:
            self._accept()
            for conn in list(self._conns.values()):
                self._read(conn)

    def drain(self) -> None:
        """Delivers whatever output already arrived (the result thread, before futures complete).

        Gives up after a short wait if the output thread is stuck writing to a slow stream, so
        results are never held up by output.
        """
        if not _core.any_readable(self._fds):
            return  # the common case: nothing arrived; one poll, and the GIL kept
        if not self._lock.acquire(timeout=0.05):
            return
        try:
            if self._accept():
                self._wake()  # the output thread must wait on the new connection too
            for conn in list(self._conns.values()):
                self._read(conn, hang_up=False)
        finally:
            self._lock.release()

    def _read(self, conn: _Conn, hang_up: bool = True) -> None:
        """Delivers every message waiting on ``conn``; at its end, forgets it (``hang_up``).

        Only the output thread hangs up: it may be waiting in ``select`` on the socket.
        """
        while True:
            try:
                message = conn.sock.recv(PIECE + 64)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                if hang_up:
                    self._hang_up(conn)
                return
            try:
                self._deliver(conn, message[:1], message[1:])
            except Exception:
                pass  # a stream or handler that raises must not stop the other workers' output

    def _hang_up(self, conn: _Conn) -> None:
        del self._conns[conn.sock.fileno()]
        self._fds = [self._listener.fileno(), *self._conns]
        conn.sock.close()
        if conn.pid:
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
            fields = json.loads(payload)
            record = logging.makeLogRecord(fields)
            record.processName = conn.name
            name = record.name
            logger = logging.getLogger() if name == "root" else logging.getLogger(name)
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
        elif kind == HELLO:
            conn.pid = int(payload)
            conn.name = f"PoolWorker-{next(self._names)}"
            _log.debug("worker %s (pid %d) started", conn.name, conn.pid)
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


def _forget_collectors_after_fork() -> None:
    for collector in list(_collectors):
        collector._forget_after_fork()
    _collectors.clear()


os.register_at_fork(after_in_child=_forget_collectors_after_fork)
