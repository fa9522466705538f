"""Shared fixtures: leak checks around every test, executor factories, gates and beacons.

Synchronisation between the test and its tasks never sleeps in the test process:

* a *gate* is a file a task waits for (``_tasks.wait_gate`` polls for it inside the task); the
  test opens the gate by creating the file. Used as a context manager it opens on exit, so
  ``with make_executor() as ex, gate:`` releases the tasks before the executor shuts down.
* a *beacon* is a FIFO whose read end the test holds; a task writes a line into it
  (``_tasks.signal_beacon``) and the test blocks in ``select`` until the line arrives.

A test that needs a whole program (Ctrl-C, a killed parent, interpreter exit) runs a script in a
``Child`` interpreter and reads its output under deadlines.
"""

from __future__ import annotations

import functools
import gc
import multiprocessing
import os
import pty
import re
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import ferropool
import psutil
import pytest

from tests import _tasks

KINDS = ("process", "thread", "cluster")  # cluster: a Dask LocalCluster (tests/cluster_support.py)
EXECUTORS = {"process": ferropool.ProcessPoolExecutor, "thread": ferropool.ThreadPoolExecutor}
LEAK_DEADLINE = 5.0
WAIT = 30.0  # generous timeout for results that should come quickly
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    process outside this test process's tree, or that is the stdlib's: other programs on the
    machine create those."""
    if entry.startswith("sem.mp-"):
        return False  # the stdlib's semaphores (random names): other programs', never ferropool's
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
    callspec = getattr(request.node, "callspec", None)
    if "local_cluster" in request.fixturenames or (callspec is not None and "cluster" in callspec.params.values()):
        request.getfixturevalue("local_cluster")  # the session's cluster is no leak
    # once made, the session's cluster opens connections in the background during any test
    dask_client = _session_cluster[0] if _session_cluster else None
    pooled_before = 0 if dask_client is None else _dask_connections(dask_client)
    children_before = set(_children())
    fd_count_before = len(os.listdir("/proc/self/fd"))
    fds_before = _fds()
    shm_before = _shm()
    yield
    deadline = time.monotonic() + LEAK_DEADLINE
    while True:
        gc.collect()  # garbage in a reference cycle is not a leak
        new_children = [p for pid, p in _children().items() if pid not in children_before and not _in_cluster(p)]
        fd_count = len(os.listdir("/proc/self/fd"))
        if dask_client is not None:  # connections the session's Dask cluster keeps open
            fd_count -= max(0, _dask_connections(dask_client) - pooled_before)
        new_shm = {e for e in _shm() - shm_before if _ours(e)} - _cluster_shm()
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


#: pids of the processes of Dask clusters a module's fixture started (tests/cluster_support.py):
#: a worker their nanny restarts after a test killed one is the cluster's, stopped with it
cluster_pids: set[int] = set()


def _in_cluster(p: psutil.Process) -> bool:
    if not cluster_pids:
        return False
    try:
        return any(parent.pid in cluster_pids for parent in p.parents())
    except psutil.Error:
        return False


def _cluster_shm() -> set[str]:
    """The /dev/shm entries the processes of those clusters have mapped (their semaphores)."""
    names: set[str] = set()
    for pid in cluster_pids:
        try:
            tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        except psutil.Error:
            continue
        for p in tree:
            try:
                with open(f"/proc/{p.pid}/maps") as maps:
                    names.update(line.rsplit("/dev/shm/", 1)[1].strip() for line in maps if "/dev/shm/" in line)
            except OSError:
                pass
    return names


def _dask_connections(client) -> int:
    """Connections the session's cluster keeps open in this process, which it opens and closes
    as it likes: its client's pool, those its in-process scheduler accepted, and the scheduler's
    own to its workers (any connected TCP socket with an end at the scheduler or a worker)."""
    addresses = [client.scheduler.address, *client.scheduler_info().get("workers", {})]
    ports = {int(address.rsplit(":", 1)[1]) for address in addresses}
    return sum(
        1
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and (c.laddr.port in ports or c.raddr.port in ports)
    )


def _tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                inodes.update(row.split()[9] for row in f)
        except (FileNotFoundError, StopIteration):
            pass
    return inodes


def fd_count() -> int:
    """Open descriptors of this process; once the session's Dask cluster exists, less every TCP
    socket (the cluster opens and closes connections in the background; ferropool's own
    descriptors are never TCP)."""
    if not _session_cluster:
        return len(os.listdir("/proc/self/fd"))
    tcp = _tcp_inodes()
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except FileNotFoundError:
            pass  # closed while we looked
    tcp |= _tcp_inodes()  # a socket made between the two reads is still known
    return sum(1 for t in targets if not (t.startswith("socket:[") and t[8:-1] in tcp))


def live_processes(pids):
    """``psutil.Process`` objects for those of ``pids`` that still exist."""
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="session")
def spawn_resource_tracker():
    """Starts the stdlib's resource tracker, which the first spawn-context ``Process`` of a
    session would start, before the leak check takes its first snapshot: it is not a leak of
    any one test. A module that starts stdlib processes uses it in ``pytestmark``."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()


