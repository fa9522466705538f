"""Managers: objects in a server process, used from other processes through proxies.

The names and documented semantics of ``multiprocessing.managers``: ``BaseManager`` and its
``register()``, ``SyncManager`` (``list``, ``dict``, ``Namespace``, ``Value``, ``Array``,
``Queue``, ``Lock`` ... ``Pool``), ``BaseProxy``, ``AutoProxy``, ``Token``, ``Namespace`` and
``SharedMemoryManager``. ``ferropool.Manager()`` returns a started ``SyncManager``.

What differs from the stdlib, all in the user's favour (see docs/managers.md):

* a proxy's call is one round trip; creating an object is one; releasing a proxy costs none
  (its release rides ahead of the next call);
* a client process that dies holding a manager ``Lock`` (or ``RLock``, ``Semaphore``,
  ``Condition``) has it released, with a warning naming its pid;
* the server authenticates every connection before it unpickles a byte from it, and dies with
  the process that started it, leaving nothing behind (its socket is an abstract one).
"""

from __future__ import annotations

import _pickle
import itertools
import os
import queue
import threading
import time
import weakref

from ._managers import server as _server
from ._managers.server import ERROR, PROXY, REMOTE, RETURN, Server, codec, current_client, run_server
from ._managers.types import Array, JoinableQueue, Namespace, Value, make_pool
from ._runtime import lifecycle
from ._runtime import listener as _listener
from ._runtime.serialize import dumps

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence
    from multiprocessing.managers import RemoteError
    from typing import Any, Self

__all__ = [
    "AcquirerProxy",
    "ArrayProxy",
    "AutoProxy",
    "BarrierProxy",
    "BaseManager",
    "BaseProxy",
    "ConditionProxy",
    "DictProxy",
    "EventProxy",
    "IteratorProxy",
    "ListProxy",
    "MakeProxyType",
    "Namespace",
    "NamespaceProxy",
    "PoolProxy",
    "RemoteError",
    "Server",
    "SyncManager",
    "Token",
    "Value",
    "ValueProxy",
    "dispatch",
]


# ----------------------------------------------------------------------------------------------
# tokens, errors, server-side types


class Token:
    """Names one object in one manager: its ``typeid``, the manager's ``address``, its ``id``."""

    __slots__ = ("address", "id", "typeid")

    def __init__(self, typeid: str, address: Any, id: str) -> None:
        self.typeid = typeid
        self.address = address
        self.id = id

    def __getstate__(self) -> tuple[str, Any, str]:
        return (self.typeid, self.address, self.id)

    def __setstate__(self, state: tuple[str, Any, str]) -> None:
        self.typeid, self.address, self.id = state

    def __repr__(self) -> str:
        return f"{type(self).__name__}(typeid={self.typeid!r}, address={self.address!r}, id={self.id!r})"


def _remote_error_class() -> type[Exception]:
    """``RemoteError``, made on first use.

    A subclass of the stdlib's, so ``except`` clauses written for it keep catching; made late
    because the stdlib's module (``multiprocessing.managers``) is slow to import.
    """
    global _RemoteError
    if _RemoteError is None:
        import multiprocessing.managers

        def __str__(self: Exception) -> str:
            line = "-" * 75
            return f"\n{line}\n{self.args[0]}{line}"

        _RemoteError = type(
            "RemoteError",
            (multiprocessing.managers.RemoteError,),
            {
                "__module__": __name__,
                "__str__": __str__,
                "__doc__": "A failure in the manager's server that is not the called method's own exception.\n\n"
                "The result could not be pickled, or the object is gone; ``args[0]`` holds the server's text.",
            },
        )
    return _RemoteError


_RemoteError: type[Exception] | None = None


# ----------------------------------------------------------------------------------------------
# client connections: one per manager address and thread, authenticated once


class _ThreadConnections(threading.local):
    def __init__(self) -> None:
        # (address, authkey) -> (pid, connection, the dumps of its serializer): a key of its own,
        # so a connect() with another key is authenticated afresh
        self.conns: dict[Any, tuple[int, _listener.BufferedSocketConnection, Callable[[Any], bytes]]] = {}


