"""Ctrl-C (SIGINT) reaches a main thread that waits on a pool, in a child interpreter."""

from __future__ import annotations

import signal

import pytest

from tests.conftest import start_child

HEADER = """
import time
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


@pytest.mark.parametrize("cls", ["ProcessPoolExecutor", "ThreadPoolExecutor"])
def test_ctrl_c_while_waiting_on_long_task_exits(tmp_path, cls):
    """SIGINT while the main thread waits in fut.result() on a 30 s task: the child raises
    KeyboardInterrupt and exits within 10 s."""
    with start_child(tmp_path / "interrupted.py", LONG_TASK_SCRIPT.format(cls=cls)) as child:
        child.proc.send_signal(signal.SIGINT)
        child.exit_within(10)
        assert child.proc.returncode != 0, child.report()
        assert "KeyboardInterrupt" in child.stderr, child.report()
        child.assert_descendants_gone()


@pytest.mark.parametrize("waiter", sorted(WAITERS))
@pytest.mark.parametrize("cls", ["ProcessPoolExecutor", "ThreadPoolExecutor"])
def test_ctrl_c_interrupts_the_wait(tmp_path, cls, waiter):
    """SIGINT reaches the main thread blocked in a pool wait as KeyboardInterrupt; once the task
    ends, the child exits with a failure status."""
    gate = str(tmp_path / "gate")
    code = GATED_SCRIPT.format(cls=cls, gate=gate, waiter=WAITERS[waiter].format(gate=gate))
    with start_child(tmp_path / "interrupted.py", code) as child:
        child.proc.send_signal(signal.SIGINT)
        interrupted = child.read_until("KeyboardInterrupt", 10, stream="stderr")
        open(gate, "w").close()  # let the task end, interrupted or not
        child.exit_within(30)
        assert interrupted, "no KeyboardInterrupt within 10 s of SIGINT\n" + child.report()
        assert child.proc.returncode != 0, child.report()
        assert "the wait returned without an interrupt" not in child.stdout, child.report()
        child.assert_descendants_gone()