def start_spawned(target, *args):
    """A started stdlib spawn-context ``Process`` running ``target(*args)``: the other side of a
    ferropool primitive, independent of ferropool's own process machinery."""
    p = multiprocessing.get_context("spawn").Process(target=target, args=args)
    p.start()
    return p


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
def executor_cls(kind, request):
    if kind == "cluster":
        client = request.getfixturevalue("local_cluster")
        return functools.partial(ferropool.ProcessPoolExecutor, cluster=client)
    return EXECUTORS[kind]


# --- the cluster kind: one Dask LocalCluster for the session ---
@pytest.fixture(scope="session")
def local_cluster():
    """A client of a ``LocalCluster(processes=True, n_workers=2)`` with one thread per worker."""
    from tests import cluster_support

    lc, client = cluster_support.start_local_cluster()
    _session_cluster.append(client)
    yield client
    _session_cluster.clear()
    client.close()
    lc.close()


_session_cluster: list = []  # the client of local_cluster, while it exists


def cluster_pool(request):
    """``Pool`` on the session's Dask cluster, for a ``pool_cls`` fixture's ``"cluster"`` param."""
    return functools.partial(ferropool.Pool, cluster=request.getfixturevalue("local_cluster"))


# ---


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


def assert_times_out(wait: Any, *cases: tuple[type[BaseException], float]) -> None:
    """For each ``(error, timeout)`` of ``cases``, ``wait(timeout=timeout)`` raises ``error``: a
    pending result times out, and each exception type a caller may catch it by does catch it."""
    for error, timeout in cases:
        with pytest.raises(error):
            wait(timeout=timeout)


def running_and_queued(ex: Any, gate: Gate, beacon: Beacon, queued: int) -> tuple[Any, list[Any]]:
    """On a one-worker executor: a call that holds the worker until ``gate`` opens (running
    once this returns; its result is ``"first"``) and ``queued`` calls of ``square(i)`` behind it."""
    running = ex.submit(_tasks.wait_gate, gate.path, "first", beacon.path)
    beacon.wait()
    return running, [ex.submit(_tasks.square, i) for i in range(queued)]


@pytest.fixture(params=["process", "thread"])
def pool(request):
    """A two-worker ``Pool`` or ``ThreadPool``, closed and joined after the test."""
    cls = ferropool.Pool if request.param == "process" else ferropool.ThreadPool
    with cls(2) as p:
        yield p
        p.close()
        p.join()


@pytest.fixture
def duplex():
    """The two ends of a duplex ``Pipe``, closed after the test."""
    a, b = ferropool.Pipe()
    yield a, b
    a.close()
    b.close()


# --------------------------------------------------------------------------------------------
# the one place tests look inside a pool (everything else goes through the public API)


def engine_of(pool: Any) -> Any:
    """The ``_core.ProcessEngine`` behind a process ``Pool`` or ``ProcessPoolExecutor``."""
    return pool._backend.engine


