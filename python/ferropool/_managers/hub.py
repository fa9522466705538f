"""The manager server's event loop: one thread serves every connection's quick calls.

With a thread per connection, busy clients make the server's threads take turns at the GIL on
every call: each thread gives it up in ``recv`` and ``send`` and waits to take it back, and the
hand-overs and wake-ups cost more CPU than the call. Here one thread waits in ``epoll`` on every
authenticated connection and runs, in turn and without a hand-over, the calls that cannot block:
the methods of a served ``dict``, ``list``, ``Namespace``, ``Value`` or ``Array`` (``INLINE``),
and the no-reply operations. Any other call (a ``Lock``'s acquire, a ``Queue``'s get, a
registered type's method, the server's own operations) runs on its connection's own thread,
made at its first such call and kept, so an ``RLock`` or a ``Condition`` is always acquired and
released by one thread; the loop leaves that connection alone until the thread has sent the
reply, and keeps the connection while its next requests come at once and may block too (a
Lock's ``release`` after its ``acquire``). A reply the socket cannot take at once is finished by
that thread too: a client that stops reading holds up no one else.
"""

from __future__ import annotations

import array
import os
import queue
import select
import socket
import struct
import threading

from .. import _core
from .server import NO_REPLY, _serving, _traceback
from .types import Namespace, Value

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

    from .server import Server, _Client

#: the types whose every method returns at once: their calls run on the loop's thread
INLINE: frozenset[type] = frozenset({dict, list, Namespace, Value, array.array})

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
#: most bytes read from one connection per turn: a long message does not starve the others
_READ_LIMIT = 1 << 20
_CALL, _SEND = 0, 1
#: the most quick calls in a row a connection's thread runs before it gives the connection back
_QUICK_ON_THREAD = 4
#: how long a connection's thread waits for the connection's next request before it gives the
#: connection back to the loop, milliseconds
_KEEP_MS = 2


def frame(data: bytes) -> bytes:
    """``data`` with the stdlib's length prefix."""
    if len(data) > 0x7FFFFFFF:
        return _HEADER.pack(-1) + _LONG_HEADER.pack(len(data)) + data
    return _HEADER.pack(len(data)) + data


def _take_message(conn: _Conn) -> bytes | None:
    """The first whole message in ``conn.buf``, taken out; ``None`` while it is incomplete.

    ``ValueError`` for a negative length: the rest of the stream cannot be trusted to start at a
    message boundary.
    """
    buf = conn.buf
    if len(buf) < 4:
        return None
    (size,) = _HEADER.unpack_from(buf)
    start = 4
    if size == -1:
        if len(buf) < 12:
            return None
        (size,) = _LONG_HEADER.unpack_from(buf, 4)
        start = 12
    elif size < 0:
        raise ValueError(f"bad message length {size}")
    end = start + size
    if len(buf) < end:
        conn.need = end - len(buf)
        return None
    conn.need = 0
    body = bytes(buf[start:end])
    del buf[:end]
    return body


class _Conn:
    """The loop's state of one connection."""

    __slots__ = ("buf", "client", "fd", "jobs", "need", "pending", "quick", "sock")

    def __init__(self, client: _Client) -> None:
        self.client = client
        self.sock: socket.socket = client.conn._sock  # type: ignore[assignment]
        self.fd = self.sock.fileno()
        self.buf = bytearray()  # bytes read that do not yet make a whole message
        self.need = 0  # how many more bytes the message begun in `buf` needs, when known
        self.jobs: queue.SimpleQueue[Any] | None = None  # the connection's thread's work
        self.pending: Any = None  # a request its thread read and left to the loop
        self.quick = 0  # the quick calls its thread ran in a row (see `Hub._follow_up`)


