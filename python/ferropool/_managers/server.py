"""The manager's server: the process that owns the shared objects and serves their proxies.

One ``Listener`` (the stdlib's wire format, authenticated before anything is unpickled, each
handshake on a thread of its own), and one loop (``hub.py``) that serves every authenticated
connection, handing the calls that may block to the connection's own thread; a proxy's call is
one request and one reply on its thread's connection::

    request  (ident, method, args, kwds)     ident None: an operation of the server itself
    reply    (status, value)                 RETURN, ERROR (an exception to raise), PROXY
                                             (a new object's token), REMOTE (a traceback text)

``hello`` (the client's pid), ``incref`` and ``decref`` get no reply, so they ride ahead of the next
request instead of costing a round trip.

A client process that dies while its connection holds a served ``Lock``, ``RLock``,
``Semaphore`` or ``Condition`` has what it held released, with a warning naming its pid: the
other clients go on instead of waiting forever, as they would with the stdlib. A connection
that closes while its process lives on (a thread that ended) keeps the stdlib's semantics.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import warnings

from .._runtime.listener import BufferedSocketConnection, Listener
from .._runtime.serialize import dumps, loads

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

RETURN, ERROR, PROXY, REMOTE = 0, 1, 2, 3
#: server operations whose sender does not wait for a reply
NO_REPLY = frozenset({"hello", "incref", "decref"})
#: methods every served object answers, whatever it exposes
ALWAYS = frozenset({"#GETVALUE", "__repr__", "__str__"})
#: how long a dropped client's process gets to be seen dead before its locks stay held
_DEATH_GRACE = 2.0

_VIEW_TYPES: tuple[type, ...] = (type({}.keys()), type({}.values()), type({}.items()))


def _xml_dumps(obj: Any) -> bytes:
    import xmlrpc.client

    return xmlrpc.client.dumps((obj,), methodresponse=True, allow_none=True).encode("utf-8")


def _xml_loads(data: Any) -> Any:
    import xmlrpc.client

    (obj,), _ = xmlrpc.client.loads(bytes(data).decode("utf-8"), use_builtin_types=True)
    return obj


#: serializer name -> (dumps, loads), as the stdlib's managers name them
SERIALIZERS: dict[str, tuple[Callable[[Any], bytes], Callable[[Any], Any]]] = {
    "pickle": (dumps, loads),
    "xmlrpclib": (_xml_dumps, _xml_loads),
}


def codec(serializer: str) -> tuple[Callable[[Any], bytes], Callable[[Any], Any]]:
    """The ``(dumps, loads)`` pair of ``serializer``; ``ValueError`` for an unknown one."""
    try:
        return SERIALIZERS[serializer]
    except KeyError:
        raise ValueError(f"unknown serializer {serializer!r}: use 'pickle' or 'xmlrpclib'") from None


_serving = threading.local()  # .client: the _Client whose request this thread is serving


def public_methods(obj: Any) -> list[str]:
    """The names of ``obj``'s callable attributes that do not start with ``_``."""
    names = []
    for name in dir(obj):
        if name[0] == "_":
            continue
        try:
            if callable(getattr(obj, name)):
                names.append(name)
        except Exception:
            continue
    return names


class _Entry:
    __slots__ = ("exposed", "method_to_typeid", "obj", "refs", "typeid")

    def __init__(self, obj: Any, typeid: str, exposed: frozenset[str], method_to_typeid: dict[str, str] | None) -> None:
        self.obj = obj
        self.typeid = typeid
        self.exposed = exposed
        self.method_to_typeid = method_to_typeid
        self.refs = 1


class _Client:
    """What the server knows of one client connection."""

    __slots__ = ("conn", "held", "local", "pid")

    def __init__(self, conn: BufferedSocketConnection) -> None:
        self.conn = conn
        self.pid: int | None = None
        self.held: dict[Any, int] = {}  # tracked lock -> times acquired by this connection
        # a client on this machine, whose pid can be watched: a Unix socket's peer (a TCP peer
        # may be another host, where the same pid is another process)
        self.local = conn._sock is not None and conn._sock.family == socket.AF_UNIX


