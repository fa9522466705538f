"""The fork server: a copy of this process, made while it had one thread, that forks workers.

A worker forked from it starts in about a millisecond with every module the parent had
imported, instead of tens of milliseconds for a fresh interpreter that must import them again.
It is made with ``os.fork()`` only while the parent has exactly one thread (no Rust engine or
Python thread exists yet), so no lock can be held by a thread that is missing in the copy; it
never starts a thread itself, so its own forks are safe too (DESIGN.md, principle 4). When the
parent already has threads and no server exists, pools start fresh interpreters instead.

Life cycle: the server leads its own process group and ignores SIGINT (Ctrl-C is for the
parent), dies with the parent (parent-death signal), and exits by itself once the parent has
closed its connection and every engine connection and worker is gone. Its workers die with it.
Its forks get SIGINT as a spawned interpreter would: ignored if the parent ignored it, else
Python's handler.

Like ``multiprocessing``'s fork start method, workers inherit the descriptors the parent had
open when the server was made; ``mp_context="spawn"`` gives clean interpreters instead.

Protocol: every message format is in ``forkserver_wire.py``.
"""

from __future__ import annotations

import fcntl
import gc
import os
import signal
import socket
import struct
import sys
import threading

from .. import _core
from . import forkserver_wire as wire
from . import lifecycle

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a few ms of every first start)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_lock = threading.Lock()
#: modules a fork server imports as it starts (``set_forkserver_preload``)
preload: list[str] = []
_server: tuple[int, socket.socket] | None = None  # (pid, connection) while one runs
# What SIGINT does in the server's forks: ignored if the parent ignored it (a background job of
# a non-interactive shell, nohup), else Python's handler; a spawned interpreter starts the same
# way, since exec keeps an ignored signal and resets a handled one.
_child_sigint: Callable[[int, Any], Any] | int = signal.default_int_handler


def _thread_count() -> int:
    """Threads of this process, C threads included; 0 when unknown (treated as unsafe)."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Threads:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def server_pid() -> int | None:
    """The fork server's pid, or ``None`` when this process has none."""
    return _server[0] if _server is not None else None


def connect() -> int | None:
    """A new connection to the fork server for one engine, as a descriptor the engine will own.

    Starts the server if this process has exactly one thread. ``None`` when there is no server
    and one cannot be made safely now.
    """
    global _server
    with _lock:
        if _server is None:
            if not sys.platform.startswith("linux") or _thread_count() != 1:
                return None
            _server = _start()
        ours, theirs = socket.socketpair()
        try:
            socket.send_fds(_server[1], [b"c"], [theirs.fileno()])
        except OSError:
            ours.close()
            _server = None  # it died; the next pool may start another
            return None
        finally:
            theirs.close()
        return ours.detach()


def start_process(conn_fd: int, payload_fd: int, inherit: list[int]) -> tuple[int, int] | None:
    """Has the fork server fork a ``Process`` child; ``(pid, status descriptor)``.

    ``conn_fd`` is a connection from ``connect()`` (taken over and closed), made before the
    payload pipe so that the server, if it was made just then, holds no end of it. The child
    reads its process object from ``payload_fd`` and gets the descriptors ``inherit`` at the
    same numbers. The server writes its exit status to the returned descriptor, which the caller
    owns. ``None`` if the server went away.

    The request is a ``p`` message (the parent's process group, how many descriptors the child
    inherits, then the numbers of those it carries) with the payload, the status socket and the
    first inherited descriptors attached, followed by ``f`` messages with the rest, each naming
    the numbers of the descriptors it carries.
    """
    ours, theirs = socket.socketpair()
    with socket.socket(fileno=conn_fd) as conn:
        try:
            step = wire.FDS_PER_MESSAGE
            for at, message in enumerate(wire.process_request(os.getpgrp(), inherit)):
                carried = inherit[at * step : (at + 1) * step]
                socket.send_fds(conn, [message], [payload_fd, theirs.fileno(), *carried] if at == 0 else carried)
            answer = b""
            while len(answer) < wire.PID.size:
                more = conn.recv(wire.PID.size - len(answer))
                if not more:
                    raise OSError("the fork server went away")
                answer += more
        except OSError:
            ours.close()
            return None
        finally:
            theirs.close()
    return wire.PID.unpack(answer)[0], ours.detach()