class Hub:
    """Serves the requests of every connection handed to ``add`` until ``server`` stops."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.epoll = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self._wake_r, select.EPOLLIN)
        self.conns: dict[int, _Conn] = {}
        self._resumed: list[_Conn] = []  # connections whose thread has sent its reply
        self._resumed_lock = threading.Lock()  # also keeps `wake` off the pipe once it is closed
        self._closed = False

    # --- other threads

    def add(self, client: _Client) -> None:
        """Starts serving ``client``'s authenticated connection (from its handshake's thread)."""
        conn = _Conn(client)
        # what the handshake's reads brought beyond its own messages (the client's hello)
        conn.buf += client.conn._buf
        client.conn._buf = b""
        self.conns[conn.fd] = conn
        self._resume(conn)  # the loop registers it and handles what is already here

    def wake(self) -> None:
        """Makes the loop look at the stop flag and the resumed connections."""
        with self._resumed_lock:
            if self._closed:
                return
            try:
                os.write(self._wake_w, b"\0")
            except BlockingIOError:
                pass  # already awake

    def _resume(self, conn: _Conn) -> None:
        with self._resumed_lock:
            self._resumed.append(conn)
        self.wake()

    def _abandon(self, conn: _Conn) -> None:
        """Ends ``conn`` from its own thread: the loop finds the end of file when it reads again."""
        try:
            conn.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._resume(conn)

    # --- the loop

    def run(self) -> None:
        """Serves until the server's ``stop_event`` is set; then closes every connection."""
        stop = self.server.stop_event
        poll = self.epoll.poll
        conns = self.conns
        wake_r = self._wake_r
        try:
            spin = _core.spin_until_readable_fd
            epoll_fd = self.epoll.fileno()
            while not stop.is_set():
                # a client's next request usually comes within microseconds of its reply: look
                # for it before sleeping (see `spin_until_readable` in src/connection.rs)
                spin(epoll_fd)
                for fd, _ in poll():
                    if fd == wake_r:
                        self._woken()
                        continue
                    conn = conns.get(fd)
                    if conn is not None:
                        self._readable(conn)
        finally:
            for conn in list(conns.values()):
                self._drop(conn, release=False)
            with self._resumed_lock:
                self._closed = True
                self.epoll.close()
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _woken(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        with self._resumed_lock:
            resumed, self._resumed = self._resumed, []
        for conn in resumed:
            if self.conns.get(conn.fd) is conn:
                self.epoll.register(conn.fd, select.EPOLLIN)
                request, conn.pending = conn.pending, None
                if request is not None and not self._message(conn, None, request):
                    continue
                if conn.buf:
                    self._parse(conn)

    def _readable(self, conn: _Conn) -> None:
        sock = conn.sock
        got = 0
        while True:
            try:
                data = sock.recv(min(max(conn.need, 65536), _READ_LIMIT), socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:
                self._drop(conn)
                return
            if not data:
                self._drop(conn)
                return
            if not conn.buf and len(data) >= 4 and _HEADER.unpack_from(data)[0] == len(data) - 4:
                # the common case: one read, one whole message
                self._message(conn, data[4:])
                return
            conn.buf += data
            got += len(data)
            if len(data) < 65536 or got >= _READ_LIMIT:
                break
        self._parse(conn)

    def _parse(self, conn: _Conn) -> None:
        """Handles the whole messages at the start of ``conn.buf``, until one goes to a thread."""
        while True:
            try:
                body = _take_message(conn)
            except ValueError:
                self._drop(conn)
                return
            if body is None or not self._message(conn, body):
                return

    def _message(self, conn: _Conn, body: bytes | None, request: Any = None) -> bool:
        """Handles one request (``body``, or ``request`` already unpickled).

        ``False`` when the connection is no longer the loop's to read.
        """
        try:
            if body is not None:
                request = self.server.loads(body)
            return self._dispatch(conn, request)
        except Exception:
            # an authenticated client sent something that is not a request (not a pickle, an
            # unhashable method name): that client is done, the others go on
            _traceback().print_exc()
            self._drop(conn)
            return False

    def _dispatch(self, conn: _Conn, request: Any) -> bool:
        server = self.server
        ident, method, args, kwds = request
        if ident is None:
            if method in NO_REPLY:
                _serving.client = conn.client
                server._no_reply_op(conn.client, method, args)
                return True
        elif self._quick(ident):
            _serving.client = conn.client
            data = server.encode(server._call(server.objects, ident, method, args, kwds))
            return self._send(conn, frame(data))
        self._hand_over(conn, (_CALL, request))
        return False

    def _quick(self, ident: Any) -> bool:
        """Whether calls on object ``ident`` return at once (and so run on the loop's thread)."""
        entry = self.server.objects.get(ident)
        return entry is None or type(entry.obj) in INLINE

    def _send(self, conn: _Conn, data: bytes) -> bool:
        try:
            sent = conn.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(conn)
            return False
        if sent == len(data):
            return True
        self._hand_over(conn, (_SEND, data[sent:]))
        return False

    def _hand_over(self, conn: _Conn, job: tuple[int, Any]) -> None:
        """Gives ``job`` to the connection's own thread; the loop stops reading it meanwhile."""
        self.epoll.unregister(conn.fd)
        if conn.jobs is None:
            conn.jobs = queue.SimpleQueue()
            threading.Thread(target=self._work, args=(conn, conn.jobs), daemon=True).start()
        conn.jobs.put(job)

    def _drop(self, conn: _Conn, release: bool = True) -> None:
        """Stops serving ``conn``: closes it and (``release``) frees what its dead process held."""
        if self.conns.get(conn.fd) is not conn:
            return
        del self.conns[conn.fd]
        try:
            self.epoll.unregister(conn.fd)
        except (OSError, ValueError):
            pass  # with its thread, or the loop is closing
        if conn.jobs is not None:
            conn.jobs.put(None)
        conn.client.conn.close()
        if not release:
            return
        # telling a dead process from a live one may take a moment: not on the loop's thread
        threading.Thread(target=self.server._connection_closed, args=(conn.client,), daemon=True).start()

    # --- a connection's own thread

    def _work(self, conn: _Conn, jobs: queue.SimpleQueue[Any]) -> None:
        client = conn.client
        _serving.client = client
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                while job is not None:
                    kind, payload = job
                    if kind == _CALL:
                        client.conn.send_message(self.server.encode(self.server.respond(client, *payload)))
                    else:
                        conn.sock.sendall(payload)
                    job = self._follow_up(conn)
            except OSError:
                pass  # the client is gone: the loop finds the end of file when it reads again
            except Exception:
                # a request that is not one (the loop drops its connection at the end of file)
                _traceback().print_exc()
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._resume(conn)

    def _follow_up(self, conn: _Conn) -> tuple[int, Any] | None:
        """The connection's next request when it comes soon and may block too, else ``None``.

        A client that calls a Lock's ``acquire`` calls its ``release`` soon after, perhaps with
        a few dict calls between (``with lock: d[k] = v``): its thread keeps the connection
        meanwhile rather than handing it to the loop and back (two wake-ups). A request for the
        loop is left in ``conn.pending``; the ``hello``, ``incref`` and ``decref`` ahead of a
        request are done here.
        """
        _core.spin_until_readable_fd(conn.fd)
        # then sleep a little for it: being woken here costs what waking the loop would, and
        # the hand-over to the loop and back is spared
        waiter = select.poll()  # not select(): a server with many connections has descriptors past 1024
        waiter.register(conn.fd, select.POLLIN)
        waiter.poll(_KEEP_MS)
        try:
            data = conn.sock.recv(65536, socket.MSG_DONTWAIT)
        except OSError:
            return None  # nothing yet (or an error the loop meets in its turn)
        if not data:
            return None  # the end of file stays for the loop to read
        conn.buf += data
        server = self.server
        quick = conn.quick
        while True:
            try:
                body = _take_message(conn)
            except ValueError:
                return None  # the loop drops the connection when it parses the buffer
            if body is None:
                return None
            request = server.loads(body)
            ident, method, args, _ = request
            if ident is None and method in NO_REPLY:
                server._no_reply_op(conn.client, method, args)
                continue
            if ident is not None and self._quick(ident):
                if quick >= _QUICK_ON_THREAD:
                    conn.pending = request
                    conn.quick = 0
                    return None
                quick += 1
            else:
                quick = 0
            conn.quick = quick
            return (_CALL, request)