_local = _ThreadConnections()
#: manager address -> ids whose last local proxy died; sent ahead of the next request there
_pending_decrefs: dict[Any, list[str]] = {}


_PICKLE = codec("pickle")
_NO_KWDS: dict[str, Any] = {}  # sent, never changed: the server only unpacks it


def _open(address: Any, authkey: bytes, dumps: Callable[[Any], bytes]) -> _listener.BufferedSocketConnection:
    conn = _listener.connect(address, None, authkey, _listener.BufferedSocketConnection)
    conn.send_bytes(dumps((None, "hello", (os.getpid(),), {})))
    return conn


def _connection(
    address: Any, authkey: bytes, dumps: Callable[[Any], bytes] = dumps
) -> _listener.BufferedSocketConnection:
    conns = _local.conns
    pid_conn = conns.get((address, authkey))
    if pid_conn is not None and pid_conn[0] == os.getpid():
        return pid_conn[1]
    conn = _open(address, authkey, dumps)
    conns[(address, authkey)] = (os.getpid(), conn, dumps)
    return conn


def _drop_connection(address: Any, authkey: bytes | None = None) -> None:
    conns = _local.conns
    for key in [key for key in conns if key[0] == address and (authkey is None or key[1] == authkey)]:
        conns.pop(key)[1].close()


def _request(
    address: Any,
    authkey: bytes,
    ident: str | None,
    method: str,
    args: Any = (),
    kwds: Any = None,
    codec: tuple[Callable[[Any], bytes], Callable[[Any], Any]] = _PICKLE,
) -> Any:
    """Sends one request to the manager at ``address`` and returns its ``(status, value)`` reply."""
    dumps, loads = codec
    conn = _connection(address, authkey, dumps)
    try:
        if _pending_decrefs:
            ids = _pending_decrefs.pop(address, None)
            if ids:
                conn.send_message(dumps((None, "decref", (ids,), {})))
        return loads(conn.call(dumps((ident, method, args, kwds or _NO_KWDS))))
    except (EOFError, OSError):
        # the server is gone or the stream is no longer in step: the next call reconnects
        _drop_connection(address, authkey)
        raise
    except BaseException:
        # interrupted mid-call (Ctrl-C): the reply may still come, so this connection is done
        _drop_connection(address, authkey)
        raise


def _send_no_reply(
    address: Any, authkey: bytes, method: str, args: tuple[Any, ...], dumps: Callable[[Any], bytes] = dumps
) -> None:
    conn = _connection(address, authkey, dumps)
    try:
        conn.send_bytes(dumps((None, method, args, {})))
    except OSError:
        _drop_connection(address, authkey)
        raise


def _error_of(status: Any, value: Any) -> BaseException:
    """The exception a reply that is not a result stands for (the stdlib's kinds understood too)."""
    if status in (ERROR, "#ERROR") and isinstance(value, BaseException):
        return value
    if status in (REMOTE, "#TRACEBACK", "#UNSERIALIZABLE"):
        return _remote_error_class()(value)
    return _remote_error_class()(f"unexpected reply from the manager: {status!r}\n")


def _raise_reply(status: Any, value: Any) -> Any:
    try:
        raise _error_of(status, value)
    finally:
        # no reference cycle through this frame: the exception's traceback holds it
        del value


def dispatch(c: Any, id: Any, methodname: str, args: Any = (), kwds: Any = None) -> Any:
    """Sends the request ``(id, methodname, args, kwds)`` on connection ``c``; returns the result.

    The stdlib's helper, for code that talks to a manager's server on a connection of its own.
    """
    c.send((id, methodname, args, kwds or {}))
    kind, result = c.recv()
    if kind in (RETURN, "#RETURN"):
        return result
    try:
        raise _error_of(kind, result)
    finally:
        del result


def _server_here(address: Any) -> Server | None:
    """The manager server running in this process at ``address``, if any."""
    from .process import current_process

    server = getattr(current_process(), "_manager_server", None)
    if server is not None and server.address == address:
        return server  # type: ignore[no-any-return]
    return None


def _queue_decref(address: Any, ident: str) -> None:
    server = _server_here(address)
    if server is not None:
        server.decref(ident)
        return
    _pending_decrefs.setdefault(address, []).append(ident)


