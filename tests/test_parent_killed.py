"""A parent that is SIGKILLed or interrupted with Ctrl-C leaves no worker behind.

Each test runs a fresh script (single-threaded, so its first pool gets a fork server, unless it
asks for ``spawn``) whose pool has two workers busy in long tasks; the tasks announce their pids
on the test's beacon. Time bounds come from the requirements: workers (and the fork server) are
gone within 2 s of the parent's death; ``KeyboardInterrupt`` reaches the script's code within
1 s of Ctrl-C (asserted with slack: 3 s).
"""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from tests.conftest import Child, live_processes, wait_gone

METHODS = ["forkserver", "spawn"]
START_TIMEOUT = 30.0
GONE_BOUND = 2.0  # workers and server are gone this long after the parent died
INTERRUPT_BOUND = 3.0  # the requirement is 1 s; slack for a loaded 2-core machine

HEADER = """
import functools, json
import ferropool
from ferropool._runtime import forkserver
from tests import _tasks

method, front, beacon = {method!r}, {front!r}, {beacon!r}
context = None if method == "forkserver" else "spawn"
if front == "executor":
    pool = ferropool.ProcessPoolExecutor(max_workers=2, mp_context=context)
else:
    pool = ferropool.Pool(2, context=context)
"""

BLOCKED = """
task = {task}
if front == "executor":
    results = [pool.submit(task, 30).result for _ in range(2)]
else:
    results = [pool.apply_async(task, (30,)).get for _ in range(2)]
print("PIDS " + json.dumps({{"server": forkserver.server_pid()}}), flush=True)
results[0]()
print("the wait returned", flush=True)
"""

INTERRUPTED = """
task = functools.partial(_tasks.beacon_then_sleep, beacon)
try:
    if {waiter!r} == "pool_map":
        print("waiting", flush=True)
        pool.map(task, [30, 30], chunksize=1)
    elif {waiter!r} == "pool_join":
        results = [pool.apply_async(task, (30,)) for _ in range(2)]
        pool.close()
        print("waiting", flush=True)
        pool.join()
    else:
        futures = [pool.submit(task, 30) for _ in range(2)]
        print("waiting", flush=True)
        pool.shutdown(wait=True)
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    raise
print("NOT INTERRUPTED", flush=True)
"""


def _start_blocked(tmp_path, beacon, method, front, task, n_lines=2):
    text = HEADER.format(method=method, front=front, beacon=beacon.path) + BLOCKED.format(task=task)
    script = Child(tmp_path / "script.py", text, new_session=True)
    try:
        lines = [beacon.wait(START_TIMEOUT) for _ in range(n_lines)]
        info = json.loads(script.line("PIDS ", START_TIMEOUT))
    except BaseException:
        script.close()
        raise
    script.snapshot_descendants()
    return script, lines, info


@pytest.mark.parametrize("front", ["executor", "pool"])
@pytest.mark.parametrize("method", METHODS)
def test_sigkill_of_the_parent_ends_workers_and_fork_server(tmp_path, beacon, method, front):
    script, lines, info = _start_blocked(
        tmp_path, beacon, method, front, "functools.partial(_tasks.beacon_then_sleep, beacon)"
    )
    try:
        busy = sorted({int(x) for x in lines})
        assert len(busy) == 2, lines
        if method == "forkserver":
            assert info["server"] is not None, "a fresh single-threaded script should get a fork server"
            assert all(psutil.Process(pid).ppid() == info["server"] for pid in busy)
        else:
            assert info["server"] is None
            assert all(psutil.Process(pid).ppid() == script.proc.pid for pid in busy)
        watched = live_processes(busy + ([info["server"]] if info["server"] else []))
        assert len(watched) == len(busy) + (1 if info["server"] else 0), "a worker ended before the kill"
        killed_at = time.monotonic()
        script.proc.send_signal(signal.SIGKILL)
        script.proc.wait(timeout=10)
        alive = wait_gone(watched, GONE_BOUND)
        elapsed = time.monotonic() - killed_at
        print(f"[killed parent {method}/{front}] workers and server gone {elapsed * 1000:.0f} ms after SIGKILL")
        assert not alive, f"outlived the killed parent by {GONE_BOUND} s: {alive}"
    finally:
        script.close()