def task_sizes(pool: Any, submitter: str) -> list[int]:
    """A list that grows by the number of items of each task the pool submits from now on
    through its back end's ``submitter`` (``"chunk_submitter"``: ``Pool`` maps;
    ``"outcome_submitter"``: ``Executor.map``)."""
    sizes: list[int] = []
    real = getattr(pool._backend, submitter)

    def spy(fn: Any, *args: Any, **options: Any) -> Any:
        submit = real(fn, *args, **options)

        def record(chunk: Any) -> Any:
            sizes.append(len(chunk))
            return submit(chunk)

        return record

    setattr(pool._backend, submitter, spy)
    return sizes


def worker_pids(pool: Any) -> list[int]:
    """The pids of a process pool's live workers."""
    return list(engine_of(pool).pids)


def broken_reason(pool: Any) -> str | None:
    """Why a process pool is broken, or ``None`` while it is not."""
    return engine_of(pool).broken  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------
# user programs


def run_program(
    tmp_path: Path,
    source: str,
    *,
    tty: bool = False,
    env: dict[str, str] | None = None,
    unset_env: tuple[str, ...] = (),
    timeout: float = 60.0,
    name: str = "program.py",
) -> subprocess.CompletedProcess[str]:
    """Runs ``source`` as a user's script (``python <name>`` in ``tmp_path``), as text.

    The one way tests run a script in a child interpreter and wait for its end (``Child`` is
    for a script the test talks to while it runs). ``tty``: its stdout is a pseudo-terminal, as
    when a user runs it in a terminal (``\r\n`` comes back as ``\n``); its stderr is a pipe
    either way. ``env`` adds to the environment, ``unset_env`` takes variables out of it.
    """
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    argv = [sys.executable, str(script)]
    environ = {**os.environ, **(env or {})}
    for variable in unset_env:
        environ.pop(variable, None)
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


def program_output(tmp_path: Path, source: str, **options: Any) -> tuple[list[str], str, str]:
    """Runs ``source`` as ``run_program`` does and asserts that it exited with 0; returns its
    stdout lines, its stderr, and its ``program_report`` for the test's own assertion messages."""
    return _succeeded(run_program(tmp_path, source, **options))


def _succeeded(result: subprocess.CompletedProcess[str]) -> tuple[list[str], str, str]:
    detail = program_report(result)
    assert result.returncode == 0, detail
    return result.stdout.splitlines(), result.stderr, detail


#: What ``run_script`` puts before a test's script: the repository on ``sys.path``, ferropool,
#: and the importable process tasks as ``tasks``.
SCRIPT_PRELUDE = f"""
import atexit, os, sys, time
sys.path.insert(0, {ROOT!r})
import ferropool
from tests import _process_tasks as tasks
"""


def run_script(tmp_path: Path, body: str, **options: Any) -> subprocess.CompletedProcess[str]:
    """``run_program`` of ``body`` after ``SCRIPT_PRELUDE``."""
    return run_program(tmp_path, SCRIPT_PRELUDE + textwrap.dedent(body), **options)


def script_output(tmp_path: Path, body: str, **options: Any) -> tuple[list[str], str, str]:
    """``program_output`` for a ``run_script`` body: asserts it exited with 0; returns its stdout
    lines, its stderr and its report."""
    return _succeeded(run_script(tmp_path, body, **options))


# scripts in a child interpreter

# A process started in the background of a non-interactive shell (``cmd &`` in a script), under
# nohup or by some CI runners starts with SIGINT and SIGQUIT ignored, and its children inherit
# that: Python then installs no SIGINT handler and Ctrl-C raises nothing. Every child script
# installs Python's own handler first, so a test's Ctrl-C means the same however the suite was
# started (and the child's workers, which inherit the disposition, see what they would see
# under a terminal).
CHILD_PRELUDE = f"""\
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGQUIT, signal.SIG_DFL)
sys.path.insert(0, {ROOT!r})
"""