def _start() -> tuple[int, socket.socket]:
    # the process module draws this process's random authkey when first imported: imported
    # here first, the server's forks share the parent's key (a manager's, a connection's)
    from .. import process  # noqa: F401

    # the worker side too, once here rather than in the server or every worker, where importing
    # after the fork also copies every page it touches; output forwarding when logging is loaded,
    # as then each forwarding worker loads it at start-up
    from .._worker import main  # noqa: F401

    if "logging" in sys.modules:
        from .._worker import forwarding  # noqa: F401

    ours, theirs = socket.socketpair()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or the copy would print the parent's buffered output again
        except Exception:
            pass
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            ours.close()
            _serve(theirs, parent)
        finally:
            os._exit(0)
    theirs.close()
    return pid, ours


def _forget_after_fork() -> None:
    """In a child the user forked: the server belongs to the parent; let go of it."""
    global _lock, _server
    # the server itself is forked inside ``connect()``, holding the lock, and the processes it
    # forks inherit that held lock: a Process starting a Process would wait on it forever
    _lock = threading.Lock()
    if _server is not None:
        _server[1].close()
        _server = None


lifecycle.after_fork_in_child(_forget_after_fork)


def _serve(master: socket.socket, parent: int) -> None:
    import selectors

    global _child_sigint
    os.setpgid(0, 0)
    if signal.signal(signal.SIGINT, signal.SIG_IGN) == signal.SIG_IGN:
        _child_sigint = signal.SIG_IGN
    if not _core.die_with_parent(parent):
        return
    for name in preload:
        try:
            __import__(name)
        except ImportError:
            pass
    # loaded once here rather than in each child: logging names a child's records after
    # multiprocessing.current_process(), but only if multiprocessing is loaded (_runtime/naming.py)
    import multiprocessing.process  # noqa: F401

    gc.freeze()  # inherited objects stay put: no collection, no copy-on-write churn
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ, "master")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    conns: set[socket.socket] = set()
    statuses: dict[int, int] = {}  # worker pid -> the descriptor its exit status goes to
    me = os.getpid()
    master_open = True

    def own_fds() -> list[int]:
        fds = [wake_r, wake_w, sel.fileno(), *statuses.values(), *(c.fileno() for c in conns)]
        return fds + ([master.fileno()] if master_open else [])

    while master_open or conns or statuses:
        for key, _ in sel.select():
            if key.data == "master":
                msg, fds, _, _ = socket.recv_fds(master, 1, 1)
                if not msg:
                    sel.unregister(master)
                    master.close()
                    master_open = False
                    continue
                conn = socket.socket(fileno=fds[0])
                conns.add(conn)
                sel.register(conn, selectors.EVENT_READ, "conn")
            elif key.data == "child":
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
                _reap(statuses)
            else:
                conn = key.fileobj  # type: ignore[assignment]
                if not _fork_worker(conn, statuses, own_fds(), me):
                    sel.unregister(conn)
                    conns.discard(conn)
                    conn.close()
        _reap(statuses)


def _fork_worker(conn: socket.socket, statuses: dict[int, int], server_fds: list[int], server: int) -> bool:
    """Answers one request on an engine's connection; ``False`` when the engine has gone."""
    try:
        msg, fds, _, _ = socket.recv_fds(conn, 4096, 2 + wire.FDS_PER_MESSAGE)
    except OSError:
        msg, fds = b"", []
    if msg[:1] == wire.PROCESS and len(fds) >= 2:
        return _fork_process(conn, msg, fds, statuses, server_fds)
    if not msg or len(fds) not in (2, 3):
        for fd in fds:
            os.close(fd)
        return False
    link, status, *output = fds  # output: the worker's output socket, if its pool forwards output
    number = wire.worker_number(msg)  # the worker's number in its pool, which names it
    pid = os.fork()
    if pid == 0:
        _become_worker(link, status, output, number, server_fds, server)
    try:
        os.setpgid(pid, pid)  # as the child does: whichever runs first makes the group
    except OSError:
        pass
    for fd in (link, *output):
        os.close(fd)
    statuses[pid] = status
    _answer(conn, pid)
    return True


def _answer(conn: socket.socket, pid: int) -> None:
    """Sends an engine the pid of its new worker, with a pidfd of it.

    Opened now, before this loop can reap the worker, the pidfd names that process and no other,
    where the pid may name another process once the worker is reaped.
    """
    answer = wire.PID.pack(pid)
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd_open in this kernel or Python
        conn.sendall(answer)
        return
    try:
        socket.send_fds(conn, [answer], [pidfd])
    finally:
        os.close(pidfd)