def _flush_decrefs() -> None:
    """Sends the pending releases (at interpreter exit: the server frees what nobody uses)."""
    for address in list(_pending_decrefs):
        ids = _pending_decrefs.pop(address, None)
        for (conn_address, _), pid_conn in list(_local.conns.items()):
            if not ids or conn_address != address or pid_conn[0] != os.getpid():
                continue
            try:
                pid_conn[1].send_bytes(pid_conn[2]((None, "decref", (ids,), {})))
            except OSError:
                pass
            break


# ----------------------------------------------------------------------------------------------
# proxies

#: typeid -> proxy type, from every register() call: a proxy unpickled without its manager
#: builds the proxies its methods return from here
_proxy_types: dict[str, Any] = {}


class BaseProxy:
    """A reference to an object in a manager's server; calls travel to the server.

    ``_callmethod(name, args, kwds)`` calls a method of the referent and returns its result
    (a copy, or a new proxy for the methods the type maps to a typeid); ``_getvalue()`` returns
    a copy of the referent. Proxies pickle, into processes and through queues, as references.
    """

    _exposed_: tuple[str, ...] | None = None
    _method_to_typeid_: dict[str, str] | None = None
    _isauto = False

    def __init__(
        self,
        token: Token,
        serializer: str = "pickle",
        manager: BaseManager | None = None,
        authkey: bytes | None = None,
        exposed: Sequence[str] | None = None,
        incref: bool = True,
        manager_owned: bool = False,
    ) -> None:
        self._token = token
        self._id = token.id
        self._address = token.address
        self._manager = manager
        self._serializer = serializer
        self._codec = codec(serializer)
        if authkey is None:
            authkey = manager._authkey if manager is not None else _current_authkey()
        self._authkey = bytes(authkey)
        self._owned_by_manager = manager_owned
        self._close: Any = None
        if exposed is not None and type(self)._exposed_ is None:
            self._exposed_ = tuple(exposed)
        if incref and not manager_owned:
            self._incref()

    def _callmethod(self, methodname: str, args: Any = (), kwds: Any = None) -> Any:
        """Calls ``methodname(*args, **kwds)`` on the referent and returns the result."""
        status, value = _request(self._address, self._authkey, self._id, methodname, args, kwds, self._codec)
        if status == RETURN:
            return value
        if status == PROXY:
            typeid, ident, exposed = value
            manager = self._manager
            proxytype = manager._registry[typeid][-1] if manager is not None else _proxy_types.get(typeid, AutoProxy)
            proxy = proxytype(
                Token(typeid, self._address, ident),
                self._serializer,
                manager=manager,
                authkey=self._authkey,
                exposed=exposed,
                incref=False,
            )
            proxy._adopt()
            return proxy
        try:
            raise _error_of(status, value)
        finally:
            del value  # the exception's traceback holds this frame: no cycle through it

    def _getvalue(self) -> Any:
        """A copy of the referent."""
        return self._callmethod("#GETVALUE")

    def _incref(self) -> None:
        server = _server_here(self._address)
        if server is not None:
            server.incref(self._id)
        else:
            # no reply awaited: the next call on this thread's connection comes after it
            _send_no_reply(self._address, self._authkey, "incref", (self._id,), self._codec[0])
        self._adopt()

    def _adopt(self) -> None:
        """Makes this proxy the owner of one reference, released when it is collected."""
        if self._close is None:
            self._close = weakref.finalize(self, _queue_decref, self._address, self._id)
            self._close.atexit = False

    def _decref(self) -> None:
        if self._close is not None:
            self._close()

    def __reduce__(self) -> Any:
        kwds: dict[str, Any] = {}
        if self._authkey != _current_authkey():
            kwds["authkey"] = self._authkey
        if self._isauto:
            kwds["exposed"] = self._exposed_
            return (RebuildProxy, (AutoProxy, self._token, self._serializer, kwds))
        server = _server_here(self._address)
        client = current_client() if server is not None else None
        if server is not None and client is not None:
            # a reply to a client: the reference travels with it, so the object cannot be
            # released between this pickle and the client's proxy
            server.incref(self._id, client)
            kwds["_adopted"] = True
        return (RebuildProxy, (type(self), self._token, self._serializer, kwds))

    def __deepcopy__(self, memo: Any) -> Any:
        return self._getvalue()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} object, typeid {self._token.typeid!r} at {id(self):#x}>"

    def __str__(self) -> str:
        try:
            return str(self._callmethod("__repr__"))
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def _current_authkey() -> bytes:
    from .process import current_process

    return current_process().authkey


def RebuildProxy(func: Any, token: Token, serializer: str, kwds: dict[str, Any]) -> Any:
    """Rebuilds a pickled proxy (in the manager's own server: a proxy holding a direct reference)."""
    adopted = kwds.pop("_adopted", False)
    server = _server_here(token.address)
    if server is not None:
        proxy = func(token, serializer, incref=False, **kwds)
        if not adopted:
            server.incref(token.id)
        proxy._adopt()
        return proxy
    if adopted:
        proxy = func(token, serializer, incref=False, **kwds)
        proxy._adopt()
        return proxy
    return func(token, serializer, **kwds)


def _forwarder(name: str) -> Callable[..., Any]:
    """A proxy method that calls the referent's method ``name`` with the arguments it is given."""

    def method(self: BaseProxy, /, *args: Any, **kwds: Any) -> Any:
        return self._callmethod(name, args, kwds)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"The referent's ``{name}``."
    return method


def _forwarders(*names: str) -> tuple[Callable[..., Any], ...]:
    """``_forwarder(name)`` for each of ``names``, in order."""
    return tuple(_forwarder(name) for name in names)


def _attribute(name: str) -> property:
    """A read-only property: the referent's attribute ``name``."""
    return property(lambda self: self._callmethod("__getattribute__", (name,)), doc=f"The referent's ``{name}``.")


def MakeProxyType(name: str, exposed: Iterable[str], _cache: dict[Any, type] = {}) -> type:  # noqa: B006
    """A ``BaseProxy`` subclass whose methods named in ``exposed`` call the referent's."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    namespace: dict[str, Any] = {meth: _forwarder(meth) for meth in exposed}
    namespace["_exposed_"] = exposed
    proxytype = type(name, (BaseProxy,), namespace)
    _cache[(name, exposed)] = proxytype
    return proxytype


def AutoProxy(
    token: Token,
    serializer: str = "pickle",
    manager: BaseManager | None = None,
    authkey: bytes | None = None,
    exposed: Sequence[str] | None = None,
    incref: bool = True,
    manager_owned: bool = False,
) -> BaseProxy:
    """A proxy whose methods are those the referent exposes (asked of the server if not given)."""
    if authkey is None:
        authkey = manager._authkey if manager is not None else _current_authkey()
    if exposed is None:
        status, value = _request(token.address, authkey, None, "get_methods", (token.id,), codec=codec(serializer))
        exposed = value if status == RETURN else _raise_reply(status, value)
    proxytype = MakeProxyType(f"AutoProxy[{token.typeid}]", exposed)
    proxy = proxytype(token, serializer, manager=manager, authkey=authkey, incref=incref, manager_owned=manager_owned)
    proxy._isauto = True
    return proxy  # type: ignore[no-any-return]


class IteratorProxy(BaseProxy):
    """A proxy to an iterator in the server (what a ``DictProxy`` iteration returns)."""

    _exposed_: tuple[str, ...] = ("__next__", "send", "throw", "close")

    def __iter__(self) -> IteratorProxy:
        return self

    def __next__(self, *args: Any) -> Any:
        return self._callmethod("__next__", args)

    send, throw, close = _forwarders("send", "throw", "close")


class AcquirerProxy(BaseProxy):
    """A proxy to a ``Lock`` or ``RLock``: ``acquire``, ``release``, ``with``."""

    _exposed_: tuple[str, ...] = ("acquire", "release", "locked")

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """The referent's ``acquire``."""
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod("acquire", args)  # type: ignore[no-any-return]

    release, locked = _forwarders("release", "locked")

    def __enter__(self) -> bool:
        return self._callmethod("acquire")  # type: ignore[no-any-return]

    def __exit__(self, *exc_info: object) -> None:
        return self._callmethod("release")  # type: ignore[no-any-return]


class SemaphoreProxy(AcquirerProxy):
    """A proxy to a ``Semaphore`` or ``BoundedSemaphore``."""

    _exposed_: tuple[str, ...] = ("acquire", "release", "locked", "get_value")

    get_value = _forwarder("get_value")


class ConditionProxy(AcquirerProxy):
    """A proxy to a ``Condition``; ``wait_for`` evaluates its predicate here."""

    _exposed_: tuple[str, ...] = ("acquire", "release", "locked", "wait", "notify", "notify_all")

    wait, notify, notify_all = _forwarders("wait", "notify", "notify_all")

    def wait_for(self, predicate: Callable[[], Any], timeout: float | None = None) -> Any:
        """Waits until ``predicate()`` is true (evaluated here, between notifications)."""
        result = predicate()
        if result:
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if deadline is not None:
                waittime = deadline - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    """A proxy to an ``Event``."""

    _exposed_: tuple[str, ...] = ("is_set", "set", "clear", "wait")

    is_set, set, clear, wait = _forwarders("is_set", "set", "clear", "wait")


class BarrierProxy(BaseProxy):
    """A proxy to a ``Barrier``."""

    _exposed_: tuple[str, ...] = ("__getattribute__", "wait", "abort", "reset")

    wait, abort, reset = _forwarders("wait", "abort", "reset")
    parties = _attribute("parties")
    n_waiting = _attribute("n_waiting")
    broken = _attribute("broken")


class NamespaceProxy(BaseProxy):
    """A proxy to a ``Namespace``: attributes not starting with ``_`` live in the server."""

    _exposed_: tuple[str, ...] = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key: str) -> Any:
        if key[0] == "_":
            return object.__getattribute__(self, key)
        return object.__getattribute__(self, "_callmethod")("__getattribute__", (key,))

    def __setattr__(self, key: str, value: Any) -> None:
        if key[0] == "_":
            object.__setattr__(self, key, value)
            return
        object.__getattribute__(self, "_callmethod")("__setattr__", (key, value))

    def __delattr__(self, key: str) -> None:
        if key[0] == "_":
            object.__delattr__(self, key)
            return
        object.__getattribute__(self, "_callmethod")("__delattr__", (key,))


