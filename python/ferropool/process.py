"""Processes: ``Process``, ``current_process()``, ``parent_process()``, ``active_children()``.

The names and semantics of ``multiprocessing``'s, on ferropool's safe start: never a ``fork()``
of the (threaded) parent. A child is forked by ferropool's fork server when there is one (see
``forkserver.start_process``; the payload then starts with the parent's working directory,
``sys.path`` and environment), else it is a fresh interpreter. The life of a spawned one::

 parent                                          child: python -S -c ... (parent's sys.path)
 ──────                                          ─────
 start():
   pickle (process object, sys.argv)             (lambdas, closures and __main__ code by value,
     Connections in it note their descriptors      with cloudpickle)
   _core.ChildProcess(argv, pass_fds) ─────────▶ _child_main(fd): read the payload, unpickle
   write the payload to the child's pipe         _bootstrap(): current_process() is the object;
   _children.add(self)                             run(); exit code: 0, 1 with the traceback on
                                                   stderr, or sys.exit's code
 join() / is_alive() / sentinel                  interpreter exit (joins its own children)
   wait on a pidfd, GIL released ◀───────────── exit status (minus the signal if killed)

At the parent's interpreter exit (``lifecycle.py``), daemonic children are terminated and the others
joined, as ``multiprocessing`` does.
"""

from __future__ import annotations

import itertools
import os
import sys
import time

from . import _core, connection
from ._runtime import lifecycle, logger_setup, naming, start_methods
from ._runtime.serialize import dumps, load_in_child

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from multiprocessing import ProcessError
    from typing import Any

__all__ = ["Process", "ProcessError", "SpawnProcess", "active_children", "current_process", "parent_process"]

_children: set[Process] = set()
_counter = itertools.count(1)
# Linux's numbers; the `signal` module (and `enum` behind it) is not imported here, because every
# child imports this module on its way to run()
_SIGKILL = 9
_SIGTERM = 15
_STOP_GRACE = 5.0  # seconds a terminated child gets at exit before SIGKILL, as pool workers get


def _require(condition: bool, message: str) -> None:
    """The stdlib's ``assert`` checks, kept under ``python -O``."""
    if not condition:
        raise AssertionError(message)


