"""Pipes between processes: ``Pipe()``, ``Connection`` and ``wait()``, as ``multiprocessing.connection``.

A ``Connection`` is one end of a ``SOCK_SEQPACKET`` socket pair; the Rust core
(``src/connection.rs``) moves whole messages with the GIL released and honours Ctrl-C while it
waits. Objects travel pickled by ``_runtime/serialize.py`` (pickle protocol 5, cloudpickle for lambdas and
``__main__`` objects). The wire format is ferropool's own: a ferropool connection talks only to
another ferropool connection.

Connections pass into a ``ferropool.Process`` as arguments or attributes of the process object:
the child inherits the descriptor at the same number (``pass_fds``), as ``multiprocessing``'s
spawn start method duplicates it. Pickled anywhere else (sent through a ``Queue``, another
connection, a pool task's arguments), a connection travels by its sender's descriptor sharer
(``_runtime/fd_sharing.py``): the pickle must be loaded, once, while the sender lives.
"""

from __future__ import annotations

import _thread

from . import _core
from ._runtime.serialize import dumps, loads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from multiprocessing import AuthenticationError, BufferTooShort
    from typing import Any

    from ._runtime.listener import Client, Listener, SocketConnection, answer_challenge, deliver_challenge, families

__all__ = [
    "AuthenticationError",
    "BufferTooShort",
    "Client",
    "Connection",
    "Listener",
    "Pipe",
    "SocketConnection",
    "answer_challenge",
    "deliver_challenge",
    "families",
    "wait",
]

# Listener, Client and their stream connections (the stdlib's wire format) live in _runtime/listener.py,
# imported on first use: a child process on its way to run() needs only Pipe's Connection
_LISTENER_NAMES = frozenset(
    {
        "CHALLENGE",
        "FAILURE",
        "WELCOME",
        "Client",
        "Listener",
        "SocketConnection",
        "address_type",
        "answer_challenge",
        "arbitrary_address",
        "deliver_challenge",
        "families",
    }
)

# .fds: the descriptors a Process being started will inherit (a thread-local from _thread, as
# `threading` is not otherwise needed on a child's way to run())
_passing = _thread._local()


class Connection(_core.Connection):
    """One end of a pipe made by ``Pipe()``: sends and receives picklable objects and bytes.

    Methods as ``multiprocessing.connection.Connection``: ``send``/``recv`` (pickled objects),
    ``send_bytes``/``recv_bytes``/``recv_bytes_into`` (raw messages), ``poll``, ``fileno``,
    ``close``, and the properties ``closed``, ``readable`` and ``writable``. Blocking calls release
    the GIL and raise ``KeyboardInterrupt`` on Ctrl-C.

    ``recv`` and ``recv_bytes`` raise ``EOFError`` once the other end is closed and nothing is
    left. ``recv_bytes(maxlength)`` raises ``OSError`` for a longer message and leaves it unread
    (the stdlib instead makes the connection unusable); ``recv_bytes_into`` raises
    ``BufferTooShort`` with the whole message as its argument, the message consumed, as the stdlib
    does.
    """

    __slots__ = ()

    def send(self, obj: Any) -> None:
        """Sends a picklable object; one that cannot be pickled raises here and sends nothing."""
        self.send_bytes(dumps(obj))

    def recv(self) -> Any:
        """Receives one object sent by ``send``; blocks until one arrives.

        Raises:
            EOFError: The other end is closed and nothing is left to receive.
        """
        return loads(self.recv_bytes())

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fileno()}"
        mode = "duplex" if self.readable and self.writable else "read-only" if self.readable else "write-only"
        return f"<{type(self).__module__}.{type(self).__qualname__} {state} {mode}>"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return reduce_connection(self, Connection, _rebuild_connection)


def reduce_connection(conn: Any, cls: Any, rebuild: Any) -> tuple[Any, tuple[Any, ...]]:
    """``conn.__reduce__()`` for a connection of class ``cls`` (a ``Connection`` or a socket one).

    Into a ``Process`` being started: its descriptor number, inherited by the child, and
    ``rebuild(fd, readable, writable)`` there. Anywhere else (a Queue, another Pipe, a pool
    task): a duplicate filed with this process's descriptor sharer.
    """
    fds: dict[int, None] | None = getattr(_passing, "fds", None)
    fd = conn.fileno()
    if fds is None:
        from ._runtime.fd_sharing import share

        address, key = share(fd)
        return _take_shared, (cls, address, key, conn.readable, conn.writable)
    fds[fd] = None
    return rebuild, (fd, conn.readable, conn.writable)


def _rebuild_connection(fd: int, readable: bool, writable: bool) -> Connection:
    """In a child: the inherited descriptor ``fd`` as a Connection again."""
    return Connection(fd, readable, writable)


def _take_shared(cls: Any, address: Any, key: bytes, readable: bool, writable: bool) -> Any:
    """Loads a connection pickled outside a process start: its descriptor from the sender's sharer."""
    from ._runtime.fd_sharing import take

    return cls(take(address, key), readable, writable)


def Pipe(duplex: bool = True) -> tuple[Connection, Connection]:
    """Returns a pair ``(conn1, conn2)`` of connected ``Connection`` objects.

    Args:
        duplex: When true (the default) both ends send and receive. When false ``conn1`` only
            receives and ``conn2`` only sends, as with the stdlib.
    """
    a, b = _core.socket_pair()
    if duplex:
        return Connection(a), Connection(b)
    return Connection(a, readable=True, writable=False), Connection(b, readable=False, writable=True)


def _fileno(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


def wait(object_list: Iterable[Any], timeout: float | None = None) -> list[Any]:
    """Waits until one or more of the objects in ``object_list`` is ready.

    The objects may be connections, process sentinels (``Process.sentinel``), sockets, or anything
    else with a ``fileno()`` method, or raw file descriptors. A connection is ready when a message
    or end-of-file is waiting; a sentinel when its process has ended. The GIL is released while
    waiting, and Ctrl-C raises ``KeyboardInterrupt``.

    Args:
        object_list: The objects to watch.
        timeout: Seconds to wait at most; ``None`` (the default) waits until one is ready.

    Returns:
        The ready objects, in the order given; empty if the timeout passed first.
    """
    objects = list(object_list)
    fds = [_fileno(obj) for obj in objects]
    if not fds:
        if timeout is None:
            raise ValueError("wait() on an empty list with no timeout would never return")
    ready = set(_core.wait_readable(sorted(set(fds)), timeout))
    return [obj for obj, fd in zip(objects, fds, strict=True) if fd in ready]


def __getattr__(name: str) -> Any:
    # the stdlib's own classes, so `except multiprocessing.BufferTooShort` keeps working; imported
    # on first use because importing multiprocessing costs a child process's start-up time
    if name in ("AuthenticationError", "BufferTooShort"):
        import multiprocessing

        return getattr(multiprocessing, name)
    if name in _LISTENER_NAMES:
        from ._runtime import listener as _listener

        return getattr(_listener, name)
    if name in ("_CHALLENGE", "_WELCOME", "_FAILURE"):  # the stdlib's names for the handshake's words
        from ._runtime import listener as _listener

        return getattr(_listener, name[1:])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
