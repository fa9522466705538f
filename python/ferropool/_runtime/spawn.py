"""Fresh interpreters' command lines (the start method is decided in ``start_methods.py``).

The command lines are those of a pool worker and of a ``Process``'s child.
"""

from __future__ import annotations

import os
import sys
import threading

_keyfd_lock = threading.Lock()

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

    A spawned worker first reads this process's ``current_process().authkey`` from the
    descriptor it inherits for that (a forked one has the key already), so that proxies and
    pickled connections it receives authenticate as they would here.
    """
    fd, token = _authkey_fd()
    return interpreter_argv(
        f"from ferropool._worker.start import take_authkey; take_authkey({fd}, {token!r}); "
        f"from ferropool._worker.main import main; main({os.getpid()})"
    )


_keyfd: tuple[int, int, str] | None = None  # (pid, descriptor, token) of the key's memfd
_keyfd_asked = 0.0  # time.monotonic() of the last _authkey_fd() call
#: how long the descriptor stays open after the last command line that names it was made, and
#: between two looks for a child that still names it
_KEYFD_GRACE = 2.0
_KEYFD_LOOK = 1.0


def _authkey_fd() -> tuple[int, str]:
    """An inheritable descriptor holding ``current_process().authkey``, and a token naming it.

    A child started with a command line (a spawned pool's worker) inherits it, as children
    inherit the key in the stdlib; no other user can reach it (no address to connect to, as for
    every other endpoint of a pool). It is closed once no child of this process has the token on
    its command line (the pool's workers, who may be replaced at any time, do), so a process
    without spawned pools holds no descriptor for it.
    """
    global _keyfd, _keyfd_asked
    import time

    from ..process import current_process

    with _keyfd_lock:
        _keyfd_asked = time.monotonic()
        if _keyfd is None or _keyfd[0] != os.getpid():
            fd = os.memfd_create("ferropool-authkey")
            _keyfd = (os.getpid(), fd, f"authkey-{os.urandom(8).hex()}")
            threading.Thread(target=_close_when_unused, args=(_keyfd,), name="ferropool-authkey", daemon=True).start()
        fd, token = _keyfd[1], _keyfd[2]
        key = current_process().authkey  # as it is now: a later change reaches later workers
        os.ftruncate(fd, 0)
        os.pwrite(fd, key, 0)
        os.set_inheritable(fd, True)
        return fd, token


def _close_when_unused(keyfd: tuple[int, int, str]) -> None:
    global _keyfd
    import time

    name = keyfd[2].encode()
    while True:
        time.sleep(_KEYFD_LOOK)  # a periodic look, nothing to wait on
        with _keyfd_lock:
            if _keyfd is not keyfd:
                return
            if time.monotonic() - _keyfd_asked > _KEYFD_GRACE and not _children_naming(name):
                _keyfd = None
                os.close(keyfd[1])
                return


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