class ValueProxy(BaseProxy):
    """A proxy to a ``Value``: ``get``, ``set`` and the ``value`` property."""

    _exposed_: tuple[str, ...] = ("get", "set")

    get, set = _forwarders("get", "set")

    value = property(get, set)

    __class_getitem__ = classmethod(type(list[int]))  # type: ignore[var-annotated]


_LIST_METHODS = (
    "__add__",
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__len__",
    "__mul__",
    "__reversed__",
    "__rmul__",
    "__setitem__",
    "append",
    "count",
    "extend",
    "index",
    "insert",
    "pop",
    "remove",
    "reverse",
    "sort",
    "__imul__",
)
BaseListProxy = MakeProxyType("BaseListProxy", _LIST_METHODS)


class ListProxy(BaseListProxy):  # type: ignore[valid-type,misc]
    """A proxy to a list; ``+=`` and ``*=`` change the list in the server."""

    def __iadd__(self, value: Any) -> ListProxy:
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value: Any) -> ListProxy:
        self._callmethod("__imul__", (value,))
        return self

    __class_getitem__ = classmethod(type(list[int]))  # type: ignore[var-annotated]


_DICT_METHODS = (
    "__contains__",
    "__delitem__",
    "__getitem__",
    "__iter__",
    "__len__",
    "__setitem__",
    "clear",
    "copy",
    "get",
    "items",
    "keys",
    "pop",
    "popitem",
    "setdefault",
    "update",
    "values",
)
DictProxy = MakeProxyType("DictProxy", _DICT_METHODS)
DictProxy._method_to_typeid_ = {"__iter__": "Iterator"}  # type: ignore[attr-defined]
DictProxy.__class_getitem__ = classmethod(type(list[int]))  # type: ignore[attr-defined]

ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))