@pytest.mark.parametrize("method", METHODS)
def test_processes_started_by_tasks_die_with_a_killed_parent(tmp_path, beacon, method):
    """Nothing outlives a pool (docs/failures.md, "What is left behind"): a ``sleep 60`` that a
    running task started goes too when the parent is SIGKILLed, as it does when the task is
    killed or times out (its worker's process group is killed)."""
    task = "lambda seconds: _tasks.start_sleeper_then_wait(beacon, 60, '/nonexistent-gate', seconds)"
    script, lines, info = _start_blocked(tmp_path, beacon, method, "executor", task)
    sleepers = []
    try:
        pairs = [tuple(map(int, line.split())) for line in lines]
        workers = live_processes([w for w, _ in pairs])
        sleepers = live_processes([s for _, s in pairs])
        assert len(sleepers) == 2, script.report()
        script.proc.send_signal(signal.SIGKILL)
        script.proc.wait(timeout=10)
        assert not wait_gone(workers, GONE_BOUND)
        alive = wait_gone(sleepers, GONE_BOUND)
        assert not alive, f"processes started by tasks outlived the killed parent and its workers: {alive}"
    finally:
        for p in sleepers:
            try:
                p.kill()
            except psutil.Error:
                pass
        script.close()


# --------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.parametrize("waiter", ["pool_map", "pool_join", "executor_shutdown"])
@pytest.mark.parametrize("method", METHODS)
def test_ctrl_c_reaches_the_script_and_ends_the_workers(tmp_path, beacon, method, waiter):
    """SIGINT to the script's process group (a terminal's Ctrl-C) while it waits in
    ``Pool.map``, ``Pool.join()`` after ``close()`` or ``shutdown(wait=True)`` on two 30 s tasks:
    the script's ``except KeyboardInterrupt`` runs within the bound, the workers are gone within
    2 s of the script's exit, and no worker printed a traceback."""
    front = "executor" if waiter.startswith("executor") else "pool"
    text = HEADER.format(method=method, front=front, beacon=beacon.path) + INTERRUPTED.format(waiter=waiter)
    script = Child(tmp_path / "script.py", text, new_session=True)
    try:
        workers = sorted(int(beacon.wait(START_TIMEOUT)) for _ in range(2))
        assert script.read_until("waiting\n", START_TIMEOUT), script.report()
        script.snapshot_descendants()
        assert set(workers) <= {p.pid for p in script.descendants}
        sent = time.monotonic()
        os.killpg(script.proc.pid, signal.SIGINT)
        interrupted = script.read_until("INTERRUPTED\n", INTERRUPT_BOUND)
        to_marker = time.monotonic() - sent
        script.exit_within(30)
        exited = time.monotonic()
        alive = wait_gone(script.descendants, GONE_BOUND)
        gone_after = time.monotonic() - exited
        print(
            f"[ctrl-c {method}/{waiter}] marker {to_marker * 1000:.0f} ms after SIGINT; exit "
            f"{(exited - sent) * 1000:.0f} ms; workers gone {gone_after * 1000:.0f} ms after exit"
        )
        assert interrupted, f"no KeyboardInterrupt in the script within {INTERRUPT_BOUND} s\n" + script.report()
        assert "NOT INTERRUPTED" not in script.stdout, script.report()
        assert script.proc.returncode == -signal.SIGINT, script.report()
        assert not alive, f"workers outlived the interrupted script by {GONE_BOUND} s: {alive}"
        stderr = script.stderr
        assert stderr.count("Traceback (most recent call last)") == 1, script.report()
        assert stderr.rstrip().endswith("KeyboardInterrupt"), script.report()
        for worker_frame in ("_tasks.py", "_worker/main.py", "beacon_then_sleep", "worker_main"):
            assert worker_frame not in stderr, f"a worker printed a traceback:\n{script.report()}"
    finally:
        script.close()
