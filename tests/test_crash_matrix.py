"""Pickling that fails, exits or crashes, on every side of a call (after CPython's
``test_concurrent_futures`` deadlock tests).

An object's ``__reduce__`` (pickling) or the function it returns (unpickling) raises, calls
``os._exit(1)`` or segfaults, for the call's argument (pickled in the parent, unpickled in the
worker) and for its result (pickled in the worker, unpickled in the parent), through
``ProcessPoolExecutor.submit``, ``Pool.apply_async`` and ``Pool.map``. Each case has one precise
outcome, and the next call on the same pool succeeds. Exiting or crashing in the parent would
end the test process, so those cases run in a script, and the test checks that the script died
that way and left no worker behind.
"""

from __future__ import annotations

import json
import multiprocessing.pool
import os
import signal

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, live_processes, program_report, run_program, wait_gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRONTS = ["submit", "apply_async", "map"]

# what happens where, and the outcome: ("error", message) the future fails with InjectedError;
# ("exit", code) / ("signal", signum) it fails with WorkerDiedError saying so
IN_PROCESS = [
    ("arg", "ErrorAtPickle", ("error", "error at pickle")),  # in the parent
    ("arg", "ErrorAtUnpickle", ("error", "error at unpickle")),  # in the worker
    ("arg", "ExitAtUnpickle", ("exit", 1)),
    ("arg", "CrashAtUnpickle", ("signal", signal.SIGSEGV)),
    ("result", "ErrorAtPickle", ("error", "error at pickle")),  # in the worker
    ("result", "ExitAtPickle", ("exit", 1)),
    ("result", "CrashAtPickle", ("signal", signal.SIGSEGV)),
    ("result", "ErrorAtUnpickle", ("error", "error at unpickle")),  # in the parent
]

# exiting or crashing in the parent: the script ends with this return code
IN_PARENT = [
    ("arg", "ExitAtPickle", 1),
    ("arg", "CrashAtPickle", -signal.SIGSEGV),
    ("result", "ExitAtUnpickle", 1),
    ("result", "CrashAtUnpickle", -signal.SIGSEGV),
]


def _outcome(front, where, cls):
    """Runs one call with the misbehaving object on a fresh pool of 2 workers; returns the
    exception it failed with (or its value), after checking the pool's next call succeeds."""
    if front == "submit":
        with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
            if where == "arg":
                fut = ex.submit(_tasks.identity, cls())
            else:
                fut = ex.submit(_tasks.return_instance, cls)
            exc = fut.exception(timeout=WAIT)
            outcome = exc if exc is not None else fut.result()
            assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9
            assert list(ex.map(_tasks.square, range(4))) == [0, 1, 4, 9]
            return outcome
    with ferropool.Pool(2) as pool:
        try:
            if front == "apply_async":
                if where == "arg":
                    outcome = pool.apply_async(_tasks.identity, (cls(),)).get(timeout=WAIT)
                else:
                    outcome = pool.apply_async(_tasks.return_instance, (cls,)).get(timeout=WAIT)
            elif where == "arg":
                outcome = pool.map_async(_tasks.identity, [1, cls(), 3], chunksize=1).get(timeout=WAIT)
            else:
                outcome = pool.map_async(_tasks.return_instance_item, [int, cls, int], chunksize=1).get(timeout=WAIT)
        except Exception as exc:
            outcome = exc
        assert pool.apply_async(_tasks.square, (3,)).get(timeout=WAIT) == 9
        assert pool.map(_tasks.square, range(4)) == [0, 1, 4, 9]
        return outcome


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(("where", "cls", "expected"), IN_PROCESS, ids=[f"{w}-{c}" for w, c, _ in IN_PROCESS])
def test_misbehaving_pickle(front, where, cls, expected):
    outcome = _outcome(front, where, getattr(_tasks, cls))
    how, detail = expected
    if how == "error" and front != "submit" and (where, cls) == ("result", "ErrorAtPickle"):
        # a Pool reports a result it could not pickle back as the stdlib's does
        assert isinstance(outcome, multiprocessing.pool.MaybeEncodingError), repr(outcome)
        assert outcome.exc == repr(_tasks.InjectedError(detail)), repr(outcome)
    elif how == "error":
        assert type(outcome) is _tasks.InjectedError, repr(outcome)
        assert str(outcome) == detail
    else:
        assert type(outcome) is ferropool.WorkerDiedError, repr(outcome)
        if how == "exit":
            assert (outcome.exitcode, outcome.signal) == (detail, None), repr(outcome)
        else:
            assert (outcome.exitcode, outcome.signal) == (None, detail), repr(outcome)


# --------------------------------------------------------------------------------------------
# exiting or crashing in the parent


SCRIPT = """
import json, os, sys
sys.path.insert(0, {root!r})
import ferropool
from ferropool._runtime import forkserver
from tests import _tasks

front, where, cls = {front!r}, {where!r}, getattr(_tasks, {cls!r})
if front == "submit":
    pool = ferropool.ProcessPoolExecutor(max_workers=2)
    pids = {{pool.submit(_tasks.get_pid).result(timeout=30) for _ in range(20)}}
else:
    pool = ferropool.Pool(2)
    pids = set(pool.map(_tasks.get_pid, range(20), chunksize=1))
print("PIDS " + json.dumps({{"workers": sorted(pids), "server": forkserver.server_pid()}}), flush=True)
if front == "submit":
    if where == "arg":
        fut = pool.submit(_tasks.identity, cls())
    else:
        fut = pool.submit(_tasks.return_instance, cls)
    print("outcome", repr(fut.exception(timeout=30)), flush=True)
elif front == "apply_async":
    args = (_tasks.identity, (cls(),)) if where == "arg" else (_tasks.return_instance, (cls,))
    print("outcome", repr(pool.apply_async(*args).get(timeout=30)), flush=True)
else:
    if where == "arg":
        print("outcome", pool.map(_tasks.identity, [1, cls(), 3], chunksize=1), flush=True)
    else:
        print("outcome", pool.map(_tasks.return_instance_item, [int, cls, int], chunksize=1), flush=True)
print("SURVIVED", flush=True)
"""


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize(("where", "cls", "returncode"), IN_PARENT, ids=[f"{w}-{c}" for w, c, _ in IN_PARENT])
def test_exit_or_crash_in_the_parent(tmp_path, front, where, cls, returncode):
    """The parent dies where the object misbehaves (pickling the argument in the caller's
    thread, or unpickling the result in the pool's completion thread): the script ends with
    that status, does not go on, and its workers and fork server are gone within 2 s."""
    proc = run_program(
        tmp_path,
        SCRIPT.format(root=ROOT, front=front, where=where, cls=cls),
        unset_env=("PYTHONFAULTHANDLER",),
        timeout=50,
        name="script.py",
    )
    detail = program_report(proc)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PIDS ")]
    assert lines, detail
    pids = json.loads(lines[0][len("PIDS ") :])
    assert proc.returncode == returncode, detail
    assert "SURVIVED" not in proc.stdout and "outcome" not in proc.stdout, detail
    assert pids["server"] is not None, "the script's pool should have forked its workers from a fork server"
    watched = live_processes([*pids["workers"], pids["server"]])
    alive = wait_gone(watched, 2)
    assert not alive, f"outlived their parent: {alive}\n{detail}"