class Child:
    """A script run by a fresh interpreter, its stdout and stderr read under deadlines.

    ``text`` is dedented and follows ``CHILD_PRELUDE`` (Python's SIGINT handler, the repository
    on ``sys.path``). ``new_session`` starts it in a session and process group of its own, so
    the test can Ctrl-C the whole group as a terminal does.
    """

    def __init__(self, path, text: str, *, new_session: bool = False, cwd=None) -> None:
        Path(path).write_text(CHILD_PRELUDE + textwrap.dedent(text))
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONFAULTHANDLER", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=new_session,
        )
        self.fds = {self.proc.stdout.fileno(): "stdout", self.proc.stderr.fileno(): "stderr"}
        self.out = {"stdout": b"", "stderr": b""}
        self.descendants: list[psutil.Process] = []
        self._eof: set[int] = set()

    @property
    def stdout(self) -> str:
        return self.out["stdout"].decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.out["stderr"].decode(errors="replace")

    def report(self) -> str:
        return f"returncode: {self.proc.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def read_until(self, marker: str, timeout: float, stream: str = "stdout") -> bool:
        """Reads both pipes until ``marker`` shows up on ``stream``; False at the deadline or EOF."""
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.out[stream]:
            if not self._read_some(deadline):
                return False
        return True

    def line(self, prefix: str, timeout: float = WAIT) -> str:
        """The rest of the first stdout line that starts with ``prefix``; fails the test if
        none arrives in time."""
        deadline = time.monotonic() + timeout
        pattern = re.compile(rf"^{re.escape(prefix)}(.*)\n", re.MULTILINE)
        while (found := pattern.search(self.stdout)) is None:
            if not self._read_some(deadline):
                pytest.fail(f"the script never printed {prefix!r}\n{self.report()}")
        return found.group(1).strip()

    def _read_some(self, deadline: float) -> bool:
        """Waits for output on either pipe and keeps it; False at the deadline or once both
        pipes are at end of file."""
        open_fds = [fd for fd, name in self.fds.items() if fd not in self._eof and not getattr(self.proc, name).closed]
        left = deadline - time.monotonic()
        if left <= 0 or not open_fds:
            return False
        ready, _, _ = select.select(open_fds, [], [], left)
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                self.out[self.fds[fd]] += data
            else:
                self._eof.add(fd)
        return True

    def snapshot_descendants(self) -> list[psutil.Process]:
        """Records (and returns) the script's descendants, for the leftover checks."""
        try:
            self.descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            self.descendants = []
        return self.descendants

    def communicate(self, timeout: float) -> None:
        """Waits for the script's exit, keeping the rest of its output."""
        out, err = self.proc.communicate(timeout=timeout)
        self.out["stdout"] += out or b""
        self.out["stderr"] += err or b""

    def exit_within(self, timeout: float) -> None:
        """Waits for the script's exit; kills it (and its descendants) and fails the test if it
        is still running after ``timeout`` seconds."""
        try:
            self.communicate(timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"the script did not exit within {timeout} s (it was killed)\n{self.report()}")

    def kill_all(self) -> None:
        """SIGKILL to the script and every descendant recorded or still attached to it."""
        procs = list(self.descendants)
        if self.proc.poll() is None:
            try:
                procs = [*psutil.Process(self.proc.pid).children(recursive=True), *procs]
            except psutil.NoSuchProcess:
                pass
            procs.append(psutil.Process(self.proc.pid))
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        try:
            self.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass

    def assert_descendants_gone(self, timeout: float = 10.0) -> None:
        alive = wait_gone(self.descendants, timeout)
        assert not alive, f"processes outlived the script: {alive}\n{self.report()}"

    def close(self) -> None:
        self.kill_all()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_child(path, text: str, marker: str = "waiting\n", timeout: float = WAIT, **kwargs) -> Child:
    """A ``Child`` that has printed ``marker``, its descendants recorded; fails the test (and
    kills the script) if the marker does not come in time."""
    child = Child(path, text, **kwargs)
    if not child.read_until(marker, timeout):
        child.close()
        pytest.fail(f"the script never printed {marker!r}\n{child.report()}")
    child.snapshot_descendants()
    return child
