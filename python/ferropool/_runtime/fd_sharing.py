"""Connections inside pickles: through a ``Queue``, another ``Pipe``, a pool task or a proxy.

Pickling one duplicates its descriptor and files the duplicate, under a random one-time key,
with this process's *sharer*: an abstract Unix ``Listener`` served by a daemon thread and
authenticated with ``current_process().authkey`` (which ferropool's children inherit). The
pickle holds the sharer's address and the key; loading it connects to the sharer, which hands
the descriptor over by ``SCM_RIGHTS`` and forgets it. As with the stdlib, the pickle must be
loaded while the process that made it lives, and only once. (A connection passed to a
``Process`` being started goes by ``pass_fds`` instead; see ``connection.py``.)
"""

from __future__ import annotations

import os
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["share", "take"]

_KEY_BYTES = 16
_HANDSHAKE_DEADLINE = 30.0

_lock = threading.Lock()
_sharer: tuple[int, Any] | None = None  # (pid, Listener) of this process's sharer
_pending: dict[bytes, int] = {}  # key -> the duplicate descriptor waiting for its receiver


def _authkey() -> bytes:
    from ..process import current_process

    return current_process().authkey


def share(fd: int) -> tuple[Any, bytes]:
    """Files a duplicate of ``fd`` with this process's sharer; returns ``(address, key)``."""
    global _sharer
    from .listener import Listener

    dup = os.dup(fd)
    key = os.urandom(_KEY_BYTES)
    with _lock:
        if _sharer is None or _sharer[0] != os.getpid():
            listener = Listener(backlog=64)
            threading.Thread(target=_accept_loop, args=(listener,), name="ferropool-fd-sharer", daemon=True).start()
            _sharer = (os.getpid(), listener)
        _pending[key] = dup
        return _sharer[1].address, key


def _accept_loop(listener: Any) -> None:
    while True:
        try:
            sock, _ = listener._socket.accept()
        except (OSError, AttributeError):
            return
        threading.Thread(target=_hand_over, args=(sock,), daemon=True).start()


def _hand_over(sock: Any) -> None:
    from .handles import send_handle
    from .listener import SocketConnection, answer_challenge, deliver_challenge

    conn = SocketConnection(sock)
    try:
        sock.settimeout(_HANDSHAKE_DEADLINE)
        authkey = _authkey()
        deliver_challenge(conn, authkey)
        answer_challenge(conn, authkey)
        key = conn.recv_bytes(_KEY_BYTES)
        with _lock:
            fd = _pending.pop(key, None)
        if fd is None:
            conn.send_bytes(b"unknown")
            return
        try:
            conn.send_bytes(b"ok")
            send_handle(conn, fd)
        finally:
            os.close(fd)
    except Exception:
        return  # a peer that fails the handshake or goes away gets nothing
    finally:
        conn.close()


def take(address: Any, key: bytes) -> int:
    """The descriptor filed under ``key`` with the sharer at ``address``, now this process's own."""
    from .handles import recv_handle
    from .listener import Client

    try:
        conn = Client(address, authkey=_authkey())
    except OSError as exc:
        raise OSError(
            "cannot load a pickled connection: the process that pickled it has ended (a connection "
            f"travels by its sender's sharer, which must still run): {exc}"
        ) from exc
    with conn:
        conn.send_bytes(key)
        if conn.recv_bytes(16) != b"ok":
            raise OSError("cannot load a pickled connection: it was loaded before (a pickled connection loads once)")
        return recv_handle(conn)
