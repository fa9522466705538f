"""SIGINT, SIGTERM and SIGKILL to the parent, to a worker and to the fork server, while the
program is in ``Pool.map``, ``executor.map``, ``shutdown``, ``Queue.get`` or ``Lock.acquire``.

Each case is one short script (``SCRIPT``) with a pool of two workers from the fork server. Task
0 does the phase's blocking call when a worker is the one blocked, task 1 waits for the test's
gate; each announces ``"<task> <pid>"`` on the beacon, and task 0 also ``"0 ended"`` when it
stops. The test signals once everyone is in place, waits for the signal's effect (a process
gone, task 0 ended), opens the gates, and reads the script's report.

Expected: a signalled parent is out promptly (``KeyboardInterrupt`` for SIGINT, death for SIGTERM
and SIGKILL); a signalled worker fails its own task (``KeyboardInterrupt`` for SIGINT, as a
``concurrent.futures`` worker reports it; ``WorkerDiedError`` when it dies) and the pool, the
queue and the lock go on; the fork server ignores SIGINT, and killing it fails the tasks of the
workers it takes along while the pool goes on. Afterwards no process, ``/dev/shm`` entry or
descriptor of the run is left.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.conftest import Child, _ours, _shm, live_processes, wait_gone

SIGNALS = ["SIGINT", "SIGTERM", "SIGKILL"]
PHASES = ["pool_map", "executor_map", "shutdown", "queue_get", "lock_acquire"]
TARGETS = ["parent", "worker", "server"]
START = 30.0
OUT_BOUND = 10.0  # a signalled parent is out, or a script whose tasks are released has ended
GONE_BOUND = 5.0  # what a dead parent leaves is gone this long after

SCRIPT = """
import functools, json, os, signal
import ferropool
from ferropool._runtime import forkserver
from tests import _tasks

phase, target, gate, beacon = {phase!r}, {target!r}, {gate!r}, {beacon!r}
worker_blocked = target != "parent"


def fds():
    return len(os.listdir("/proc/self/fd"))


def outcome(call):
    try:
        return repr(call())
    except KeyboardInterrupt:
        if not worker_blocked:  # the parent's own Ctrl-C
            raise
        return "KeyboardInterrupt"  # a task's, from its worker
    except BaseException as exc:
        return type(exc).__name__


def task(i, q, lock):
    try:  # the test signals as soon as the line is out: a Ctrl-C lands in here
        _tasks.signal_beacon(beacon, f"{{i}} {{os.getpid()}}")
        if i == 0 and worker_blocked and phase == "queue_get":
            return q.get()
        if i == 0 and worker_blocked and phase == "lock_acquire":
            with lock:
                return "locked"
        return _tasks.wait_gate(gate + str(i), i, timeout=60)
    finally:
        if i == 0:
            _tasks.signal_beacon(beacon, "0 ended")


with ferropool.ProcessPoolExecutor(max_workers=1) as first:  # makes the fork server
    first.submit(int).result()
q, lock = ferropool.Queue(), ferropool.Lock()
before = fds()
if phase == "pool_map":
    pool = ferropool.Pool(2)
else:
    pool = ferropool.ProcessPoolExecutor(max_workers=2)
if phase == "lock_acquire":
    lock.acquire()
work = functools.partial(task, q=q, lock=lock)
report = {{"server": forkserver.server_pid()}}
print("PIDS " + json.dumps(report), flush=True)
try:
    print("waiting", flush=True)
    if phase == "pool_map":
        report["map"] = outcome(lambda: pool.map(work, [0, 1], chunksize=1))
    elif phase == "executor_map":
        report["map"] = outcome(lambda: list(pool.map(work, [0, 1])))
    else:
        futures = [pool.submit(work, i) for i in (0, 1)]
        if phase == "shutdown":
            pool.shutdown(wait=True)
        elif not worker_blocked and phase == "queue_get":
            q.get()
        elif not worker_blocked:
            lock.acquire()
        else:
            futures[1].exception()
            if phase == "queue_get":
                q.put("item")
            else:
                lock.release()
        report["tasks"] = [outcome(f.result) for f in futures]
