"""The worker's output machinery, imported at the first print or log record (``start.py``).

The first write to ``sys.stdout``/``sys.stderr`` (text streams ``start.py`` installed for
good) gives their sink a line writer (``_LineSink``), and the root logger gets a forwarding handler;
all send on the connection ``start.py`` opened, through one ``_Link``, which waits for a parent
that is behind but never for one that is stuck. The parent's side, and the design, are in
``_pool/logs.py``.
"""

from __future__ import annotations

import _thread
import collections
import sys

from .. import _core
from . import start
from .start import DROPPED, PENDING_MAX, PIECE, RECORD, RECORD_MAX, STDERR, STDOUT

#: Seconds without the parent taking any output after which it counts as stuck (see ``_Link``).
#: The parent's output thread takes at most ``_pool/logs._BURST_BYTES`` (256 KiB) from each
#: worker in turn, so on a terminal that writes 1 MB/s about 20 workers can flood at once before
#: the last in the round waits this long.
STALL = 5.0
_LINES = (STDOUT, STDERR)

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from _socket import socket as _Socket
    from collections.abc import Callable
    from typing import Any


class _Link:
    """The worker's end of its output socket.

    What the socket cannot take at once waits in a queue (up to ``PENDING_MAX`` bytes) that a
    sender thread empties as the parent reads. Beyond that, the writing thread waits for room, as a
    pipe would make it, and a task's result waits for the queue to empty (``catch_up``): output
    is neither lost nor overtaken by the result while the parent keeps reading. A parent that
    takes nothing for ``STALL`` seconds (its ``sys.stdout`` blocks) is stuck: then nothing waits
    for it, output beyond the queue is dropped and counted, and results keep coming.
    """

    def __init__(self, sock: _Socket) -> None:
        self._sock = sock
        self._lock = _thread.allocate_lock()
        # made with the sender thread, the first time the parent falls behind; notified at each
        # message the sender sends
        self._sent_one: Any = None
        self._pending: collections.deque[bytearray] = collections.deque()
        self._pending_bytes = 0
        self._sent = 0  # messages the sender has sent: the parent's progress
        self._stalled = False  # the parent took nothing for STALL seconds; cleared when it takes one
        self._dropped_lines = 0  # counted in the notice at the end of the queue, ``_notice``
        self._dropped_bytes = 0
        self._notice = bytearray()  # the queued notice of drops; none queued yet
        self._closed = False
        self._sender: Any = None

    def send(self, kind: bytes, payload: bytes) -> None:
        """Sends one message now, or queues it, or waits for room, or drops it if the parent is stuck."""
        message = kind + payload
        with self._lock:
            if self._closed:
                return
            if self._pending:
                room = PENDING_MAX - len(message)
                try:
                    fits = self._pending_bytes <= room or self._wait_while_sent(lambda: self._pending_bytes <= room)
                except BaseException:  # Ctrl-C, or a signal handler's exception, during the wait
                    self._drop(payload)
                    raise
                if fits:
                    self._queue(message)
                else:
                    self._drop(payload)
                return
            try:
                self._sock.send(message)
            except BlockingIOError:
                self._queue(message)
            except OSError:
                self._closed = True  # the parent is gone: nobody reads output any more

    def _drop(self, payload: bytes) -> None:
        """Counts a message that was not sent, in a notice queued where it would have been.

        Messages dropped one after another share one notice, rewritten while it is the last in
        the queue and not the first (which the sender may be sending).
        """
        pending = self._pending
        if self._closed:
            return  # nobody reads output any more
        if not (len(pending) > 1 and pending[-1] is self._notice):
            self._dropped_lines = self._dropped_bytes = 0
            self._queue(DROPPED)
            self._notice = pending[-1]
        self._dropped_lines += max(1, payload.count(b"\n"))
        self._dropped_bytes += len(payload)
        notice = self._notice
        size = len(notice)
        notice[:] = DROPPED + f"{self._dropped_lines} {self._dropped_bytes}".encode()
        self._pending_bytes += len(notice) - size

    def catch_up(self) -> None:
        """Waits until what is queued has been sent, while the parent keeps taking it."""
        with self._lock:
            if self._pending:
                self._wait_while_sent(lambda: not self._pending)

    def _wait_while_sent(self, done: Callable[[], bool]) -> bool:
        """Waits (holding the lock) until ``done()``; ``False`` once the parent is stuck or gone."""
        while not done():
            if self._stalled or self._closed:
                return False
            if not self._sent_one.wait_for(self._moved(self._sent, done), STALL):
                self._stalled = True
        return True

    def _moved(self, sent: int, done: Callable[[], bool]) -> Callable[[], bool]:
        """What ends one wait: the sender sent a message since ``sent``, or the link closed, or ``done()``."""
        return lambda: self._sent != sent or self._closed or done()

    def _queue(self, message: bytes) -> None:
        pending = self._pending
        # lines of one stream queued one after another travel as one message (of PIECE at most):
        # a parent behind a flood of short lines reads and writes far fewer of them. The first
        # message is not touched: the sender may be sending it.
        if (
            len(pending) > 1
            and message[:1] in _LINES
            and pending[-1][:1] == message[:1]
            and len(pending[-1]) + len(message) - 1 <= 1 + PIECE  # one kind byte, PIECE at most
        ):
            pending[-1] += memoryview(message)[1:]
            self._pending_bytes += len(message) - 1
        else:
            pending.append(bytearray(message))
            self._pending_bytes += len(message)
        if self._sender is None:
            import threading

            self._sent_one = threading.Condition(self._lock)
            self._sender = threading.Thread(target=self._send_pending, name="ferropool-output", daemon=True)
            self._sender.start()
        if len(pending) == 1:
            _core.worker_output_behind(True)
            self._sent_one.notify_all()

    def _send_pending(self) -> None:
        """The sender thread: sends what is queued as the socket takes it."""
        import select

        # poll, not select: a task may hold descriptors numbered past FD_SETSIZE (1024)
        poller = select.poll()
        poller.register(self._sock, select.POLLOUT)
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._sent_one.wait()
                if self._closed:
                    return
                message = self._pending[0]
            poller.poll(1000)
            try:
                self._sock.send(message)
            except BlockingIOError:
                continue
            except OSError:
                with self._lock:
                    self._closed = True
                    self._pending.clear()
                    self._pending_bytes = 0
                    _core.worker_output_behind(False)
                    self._sent_one.notify_all()
                return
            with self._lock:
                self._pending.popleft()
                self._pending_bytes -= len(message)
                self._sent += 1
                self._stalled = False
                if not self._pending:
                    _core.worker_output_behind(False)
                self._sent_one.notify_all()