class Process:
    """A process that runs ``target(*args, **kwargs)``, or its own ``run()`` method.

    The same interface as ``multiprocessing.Process``. The child is forked from ferropool's fork
    server (a copy of the program made while it had one thread) when there is one, else it is a
    fresh interpreter started with the parent's ``sys.path``; never a fork of the parent itself.
    Either way it runs in the parent's current directory and environment. The process object, with its
    target and arguments, is pickled to it. Lambdas, closures and functions defined in
    ``__main__`` travel by value (cloudpickle), so no ``if __name__ == "__main__":`` guard is
    needed. ``Connection`` objects among the arguments or attributes are inherited by the child.

    Args:
        group: Always ``None``; kept for compatibility with ``threading.Thread``.
        target: The callable ``run()`` invokes; ``None`` runs nothing.
        name: The process name; by default ``Process-N`` (``Process-N:M`` in a child).
        args: Positional arguments for ``target``.
        kwargs: Keyword arguments for ``target``.
        daemon: Whether the process is daemonic; by default inherited from the creating process.
            Daemonic processes are terminated when their parent exits and cannot start children.
    """

    _popen: _core.ChildProcess | None

    def __init__(
        self,
        group: None = None,
        target: Callable[..., object] | None = None,
        name: str | None = None,
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        daemon: bool | None = None,
    ) -> None:
        _require(group is None, "group argument must be None for now")
        count = next(_counter)
        self._identity: tuple[int, ...] = (*_current_process._identity, count)
        self._config: dict[str, Any] = dict(_current_process._config)
        self._parent_pid: int | None = os.getpid()
        self._parent_name = _current_process.name
        self._popen = None
        self._closed = False
        self._target = target
        self._args = tuple(args)
        self._kwargs = dict(kwargs or {})
        self._name = name or f"{type(self).__name__}-{':'.join(map(str, self._identity))}"
        if daemon is not None:
            self.daemon = daemon

    def run(self) -> None:
        """The process's activity: calls ``target(*args, **kwargs)``. Subclasses may override it."""
        if self._target:
            self._target(*self._args, **self._kwargs)

    def start(self) -> None:
        """Starts the process; ``run()`` is then called in the child.

        Raises:
            AssertionError: The process was started before, was created by another process, or
                this process is daemonic (the stdlib's checks and words).
            ValueError: The process object is closed.
            pickle.PicklingError, TypeError, AttributeError: The process object (its target,
                arguments or attributes) cannot be pickled; no process was started.
        """
        self._check_closed()
        _require(self._popen is None, "cannot start a process twice")
        _require(self._parent_pid == os.getpid(), "can only start a process object created by current process")
        _require(not _current_process._config.get("daemon"), "daemonic processes are not allowed to have children")
        from ._runtime.spawn import process_argv

        _cleanup()
        inherited: dict[int, None] = {}
        connection._passing.fds = inherited
        # the child's get_start_method(), as the stdlib's children learn the method they came by
        self._started_by = self._start_method or start_methods.current()
        self._log_config = logger_setup.for_child()
        try:
            payload = dumps((self, sys.argv))
        finally:
            del connection._passing.fds
        server = None
        if start_methods.how_to_start(self._start_method) != "spawn":
            from ._runtime import forkserver

            server = forkserver.connect()  # before the pipe: a server made now must not hold it
        read_end, write_end = os.pipe()
        try:
            forked = None
            if server is not None:
                forked = forkserver.start_process(server, read_end, list(inherited))
            if forked is not None:
                self._popen = _core.ChildProcess.adopt(*forked)
                # a fork of the server: it has the server's cwd, path and environment, not ours
                payload = dumps((os.getcwd(), sys.path, dict(os.environ))) + payload
            else:
                self._popen = _core.ChildProcess(process_argv(read_end), [read_end, *inherited])
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        _children.add(self)  # before anything else can fail: exit must still find it
        with open(write_end, "wb") as pipe:
            try:
                pipe.write(payload)
            except BrokenPipeError:
                pass  # the child died before reading; its exit code says how
        del self._target, self._args, self._kwargs

    #: ``"spawn"`` for a fresh interpreter; ``None`` follows ``set_start_method()``: a fork of
    #: ferropool's fork server when there is one or one can be made, else a fresh interpreter
    _start_method: str | None = None

    def terminate(self) -> None:
        """Terminates the process with SIGTERM (``exitcode`` becomes ``-15``)."""
        self._check_closed()
        if self._popen is not None:
            self._popen.send_signal(_SIGTERM)

    def kill(self) -> None:
        """Kills the process with SIGKILL (``exitcode`` becomes ``-9``)."""
        self._check_closed()
        if self._popen is not None:
            self._popen.send_signal(_SIGKILL)

    def join(self, timeout: float | None = None) -> None:
        """Waits until the process ends, or ``timeout`` seconds pass.

        The GIL is released while waiting, and Ctrl-C raises ``KeyboardInterrupt``. Check
        ``exitcode`` (or ``is_alive()``) to tell whether the process ended.

        Raises:
            AssertionError: The process was not started, or is not a child of this process.
            ValueError: The process object is closed.
        """
        self._check_closed()
        _require(self._parent_pid == os.getpid(), "can only join a child process")
        _require(self._popen is not None, "can only join a started process")
        assert self._popen is not None
        if self._popen.wait(timeout) is not None:
            _children.discard(self)

    def is_alive(self) -> bool:
        """Whether the process has started and not yet ended."""
        self._check_closed()
        if self is _current_process:
            return True
        _require(self._parent_pid == os.getpid(), "can only test a child process")
        if self._popen is None:
            return False
        if self._popen.poll() is None:
            return True
        _children.discard(self)
        return False

    def close(self) -> None:
        """Releases the resources held by a finished process; most methods then raise ValueError.

        Raises:
            ValueError: The process is still running.
        """
        if self._popen is not None:
            if self._popen.poll() is None:
                raise ValueError(
                    "Cannot close a process while it is still running. You should first call join() or terminate()."
                )
            self._popen.close()
            self._popen = None
            _children.discard(self)
        self._closed = True

    def _check_closed(self) -> None:
        if self._closed:
            raise ValueError("process object is closed")

    @property
    def name(self) -> str:
        """The process's name, used in ``repr()`` and in the traceback header of a failed ``run()``."""
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        if not isinstance(name, str):
            raise TypeError("name must be a string")
        self._name = name
        stdlib = sys.modules.get("multiprocessing.process")
        if self is _current_process and stdlib is not None:
            stdlib.current_process().name = name  # logging labels records with that one

    @property
    def daemon(self) -> bool:
        """Whether the process is daemonic; may be set only before ``start()``."""
        return bool(self._config.get("daemon", False))

    @daemon.setter
    def daemon(self, daemonic: bool) -> None:
        _require(self._popen is None, "process has already started")
        self._config["daemon"] = daemonic

    @property
    def authkey(self) -> bytes:
        """The authentication key (bytes), inherited from the parent; a fresh random one in the main process."""
        return bytes(self._config["authkey"])

    @authkey.setter
    def authkey(self, authkey: bytes) -> None:
        self._config["authkey"] = bytes(authkey)

    @property
    def exitcode(self) -> int | None:
        """``None`` while running; then the exit code, or minus the signal that killed the process."""
        self._check_closed()
        if self._popen is None:
            return None
        return self._popen.poll()

    @property
    def ident(self) -> int | None:
        """The process id, ``None`` before ``start()``."""
        self._check_closed()
        if self is _current_process:
            return os.getpid()
        return self._popen.pid if self._popen is not None else None

    pid = ident

    @property
    def sentinel(self) -> int:
        """A file descriptor (a pidfd) that becomes ready to read when the process ends.

        Use it with ``ferropool.connection.wait()`` to wait for several processes and connections
        at once.

        Raises:
            ValueError: The process has not been started, or is closed.
        """
        self._check_closed()
        if self._popen is None:
            raise ValueError("process not started")
        return self._popen.sentinel

    def __repr__(self) -> str:
        exitcode = None
        if self is _current_process:
            status = "started"
        elif self._closed:
            status = "closed"
        elif self._parent_pid != os.getpid():
            status = "unknown"
        elif self._popen is None:
            status = "initial"
        else:
            exitcode = self._popen.poll()
            status = "started" if exitcode is None else "stopped"
        info = [type(self).__name__, f"name={self._name!r}"]
        if self._popen is not None:
            info.append(f"pid={self._popen.pid}")
        info.append(f"parent={self._parent_pid}")
        info.append(status)
        if exitcode is not None:
            info.append(f"exitcode={_exitcode_name(exitcode)}")
        if self.daemon:
            info.append("daemon")
        return f"<{' '.join(info)}>"

    def _bootstrap(self, argv: list[str]) -> int:
        """In the child: becomes ``current_process()``, runs, and returns the exit code."""
        global _current_process, _parent_process, _counter
        _children.clear()
        _counter = itertools.count(1)
        _parent_process = _ParentProcess(self._parent_name, self._parent_pid)
        _current_process = self
        sys.argv[:] = argv
        start_methods.choose(self._started_by, force=True)
        naming.rename(self.name)
        level, to_stderr = self._log_config
        if to_stderr:
            from ._pool.logs import log_to_stderr

            log_to_stderr()
        if level is not None:
            _child_logger().setLevel(level)
        try:
            _log_info("child process calling self.run()")
            self.run()
            exitcode = 0
        except SystemExit as exc:
            if exc.code is None:
                exitcode = 0
            elif isinstance(exc.code, int):
                exitcode = exc.code
            else:
                sys.stderr.write(f"{exc.code}\n")
                exitcode = 1
        except BaseException:
            import traceback

            exitcode = 1
            sys.stderr.write(f"Process {self.name}:\n")
            traceback.print_exc()
        finally:
            _log_info("process exiting with exitcode %d", exitcode)
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
        return exitcode


