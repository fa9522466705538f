"""Sockets between any two processes: ``Listener``, ``Client`` and their ``SocketConnection``.

The wire format and the authentication handshake are the stdlib's, so either end may be
``multiprocessing.connection``'s: a message is a 4-byte big-endian signed length (``-1`` and an
8-byte length for one of 2 GiB or more) followed by that many bytes; objects are pickles.

With an ``authkey`` each side proves it knows the key before anything else is read: the
challenger sends ``#CHALLENGE#`` and a random message (prefixed with ``{sha256}``), the other
side answers with the HMAC of the message under the key, and the challenger replies
``#WELCOME#`` or ``#FAILURE#``; then the roles swap. Before that, a peer's messages are read
with a bound of 256 bytes, and nothing a peer sends is unpickled. An answer without a digest
prefix is the 16-byte HMAC-MD5 of Python 3.11 and older, accepted as the stdlib accepts it.
"""

from __future__ import annotations

import itertools
import operator
import os
import socket
import struct
import time

from .. import _core
from .serialize import dumps, loads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _Conn = TypeVar("_Conn", bound="SocketConnection")

# no __all__: ferropool.connection re-exports the public names (its _LISTENER_NAMES)

families = ["AF_UNIX", "AF_INET"]

CHALLENGE = b"#CHALLENGE#"
WELCOME = b"#WELCOME#"
FAILURE = b"#FAILURE#"

#: the bound on every message read during the handshake, as the stdlib's
_HANDSHAKE_MAX = 256
#: random bytes in a challenge, as the stdlib's (3.12 and later)
_CHALLENGE_BYTES = 40
_DIGESTS = {b"sha256": 32, b"sha384": 48, b"sha512": 64, b"sha3_256": 32, b"sha3_384": 48, b"sha3_512": 64}
_DEFAULT_DIGEST = "sha256"
#: a bare HMAC-MD5 answer (16 bytes) or challenge (20 random bytes) of Python 3.11 and older;
#: a message of the digest protocol is longer than either, so its length tells them apart
#: (a legacy message's random bytes may well start with "{")
_LEGACY_LENGTHS = (16, 20)

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_SMALL = 16384  # a message up to this many bytes goes in one send with its header
_CHUNK = 1 << 20  # a long message is read in pieces of at most this, as they arrive

_names = itertools.count()


def _authentication_error(message: str) -> Exception:
    import multiprocessing

    return multiprocessing.AuthenticationError(message)


def _read_only(attribute: str, doc: str) -> Any:
    """A read-only property: the instance's ``attribute``."""
    return property(operator.attrgetter(attribute), doc=doc)


