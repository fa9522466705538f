"""What a process worker does at start-up, before its first task (``start_worker``).

1. set the BLAS/OpenMP thread variables the parent chose (``_env.py``);
2. connect to the pool's output thread and say hello (the worker's pid), then let what the
   worker prints and logs go there: ``sys.stdout``/``sys.stderr`` become stand-ins, and
   ``logging`` gets a forwarding handler (now if it is loaded, else when a task imports it);
3. run the user's initializer and keep its value for ``ferropool.worker_state()``.

Start-up time is a pool's start-up time, and under ``spawn`` every worker pays it again, so this
module is small and imports nothing a bare worker lacks. The machinery (``_worker_output.py``)
loads at the first print or log record; a worker that does neither never loads it. The parent's
side, and the design, are in ``_logs.py``.
"""

from __future__ import annotations

import os
import sys

# the C module: the `socket` wrapper imports enum and selectors, a start-up cost in every worker
from _socket import AF_UNIX, SOCK_SEQPACKET
from _socket import socket as _Socket

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

#: Largest message on the output socket (a line longer than this goes in pieces).
PIECE = 32 * 1024
#: Output a worker keeps while the parent is behind; more is dropped.
PENDING_MAX = 4 * 1024 * 1024
#: Message kinds: the first byte of each message.
HELLO, STDOUT, STDERR, RECORD, DROPPED = b"h", b"o", b"e", b"r", b"d"

#: ``state`` before any initializer ran.
NO_STATE: Any = object()
#: What this worker's initializer returned (``ferropool.worker_state()``).
state: Any = NO_STATE
#: The non-blocking connection to the pool's output thread, once made.
connection: _Socket | None = None


def start_worker(config: tuple[Any, ...], initializer: Any, *initargs: Any) -> None:
    """Runs in each worker at start-up, as its pool's initializer (see the module docstring).

    Steps 1 and 2 never fail the worker: at worst output stays where it was. If the user's
    initializer raises, the pool is broken, as in the stdlib.
    """
    global state
    env, address, level, output = config
    if env:
        os.environ.update(env)
    if address is not None:
        try:
            _connect(address, level, output)
        except Exception:
            pass  # output stays where it was; the pool's work matters more
    if initializer is not None:
        state = initializer(*initargs)


def _connect(address: str, level: int | None, output: bool) -> None:
    global connection
    sock = _Socket(AF_UNIX, SOCK_SEQPACKET)
    try:
        sock.settimeout(5.0)
        sock.connect(address)
        sock.setblocking(False)
        sock.send(HELLO + str(os.getpid()).encode())
    except OSError:
        sock.close()
        return
    connection = sock
    if output:
        _stand_ins[:] = [_StandIn("stdout", STDOUT, sys.stdout, 1), _StandIn("stderr", STDERR, sys.stderr, 2)]
        sys.stdout, sys.stderr = _stand_ins
    if level is not None:
        if "logging" in sys.modules:
            from . import _worker_output

            _worker_output.forward_records(sys.modules["logging"], level)
        else:
            # importing logging now would cost most of a fresh worker's start-up, and tasks
            # that never log never need it: set it up when something imports it
            sys.meta_path.insert(0, _WhenLoggingIsImported(level))


# The stand-ins stay referenced here after they replace themselves: on 3.11, print() holds
# only a borrowed reference to sys.stdout while it writes, so a stand-in that swapped itself
# out of sys.stdout during that first write and died with it crashed the worker (SIGSEGV).
_stand_ins: list[Any] = []


class _StandIn:
    """``sys.stdout`` (or ``sys.stderr``) until first used.

    Then the forwarding stream takes its place, and this object passes everything on to it
    (for code that kept a reference to it).
    """

    def __init__(self, name: str, kind: bytes, old: Any, fd: int) -> None:
        self._name, self._kind, self._old, self._fd = name, kind, old, fd
        self._stream: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._stream is None:
            from . import _worker_output

            self._stream = _worker_output.text_stream(self._kind, self._old, self._fd) or self._old
            if getattr(sys, self._name) is self:
                setattr(sys, self._name, self._stream)
        return getattr(self._stream, attr)


class _WhenLoggingIsImported:
    """An import hook: forwards log records from the moment ``logging`` is first imported."""

    def __init__(self, level: int) -> None:
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
        level = self._level

        def exec_module(module: Any) -> None:
            run_module(module)
            from . import _worker_output

            _worker_output.forward_records(module, level)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec
