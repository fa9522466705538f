"""Processes at the parent's exit, ``__main__`` targets, and Ctrl-C in blocking calls, each in a
fresh interpreter running a small script."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.conftest import start_child, wait_gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_TIMEOUT = 60.0

HEADER = f"""
import atexit, os, sys, time
sys.path.insert(0, {ROOT!r})
import ferropool
from tests import _process_tasks as tasks
"""


def run_script(tmp_path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(HEADER + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, check=False
    )


def lines(result) -> list[str]:
    return result.stdout.splitlines()


def report(result) -> str:
    return f"returncode {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def test_main_functions_lambdas_and_main_subclasses_run_without_a_main_guard(tmp_path):
    result = run_script(
        tmp_path,
        """
        a, b = ferropool.Pipe()
        scale = 10

        def in_main(conn, x):
            conn.send(("function", x * scale))

        class Sub(ferropool.Process):
            def run(self):
                b.send(("subclass", self.name))

        procs = [
            ferropool.Process(target=in_main, args=(b, 1)),
            ferropool.Process(target=lambda: b.send(("lambda", scale + 2))),
            Sub(name="sub"),
        ]
        for p in procs:
            p.start()
        got = sorted(a.recv() for _ in procs)
        for p in procs:
            p.join(30)
        print(got, [p.exitcode for p in procs])
        """,
    )
    assert result.returncode == 0, report(result)
    assert lines(result) == ["[('function', 10), ('lambda', 12), ('subclass', 'sub')] [0, 0, 0]"], report(result)


def test_daemon_child_is_terminated_at_parent_exit(tmp_path):
    result = run_script(
        tmp_path,
        """
        p = ferropool.Process(target=time.sleep, args=(60,), daemon=True)
        p.start()
        atexit.register(lambda: print("daemon exitcode", p.exitcode, flush=True))
        print(p.pid, flush=True)
        """,
    )
    assert result.returncode == 0, report(result)
    pid, exitcode = lines(result)
    assert exitcode == "daemon exitcode -15", report(result)
    assert not psutil.pid_exists(int(pid)) or not wait_gone([psutil.Process(int(pid))], 10)


def test_daemon_child_that_ignores_sigterm_is_killed_at_parent_exit(tmp_path):
    result = run_script(
        tmp_path,
        """
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=tasks.ignore_sigterm, args=(b,), daemon=True)
        p.start()
        assert a.recv() == "ignoring SIGTERM"
        atexit.register(lambda: print("daemon exitcode", p.exitcode, flush=True))
        """,
    )
    assert result.returncode == 0, report(result)
    assert lines(result) == ["daemon exitcode -9"], report(result)


def test_non_daemon_child_is_joined_at_parent_exit(tmp_path):
    result = run_script(
        tmp_path,
        """
        p = ferropool.Process(target=tasks.print_and_exit, args=("child done",))
        q = ferropool.Process(target=time.sleep, args=(0.3,))
        q.start()
        p.start()
        atexit.register(lambda: print("exit codes", p.exitcode, q.exitcode, flush=True))
        print("main done", flush=True)
        """,
    )
    assert result.returncode == 0, report(result)
    out = lines(result)
    assert out[0] == "main done", report(result)
    assert sorted(out[1:]) == ["child done", "exit codes 0 0"], report(result)
    assert out[-1] == "exit codes 0 0", report(result)


def test_exit_code_of_a_child_that_sets_it_does_not_change_the_parents(tmp_path):
    result = run_script(
        tmp_path,
        """
        p = ferropool.Process(target=tasks.exit_with, args=(3,))
        p.start()
        p.join(30)
        print(p.exitcode)
        """,
    )
    assert result.returncode == 0, report(result)
    assert lines(result) == ["3"]


BLOCKED = {
    "join": """
        p = ferropool.Process(target=time.sleep, args=(60,))
        p.start()
        print("waiting", flush=True)
        p.join()
    """,
    "recv": """
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=tasks.wait_for, args=(b,))
        p.start()
        print("waiting", flush=True)
        a.recv()
    """,
    "poll": """
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=tasks.wait_for, args=(b,))
        p.start()
        print("waiting", flush=True)
        a.poll(None)
    """,
    "wait": """
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=tasks.wait_for, args=(b,))
        p.start()
        print("waiting", flush=True)
        ferropool.connection.wait([a, p.sentinel])
    """,
    "send": """
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=time.sleep, args=(60,), kwargs={})
        p.start()
        print("waiting", flush=True)
        while True:
            a.send_bytes(bytes(1 << 20))  # nobody reads: the socket fills and send blocks
    """,
}


@pytest.mark.parametrize("blocked_in", sorted(BLOCKED))
def test_ctrl_c_interrupts_a_blocked_call_and_ends_the_children(tmp_path, blocked_in):
    """SIGINT to the parent alone: the blocked call raises KeyboardInterrupt at once, and the
    interrupted interpreter terminates its children instead of joining them."""
    text = HEADER + textwrap.dedent(BLOCKED[blocked_in]) + '\nprint("not interrupted")\n'
    with start_child(tmp_path / "interrupted.py", text) as child:
        child.proc.send_signal(signal.SIGINT)
        child.exit_within(10)
        assert child.proc.returncode != 0, child.report()
        assert "KeyboardInterrupt" in child.stderr, child.report()
        assert "not interrupted" not in child.stdout, child.report()
        child.assert_descendants_gone()


def test_children_forked_by_the_fork_server_see_the_parent_as_it_is_at_start(tmp_path):
    """In a single-threaded program a Process is a fork of ferropool's fork server; it must run
    in the parent's current directory, environment and sys.path, get inherited connections at
    their numbers, join the parent's process group, and report exit codes and signals."""
    (tmp_path / "later").mkdir()
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "late_module.py").write_text("VALUE = 42\n")
    result = run_script(
        tmp_path,
        f"""
        from ferropool._runtime import forkserver
        first = ferropool.Process(target=time.sleep, args=(0,))
        first.start()  # makes the fork server: this program has one thread
        first.join(30)
        assert forkserver.server_pid() is not None
        os.chdir({str(tmp_path / "later")!r})
        os.environ["FERRO_LATE"] = "set after the server"
        sys.path.append({str(tmp_path / "extra")!r})
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=tasks.report_surroundings, args=(b,))
        p.start()
        print(a.recv() == (os.getcwd(), "set after the server", 42, os.getpgrp(), forkserver.server_pid()))
        p.join(30)
        killed = ferropool.Process(target=time.sleep, args=(60,))
        killed.start()
        killed.terminate()
        killed.join(30)
        exits = ferropool.Process(target=sys.exit, args=(5,))
        exits.start()
        exits.join(30)
        spawned = ferropool.get_context("spawn").Process(target=tasks.send_parent_pid, args=(b,))
        spawned.start()
        print(a.recv() == os.getpid())
        spawned.join(30)
        print(first.exitcode, p.exitcode, killed.exitcode, exits.exitcode, spawned.exitcode)
        """,
    )
    assert result.returncode == 0, report(result)
    assert lines(result) == ["True", "True", "0 0 -15 5 0"], report(result)