class SocketConnection:
    """A connection over a stream socket, as ``multiprocessing.connection.Connection``.

    ``Listener.accept()`` and ``Client()`` return these. Methods: ``send``/``recv`` (pickled
    objects), ``send_bytes``/``recv_bytes``/``recv_bytes_into`` (raw messages), ``poll``,
    ``fileno``, ``close``, and the properties ``closed``, ``readable`` and ``writable``.
    """

    __slots__ = ("__weakref__", "_readable", "_sock", "_writable")

    def __init__(self, handle: int | socket.socket, readable: bool = True, writable: bool = True) -> None:
        if not readable and not writable:
            raise ValueError("at least one of `readable` and `writable` must be True")
        if isinstance(handle, int):
            if handle < 0:
                raise ValueError("invalid handle")
            handle = socket.socket(fileno=handle)
        handle.setblocking(True)
        self._sock: socket.socket | None = handle
        self._readable = readable
        self._writable = writable

    # --- state

    def _open(self) -> socket.socket:
        if self._sock is None:
            raise OSError("handle is closed")
        return self._sock

    @property
    def closed(self) -> bool:
        """Whether the connection is closed."""
        return self._sock is None

    readable = _read_only("_readable", "Whether the connection can receive.")
    writable = _read_only("_writable", "Whether the connection can send.")

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._open().fileno()

    def close(self) -> None:
        """Closes the connection; closing it again does nothing."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> SocketConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_sock", None)
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        state = "closed" if self._sock is None else f"fd={self._sock.fileno()}"
        return f"<{type(self).__module__}.{type(self).__qualname__} {state}>"

    # --- sending

    def send_bytes(self, buf: Any, offset: int = 0, size: int | None = None) -> None:
        """Sends the bytes of a bytes-like object (``buf[offset:offset + size]``) as one message."""
        sock = self._open()
        if not self._writable:
            raise OSError("connection is read-only")
        view = memoryview(buf)
        if view.itemsize > 1:
            view = view.cast("B")
        n = view.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        body = view[offset : offset + size]
        if size > 0x7FFFFFFF:
            header = _HEADER.pack(-1) + _LONG_HEADER.pack(size)
        else:
            header = _HEADER.pack(size)
        if size <= _SMALL:
            sock.sendall(header + body)
        else:
            sock.sendall(header)
            sock.sendall(body)

    def send(self, obj: Any) -> None:
        """Sends a picklable object; one that cannot be pickled raises here and sends nothing."""
        self.send_bytes(dumps(obj))

    # --- receiving

    def _read_exact(self, sock: socket.socket, n: int) -> bytearray:
        # the buffer grows as bytes arrive, so a length prefix claiming more than the peer sends
        # costs no memory up front
        out = bytearray()
        while len(out) < n:
            chunk = sock.recv(min(n - len(out), _CHUNK))
            if not chunk:
                if out:
                    self.close()
                    raise OSError("got end of file during message")
                raise EOFError
            out += chunk
        return out

    def _recv_message(self, maxlength: int | None) -> bytearray:
        sock = self._open()
        if not self._readable:
            raise OSError("connection is write-only")
        (size,) = _HEADER.unpack(self._read_exact(sock, 4))
        if size == -1:
            (size,) = _LONG_HEADER.unpack(self._read_exact(sock, 8))
        self._check_size(size, maxlength)
        return self._read_exact(sock, size) if size else bytearray()

    def _check_size(self, size: int, maxlength: int | None) -> None:
        """Closes the connection and raises ``OSError`` for a length it must not read.

        The rest of the stream cannot be trusted to start at a message boundary then.
        """
        if size < 0:
            self.close()
            raise OSError(f"bad message length {size}: the peer is not speaking this protocol")
        if maxlength is not None and size > maxlength:
            self.close()
            raise OSError("bad message length")

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receives one message as bytes; blocks until one arrives.

        Raises:
            EOFError: The other end is closed and nothing is left to receive.
            OSError: The message is longer than ``maxlength`` (the connection is then closed).
        """
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        return bytes(self._recv_message(maxlength))

    def recv_bytes_into(self, buf: Any, offset: int = 0) -> int:
        """Receives one message into a writable buffer at byte ``offset``; returns its length.

        Raises ``BufferTooShort`` (the message as its argument, consumed) when it does not fit.
        """
        view = memoryview(buf)
        if view.itemsize > 1:
            view = view.cast("B")
        if offset < 0:
            raise ValueError("negative offset")
        if offset > view.nbytes:
            raise ValueError("offset too large")
        data = self._recv_message(None)
        if len(data) > view.nbytes - offset:
            import multiprocessing

            raise multiprocessing.BufferTooShort(bytes(data))
        view[offset : offset + len(data)] = data
        return len(data)

    def recv(self) -> Any:
        """Receives one object sent by ``send``; blocks until one arrives."""
        return loads(self._recv_message(None))

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is anything to read, waiting up to ``timeout`` seconds (``None``: forever)."""
        sock = self._open()
        if not self._readable:
            raise OSError("connection is write-only")
        from ..connection import wait

        if timeout is not None and timeout < 0:
            timeout = 0.0
        return bool(wait([sock.fileno()], timeout))

    def __reduce__(self) -> Any:
        from ..connection import reduce_connection

        return reduce_connection(self, SocketConnection, _rebuild_socket_connection)


def _rebuild_socket_connection(fd: int, readable: bool, writable: bool) -> SocketConnection:
    """In a child: the inherited descriptor ``fd`` as a SocketConnection again."""
    return SocketConnection(socket.socket(fileno=fd), readable, writable)


class BufferedSocketConnection(SocketConnection):
    """A ``SocketConnection`` that reads ahead: one ``recv`` usually brings a whole message.

    For connections nothing else watches (a manager's): bytes it has read ahead are invisible to
    ``wait()`` on its descriptor, so it is not handed to users.
    """

    __slots__ = ("_buf",)

    def __init__(self, handle: int | socket.socket, readable: bool = True, writable: bool = True) -> None:
        super().__init__(handle, readable, writable)
        self._buf = b""

    def _fill(self, buf: bytes, n: int) -> bytes:
        """``buf`` with more bytes read until it holds at least ``n``."""
        sock = self._open()
        parts = [buf]
        have = len(buf)
        while have < n:
            # at least a good read's worth, at most a chunk: a claimed length costs nothing up front
            chunk = sock.recv(min(max(n - have, 65536), _CHUNK))
            if not chunk:
                self._buf = b""
                if have:
                    self.close()
                    raise OSError("got end of file during message")
                raise EOFError
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts)

    def _recv_message(self, maxlength: int | None) -> Any:
        if not self._readable:
            raise OSError("connection is write-only")
        buf = self._buf
        sock = self._sock
        if not buf and sock is not None:
            # the common case first: one read brings exactly one whole message. A reply comes
            # within microseconds: looking for it briefly first spares the wake-up from sleep,
            # which costs more than that when the peer runs on another CPU
            _core.spin_until_readable_fd(sock.fileno())
            buf = sock.recv(65536)
            if len(buf) >= 4 and _HEADER.unpack_from(buf)[0] == len(buf) - 4:
                if maxlength is None or len(buf) - 4 <= maxlength:
                    return buf[4:]
            elif not buf:
                raise EOFError
            self._buf = buf  # kept if a later read fails
        if len(buf) < 4:
            buf = self._fill(buf, 4)
        (size,) = _HEADER.unpack_from(buf)
        start = 4
        if size == -1:
            if len(buf) < 12:
                buf = self._fill(buf, 12)
            (size,) = _LONG_HEADER.unpack_from(buf, 4)
            start = 12
        self._check_size(size, maxlength)
        end = start + size
        if len(buf) < end:
            self._buf = buf
            buf = self._fill(buf, end)
        self._buf = buf[end:]
        return buf[start:end]

    def send_message(self, data: bytes) -> None:
        """Sends ``data`` as one message: ``send_bytes`` without its checks, for the manager's calls."""
        sock = self._sock
        if sock is None or len(data) > _SMALL:
            self.send_bytes(data)
        else:
            sock.sendall(_HEADER.pack(len(data)) + data)

    def call(self, data: bytes) -> bytes:
        """Sends ``data`` as one message and returns the next message received: one round trip.

        A short request and a reply that one read brings whole (the common case) take one
        ``sendall`` and one ``recv``.
        """
        self.send_message(data)
        return self._recv_message(None)  # type: ignore[no-any-return]

    def recv_bytes(self, maxlength: int | None = None) -> bytes:
        """Receives one message as bytes; blocks until one arrives."""
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        return self._recv_message(maxlength)  # type: ignore[no-any-return]

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Whether there is anything to read, waiting up to ``timeout`` seconds."""
        if self._buf:
            return True
        return super().poll(timeout)


# --- addresses


def address_type(address: Any) -> str:
    """The family of ``address``.

    ``"AF_INET"`` for a ``(host, port)`` tuple, ``"AF_UNIX"`` for a path or an abstract name
    (starting with a NUL), ``"AF_PIPE"`` for a Windows pipe name.
    """
    if isinstance(address, tuple):
        return "AF_INET"
    if isinstance(address, str) and address.startswith("\\\\"):
        return "AF_PIPE"
    if isinstance(address, (str, bytes)) or _is_abstract(address):
        return "AF_UNIX"
    raise ValueError(f"address type of {address!r} unrecognized")


def _is_abstract(address: Any) -> bool:
    return isinstance(address, (str, bytes)) and address[:1] in ("\0", b"\0")


def _check_family(family: str) -> None:
    if family not in families:
        if family == "AF_PIPE":
            raise ValueError("Family AF_PIPE is not recognized: named pipes exist only on Windows")
        raise ValueError(f"Family {family} is not recognized.")


def arbitrary_address(family: str) -> Any:
    """A fresh address of ``family`` nobody uses.

    Port 0 on localhost, or an abstract socket name (nothing on disk to leave behind).
    """
    if family == "AF_INET":
        return ("localhost", 0)
    if family == "AF_UNIX":
        token = os.urandom(6).hex()
        return f"\0ferropool-listener-{os.getpid()}-{next(_names)}-{token}"
    _check_family(family)
    raise ValueError(f"unrecognized family {family}")


def _check_authkey(authkey: Any) -> None:
    if authkey is not None and not isinstance(authkey, bytes):
        raise TypeError("authkey should be a byte string")


class Listener:
    """A listening socket that accepts authenticated connections, as the stdlib's ``Listener``.

    Args:
        address: ``(host, port)`` for TCP, a path or an abstract name (starting with a NUL) for a Unix
            socket; ``None`` picks a fresh one of ``family``.
        family: ``"AF_INET"`` or ``"AF_UNIX"``; by default the address's, or ``"AF_UNIX"``.
        backlog: The ``listen()`` backlog.
        authkey: When given (bytes), every accepted connection must prove it knows the key
            before ``accept()`` returns it; a wrong key raises ``AuthenticationError`` there.
    """

    def __init__(self, address: Any = None, family: str | None = None, backlog: int = 1, authkey: Any = None) -> None:
        if family is None:
            family = address_type(address) if address is not None else "AF_UNIX"
        _check_family(family)
        if address is None:
            address = arbitrary_address(family)
        elif address_type(address) != family:
            raise ValueError(f"address {address!r} is not of family {family}")
        _check_authkey(authkey)
        sock = socket.socket(getattr(socket, family))
        try:
            if family == "AF_INET":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(True)
            sock.bind(address)
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        self._socket: socket.socket | None = sock
        self._family = family
        self._unlink = family == "AF_UNIX" and not _is_abstract(address)
        self._address = sock.getsockname() if family == "AF_INET" else address
        self._authkey = authkey
        self._last_accepted: Any = None

    def accept(self) -> SocketConnection:
        """Waits for a connection and returns it, authenticated when the listener has a key."""
        if self._socket is None:
            raise OSError("listener is closed")
        while True:
            try:
                sock, peer = self._socket.accept()
                break
            except InterruptedError:
                continue
        sock.setblocking(True)
        self._last_accepted = peer
        conn = SocketConnection(sock)
        if self._authkey is not None:
            try:
                deliver_challenge(conn, self._authkey)
                answer_challenge(conn, self._authkey)
            except BaseException:
                conn.close()
                raise
        return conn

    def close(self) -> None:
        """Stops listening (and removes the socket file of a Unix path address)."""
        sock, self._socket = self._socket, None
        if sock is None:
            return
        sock.close()
        if self._unlink:
            try:
                os.unlink(self._address)
            except OSError:
                pass

    address = _read_only("_address", 'The address the listener is bound to (with the real port for ``("host", 0)``).')
    last_accepted = _read_only("_last_accepted", "The peer address of the connection last accepted, or ``None``.")

    def fileno(self) -> int:
        """The listening socket's descriptor (``wait()`` reports it ready when a peer connects)."""
        if self._socket is None:
            raise OSError("listener is closed")
        return self._socket.fileno()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.Listener {self._family} {self._address!r}>"


def Client(address: Any, family: str | None = None, authkey: Any = None) -> SocketConnection:
    """Connects to a ``Listener`` (ferropool's or the stdlib's) at ``address``.

    With ``authkey`` the two sides prove to each other they know the key; a wrong key raises
    ``AuthenticationError``.
    """
    return connect(address, family, authkey, SocketConnection)


def connect(address: Any, family: str | None, authkey: Any, cls: type[_Conn]) -> _Conn:
    """``Client()`` returning a connection of class ``cls``."""
    family = family or address_type(address)
    _check_family(family)
    _check_authkey(authkey)
    sock = socket.socket(getattr(socket, family))
    try:
        sock.setblocking(True)
        _connect(sock, address)
    except BaseException:
        sock.close()
        raise
    conn = cls(sock)
    if authkey is not None:
        try:
            answer_challenge(conn, authkey)
            deliver_challenge(conn, authkey)
        except BaseException:
            conn.close()
            raise
    return conn


def _connect(sock: socket.socket, address: Any) -> None:
    # a listener with a full backlog refuses at once on a Unix socket: retried briefly, as a
    # burst of clients starting together would otherwise fail
    deadline = time.monotonic() + 5.0
    while True:
        try:
            sock.connect(address)
            return
        except InterruptedError:
            continue
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)