def current_client() -> _Client | None:
    """The client whose request this thread is serving, or ``None`` outside the server."""
    return getattr(_serving, "client", None)


class Server:
    """Serves the objects of one manager at ``address``; ``serve_forever()`` runs it.

    ``registry`` maps a typeid to ``(callable, exposed, method_to_typeid, proxytype)``.
    """

    def __init__(self, registry: dict[str, Any], address: Any, authkey: bytes, serializer: str = "pickle") -> None:
        if not isinstance(authkey, bytes):
            raise TypeError(f"Authkey {authkey!r} is type {type(authkey)!s}, not bytes")
        self.dumps, self.loads = codec(serializer)
        self.registry = registry
        self.authkey = authkey
        self.listener = Listener(address=address, backlog=128)
        self.address = self.listener.address
        self.objects: dict[str, _Entry] = {}
        # references held by each local client process (pid -> id -> count), released when the
        # process dies, and how many connections each such process has open
        self.owned: dict[int, dict[str, int]] = {}
        self.open_connections: dict[int, int] = {}
        self.mutex = threading.Lock()
        self.stop_event = threading.Event()
        self._ids = iter(range(1, sys.maxsize))
        self._cleanups: list[Callable[[], None]] = []
        self._returned_none = self.dumps((RETURN, None))
        from .hub import Hub

        self.hub = Hub(self)

    # --- running

    def serve_forever(self) -> None:
        """Accepts and serves clients until a client asks the server to shut down."""
        from .. import process

        current = process.current_process()
        current._manager_server = self  # type: ignore[attr-defined]  # proxies rebuilt here find it
        accepter = threading.Thread(target=self._accept_loop, name="ferropool-manager-accepter", daemon=True)
        accepter.start()
        threading.Thread(target=self.hub.run, name="ferropool-manager-hub", daemon=True).start()
        try:
            self.stop_event.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Stops accepting and runs the cleanups registered with ``add_cleanup``."""
        self.stop_event.set()
        self.hub.wake()
        self.listener.close()
        cleanups, self._cleanups = self._cleanups, []
        for cleanup in reversed(cleanups):
            try:
                cleanup()
            except Exception:
                _traceback().print_exc()

    def add_cleanup(self, cleanup: Callable[[], None]) -> None:
        """Runs ``cleanup()`` when the server stops (a ``SharedMemoryManager`` frees its blocks)."""
        self._cleanups.append(cleanup)

    def _accept_loop(self) -> None:
        while not self.stop_event.is_set():
            try:
                sock, _ = self.listener._socket.accept()  # type: ignore[union-attr]
            except OSError:
                if self.stop_event.is_set():
                    return
                continue
            conn = BufferedSocketConnection(sock)
            # the handshake runs on a thread of its own: a slow or silent peer holds up no one
            # else; the hub serves the connection once it is authenticated
            threading.Thread(target=self._serve_connection, args=(conn,), daemon=True).start()

    def _serve_connection(self, conn: BufferedSocketConnection) -> None:
        from .._runtime.listener import answer_challenge, deliver_challenge

        try:
            # bounded: a peer that never answers the challenge does not keep a thread forever
            conn._sock.settimeout(30.0)  # type: ignore[union-attr]
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
            conn._sock.settimeout(None)  # type: ignore[union-attr]
            self.hub.add(_Client(conn))
        except Exception:
            conn.close()

    # --- one request

    def respond(self, client: _Client, ident: str | None, method: str, args: Any, kwds: Any) -> Any:
        """The reply to one request from ``client`` (``hello``, ``incref``, ``decref`` excepted)."""
        if ident is None:
            return self._server_op(client, method, args, kwds)
        return self._call(self.objects, ident, method, args, kwds)

    def encode(self, reply: Any) -> bytes:
        """``reply`` pickled; a reply that cannot be pickled becomes a remote error."""
        if reply[1] is None and reply[0] == RETURN:
            return self._returned_none  # the reply of most mutating calls, pickled once
        try:
            return self.dumps(reply)
        except Exception:
            return self.dumps((REMOTE, "the result could not be pickled:\n" + _traceback().format_exc()))

    def _call(self, objects: dict[str, _Entry], ident: str, method: str, args: Any, kwds: Any) -> Any:
        """One method call on a served object, as its reply."""
        entry = objects.get(ident)
        if entry is None:
            return (REMOTE, f"no object with id {ident!r} in the manager (it was released)\n")
        if method not in entry.exposed and method not in ALWAYS:
            return (
                REMOTE,
                f"AttributeError: method {method!r} of {type(entry.obj)!r} object is not in "
                f"exposed={tuple(sorted(entry.exposed))!r}\n",
            )
        try:
            result = entry.obj if method == "#GETVALUE" else getattr(entry.obj, method)(*args, **kwds)
        except Exception as exc:
            return (ERROR, exc)
        typeid = entry.method_to_typeid.get(method) if entry.method_to_typeid else None
        if typeid is not None:
            return (PROXY, self._new_entry(typeid, result, current_client()))
        if type(result) in _VIEW_TYPES:
            return (RETURN, list(result))
        return (RETURN, result)

    def _no_reply_op(self, client: _Client, method: str, args: tuple[Any, ...]) -> None:
        if method == "hello":
            if client.pid is None and isinstance(args[0], int):
                client.pid = args[0]
                if client.local:
                    with self.mutex:
                        self.open_connections[client.pid] = self.open_connections.get(client.pid, 0) + 1
        elif method == "incref":
            try:
                self.incref(args[0], client)
            except KeyError:
                pass  # the proxy's calls will say the object is gone
        else:
            for ident in args[0]:
                self.decref(ident, client)

    def _server_op(self, client: _Client, method: str, args: tuple[Any, ...], kwds: dict[str, Any]) -> Any:
        try:
            if method == "create":
                typeid, *rest = args
                return (RETURN, self.create(typeid, *rest, _owner=client, **kwds))
            if method == "shutdown":
                self.stop_event.set()
                return (RETURN, None)
            if method == "dummy":
                return (RETURN, None)
            if method == "number_of_objects":
                return (RETURN, len(self.objects))
            if method == "debug_info":
                return (RETURN, self.debug_info())
            if method == "get_methods":
                return (RETURN, sorted(self.objects[args[0]].exposed))
            return (REMOTE, f"unknown manager operation {method!r}\n")
        except Exception:
            # as the stdlib's: a failure to create is reported with the server's traceback
            return (REMOTE, _traceback().format_exc())

    # --- the object table

    def create(
        self, typeid: str, /, *args: Any, _owner: _Client | None = None, **kwds: Any
    ) -> tuple[str, str, tuple[str, ...]]:
        """Makes a new object of ``typeid``; returns ``(typeid, id, exposed)``.

        One reference is held, by ``_owner``'s process when given.
        """
        try:
            callable_ = self.registry[typeid][0]
        except KeyError:
            raise ValueError(f"unknown manager type {typeid!r}") from None
        if callable_ is None:
            if len(args) != 1 or kwds:
                raise TypeError(f"{typeid!r} has no callable: create it with the object as the only argument")
            obj = args[0]
        else:
            obj = callable_(*args, **kwds)
        return self._new_entry(typeid, obj, _owner)

    def _new_entry(self, typeid: str, obj: Any, owner: _Client | None) -> tuple[str, str, tuple[str, ...]]:
        _, exposed, method_to_typeid, proxytype = self.registry[typeid]
        if exposed is None:
            exposed = getattr(proxytype, "_exposed_", None)
        if exposed is None:
            exposed = public_methods(obj)
        if method_to_typeid is None:
            method_to_typeid = getattr(proxytype, "_method_to_typeid_", None)
        exposed = tuple(exposed)
        with self.mutex:
            ident = f"{next(self._ids):x}"
            self.objects[ident] = _Entry(obj, typeid, frozenset(exposed), method_to_typeid)
            self._own(owner, ident, 1)
        return (typeid, ident, exposed)

    def _own(self, owner: _Client | None, ident: str, delta: int) -> None:
        # under the mutex: the references a local client process holds, to release at its death
        if owner is None or owner.pid is None or not owner.local:
            return
        refs = self.owned.setdefault(owner.pid, {})
        count = refs.get(ident, 0) + delta
        if count > 0:
            refs[ident] = count
        else:
            refs.pop(ident, None)

    def incref(self, ident: str, owner: _Client | None = None) -> None:
        """Adds a reference to object ``ident`` (held by ``owner``'s process when given)."""
        with self.mutex:
            try:
                self.objects[ident].refs += 1
            except KeyError:
                raise KeyError(f"no object with id {ident!r} in the manager (it was released)") from None
            self._own(owner, ident, 1)

    def decref(self, ident: str, owner: _Client | None = None) -> None:
        """Drops a reference to object ``ident``; the last one releases the object."""
        with self.mutex:
            entry = self.objects.get(ident)
            if entry is None:
                return
            self._own(owner, ident, -1)
            entry.refs -= 1
            if entry.refs > 0:
                return
            del self.objects[ident]
        # the object (and any proxies in it, which decref in turn) dies outside the mutex
        del entry

    def debug_info(self) -> str:
        """One line per live object: id, references and a short repr."""
        with self.mutex:
            items = list(self.objects.items())
        return "\n".join(f"  {ident}:       refcount={e.refs}\n    {str(e.obj)[:75]}" for ident, e in items)

    # --- dead clients

    def _connection_closed(self, client: _Client) -> None:
        """After a client connection ends: if its process died, release what it held."""
        pid = client.pid
        if pid is None or not client.local:
            return
        with self.mutex:
            left = self.open_connections.get(pid, 1) - 1
            if left > 0:
                self.open_connections[pid] = left
            else:
                self.open_connections.pop(pid, None)
        if not client.held and (left > 0 or pid not in self.owned):
            return
        if not _process_died(pid):
            return  # a thread of a live process ended: the stdlib's semantics stand
        for tracked, times in list(client.held.items()):
            warnings.warn(
                f"ferropool manager: process {pid} died holding a {tracked.kind}; "
                "released so that the other processes can go on",
                RuntimeWarning,
                stacklevel=1,
            )
            for _ in range(times):
                try:
                    tracked.release_for(client)
                except Exception:
                    break
        client.held.clear()
        if left <= 0:
            with self.mutex:
                refs = self.owned.pop(pid, {})
            for ident, count in refs.items():
                for _ in range(count):
                    self.decref(ident)


def _process_died(pid: int) -> bool:
    """Whether process ``pid`` is dead, or dies within a short grace.

    A dying process's descriptors close just before it becomes a zombie, so the end of file on
    its connection may come first.
    """
    if pid == os.getpid():
        return False
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:
        ready, _, _ = select.select([fd], [], [], _DEATH_GRACE)
        return bool(ready)
    finally:
        os.close(fd)


# --- served synchronisation objects that know who holds them


class _Tracked:
    """A lock-like object whose acquisitions are recorded per client connection."""

    kind = "lock"

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._holders: list[_Client] = []

    def _note_acquired(self) -> None:
        client = current_client()
        if client is not None:
            client.held[self] = client.held.get(self, 0) + 1
            self._holders.append(client)

    def _note_released(self, client: _Client | None) -> None:
        if client is None or client not in self._holders:
            if not self._holders:
                return
            client = self._holders[0]  # a Lock may be released by another client than its holder
        self._holders.remove(client)
        left = client.held.get(self, 0) - 1
        if left > 0:
            client.held[self] = left
        else:
            client.held.pop(self, None)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if timeout is None:
            timeout = -1
        ok = self._inner.acquire(blocking, timeout) if blocking else self._inner.acquire(False)
        if ok:
            self._note_acquired()
        return bool(ok)

    def release(self) -> None:
        self._inner.release()
        self._note_released(current_client())

    def release_for(self, client: _Client) -> None:
        """Releases once on behalf of ``client``, whose process died."""
        self._inner.release()
        if client in self._holders:
            self._holders.remove(client)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def locked(self) -> bool:
        return bool(self._inner.locked())

    def __repr__(self) -> str:
        return repr(self._inner)


class TrackedLock(_Tracked):
    kind = "Lock"

    def __init__(self) -> None:
        super().__init__(threading.Lock())


class TrackedRLock(_Tracked):
    kind = "RLock"

    def __init__(self) -> None:
        super().__init__(threading.RLock())

    def locked(self) -> bool:
        return bool(self._holders)


class TrackedSemaphore(_Tracked):
    kind = "Semaphore"

    def __init__(self, value: int = 1) -> None:
        super().__init__(threading.Semaphore(value))

    def release(self, n: int = 1) -> None:
        self._inner.release(n)
        for _ in range(n):
            self._note_released(current_client())

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        ok = self._inner.acquire(blocking, timeout)
        if ok:
            self._note_acquired()
        return bool(ok)

    def get_value(self) -> int:
        return int(self._inner._value)


class TrackedBoundedSemaphore(TrackedSemaphore):
    kind = "BoundedSemaphore"

    def __init__(self, value: int = 1) -> None:
        _Tracked.__init__(self, threading.BoundedSemaphore(value))


class TrackedCondition(_Tracked):
    """A ``threading.Condition`` served to clients; its lock is tracked as a Lock's is."""

    kind = "Condition"

    def __init__(self, lock: Any = None) -> None:
        super().__init__(threading.Condition(lock))

    def wait(self, timeout: float | None = None) -> bool:
        # the lock is released while waiting and held again on return: the record stands
        return bool(self._inner.wait(timeout))

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        return self._inner.wait_for(predicate, timeout)

    def notify(self, n: int = 1) -> None:
        self._inner.notify(n)

    def notify_all(self) -> None:
        self._inner.notify_all()

    def locked(self) -> bool:
        return bool(self._holders)


# --- the server process


def _watch_parent(pipe_end: Any, parent_pid: int, server: Server) -> None:
    """Stops ``server`` when its manager says so or when the process that started it dies.

    The pipe alone cannot tell the death: a process forked while it was open (the fork server,
    this server itself when forked from there) holds a copy of the manager's end.
    """
    import select

    try:
        pidfd = os.pidfd_open(parent_pid)
    except ProcessLookupError:
        server.stop_event.set()
        return
    try:
        while True:
            ready, _, _ = select.select([pipe_end.fileno(), pidfd], [], [])
            if pidfd in ready:
                break
            try:
                pipe_end.recv_bytes()
            except (EOFError, OSError):
                pass
            break
    finally:
        os.close(pidfd)
    server.stop_event.set()


def _traceback() -> Any:
    """The ``traceback`` module, loaded at the first failure rather than on every start."""
    import traceback

    return traceback


def run_server(
    registry: dict[str, Any],
    address: Any,
    authkey: bytes,
    serializer: str,
    pipe_end: Any,
    parent_pid: int,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    """The server process's main: listen, report the address, serve until told to stop."""
    import signal
    import sys

    from ..process import current_process

    # Ctrl-C in a terminal reaches the whole process group: the manager stops when its owner
    # says so, not in the middle of the owner's cleanup
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    current_process().authkey = authkey
    try:
        if initializer is not None:
            initializer(*initargs)
        server = Server(registry, address, authkey, serializer)
    except BaseException as exc:
        pipe_end.send(exc)
        return
    pipe_end.send(server.address)
    threading.Thread(target=_watch_parent, args=(pipe_end, parent_pid, server), daemon=True).start()
    server.serve_forever()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    # the served objects' threads (a Pool's, a blocked Queue's waiters) must not keep the
    # process alive once its owner has let it go
    os._exit(0)
