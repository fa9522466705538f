"""A worker that writes junk to its link to the parent costs that worker and its task, never the
parent: the task fails with ``WorkerDiedError``, the pool replaces the worker and goes on, and
shutdown completes. The fault injector is a task that finds its own link (the unnamed unix
stream socket whose peer is the pool's process) and writes a frame header to it."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
import termios
import threading

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, program_report, run_script

SCRIPT = """
from tests.test_wire_hardening import write_junk


def square(x):
    return x * x


CASES = {CASES}
for length, kind in CASES:
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        bad = ex.submit(write_junk, os.getpid(), length, kind, 2**62)
        err = bad.exception(timeout=30)
        print("ERR", type(err).__name__, err, flush=True)
        assert isinstance(err, ferropool.WorkerDiedError), repr(err)
        assert [f.result(timeout=30) for f in [ex.submit(square, i) for i in range(20)]] == [
            i * i for i in range(20)
        ]
    print("OK", length, kind, flush=True)
print("DONE", flush=True)
"""


def own_link(parent: int) -> int:
    """In a worker: the descriptor of its link to the pool's process ``parent``."""
    from ferropool._worker import start

    output = getattr(start, "connection", None)
    skip = os.fstat(output.fileno()).st_ino if output is not None else None
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if not stat.S_ISSOCK(st.st_mode) or st.st_ino == skip:
            continue
        s = socket.socket(fileno=os.dup(fd))
        try:
            if s.family != socket.AF_UNIX or s.type != socket.SOCK_STREAM:
                continue
            pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
            if pid == parent and s.getpeername() in ("", b""):
                return fd
        finally:
            s.close()
    raise RuntimeError("no link found")


def write_junk(parent: int, length: int, kind: int, task_id: int) -> str:
    """Writes a frame header (``src/wire.rs``) to this worker's link, then returns normally."""
    os.write(own_link(parent), struct.pack("<QBBBQI", length, kind, 0, 0, task_id, 0))
    return "survived"


OK, UNKNOWN = 11, 0xEE


@pytest.mark.parametrize(
    "cases",
    [
        pytest.param([(1 << 40, OK)], id="1TiB"),
        pytest.param([(1 << 30, OK)], id="1GiB"),
        pytest.param([(2**64 - 8, OK)], id="overflow"),
        pytest.param([(100, UNKNOWN), (1 << 30, UNKNOWN)], id="unknown-kind"),
    ],
)
def test_junk_header_fails_only_its_task(tmp_path, cases):
    result = run_script(tmp_path, SCRIPT.replace("{CASES}", repr(cases)))
    assert result.returncode == 0, program_report(result)
    assert "DONE" in result.stdout, program_report(result)
    assert "killed because" in result.stdout, program_report(result)


def big_str_while_sending(parent: int, beacon: str, mib: int) -> str:
    """Returns a ``str`` of ``mib`` MiB (it pickles in-band), and announces on ``beacon`` once
    the worker is writing it: more than 64 KiB of it wait in the link."""
    link = own_link(parent)
    done = threading.Event()

    def watch() -> None:
        queued = bytearray(4)
        while not done.wait(0.001):
            fcntl.ioctl(link, termios.TIOCOUTQ, queued)  # SIOCOUTQ: bytes not yet read
            if int.from_bytes(queued, "little") > 64 << 10:
                _tasks.signal_beacon(beacon, "sending")
                return

    threading.Thread(target=watch, daemon=True).start()
    return "x" * (mib << 20)


def test_submit_is_not_held_up_while_a_large_result_arrives(beacon):
    # Tasks submitted while the large result is on its way, from the thread holding the GIL,
    # run on the other worker and finish before the large result has arrived. Before, the
    # engine read the whole result holding the pool's lock, and submit() waited for that lock
    # holding the GIL.
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        assert [f.result(timeout=WAIT) for f in [ex.submit(_tasks.square, i) for i in range(4)]] == [0, 1, 4, 9]
        big = ex.submit(big_str_while_sending, os.getpid(), beacon.path, 256)
        assert beacon.wait() == "sending"
        for i in range(10):
            assert ex.submit(_tasks.square, i).result(timeout=WAIT) == i * i
        assert not big.done()
        assert len(big.result(timeout=WAIT)) == 256 << 20


PIDFD_SCRIPT = """
import select, tempfile
import psutil
from tests.test_wire_hardening import announce_and_sleep, pidfds

fifo = os.path.join(tempfile.mkdtemp(), "beacon")
os.mkfifo(fifo)
beacon = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
keep = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
    assert list(ex.map(abs, range(-4, 0))) == [4, 3, 2, 1]
    server = ferropool._runtime.forkserver.server_pid()
    assert server is not None, "no fork server"
    workers = [w.pid for w in ex.stats().workers]
    assert all(psutil.Process(pid).ppid() == server for pid in workers), workers
    assert set(workers) <= set(pidfds()), (workers, pidfds())
    # the signals sent through them work: Future.kill() of a running task
    fut = ex.submit(announce_and_sleep, fifo)
    assert select.select([beacon], [], [], 30)[0]
    pid = int(os.read(beacon, 64))
    assert fut.kill()
    assert fut.cancelled()
    try:
        killed = [psutil.Process(pid)]
    except psutil.NoSuchProcess:  # already gone and reaped by the fork server
        killed = []
    assert psutil.wait_procs(killed, timeout=30)[1] == []
    assert ex.submit(abs, -5).result(timeout=30) == 5
print("DONE", flush=True)
"""


def announce_and_sleep(fifo: str) -> None:
    """Writes this worker's pid to ``fifo``, then sleeps until killed."""
    _tasks.signal_beacon(fifo, os.getpid())
    threading.Event().wait(60)


def pidfds() -> dict[int, int]:
    """``{pid: descriptor}`` of the pidfds this process holds."""
    held = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            with open(f"/proc/self/fdinfo/{name}") as info:
                for line in info:
                    if line.startswith("Pid:"):
                        held[int(line.split()[1])] = int(name)
        except OSError:
            continue
    return held


def test_fork_server_workers_are_held_by_pidfd(tmp_path):
    # A fork-server worker is the server's child: the server may reap it at any moment, after
    # which its pid can name another process. The engine signals it through a pidfd the server
    # opened before it could reap it. (A fresh interpreter: the fork server is only made while
    # the process has a single thread.)
    result = run_script(tmp_path, PIDFD_SCRIPT)
    assert result.returncode == 0, program_report(result)
    assert "DONE" in result.stdout, program_report(result)