except KeyboardInterrupt:
    print("INTERRUPTED", flush=True)
    raise
if phase == "queue_get":
    if report["tasks"][0] != repr("item"):  # else task 0 took it
        report["queue"] = outcome(lambda: q.get(timeout=10))
    q.put("again")
    after = pool.apply_async(q.get, (True, 10)) if phase == "pool_map" else pool.submit(q.get, True, 10)
elif phase == "lock_acquire":
    report["lock"] = outcome(lambda: lock.acquire(timeout=10))
    lock.release()
    after = pool.apply_async(_tasks.square, (7,)) if phase == "pool_map" else pool.submit(_tasks.square, 7)
elif phase == "shutdown":  # the fork server still makes workers
    pool = ferropool.ProcessPoolExecutor(max_workers=1)
    after = pool.submit(_tasks.square, 7)
else:
    after = pool.apply_async(_tasks.square, (7,)) if phase == "pool_map" else pool.submit(_tasks.square, 7)
report["after"] = outcome(lambda: after.get(30) if phase == "pool_map" else after.result(30))
if phase == "pool_map":
    pool.close()
    pool.join()
else:
    pool.shutdown(wait=True)
report["fds"] = [before, fds()]
print("REPORT " + json.dumps(report), flush=True)
"""


def _expected_task0(target: str, signame: str) -> str:
    if target == "worker":
        return "KeyboardInterrupt" if signame == "SIGINT" else "WorkerDiedError"
    return "ok" if signame == "SIGINT" else "WorkerDiedError"


def _check_report(report: dict, phase: str, target: str, signame: str) -> None:
    task0 = _expected_task0(target, signame)
    value0 = {"queue_get": "'item'", "lock_acquire": "'locked'"}.get(phase, "0")
    expected0 = value0 if task0 == "ok" else task0
    if "map" in report:
        assert report["map"] == ("[0, 1]" if task0 == "ok" else expected0), report
    else:
        assert report["tasks"][0] == expected0, report
        # a killed fork server takes its workers along: task 1 may have died with them
        assert report["tasks"][1] == "1" or (target == "server" and task0 != "ok"), report
    if phase == "queue_get":
        assert report.get("queue") == (None if task0 == "ok" else "'item'"), report
        assert report["after"] == "'again'", report
    else:
        assert report["after"] == "49", report
    if phase == "lock_acquire":
        assert report["lock"] == "True", report
    before, after = report["fds"]
    assert after <= before, f"descriptors grew from {before} to {after} over the run"


@pytest.mark.parametrize("signame", SIGNALS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("phase", PHASES)
def test_signal(tmp_path, beacon, phase, target, signame):
    signum = getattr(signal, signame)
    gate = str(tmp_path / "gate")
    shm_before = _shm()
    text = SCRIPT.format(phase=phase, target=target, gate=gate, beacon=beacon.path)
    with Child(tmp_path / "script.py", text, new_session=True) as script:
        server = json.loads(script.line("PIDS ", START))["server"]
        assert server is not None, "a single-threaded script should get a fork server"
        started = dict(beacon.wait(START).split() for _ in range(2))
        workers = {int(started["0"]), int(started["1"])}
        assert script.read_until("waiting\n", START), script.report()
        everyone = script.snapshot_descendants()
        assert workers | {server} <= {p.pid for p in everyone}, script.report()
        victim = {"parent": script.proc.pid, "worker": int(started["0"]), "server": server}[target]
        sent = time.monotonic()
        os.kill(victim, signum)

        if target == "parent":
            if signame == "SIGINT":
                assert script.read_until("INTERRUPTED\n", OUT_BOUND), script.report()
            script.exit_within(OUT_BOUND)
            assert script.proc.returncode == -signum, script.report()
        else:
            # let the signal take effect before releasing the gate task, so that task 0's
            # outcome is the signal's and not a race with the parent's next step
            if signame == "SIGINT" and target == "worker":
                assert beacon.wait(OUT_BOUND) == "0 ended"
            elif signame != "SIGINT":
                assert not wait_gone(live_processes([victim]), OUT_BOUND), f"{signame} did not end pid {victim}"
            if signame == "SIGINT" and target == "server":
                open(gate + "0", "w").close()
            open(gate + "1", "w").close()
            script.exit_within(OUT_BOUND + 30)
            assert script.proc.returncode == 0, script.report()
            _check_report(json.loads(script.line("REPORT ")), phase, target, signame)
        elapsed = time.monotonic() - sent
        alive = wait_gone(everyone, GONE_BOUND)
        assert not alive, f"outlived the script: {alive}\n{script.report()}"
        left = {e for e in _shm() - shm_before if _ours(e)}
        assert not left, f"/dev/shm entries left by the script: {sorted(left)}"
        last = script.stdout.splitlines()[-1]
        print(f"[{phase}/{target}/{signame}] out {elapsed * 1000:.0f} ms after the signal; {last}")


DISPOSITION = """
import json, signal
import ferropool