# --- the handshake


def _digest_and_payload(message: bytes) -> tuple[str, bytes]:
    """``(digest name, rest)`` of a ``{digest}payload`` message.

    ``("md5", message)`` for a legacy message (16 or 20 bytes, no prefix).
    """
    if len(message) in _LEGACY_LENGTHS:
        return "md5", message
    if message[:1] == b"{":
        end = message.find(b"}", 1, 20)
        if end > 0:
            name = message[1:end]
            if name in _DIGESTS:
                return name.decode("ascii"), message[end + 1 :]
    raise _authentication_error("the peer's authentication message has an unsupported length or digest")


def _mac(authkey: bytes, message: bytes, digest: str) -> bytes:
    import hmac  # on first use: it loads OpenSSL, milliseconds a manager's start need not wait for

    return hmac.new(authkey, message, digest).digest()


def deliver_challenge(connection: Any, authkey: bytes, digest_name: str = _DEFAULT_DIGEST) -> None:
    """Challenges the peer on ``connection`` to prove it knows ``authkey``.

    Raises:
        AuthenticationError: The answer is wrong (the peer is told ``#FAILURE#``).
    """
    if not isinstance(authkey, bytes):
        raise ValueError(f"Authkey must be bytes, not {type(authkey).__name__}")
    message = b"{" + digest_name.encode("ascii") + b"}" + os.urandom(_CHALLENGE_BYTES)
    connection.send_bytes(CHALLENGE + message)
    answer = connection.recv_bytes(_HANDSHAKE_MAX)
    try:
        digest, mac = _digest_and_payload(answer)
        expected = _mac(authkey, message, digest)
        import hmac  # loaded by _mac

        ok = hmac.compare_digest(mac, expected)
    except Exception:
        ok = False
    if not ok:
        connection.send_bytes(FAILURE)
        raise _authentication_error("digest received was wrong")
    connection.send_bytes(WELCOME)


def answer_challenge(connection: Any, authkey: bytes) -> None:
    """Answers the peer's challenge on ``connection`` with ``authkey``.

    Raises:
        AuthenticationError: The peer rejected the answer, or did not send a challenge.
    """
    if not isinstance(authkey, bytes):
        raise ValueError(f"Authkey must be bytes, not {type(authkey).__name__}")
    message = connection.recv_bytes(_HANDSHAKE_MAX)
    if not message.startswith(CHALLENGE):
        raise _authentication_error(f"Protocol error, expected challenge: {message[:40]!r}")
    message = message[len(CHALLENGE) :]
    if len(message) < _LEGACY_LENGTHS[1]:
        raise _authentication_error(f"challenge too short: {len(message)} bytes")
    digest, _ = _digest_and_payload(message)
    if digest == "md5":
        answer = _mac(authkey, message, "md5")  # a peer of Python 3.11 or older
    else:
        answer = b"{" + digest.encode("ascii") + b"}" + _mac(authkey, message, digest)
    connection.send_bytes(answer)
    response = connection.recv_bytes(_HANDSHAKE_MAX)
    if response != WELCOME:
        raise _authentication_error("digest sent was rejected")
