"""Ctrl-C (SIGINT) reaches a main thread that waits on a pool, in a child interpreter."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.conftest import wait_gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_TIMEOUT = 30.0

HEADER = """
import sys, time
sys.path.insert(0, {root!r})
import ferropool
from tests import _tasks
"""

# The brief's script: a long task (30 s of sleep), then the main thread waits on its result.
LONG_TASK_SCRIPT = (
    HEADER
    + """
ex = ferropool.{cls}(max_workers=2)
fut = ex.submit(time.sleep, 30)
print("waiting", flush=True)
fut.result()
"""
)

# The task lasts until the test opens the gate, so the child can finish once interrupted.
WAITERS = {
    "result": "fut.result()",
    "result_timeout": "fut.result(timeout=60)",
    "map": "list(ex.map(_tasks.wait_gate, [{gate!r}]))",
    "wait": "ferropool.wait([fut])",
    "as_completed": "list(ferropool.as_completed([fut]))",
    "shutdown": "ex.shutdown(wait=True)",
}
GATED_SCRIPT = (
    HEADER
    + """
ex = ferropool.{cls}(max_workers=2)
fut = ex.submit(_tasks.wait_gate, {gate!r})
print("waiting", flush=True)
{waiter}
print("the wait returned without an interrupt", flush=True)
"""
)


class Child:
    """A child interpreter whose stdout and stderr the test reads with deadlines."""

    def __init__(self, script_path):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("PYTHONFAULTHANDLER", None)
        self.proc = subprocess.Popen(
            [sys.executable, str(script_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self.fds = {self.proc.stdout.fileno(): "stdout", self.proc.stderr.fileno(): "stderr"}
        self.out = {"stdout": b"", "stderr": b""}
        self.descendants: list[psutil.Process] = []

    @property
    def stdout(self) -> str:
        return self.out["stdout"].decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self.out["stderr"].decode(errors="replace")

    def report(self) -> str:
        return f"returncode: {self.proc.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"

    def read_until(self, stream: str, marker: str, timeout: float) -> bool:
        """Reads both pipes until ``marker`` shows up on ``stream``; False at the deadline or EOF."""
        open_fds = list(self.fds)
        deadline = time.monotonic() + timeout
        while marker.encode() not in self.out[stream]:
            left = deadline - time.monotonic()
            if left <= 0 or not open_fds:
                return False
            ready, _, _ = select.select(open_fds, [], [], left)
            for f in ready:
                data = os.read(f, 65536)
                if data:
                    self.out[self.fds[f]] += data
                else:
                    open_fds.remove(f)
        return True

    def snapshot_descendants(self) -> None:
        try:
            self.descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            self.descendants = []

    def communicate(self, timeout: float) -> None:
        out, err = self.proc.communicate(timeout=timeout)
        self.out["stdout"] += out or b""
        self.out["stderr"] += err or b""

    def kill_all(self) -> None:
        for p in [*self.descendants, psutil.Process(self.proc.pid)] if self.proc.poll() is None else self.descendants:
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
        assert not alive, f"worker processes outlived the interrupted interpreter: {alive}\n{self.report()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill_all()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


def _start(tmp_path, text: str) -> Child:
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(text))
    child = Child(script)
    if not child.read_until("stdout", "waiting\n", START_TIMEOUT):
        child.kill_all()
        child.close()
        pytest.fail(f"the child never reached its wait\n{child.report()}")
    child.snapshot_descendants()
    return child


@pytest.mark.parametrize("cls", ["ProcessPoolExecutor", "ThreadPoolExecutor"])
def test_ctrl_c_while_waiting_on_long_task_exits(tmp_path, cls):
    """SIGINT while the main thread waits in fut.result() on a 30 s task: the child raises
    KeyboardInterrupt and exits within 10 s."""
    child = _start(tmp_path, LONG_TASK_SCRIPT.format(root=ROOT, cls=cls))
    try:
        child.proc.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill_all()
            pytest.fail("the interrupted child did not exit within 10 s of SIGINT (it was killed)\n" + child.report())
        assert child.proc.returncode != 0, child.report()
        assert "KeyboardInterrupt" in child.stderr, child.report()
        child.assert_descendants_gone()
    finally:
        child.close()


@pytest.mark.parametrize("waiter", sorted(WAITERS))
@pytest.mark.parametrize("cls", ["ProcessPoolExecutor", "ThreadPoolExecutor"])
def test_ctrl_c_interrupts_the_wait(tmp_path, cls, waiter):
    """SIGINT reaches the main thread blocked in a pool wait as KeyboardInterrupt; once the task
    ends, the child exits with a failure status."""
    gate = str(tmp_path / "gate")
    code = GATED_SCRIPT.format(root=ROOT, cls=cls, gate=gate, waiter=WAITERS[waiter].format(gate=gate))
    child = _start(tmp_path, code)
    try:
        child.proc.send_signal(signal.SIGINT)
        interrupted = child.read_until("stderr", "KeyboardInterrupt", 10)
        open(gate, "w").close()  # let the task end, interrupted or not
        try:
            child.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill_all()
            pytest.fail("the child did not exit after its task ended (it was killed)\n" + child.report())
        assert interrupted, "no KeyboardInterrupt within 10 s of SIGINT\n" + child.report()
        assert child.proc.returncode != 0, child.report()
        assert "the wait returned without an interrupt" not in child.stdout, child.report()
        child.assert_descendants_gone()
    finally:
        child.close()