class _LineSink:
    """Sends whole lines; where the bytes written to a worker's ``sys.stdout``/``sys.stderr`` go.

    Holds an unfinished line until its newline arrives (or ``flush()``); a line longer than
    ``PIECE`` goes in pieces. (``fileno()`` of the stream above stays the original descriptor,
    so code that writes to it directly, ``faulthandler`` or a child process, still works; what
    goes there is not forwarded.)
    """

    def __init__(self, link: _Link, kind: bytes) -> None:
        self._link = link
        self._kind = kind
        self._partial = bytearray()
        # reentrant: a send may wait for the parent, and a signal handler that prints may run in
        # that wait, in the same thread; what is sent is taken out first, so it goes once
        self._lock = _thread.RLock()

    def write(self, data: Any) -> int:
        data = bytes(data)
        with self._lock:
            partial = self._partial
            partial += data
            end = partial.rfind(b"\n") + 1
            lines = bytes(partial[:end])
            del partial[:end]
            pieces = []
            while len(partial) >= PIECE:
                pieces.append(bytes(partial[:PIECE]))
                del partial[:PIECE]
            if lines:
                self._send(lines)
            for piece in pieces:
                self._link.send(self._kind, piece)
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
                text = bytes(self._partial)
                self._partial.clear()
                self._link.send(self._kind, text)