def _fork_process(
    conn: socket.socket, msg: bytes, fds: list[int], statuses: dict[int, int], server_fds: list[int]
) -> bool:
    """Forks a ``Process`` child (see ``start_process``); ``False`` on a malformed request."""
    payload, status, *inherited = fds
    numbers: list[int] = []
    received = [payload, status]
    try:
        if len(msg) < wire.PROCESS_HEADER.size:
            raise ValueError("short header")
        _, pgid, total = wire.PROCESS_HEADER.unpack_from(msg)
        numbers += wire.descriptor_numbers(msg[wire.PROCESS_HEADER.size :], inherited)
        while len(inherited) < total:
            more, more_fds, _, _ = socket.recv_fds(conn, 4096, wire.FDS_PER_MESSAGE)
            inherited += more_fds
            if more[:1] != wire.MORE_FDS or not more_fds:
                raise ValueError("not a continuation")
            numbers += wire.descriptor_numbers(more[1:], more_fds)
        if len(inherited) != total:
            raise ValueError("too many descriptors")
    except (OSError, ValueError, struct.error):
        for fd in received + inherited:
            os.close(fd)
        return False
    pid = os.fork()
    if pid == 0:
        _become_process(payload, status, list(zip(inherited, numbers, strict=True)), pgid, server_fds)
    for fd in (payload, *inherited):
        os.close(fd)
    statuses[pid] = status
    conn.sendall(wire.PID.pack(pid))
    return True


def _become_process(
    payload: int, status: int, inherit: list[tuple[int, int]], pgid: int, server_fds: list[int]
) -> None:
    """In a freshly forked ``Process`` child: look like a child of the parent, then run."""
    code = 1
    try:
        try:
            os.setpgid(0, pgid)  # the parent's group, as multiprocessing's children: Ctrl-C reaches it
        except OSError:
            pass
        _leave_server(status, server_fds)
        # the inherited descriptors go to the numbers they had in the parent; moving every one
        # out of the way first means no source is overwritten before it is copied
        keep = {number for _, number in inherit}
        payload = _moved_above(payload, keep)
        moved = [(_moved_above(fd, keep), number) for fd, number in inherit]
        for fd, number in moved:
            os.dup2(fd, number)
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        gc.unfreeze()
        from ..process import _forked_child_main

        code = _forked_child_main(payload)
    except BaseException:
        # os._exit below would drop it silently: the child must say why it could not run
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _leave_server(status: int, server_fds: list[int]) -> None:
    """In a fresh fork of the server: the server's signal handling and descriptors go."""
    # os.fork() gives the main thread its new ident but (before 3.12) keeps the old native_id
    set_native_id = getattr(threading.main_thread(), "_set_native_id", None)
    if set_native_id is not None:
        set_native_id()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, _child_sigint)
    os.close(status)
    for fd in server_fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _moved_above(fd: int, taken: set[int]) -> int:
    """A copy of ``fd`` at a number above every number in ``taken``; ``fd`` is closed."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(taken, default=2) + 1)
    os.close(fd)
    return new


def _reap(statuses: dict[int, int]) -> None:
    """Collects exited workers and tells each one's engine how it ended."""
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = statuses.pop(pid, None)
        if fd is None:
            continue
        try:
            os.write(fd, wire.status(status))
        except OSError:
            pass  # the engine is gone and does not need to know
        os.close(fd)


def _become_worker(link: int, status: int, output: list[int], number: int, server_fds: list[int], server: int) -> None:
    """In a freshly forked worker: drop the server's descriptors and run the worker loop."""
    try:
        os.setpgid(0, 0)
        _leave_server(status, server_fds)
        os.environ[_core.WORKER_NUMBER_VAR] = str(number)  # as a spawned worker learns them
        if output:
            os.environ[_core.WORKER_OUTPUT_FD_VAR] = str(output[0])
        os.dup2(link, 0)  # the worker loop takes its link from stdin, as a spawned worker does
        os.close(link)
        # inherited objects stay frozen: a collection in the worker never walks the parent's heap
        from .._worker.main import main

        main(server)
    finally:
        os._exit(1)