BasePoolProxy = MakeProxyType(
    "PoolProxy",
    (
        "apply",
        "apply_async",
        "close",
        "imap",
        "imap_unordered",
        "join",
        "map",
        "map_async",
        "starmap",
        "starmap_async",
        "terminate",
    ),
)
BasePoolProxy._method_to_typeid_ = {  # type: ignore[attr-defined]
    "apply_async": "AsyncResult",
    "map_async": "AsyncResult",
    "starmap_async": "AsyncResult",
    "imap": "Iterator",
    "imap_unordered": "Iterator",
}


class PoolProxy(BasePoolProxy):  # type: ignore[valid-type,misc]
    """A proxy to a ``Pool`` in the server; ``with`` terminates it at the end."""

    def __enter__(self) -> PoolProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()


# ----------------------------------------------------------------------------------------------
# managers


class State:
    """A manager's state: ``INITIAL``, ``STARTED`` or ``SHUTDOWN`` in ``value``."""

    __slots__ = ("value",)
    INITIAL = 0
    STARTED = 1
    SHUTDOWN = 2

    def __init__(self) -> None:
        self.value = State.INITIAL


_manager_numbers = itertools.count(1)

#: the finalizers of started managers: at exit each server is asked to stop, newest first, before
#: the ``Process`` children (the servers among them) are joined
_finalizers: list[weakref.finalize] = []  # type: ignore[type-arg]


