"""Fresh interpreters' command lines (the start method is decided in ``start_methods.py``).

The command lines are those of a pool worker and of a ``Process``'s child.
"""

from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from typing import Any

_relay_lock = threading.Lock()

#: the interpreter fresh children run, when ``set_executable()`` chose one
_executable: str | None = None


def set_executable(executable: str | os.PathLike[str]) -> None:
    """Sets the Python interpreter that fresh children run (``ferropool.set_executable``).

    Raises:
        TypeError: ``executable`` is not a path.
    """
    global _executable
    _executable = os.fsdecode(executable)


def interpreter_argv(code: str) -> list[str]:
    """``python [flags] -S -c <code>``, where ``code`` runs with the parent's ``sys.path``.

    Interpreter flags (``-X dev``, ``-W``, ``-O``...) are passed on as multiprocessing's spawn does.
    ``-S`` skips ``site``, whose work the copied ``sys.path`` already holds.
    """
    executable = _executable or sys.executable
    if not executable:
        raise RuntimeError("sys.executable is not set; ferropool needs a Python executable to start processes")
    import subprocess  # here: a start by the fork server needs no command line

    flags = [f for f in subprocess._args_from_interpreter_flags() if f != "-S"]  # type: ignore[attr-defined]
    return [executable, *flags, "-S", "-c", f"import sys; sys.path[:] = {sys.path!r}; {code}"]


def worker_argv() -> list[str]:
    """The command line of a pool worker.

    A spawned worker first takes this process's ``current_process().authkey`` from its authkey
    relay (a forked one has it already), so that proxies and pickled connections it receives
    authenticate as they would here.
    """
    return interpreter_argv(
        f"from ferropool._worker.start import take_authkey; take_authkey({_authkey_relay()!r}); "
        f"from ferropool._worker.main import main; main({os.getpid()})"
    )


_relay: tuple[int, bytes] | None = None  # (pid, address) of this process's authkey relay
_relay_asked = 0.0  # time.monotonic() of the last _authkey_relay() call
#: how long the relay stays open after the last command line that names it was made, and
#: between two looks for a child that still names it
_RELAY_GRACE = 2.0
_RELAY_LOOK = 1.0


def _authkey_relay() -> bytes:
    """The abstract socket address of this process's authkey relay, started if need be.

    The key goes to a connecting process only if it runs as this user and is a child of this
    process (``SO_PEERCRED``), as the stdlib hands its children the key and no one else: the
    address itself is no secret, and it is on a command line anyone can read. The relay closes
    once no child of this process names it on its command line (a spawned pool's workers, who
    may be replaced at any time, do), so a process without spawned pools holds no socket for it.
    """
    global _relay, _relay_asked
    import socket
    import time

    with _relay_lock:
        _relay_asked = time.monotonic()
        if _relay is None or _relay[0] != os.getpid():
            listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            listener.bind(f"\0ferropool-authkey-{os.getpid()}-{os.urandom(8).hex()}")
            listener.listen(64)
            listener.settimeout(_RELAY_LOOK)
            _relay = (os.getpid(), listener.getsockname())
            threading.Thread(
                target=_serve_authkey, args=(listener, _relay[1]), name="ferropool-authkey", daemon=True
            ).start()
        return _relay[1]


def _serve_authkey(listener: Any, address: bytes) -> None:
    global _relay
    import socket
    import struct
    import time

    from ..process import current_process

    creds = struct.Struct("3i")  # struct ucred: pid, uid, gid
    name = address[1:]
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            with _relay_lock:
                if time.monotonic() - _relay_asked > _RELAY_GRACE and not _children_naming(name):
                    _relay = None
                    listener.close()
                    return
            continue
        except OSError:
            return
        with conn:
            try:
                conn.settimeout(None)
                pid, uid, _gid = creds.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, creds.size))
                if uid == os.getuid() and _parent_of(pid) == os.getpid():
                    conn.sendall(current_process().authkey)
            except OSError:
                pass


def _children_naming(name: bytes) -> bool:
    """Whether a child of this process has ``name`` on its command line."""
    for child in _children():
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if name in f.read():
                    return True
        except OSError:
            pass
    return False


def _children() -> list[int]:
    """This process's children (each thread's ``children`` list, else every process's parent)."""
    try:
        pids: list[int] = []
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", "rb") as f:
                pids += map(int, f.read().split())
        return pids
    except OSError:
        me = os.getpid()
        return [int(e) for e in os.listdir("/proc") if e.isdigit() and _parent_of(int(e)) == me]


def _parent_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def process_argv(payload_fd: int) -> list[str]:
    """The command line of a ``Process``'s child, which reads its process object from ``payload_fd``."""
    return interpreter_argv(f"from ferropool.process import _child_main; _child_main({payload_fd})")