class SpawnProcess(Process):
    """A ``Process`` always started as a fresh interpreter (``get_context("spawn").Process``)."""

    _start_method = "spawn"


class ForkServerProcess(Process):
    """A ``Process`` of the ``"forkserver"`` context: forked from the fork server where there is one."""

    _start_method = "forkserver"


class ForkProcess(Process):
    """A ``Process`` of the ``"fork"`` context.

    Started as ``ForkServerProcess`` (ferropool never forks a threaded parent); its
    ``get_start_method()`` says ``"fork"``.
    """

    _start_method = "fork"


def _exitcode_name(exitcode: int) -> str:
    """``-SIGTERM`` for ``-15``, as the stdlib's repr() shows a process killed by a signal."""
    import signal

    try:
        return f"-{signal.Signals(-exitcode).name}" if exitcode < 0 else str(exitcode)
    except ValueError:
        return str(exitcode)


class _MainProcess(Process):
    """``current_process()`` in the main program."""

    def __init__(self) -> None:
        self._identity = ()
        self._config = {"authkey": naming.authkey or os.urandom(32)}
        self._parent_pid = None
        self._parent_name = ""
        self._popen = None
        self._closed = False
        self._name = naming.name or "MainProcess"  # in a pool's worker: PoolWorker-<n>

    def close(self) -> None:
        pass


