"""Shared fixtures: leak checks around every test, executor factories, gates and beacons.

Synchronisation between the test and its tasks never sleeps in the test process:

* a *gate* is a file a task waits for (``_tasks.wait_gate`` polls for it inside the task); the
  test opens the gate by creating the file. Used as a context manager it opens on exit, so
  ``with make_executor() as ex, gate:`` releases the tasks before the executor shuts down.
* a *beacon* is a FIFO whose read end the test holds; a task writes a line into it
  (``_tasks.signal_beacon``) and the test blocks in ``select`` until the line arrives.
"""

from __future__ import annotations

import gc
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import ferropool
import psutil
import pytest

KINDS = ("process", "thread")
EXECUTORS = {"process": ferropool.ProcessPoolExecutor, "thread": ferropool.ThreadPoolExecutor}
LEAK_DEADLINE = 5.0
WAIT = 30.0  # generous timeout for results that should come quickly


# --------------------------------------------------------------------------------------------
# leak checks


def _children() -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used
            pass
    return out


def _shm() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except FileNotFoundError:
        return set()


def _ours(entry: str) -> bool:
    """False for a /dev/shm entry that names, as libraries do (``sem.loky-<pid>-...``), a live
    process outside this test process's tree: other programs on the machine create those."""
    mine = {os.getpid(), *_children()}
    for token in re.findall(r"(?<![0-9A-Za-z])\d{2,}(?![0-9A-Za-z])", entry):
        pid = int(token)
        if pid not in mine and psutil.pid_exists(pid):
            return False
    return True


def _describe(p: psutil.Process) -> str:
    try:
        return f"pid {p.pid} ({p.status()}): {' '.join(p.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {p.pid} (gone)"


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.ferro_call_failed = report.failed


@pytest.fixture(autouse=True)
def no_leaks(request):
    """Fails the test if it left child processes, file descriptors or /dev/shm entries."""
    children_before = set(_children())
    fd_count_before = len(os.listdir("/proc/self/fd"))
    fds_before = _fds()
    shm_before = _shm()
    yield
    deadline = time.monotonic() + LEAK_DEADLINE
    while True:
        gc.collect()  # garbage in a reference cycle is not a leak
        new_children = [p for pid, p in _children().items() if pid not in children_before]
        fd_count = len(os.listdir("/proc/self/fd"))
        new_shm = {e for e in _shm() - shm_before if _ours(e)}
        fds_ok = fd_count <= fd_count_before or getattr(request.node, "ferro_call_failed", False)
        if (not new_children and fds_ok and not new_shm) or time.monotonic() > deadline:
            break
        time.sleep(0.02)  # polling the leak check itself, not synchronising with a task
    problems = []
    if new_children:
        problems.append("child processes left behind:\n  " + "\n  ".join(map(_describe, new_children)))
    # a failed test's traceback keeps its frames, and the executors in them, alive: their
    # descriptors are not a leak of their own
    test_failed = getattr(request.node, "ferro_call_failed", False)
    if fd_count > fd_count_before and not test_failed:
        fds_after = _fds()
        new = {fd: target for fd, target in fds_after.items() if fds_before.get(fd) != target}
        problems.append(f"open file descriptors grew from {fd_count_before} to {fd_count}; new: {new}")
    if new_shm:
        problems.append(f"new /dev/shm entries: {sorted(new_shm)}")
    if problems:
        pytest.fail("resource leak after the test:\n" + "\n".join(problems), pytrace=False)


def live_processes(pids):
    """``psutil.Process`` objects for those of ``pids`` that still exist."""
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


def wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Waits, on pidfds and without reaping anything, until the processes have exited; returns
    those still running (not zombies) at the deadline."""
    fds = {}
    try:
        for p in procs:
            try:
                fds[os.pidfd_open(p.pid)] = p
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout
        pending = set(fds)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select(list(pending), [], [], left)
            pending -= set(ready)
        return [fds[fd] for fd in pending]
    finally:
        for fd in fds:
            os.close(fd)


# --------------------------------------------------------------------------------------------
# executors


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def executor_cls(kind):
    return EXECUTORS[kind]


@pytest.fixture
def make_executor(executor_cls):
    """``make_executor(max_workers=2, **kwargs)``: an executor of the parametrized kind, shut
    down at teardown if the test did not (tests still use ``with``)."""
    made = []

    def make(max_workers=2, **kwargs):
        ex = executor_cls(max_workers=max_workers, **kwargs)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ex.shutdown(wait=True, cancel_futures=True)
    made.clear()


# --------------------------------------------------------------------------------------------
# gates and beacons


class Gate:
    """A file whose creation releases the tasks waiting in ``_tasks.wait_gate``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def open(self) -> None:
        Path(self.path).touch()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc) -> None:
        self.open()


class Beacon:
    """A FIFO the test reads lines from; tasks announce themselves into it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        os.mkfifo(self.path)
        self._read_fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        # our own writer keeps the FIFO from reporting end-of-file between task writers
        self._keep_fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        self._buffer = b""

    def wait(self, timeout: float = WAIT) -> str:
        """The next line a task wrote; fails the test after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no task signalled the beacon within {timeout} s")
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if ready:
                self._buffer += os.read(self._read_fd, 4096)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        for fd in (self._read_fd, self._keep_fd):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def gate(tmp_path):
    g = Gate(tmp_path / "gate")
    yield g
    g.open()  # never leave a task waiting, whatever happened in the test


@pytest.fixture
def beacon(tmp_path):
    b = Beacon(tmp_path / "beacon")
    yield b
    b.close()


# --------------------------------------------------------------------------------------------
# user programs


def run_program(
    tmp_path: Path, source: str, *, tty: bool = False, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Runs ``source`` as a user's script (``python script.py`` in ``tmp_path``), as text.

    ``tty``: its stdout is a pseudo-terminal, as when a user runs it in a terminal (``\r\n``
    comes back as ``\n``); its stderr is a pipe either way. ``env`` adds to the environment.
    """
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(source))
    argv = [sys.executable, str(script)]
    environ = {**os.environ, **(env or {})}
    if not tty:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=environ)
    master, slave = pty.openpty()
    deadline = time.monotonic() + timeout
    with open(tmp_path / "program.stderr", "w+") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=err, cwd=tmp_path, env=environ)
        os.close(slave)
        chunks = []
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    proc.kill()
                    proc.wait()
                    raise subprocess.TimeoutExpired(argv, timeout)
                ready, _, _ = select.select([master], [], [], left)
                if not ready:
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the last process holding the terminal has closed it
                    break
                if not data:
                    break
                chunks.append(data)
            proc.wait(max(deadline - time.monotonic(), 1.0))
        finally:
            os.close(master)
        err.seek(0)
        stderr = err.read()
    stdout = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def program_report(result: subprocess.CompletedProcess[str]) -> str:
    """The exit code and both streams of a ``run_program`` result, for an assertion message."""
    return f"exit code {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