if {ignored!r}:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def disposition(conn=None):
    handler = signal.getsignal(signal.SIGINT)
    seen = {{signal.SIG_IGN: "ignored", signal.default_int_handler: "handled"}}.get(handler, repr(handler))
    if conn is None:
        return seen
    conn.send(seen)


seen = {{}}
for method in ("forkserver", "spawn"):
    context = None if method == "forkserver" else "spawn"
    with ferropool.ProcessPoolExecutor(max_workers=1, mp_context=context) as ex:
        seen["pool worker, " + method] = ex.submit(disposition).result(timeout=30)
    a, b = ferropool.Pipe()
    p = ferropool.get_context(method).Process(target=disposition, args=(b,))
    p.start()
    seen["Process, " + method] = a.recv()
    p.join(30)
print("SEEN " + json.dumps(seen), flush=True)
"""


@pytest.mark.parametrize("ignored", [True, False], ids=["parent_ignores_sigint", "parent_handles_sigint"])
def test_children_start_with_the_parents_sigint_disposition(tmp_path, ignored):
    """Workers and ``Process`` children, forked by the fork server or spawned, start with SIGINT
    ignored when the parent ignores it (a background job of a non-interactive shell, nohup), as
    the stdlib's do, and with Python's handler otherwise. A ``Process`` child shares the parent's
    process group: one that turned Ctrl-C back on would take a terminal's Ctrl-C meant for the
    shell script that started the program in the background."""
    with Child(tmp_path / "script.py", DISPOSITION.format(ignored=ignored)) as script:
        script.exit_within(START)
        assert script.proc.returncode == 0, script.report()
        seen = json.loads(script.line("SEEN "))
    expected = "ignored" if ignored else "handled"
    assert seen == dict.fromkeys(seen, expected) and len(seen) == 4, seen


IDLE = """
import os
import ferropool
from tests import _tasks

with ferropool.ProcessPoolExecutor(max_workers=1, mp_context={context!r}) as ex:
    print("PID", ex.submit(os.getpid).result(timeout=30), flush=True)
    _tasks.wait_gate({gate!r})  # the test signals the worker meanwhile
    print("AFTER", [ex.submit(os.getpid).exception(timeout=30) for _ in range(3)], flush=True)
    print("SAME", ex.submit(os.getpid).result(timeout=30), flush=True)
"""


@pytest.mark.parametrize("context", [None, "spawn"])
def test_sigint_to_an_idle_worker_fails_no_task(tmp_path, context):
    """A Ctrl-C that reaches a worker between calls belongs to no task: the next calls succeed,
    in the same worker (it used to fail the next call, or end the worker at its first line)."""
    gate = str(tmp_path / "gate")
    with Child(tmp_path / "script.py", IDLE.format(context=context, gate=gate)) as script:
        pid = int(script.line("PID "))
        os.kill(pid, signal.SIGINT)
        open(gate, "w").close()
        script.exit_within(START)
        assert script.proc.returncode == 0, script.report()
        assert script.line("AFTER ") == "[None, None, None]", script.report()
        assert int(script.line("SAME ")) == pid, script.report()