class _ParentProcess:
    """``parent_process()`` in a child: name, pid, ``is_alive()``, ``join()`` and ``sentinel``."""

    def __init__(self, name: str, pid: int | None) -> None:
        self.name = name
        self.pid = self.ident = pid
        self.daemon = False
        self.exitcode = None
        try:
            # opened now, while the parent that just started us is almost surely alive
            self._pidfd: int | None = os.pidfd_open(pid) if pid is not None else None
        except OSError:
            self._pidfd = None

    @property
    def sentinel(self) -> int | None:
        """A descriptor that becomes ready to read when the parent ends (``None`` if it already had)."""
        return self._pidfd

    def is_alive(self) -> bool:
        """Whether the parent is still running."""
        return self._pidfd is not None and not _core.wait_readable([self._pidfd], 0.0)

    def join(self, timeout: float | None = None) -> None:
        """Waits until the parent ends, or ``timeout`` seconds pass."""
        if self._pidfd is not None:
            _core.wait_readable([self._pidfd], timeout)

    def __repr__(self) -> str:
        return f"<_ParentProcess name={self.name!r} parent={self.pid} {'started' if self.is_alive() else 'stopped'}>"


_current_process: Process = _MainProcess()
_parent_process: _ParentProcess | None = None


def current_process() -> Process:
    """The ``Process`` object of the calling process (``MainProcess`` in the main program)."""
    return _current_process


def parent_process() -> _ParentProcess | None:
    """The parent of the calling process, or ``None`` in the main program."""
    return _parent_process


def _cleanup() -> None:
    """Forgets (and reaps) children that have ended."""
    for p in list(_children):
        if p._popen is not None and p._popen.poll() is not None:
            _children.discard(p)


def active_children() -> list[Process]:
    """The live children of this process; children that have ended are reaped as a side effect."""
    _cleanup()
    return list(_children)


