"""``reduction.send_handle``/``recv_handle``: a file descriptor from one process to another.

The descriptor travels as ``SCM_RIGHTS`` ancillary data of a one-byte message on the
connection's socket (a ``Pipe`` end or a ``Listener``/``Client`` connection), which the
receiving side takes off with ``recvmsg`` before any other message is read.
"""

from __future__ import annotations

import os
import socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["recv_handle", "send_handle"]

_MARK = b"F"


def _socket_of(conn: Any) -> socket.socket:
    # a duplicate, so that closing this socket object leaves the connection's descriptor alone
    return socket.socket(fileno=os.dup(conn.fileno()))


def send_handle(conn: Any, handle: int, destination_pid: int | None = None) -> None:
    """Sends the file descriptor ``handle`` to the process at the other end of ``conn``.

    The receiver gets its own descriptor for the same open file from ``recv_handle(conn)``;
    ``handle`` stays open here. ``destination_pid`` is accepted for the stdlib's signature.
    """
    with _socket_of(conn) as sock:
        socket.send_fds(sock, [_MARK], [handle])


def recv_handle(conn: Any) -> int:
    """Receives a file descriptor sent by ``send_handle`` on the other end of ``conn``.

    Raises:
        RuntimeError: The next message on ``conn`` carries no descriptor.
        EOFError: The other end is closed.
    """
    with _socket_of(conn) as sock:
        data, fds, _flags, _addr = socket.recv_fds(sock, 1, 1)
    if not data and not fds:
        raise EOFError
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise RuntimeError(f"received {len(fds)} file descriptors where one was expected (message {data!r})")
    if data != _MARK:
        os.close(fds[0])
        raise RuntimeError(f"a file descriptor came with message {data!r}, not one sent by send_handle")
    return fds[0]