def _stop_servers_at_exit(interrupted: bool) -> None:
    for finalizer in reversed(_finalizers):
        finalizer()


lifecycle.finish_at_exit(_stop_servers_at_exit, first=True)


class BaseManager:
    """Starts (or connects to) a server process holding objects shared through proxies.

    Args:
        address: Where the server listens: ``(host, port)`` for TCP (only that address is
            bound), a Unix socket path or abstract name; ``None``: a fresh abstract socket.
        authkey: The key clients must prove they know; by default the process's
            ``current_process().authkey``.
        serializer: ``"pickle"`` (the default) or ``"xmlrpclib"``.
        ctx: Accepted for compatibility; the server is a ``ferropool.Process``.
        shutdown_timeout: Seconds ``shutdown()`` waits for the server before terminating it.
    """

    _registry: dict[str, tuple[Any, Any, Any, Any]] = {}
    _Server = Server

    def __init__(
        self,
        address: Any = None,
        authkey: bytes | None = None,
        serializer: str = "pickle",
        ctx: Any = None,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self._codec = codec(serializer)
        if authkey is None:
            authkey = _current_authkey()
        self._address = address
        self._authkey = bytes(authkey)
        self._state = State()
        self._serializer = serializer
        self._ctx = ctx
        self._shutdown_timeout = shutdown_timeout
        self._process: Any = None
        self._finalizer: Any = None

    # --- serving

    def get_server(self) -> Server:
        """A ``Server`` for this manager's objects, to run in this process with ``serve_forever()``."""
        self._check_initial()
        return self._Server(self._registry, self._address, self._authkey, self._serializer)

    def connect(self) -> None:
        """Connects to a server already running at ``address`` (started elsewhere)."""
        status, value = _request(self._address, self._authkey, None, "dummy", codec=self._codec)
        if status != RETURN:
            _raise_reply(status, value)
        self._state.value = State.STARTED

    def _check_initial(self) -> None:
        from .process import ProcessError

        if self._state.value == State.STARTED:
            raise ProcessError("Already started server")
        if self._state.value == State.SHUTDOWN:
            raise ProcessError("Manager has shut down")
        if self._state.value != State.INITIAL:
            raise ProcessError(f"Unknown state {self._state.value!r}")

    def start(self, initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = ()) -> None:
        """Starts the server process; returns once it listens."""
        from .connection import Pipe
        from .process import Process, ProcessError

        self._check_initial()
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        parent_end, child_end = Pipe()
        process = Process(
            target=run_server,
            args=(
                # the proxy types stay here: the server needs only the callables and what they
                # expose (register() took those from the proxy types), and so does not import
                # this module at all
                {typeid: (entry[0], entry[1], entry[2], None) for typeid, entry in self._registry.items()},
                self._address,
                self._authkey,
                self._serializer,
                child_end,
                os.getpid(),
                initializer,
                tuple(initargs),
            ),
            name=f"{type(self).__name__}-{next(_manager_numbers)}",
        )
        try:
            process.start()
        except Exception as exc:
            parent_end.close()
            child_end.close()
            if isinstance(exc, (_pickle.PicklingError, TypeError, AttributeError)):
                raise TypeError(
                    f"{type(self).__name__}.start(): the registered callables must be picklable, because "
                    "the server is a fresh process (as with the stdlib's spawn start method). Register "
                    "module-level functions or classes that make their objects, or run the server in "
                    f"this process with get_server().serve_forever(). Pickling failed with: {exc}"
                ) from exc
            raise
        child_end.close()
        try:
            reply = parent_end.recv()
        except EOFError:
            process.join()
            parent_end.close()
            raise ProcessError(f"the manager's server process failed to start (exit code {process.exitcode})") from None
        if isinstance(reply, BaseException):
            process.join()
            parent_end.close()
            raise reply
        self._address = reply
        self._process = process
        self._state.value = State.STARTED
        self._finalizer = weakref.finalize(
            self, _finalize_manager, process, self._address, parent_end, self._state, self._shutdown_timeout
        )
        self._finalizer.atexit = False
        _finalizers[:] = [f for f in _finalizers if f.alive]
        _finalizers.append(self._finalizer)

    def join(self, timeout: float | None = None) -> None:
        """Waits for the server process to end."""
        if self._process is not None:
            self._process.join(timeout)
            if not self._process.is_alive():
                self._process = None

    def shutdown(self) -> None:
        """Stops the server process (started by ``start()``); its objects are gone."""
        if self._finalizer is not None:
            self._finalizer()

    def _debug_info(self) -> str:
        status, value = _request(self._address, self._authkey, None, "debug_info", codec=self._codec)
        return value if status == RETURN else _raise_reply(status, value)  # type: ignore[no-any-return]

    def _number_of_objects(self) -> int:
        status, value = _request(self._address, self._authkey, None, "number_of_objects", codec=self._codec)
        return value if status == RETURN else _raise_reply(status, value)  # type: ignore[no-any-return]

    def _create(self, typeid: str, /, *args: Any, **kwds: Any) -> tuple[Token, tuple[str, ...]]:
        """Creates an object of ``typeid`` in the server; returns its token and exposed methods."""
        if self._state.value != State.STARTED:
            from .process import ProcessError

            raise ProcessError(
                "the manager is not started" if self._state.value == State.INITIAL else "Manager has shut down"
            )
        status, value = _request(self._address, self._authkey, None, "create", (typeid, *args), kwds, self._codec)
        if status != RETURN:
            _raise_reply(status, value)
        typeid, ident, exposed = value
        return Token(typeid, self._address, ident), exposed

    @property
    def address(self) -> Any:
        """The server's address."""
        return self._address

    def __enter__(self) -> Self:
        from .process import ProcessError

        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            raise ProcessError("Unable to start server")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    def __reduce__(self) -> Any:
        raise TypeError("a manager cannot be pickled: pass its proxies, or its address and authkey")

    @classmethod
    def register(
        cls,
        typeid: str,
        callable: Callable[..., Any] | None = None,
        proxytype: Any = None,
        exposed: Sequence[str] | None = None,
        method_to_typeid: dict[str, str] | None = None,
        create_method: bool = True,
    ) -> None:
        """Registers a type the manager can create, and (``create_method``) a method creating it."""
        if "_registry" not in cls.__dict__:
            cls._registry = dict(cls._registry)
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in method_to_typeid.items():
                if not isinstance(key, str) or not isinstance(value, str):
                    raise TypeError(f"method_to_typeid maps names to typeids (str to str), not {key!r} to {value!r}")
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        _proxy_types[typeid] = proxytype
        if create_method:
            setattr(cls, typeid, _creator(typeid, proxytype))


def _creator(typeid: str, proxytype: Any) -> Callable[..., Any]:
    def create(self: BaseManager, /, *args: Any, **kwds: Any) -> Any:
        token, exposed = self._create(typeid, *args, **kwds)
        proxy = proxytype(token, self._serializer, manager=self, authkey=self._authkey, exposed=exposed, incref=False)
        proxy._adopt()
        return proxy

    create.__name__ = create.__qualname__ = typeid
    return create


def _finalize_manager(process: Any, address: Any, parent_end: Any, state: State, timeout: float) -> None:
    """Stops a started manager's server: closing its pipe tells it to shut down."""
    _flush_decrefs()
    _drop_connection(address)
    try:
        # a message, not only the close: a process forked meanwhile (the fork server) may hold
        # a copy of this end, so the server would see no end of file
        parent_end.send_bytes(b"shutdown")
    except OSError:
        pass
    parent_end.close()
    if process.is_alive():
        process.join(timeout)
        if process.is_alive():
            process.terminate()
            process.join(0.5)
            if process.is_alive():
                process.kill()
                process.join()
    state.value = State.SHUTDOWN


class SyncManager(BaseManager):
    """A manager of the stdlib's shared types; ``manager.dict()`` returns a proxy to a new dict.

    Types: ``list``, ``dict``, ``Namespace``, ``Value``, ``Array``, ``Queue``, ``JoinableQueue``,
    ``Lock``, ``RLock``, ``Semaphore``, ``BoundedSemaphore``, ``Condition``, ``Event``, ``Barrier`` and ``Pool``.
    """

    if TYPE_CHECKING:  # made by register() below; declared for type checkers

        def Queue(self, maxsize: int = 0) -> Any:
            """A proxy to a new ``Queue`` in the server."""

        def JoinableQueue(self, maxsize: int = 0) -> Any:
            """A proxy to a new ``JoinableQueue`` in the server."""

        def Event(self) -> EventProxy:
            """A proxy to a new ``Event`` in the server."""

        def Lock(self) -> AcquirerProxy:
            """A proxy to a new ``Lock`` in the server."""

        def RLock(self) -> AcquirerProxy:
            """A proxy to a new ``RLock`` in the server."""

        def Semaphore(self, value: int = 1) -> SemaphoreProxy:
            """A proxy to a new ``Semaphore`` in the server."""

        def BoundedSemaphore(self, value: int = 1) -> SemaphoreProxy:
            """A proxy to a new ``BoundedSemaphore`` in the server."""

        def Condition(self, lock: Any = None) -> ConditionProxy:
            """A proxy to a new ``Condition`` in the server."""

        def Barrier(
            self, parties: int, action: Callable[[], object] | None = None, timeout: float | None = None
        ) -> BarrierProxy:
            """A proxy to a new ``Barrier`` in the server."""

        def Pool(self, *args: Any, **kwds: Any) -> PoolProxy:
            """A proxy to a new ``Pool`` in the server."""

        def list(self, sequence: Iterable[Any] = ()) -> ListProxy:
            """A proxy to a new ``list`` in the server."""

        def dict(self, *args: Any, **kwds: Any) -> Any:
            """A proxy to a new ``dict`` in the server."""

        def Value(self, typecode: str, value: Any, lock: Any = True) -> ValueProxy:
            """A proxy to a new ``Value`` in the server."""

        def Array(self, typecode: str, sequence: Iterable[Any], lock: Any = True) -> Any:
            """A proxy to a new ``Array`` in the server."""

        def Namespace(self, **kwds: Any) -> NamespaceProxy:
            """A proxy to a new ``Namespace`` in the server."""


SyncManager.register("Queue", queue.Queue)
SyncManager.register("JoinableQueue", JoinableQueue)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", _server.TrackedLock, AcquirerProxy)
SyncManager.register("RLock", _server.TrackedRLock, AcquirerProxy)
SyncManager.register("Semaphore", _server.TrackedSemaphore, SemaphoreProxy)
SyncManager.register("BoundedSemaphore", _server.TrackedBoundedSemaphore, SemaphoreProxy)
SyncManager.register("Condition", _server.TrackedCondition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", make_pool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", Array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)


def Manager(ctx: Any = None) -> SyncManager:
    """A started ``SyncManager``, as ``multiprocessing.Manager()``."""
    manager = SyncManager(ctx=ctx)
    manager.start()
    return manager


def __getattr__(name: str) -> Any:
    if name == "RemoteError":
        return _remote_error_class()
    if name == "SharedMemoryManager":
        from ._managers.shared_memory import SharedMemoryManager as shm_manager

        return shm_manager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
