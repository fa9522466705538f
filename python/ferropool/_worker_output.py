"""The worker's side of output forwarding: whole lines and log records to the parent.

``sys.stdout``/``sys.stderr`` become line writers and the root logger gets a forwarding handler,
all sending on one socket to the pool's output thread (the parent's side and the design are in
``_logs.py``). Every worker imports this module at start-up, so it imports only what a worker
already has; ``logging``, ``json`` and ``select`` are imported when first needed.
"""

from __future__ import annotations

import collections
import os
import sys
import threading

# the C module: the `socket` wrapper imports enum and selectors, a start-up cost in every worker
from _socket import AF_UNIX, SOCK_SEQPACKET
from _socket import socket as _Socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any, TextIO

#: Largest message on the output socket (a line longer than this goes in pieces).
PIECE = 32 * 1024
#: Output a worker keeps while the parent is behind; more is dropped.
PENDING_MAX = 4 * 1024 * 1024

#: Message kinds: the first byte of each message.
HELLO, STDOUT, STDERR, RECORD, DROPPED = b"h", b"o", b"e", b"r", b"d"


class _Link:
    """The worker's end of its output socket: sends without ever blocking the worker."""

    def __init__(self, sock: _Socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._lock = threading.Lock()
        self._drained = threading.Condition(self._lock)
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._dropped_lines = 0
        self._dropped_bytes = 0
        self._closed = False
        self._sender: threading.Thread | None = None

    def send(self, kind: bytes, payload: bytes) -> None:
        """Sends one message now, or queues it, or drops it if the queue is full."""
        message = kind + payload
        with self._lock:
            if self._closed:
                return
            if self._dropped_lines and self._pending_bytes <= PENDING_MAX // 2:
                notice = f"{self._dropped_lines} {self._dropped_bytes}".encode()
                self._dropped_lines = self._dropped_bytes = 0
                self._queue(DROPPED + notice)
            if self._pending:
                if self._pending_bytes + len(message) > PENDING_MAX:
                    self._dropped_lines += max(1, payload.count(b"\n"))
                    self._dropped_bytes += len(payload)
                    return
                self._queue(message)
                return
            try:
                self._sock.send(message)
            except BlockingIOError:
                self._queue(message)
            except OSError:
                self._closed = True  # the parent is gone: nobody reads output any more

    def _queue(self, message: bytes) -> None:
        self._pending.append(message)
        self._pending_bytes += len(message)
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_pending, name="ferropool-output", daemon=True)
            self._sender.start()
        self._drained.notify_all()

    def _send_pending(self) -> None:
        """The sender thread: sends what is queued as the socket takes it."""
        import select

        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._drained.wait()
                if self._closed:
                    return
                message = self._pending[0]
            select.select([], [self._sock], [], 1.0)
            try:
                self._sock.send(message)
            except BlockingIOError:
                continue
            except OSError:
                with self._lock:
                    self._closed = True
                    self._pending.clear()
                    self._drained.notify_all()
                return
            with self._lock:
                self._pending.popleft()
                self._pending_bytes -= len(message)
                if not self._pending:
                    self._drained.notify_all()

    def finish(self, timeout: float) -> None:
        """Waits up to ``timeout`` seconds for queued output to be sent (at worker exit)."""
        with self._lock:
            self._drained.wait_for(lambda: not self._pending or self._closed, timeout)