def _forwarding_handler(link: _Link) -> Any:
    """A ``logging.Handler`` that sends each record to the parent, as JSON.

    The message is formatted here and a traceback sent as text; ``logging`` is imported only
    when records are forwarded.
    """
    global _handler_type
    if _handler_type is None:
        _handler_type = _make_handler_type()
    return _handler_type(link)


def _make_handler_type() -> Any:
    import json
    import logging

    class ForwardHandler(logging.Handler):
        def __init__(self, link: _Link) -> None:
            super().__init__()
            self.link = link

        def emit(self, record: logging.LogRecord) -> None:
            link = self.link
            if link._closed:  # in a process a task forked: nobody forwards its records
                if logging.lastResort is not None:
                    logging.lastResort.handle(record)
                return
            try:
                fields = dict(record.__dict__)
                fields["msg"] = record.getMessage()
                fields["args"] = None
                if record.exc_info and not record.exc_text:
                    fields["exc_text"] = logging.Formatter().formatException(record.exc_info)
                fields["exc_info"] = None
                fields.pop("message", None)
                payload = json.dumps(fields, default=repr).encode()
                if len(payload) > RECORD_MAX:
                    payload = _cut_down(fields, json, logging)
                link.send(RECORD, payload)
            except Exception:
                self.handleError(record)

    return ForwardHandler


#: The handler's class, made once per process: where ``logging`` is loaded already (a fork
#: server's parent imports this module just before it forks the server), at import, so each
#: forked worker has it rather than making it at its start.
_handler_type: Any = _make_handler_type() if "logging" in sys.modules else None


def _cut_down(fields: dict[str, Any], json: Any, logging: Any) -> bytes:
    """A record too long for one message, made to fit.

    Only the standard attributes go, with the message, traceback and stack cut short and marked
    so.
    """
    standard = logging.makeLogRecord({}).__dict__
    fields = {key: value for key, value in fields.items() if key in standard}
    for keep in (RECORD_MAX // 8, RECORD_MAX // 64):  # characters can take up to 12 bytes in JSON
        for key in ("msg", "exc_text", "stack_info"):
            value = fields.get(key)
            if isinstance(value, str) and len(value) > keep:
                fields[key] = value[:keep] + f" [... {len(value) - keep} characters cut by ferropool]"
        payload: bytes = json.dumps(fields, default=repr).encode()
        if len(payload) <= RECORD_MAX:
            return payload
    fields["name"] = fields["name"][:200]  # the only other attribute that can be long
    payload = json.dumps(fields, default=repr).encode()
    return payload[:RECORD_MAX]  # if it is still too long, the parent drops what is not JSON


_link: _Link | None = None


def link() -> _Link | None:
    """The worker's one link to the parent, made on first use; ``None`` if not connected."""
    global _link
    # read now, not at import: a fork server imports this module before any worker has a socket
    if _link is None and start.connection is not None:
        _link = _Link(start.connection)
    return _link


def line_sink(kind: bytes) -> _LineSink | None:
    """The forwarding sink under ``sys.stdout`` (``kind`` STDOUT) or ``sys.stderr``."""
    out = link()
    return None if out is None else _LineSink(out, kind)


def forget_after_fork() -> None:
    """In a process a task forked: the link is the worker's, not this process's."""
    global _link
    if _link is not None:
        _link._closed = True  # without its lock: another thread may have held it at the fork
        _link = None
        _core.worker_output_behind(False)  # the flag came with the fork; nothing is queued here


def forward_records(logging: Any, level: int) -> None:
    """Makes the root logger forward records at ``level`` and above, and nothing else."""
    out = link()
    if out is None:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):  # inherited from a forked parent: they would write twice
        root.removeHandler(handler)
    root.addHandler(_forwarding_handler(out))
    root.setLevel(level)


def catch_up() -> None:
    """Waits while the parent takes the output this worker has queued (before a result)."""
    if _link is not None:
        _link.catch_up()


def finish_in_worker() -> None:
    """Sends what output is still queued (the worker is about to exit)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    catch_up()