def _finish_children(interrupted: bool = False) -> None:
    """At interpreter exit (``lifecycle.py``): stops daemonic children and joins the others.

    A program ending with Ctrl-C (``interrupted``) stops every child, so an interrupted program
    never waits for its children; so does a second Ctrl-C during the join (the stdlib would leave
    those children running).
    """
    _stop([p for p in active_children() if p.daemon or interrupted])
    try:
        for p in active_children():
            p.join()
    except KeyboardInterrupt:
        _stop(active_children())
        raise


def _stop(processes: list[Process]) -> None:
    """Terminates ``processes``, and kills those still running ``_STOP_GRACE`` seconds later.

    The pools' escalation (terminate, join with a timeout, kill): a child that ignores SIGTERM
    cannot hang the parent's exit, as it can with the stdlib.
    """
    for p in processes:
        p.terminate()
    deadline = time.monotonic() + _STOP_GRACE
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.exitcode is None:
            p.kill()
            p.join()


def __getattr__(name: str) -> Any:
    # the stdlib's class, imported on first use (importing multiprocessing slows a child's start)
    if name == "ProcessError":
        import multiprocessing

        return multiprocessing.ProcessError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _child_logger() -> Any:
    """The ``ferropool`` logger (``get_logger()``, without loading the pools' machinery), made here."""
    import logging

    log = logging.getLogger("ferropool")
    logger_setup.logger = log  # what this child's own children inherit
    return log


def _log_info(msg: str, *args: object) -> None:
    """Logs ``msg`` at INFO to ferropool's logger, if ``logging`` is loaded at all.

    Without it nothing can have configured a handler or a level that would show the record, and
    importing it costs a forked child (a manager's server, say) milliseconds of its start.
    """
    if "logging" in sys.modules:
        _child_logger().info(msg, *args)


def _child_main(fd: int) -> None:
    """Entry point of a child (see ``_runtime/spawn.process_argv``): reads its process object from ``fd``."""
    with open(fd, "rb") as pipe:
        payload = pipe.read()
    process, argv = load_in_child(payload)
    sys.exit(process._bootstrap(argv))


def _forked_child_main(fd: int) -> int:
    """Entry point of a child forked by the fork server; returns its exit code.

    Reads the parent's working directory, ``sys.path`` and environment, then the process object,
    from ``fd``. At the end it does what interpreter exit does in a spawned child (joins its
    threads, finishes its own children and pools), but not the parent's ``atexit`` handlers the
    fork copied, as ``multiprocessing``'s fork start method does.
    """
    import _pickle
    import io
    import threading

    with open(fd, "rb") as pipe:
        payload = pipe.read()
    stream = io.BytesIO(payload)
    cwd, path, environ = _pickle.Unpickler(stream).load()
    try:
        os.chdir(cwd)
    except OSError:
        pass
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    process, argv = load_in_child(memoryview(payload)[stream.tell() :])
    # the parent's atexit handlers came with the fork and are not the child's; the handlers the
    # target registers run at its end, as in a spawned child (and the stdlib's, since 3.13)
    lifecycle.forget_inherited_atexit()
    code = process._bootstrap(argv)
    try:
        threading._shutdown()  # type: ignore[attr-defined]
    except BaseException:
        pass
    lifecycle.run_atexit_in_forked_child()
    return int(code)


# a child of os.fork() has no children yet; the parent's are not its to join at exit
lifecycle.finish_at_exit(_finish_children)


def _renamed(name: str) -> None:
    """A pool worker named itself: the main process object takes the name.

    A ``Process`` child is its own process object, which already has its name.
    """
    if type(_current_process) is _MainProcess:
        _current_process.name = name


def _keyed(key: bytes) -> None:
    """A spawned pool worker took its parent's key: the main process object takes it too."""
    if type(_current_process) is _MainProcess:
        _current_process.authkey = key


naming.on_rename(_renamed)
naming.on_authkey(_keyed)
lifecycle.after_fork_in_child(_children.clear)