class _LineSink:
    """A binary stream that sends whole lines; under ``sys.stdout``/``sys.stderr`` in a worker.

    Holds an unfinished line until its newline arrives (or ``flush()``); a line longer than
    ``PIECE`` goes in pieces. ``fileno()`` is the original descriptor, so code that writes to it
    directly (``faulthandler``, child processes) still works; what goes there is not forwarded.
    """

    def __init__(self, link: _Link, kind: bytes, fd: int) -> None:
        self._link = link
        self._kind = kind
        self._fd = fd
        self._partial = bytearray()
        self._lock = threading.Lock()
        self.closed = False

    def write(self, data: Any) -> int:
        data = bytes(data)
        with self._lock:
            self._partial += data
            end = self._partial.rfind(b"\n") + 1
            if end:
                self._send(bytes(self._partial[:end]))
                del self._partial[:end]
            while len(self._partial) >= PIECE:
                self._link.send(self._kind, bytes(self._partial[:PIECE]))
                del self._partial[:PIECE]
        return len(data)

    def _send(self, lines: bytes) -> None:
        """Sends whole lines, as few messages as ``PIECE`` allows, cut at line ends if possible."""
        start = 0
        while start < len(lines):
            stop = start + PIECE
            if stop < len(lines):
                cut = lines.rfind(b"\n", start, stop)
                stop = cut + 1 if cut >= start else stop
            self._link.send(self._kind, lines[start:stop])
            start = stop

    def flush(self) -> None:
        with self._lock:
            if self._partial:
                self._link.send(self._kind, bytes(self._partial))
                self._partial.clear()

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


def _forwarding_handler(link: _Link) -> Any:
    """A ``logging.Handler`` that sends each record to the parent, as JSON.

    The message is formatted here and a traceback sent as text; ``logging`` is imported only
    when records are forwarded.
    """
    import json
    import logging

    class ForwardHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                fields = dict(record.__dict__)
                fields["msg"] = record.getMessage()
                fields["args"] = None
                if record.exc_info and not record.exc_text:
                    fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
                fields["exc_info"] = None
                fields.pop("message", None)
                link.send(RECORD, json.dumps(fields, default=repr).encode())
            except Exception:
                self.handleError(record)

    return ForwardHandler()


_worker_link: _Link | None = None


def _text_stream(link: _Link, kind: bytes, old: Any, fd: int) -> TextIO:
    import io

    encoding = getattr(old, "encoding", None) or "utf-8"
    sink: Any = _LineSink(link, kind, fd)
    # write_through: every write reaches the sink at once, which keeps whole lines together
    return io.TextIOWrapper(sink, encoding=encoding, errors="backslashreplace", write_through=True)


def start_in_worker(address: str, level: int | None, output: bool) -> None:
    """Connects this worker to its pool's output thread; redirects output and logging to it.

    Called by the pool's initializer wrapper (``_setup.start_worker``). If the parent cannot be
    reached, output stays where it was.
    """
    global _worker_link
    sock = _Socket(AF_UNIX, SOCK_SEQPACKET)
    try:
        sock.settimeout(5.0)
        sock.connect(address)
    except OSError:
        sock.close()
        return
    link = _worker_link = _Link(sock)
    link.send(HELLO, str(os.getpid()).encode())
    if output:
        sys.stdout = _text_stream(link, STDOUT, sys.stdout, 1)
        sys.stderr = _text_stream(link, STDERR, sys.stderr, 2)
    if level is not None:
        logging = sys.modules.get("logging")
        if logging is not None:
            _forward_records(logging, link, level)
        else:
            # a fresh interpreter: importing logging now would cost most of the worker's start-up,
            # and tasks that never log never need it; set it up when something imports it
            sys.meta_path.insert(0, _WhenLoggingIsImported(link, level))


def _forward_records(logging: Any, link: _Link, level: int) -> None:
    """Makes the root logger forward records at ``level`` and above, and nothing else."""
    root = logging.getLogger()
    for handler in list(root.handlers):  # inherited from a forked parent: they would write twice
        root.removeHandler(handler)
    root.addHandler(_forwarding_handler(link))
    root.setLevel(level)


class _WhenLoggingIsImported:
    """An import hook that calls ``_forward_records`` right after ``logging`` is first imported."""

    def __init__(self, link: _Link, level: int) -> None:
        self._link = link
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
        link, level = self._link, self._level

        def exec_module(module: Any) -> None:
            run_module(module)
            _forward_records(module, link, level)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def finish_in_worker(timeout: float = 2.0) -> None:
    """Sends what output is still queued (the worker is about to exit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    if _worker_link is not None:
        _worker_link.finish(timeout)
