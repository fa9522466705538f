"""ferropool.Process across real child processes: lifecycle, exit codes, identity, bad input; then
processes at the parent's exit, ``__main__`` targets, and Ctrl-C in blocking calls, each in a fresh
interpreter running a small script."""

from __future__ import annotations

import os
import signal

import ferropool
import psutil
import pytest
from ferropool.connection import wait

from tests import _process_tasks as tasks
from tests.conftest import SCRIPT_PRELUDE, WAIT, program_report, run_script, script_output, start_child, wait_gone


def started(target=None, *args, **kwargs):
    p = ferropool.Process(target=target, args=args, **kwargs)
    p.start()
    return p


def joined(p):
    p.join(WAIT)
    assert not p.is_alive(), f"{p} did not end within {WAIT} s"
    return p


# ----------------------------------------------------------------------------------------------
# running and exit codes


def test_target_gets_args_and_kwargs(duplex):
    a, b = duplex
    p = ferropool.Process(target=tasks.send, args=(b, 1, "two"), kwargs={"three": [3]})
    p.start()
    assert a.recv() == ((1, "two"), {"three": [3]})
    assert joined(p).exitcode == 0


def test_exitcode_is_none_before_start_and_while_running(duplex):
    a, b = duplex
    p = ferropool.Process(target=tasks.wait_for, args=(b,))
    assert p.exitcode is None
    p.start()
    assert p.exitcode is None
    a.send("go")
    assert joined(p).exitcode == 0


def test_exception_in_run_gives_exitcode_1_and_traceback_on_stderr(capfd):
    p = joined(started(tasks.fail))
    assert p.exitcode == 1
    err = capfd.readouterr().err
    assert f"Process {p.name}:" in err
    assert "Traceback (most recent call last)" in err
    assert "ValueError: raised in the child" in err


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (7, 7), (None, 0), ("a message", 1)])
def test_sys_exit_sets_exitcode(capfd, code, expected):
    p = joined(started(tasks.exit_with, code))
    assert p.exitcode == expected
    if isinstance(code, str):
        assert "a message" in capfd.readouterr().err


@pytest.mark.parametrize(("method", "signum"), [("terminate", signal.SIGTERM), ("kill", signal.SIGKILL)])
def test_killed_process_has_negative_signal_exitcode(duplex, method, signum):
    a, b = duplex
    p = started(tasks.wait_for, b)
    getattr(p, method)()
    assert joined(p).exitcode == -signum
    assert f"exitcode=-{signum.name}" in repr(p)


def test_terminate_after_exit_is_harmless():
    p = joined(started(tasks.exit_with, 0))
    p.terminate()
    p.kill()
    assert p.exitcode == 0


def test_subclass_run_is_used(duplex):
    a, b = duplex
    p = tasks.Reporter(b, 21)
    p.start()
    what, value, pid = a.recv()
    assert (what, value, pid) == ("run", 42, p.pid)
    assert joined(p).exitcode == 0


def test_lambda_and_closure_targets(duplex):
    a, b = duplex
    offset = 10
    joined(started(lambda conn: conn.send(offset + 1), b))
    joined(started(lambda: b.send(offset + 2)))
    assert [a.recv(), a.recv()] == [11, 12]


def test_target_none_runs_nothing():
    assert joined(started(None)).exitcode == 0


def test_unpicklable_process_fails_at_start_and_starts_nothing():
    import threading

    p = ferropool.Process(target=tasks.send, args=(threading.Lock(),))
    with pytest.raises(TypeError):
        p.start()
    assert p.pid is None
    assert ferropool.active_children() == []


# ----------------------------------------------------------------------------------------------
# join, is_alive, sentinel, active_children


def test_join_timeout_returns_while_running(duplex):
    a, b = duplex
    p = started(tasks.wait_for, b)
    p.join(0.05)
    assert p.is_alive()
    assert p.exitcode is None
    a.send("go")
    assert joined(p).exitcode == 0


def test_sentinel_becomes_ready_when_the_process_ends(duplex):
    a, b = duplex
    p = started(tasks.wait_for, b)
    assert wait([p.sentinel], timeout=0.05) == []
    a.send("go")
    assert wait([p.sentinel], timeout=WAIT) == [p.sentinel]
    assert joined(p).exitcode == 0


def test_wait_mixes_sentinels_and_connections(duplex):
    a, b = duplex
    p = started(tasks.send, b, "hello")
    ready = wait([a, p.sentinel], timeout=WAIT)
    assert a in ready
    assert a.recv() == (("hello",), {})
    assert wait([p.sentinel], timeout=WAIT) == [p.sentinel]
    joined(p)


def test_active_children_lists_running_and_reaps_finished(duplex):
    a, b = duplex
    running = started(tasks.wait_for, b)
    done = started(tasks.exit_with, 0)
    assert wait([done.sentinel], timeout=WAIT)
    children = ferropool.active_children()
    assert running in children
    assert done not in children
    assert done.exitcode == 0
    a.send("go")
    joined(running)
    assert ferropool.active_children() == []


def test_is_alive_before_start_and_after_join():
    p = ferropool.Process(target=tasks.exit_with, args=(0,))
    assert not p.is_alive()
    p.start()
    joined(p)
    assert not p.is_alive()


# ----------------------------------------------------------------------------------------------
# identity


def test_identity_in_the_child(duplex):
    a, b = duplex
    p = ferropool.Process(target=tasks.identity, args=(b,), name="worker-x", daemon=True)
    p.start()
    info = a.recv()
    joined(p)
    assert info["name"] == "worker-x"
    assert info["pid"] == info["ident"] == p.pid == p.ident
    assert info["daemon"] is True
    assert info["alive"] is True
    assert info["authkey"] == ferropool.current_process().authkey
    assert info["parent_pid"] == os.getpid()
    assert info["parent_name"] == "MainProcess"
    assert info["parent_alive"] is True
    assert info["argv"] == __import__("sys").argv


def test_main_process_identity():
    me = ferropool.current_process()
    assert me.name == "MainProcess"
    assert me.pid == me.ident == os.getpid()
    assert me.is_alive()
    assert me.daemon is False
    assert isinstance(me.authkey, bytes) and len(me.authkey) == 32
    assert ferropool.parent_process() is None


def test_default_names_count_up_and_name_is_settable():
    p, q = ferropool.Process(), ferropool.Process()
    n = int(p.name.split("-")[1])
    assert p.name == f"Process-{n}"
    assert q.name == f"Process-{n + 1}"
    p.name = "renamed"
    assert p.name == "renamed"
    with pytest.raises(TypeError):
        p.name = 3


def test_repr_shows_the_state():
    p = ferropool.Process(name="r")
    assert repr(p).startswith("<Process name='r'") and "initial" in repr(p)
    p.start()
    joined(p)
    assert "stopped exitcode=0" in repr(p)
    p.close()
    assert "closed" in repr(p)


def test_daemon_defaults_to_false_and_is_settable_before_start():
    p = ferropool.Process(target=tasks.exit_with, args=(0,))
    assert p.daemon is False
    p.daemon = True
    assert p.daemon is True
    p.start()
    joined(p)


# ----------------------------------------------------------------------------------------------
# close and bad input


def test_close_of_running_process_raises_valueerror(duplex):
    a, b = duplex
    p = started(tasks.wait_for, b)
    with pytest.raises(ValueError, match="Cannot close a process while it is still running"):
        p.close()
    a.send("go")
    joined(p)
    p.close()
    p.close()  # twice is fine


@pytest.mark.parametrize(
    "use",
    [
        lambda p: p.start(),
        lambda p: p.join(),
        lambda p: p.is_alive(),
        lambda p: p.terminate(),
        lambda p: p.kill(),
        lambda p: p.exitcode,
        lambda p: p.pid,
        lambda p: p.sentinel,
    ],
)
def test_methods_after_close_raise_valueerror(use):
    p = joined(started(tasks.exit_with, 0))
    p.close()
    with pytest.raises(ValueError, match="process object is closed"):
        use(p)


def test_start_twice_raises():
    p = started(tasks.exit_with, 0)
    with pytest.raises(AssertionError, match="cannot start a process twice"):
        p.start()
    joined(p)


def test_join_before_start_raises():
    with pytest.raises(AssertionError, match="can only join a started process"):
        ferropool.Process().join()


def test_sentinel_before_start_raises():
    with pytest.raises(ValueError, match="process not started"):
        ferropool.Process().sentinel  # noqa: B018


def test_daemon_set_after_start_raises():
    p = started(tasks.exit_with, 0)
    with pytest.raises(AssertionError, match="process has already started"):
        p.daemon = True
    joined(p)


def test_group_must_be_none():
    with pytest.raises(AssertionError, match="group argument must be None"):
        ferropool.Process(group="g")


def test_daemon_cannot_start_children(duplex):
    a, b = duplex
    joined(started(tasks.start_grandchild, b, daemon=True))
    assert a.recv() == ("refused", "daemonic processes are not allowed to have children")


def test_non_daemon_child_starts_and_joins_a_grandchild(duplex):
    a, b = duplex
    joined(started(tasks.start_grandchild, b))
    assert a.recv() == ("started", 5)


# ----------------------------------------------------------------------------------------------
# context API


def test_get_context_exposes_process_and_pipe():
    for method in ferropool.get_all_start_methods():
        ctx = ferropool.get_context(method)
        assert ctx.get_start_method() == method
        assert issubclass(ctx.Process, ferropool.Process)
        assert (ctx.Process is ferropool.process.SpawnProcess) == (method == "spawn")
        assert ctx.Pipe is ferropool.Pipe
        assert ctx.cpu_count() >= 1


def test_get_context_rejects_unknown_methods():
    with pytest.raises(ValueError, match="cannot find context for 'threads'"):
        ferropool.get_context("threads")


def test_set_start_method_once_unless_forced():
    saved = ferropool.get_start_method(allow_none=True)
    try:
        ferropool.set_start_method(None, force=True)
        assert ferropool.get_start_method(allow_none=True) is None
        ferropool.set_start_method("spawn")
        assert ferropool.get_start_method() == "spawn"
        assert ferropool.get_context().get_start_method() == "spawn"
        with pytest.raises(RuntimeError, match="context has already been set"):
            ferropool.set_start_method("fork")
        ferropool.set_start_method("fork", force=True)
        assert ferropool.get_start_method() == "fork"
        with pytest.raises(ValueError):
            ferropool.set_start_method("nope", force=True)
    finally:
        ferropool.set_start_method(saved, force=True)


def test_set_start_method_spawn_reaches_pools_made_without_a_context():
    from ferropool._runtime import start_methods

    saved = ferropool.get_start_method(allow_none=True)
    try:
        ferropool.set_start_method("spawn", force=True)
        assert start_methods.for_pool(None) == "spawn"
        with ferropool.ProcessPoolExecutor(1) as ex:
            assert ex.submit(abs, -2).result() == 2
        ferropool.set_start_method("fork", force=True)
        assert start_methods.for_pool(None) == "forkserver"
    finally:
        ferropool.set_start_method(saved, force=True)


def test_all_start_methods_default_first_and_freeze_support_is_a_no_op():
    assert ferropool.get_all_start_methods()[0] == "forkserver"
    assert set(ferropool.get_all_start_methods()) == {"fork", "spawn", "forkserver"}
    assert ferropool.freeze_support() is None


def test_context_pool_uses_the_context():
    with ferropool.get_context("spawn").Pool(1) as pool:
        assert pool.apply(abs, (-3,)) == 3


def test_stdlib_exception_classes_are_reexported():
    import multiprocessing

    assert ferropool.ProcessError is multiprocessing.ProcessError
    assert ferropool.BufferTooShort is multiprocessing.BufferTooShort
    assert ferropool.AuthenticationError is multiprocessing.AuthenticationError


# ----------------------------------------------------------------------------------------------
# inheritance


def test_authkey_set_before_start_reaches_the_child(duplex):
    a, b = duplex
    p = ferropool.Process(target=tasks.identity, args=(b,))
    p.authkey = b"shared secret"
    p.start()
    assert a.recv()["authkey"] == b"shared secret"
    joined(p)


def test_child_writes_to_the_inherited_stdout(capfd):
    joined(started(tasks.print_and_exit, "hello from the child"))
    assert "hello from the child" in capfd.readouterr().out


def test_child_started_from_a_thread_outlives_that_thread(duplex):
    """Nothing ties the child to the thread that started it (a parent-death signal would)."""
    import threading

    a, b = duplex
    box = []
    starter = threading.Thread(target=lambda: box.append(started(tasks.wait_for, b)))
    starter.start()
    starter.join(WAIT)
    (p,) = box
    assert p.is_alive()
    a.send("go")
    assert joined(p).exitcode == 0


MANY_CONNECTIONS_SCRIPT = """
def child(conns):
    for conn in conns:
        conn.send(conn.fileno())

if __name__ == "__main__":
    with ferropool.Pool(1) as pool:  # the fork server exists from now on
        pool.map(abs, [1])
    pairs = [ferropool.Pipe() for _ in range(100)]
    p = ferropool.Process(target=child, args=([theirs for _, theirs in pairs],))
    p.start()
    p.join(30)
    print(p.exitcode, sum(1 for ours, theirs in pairs if ours.poll(0) and ours.recv() == theirs.fileno()))
"""


def test_a_process_gets_a_hundred_connections_through_the_fork_server(tmp_path):
    # beyond 60 descriptors the child used to exit with code 1, silently, without running
    result = run_script(tmp_path, MANY_CONNECTIONS_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", "100"]


UNLOADABLE_ARGUMENT_SCRIPT = """
def fail():
    raise RuntimeError("cannot be loaded here")

class Unloadable:
    def __reduce__(self):
        return fail, ()

if __name__ == "__main__":
    with ferropool.Pool(1) as pool:
        pool.map(abs, [1])
    p = ferropool.Process(target=print, args=(Unloadable(),))
    p.start()
    p.join(30)
    print(p.exitcode)
"""


def test_a_forked_process_that_cannot_load_its_arguments_says_why(tmp_path):
    result = run_script(tmp_path, UNLOADABLE_ARGUMENT_SCRIPT)
    assert result.stdout.split() == ["1"]
    assert "RuntimeError: cannot be loaded here" in result.stderr


# -- at the parent's exit, in a fresh interpreter ------------------------------------------------


def test_main_functions_lambdas_and_main_subclasses_run_without_a_main_guard(tmp_path):
    out, _, detail = script_output(
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
    assert out == ["[('function', 10), ('lambda', 12), ('subclass', 'sub')] [0, 0, 0]"], detail


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
    assert result.returncode == 0, program_report(result)
    pid, exitcode = result.stdout.splitlines()
    assert exitcode == "daemon exitcode -15", program_report(result)
    assert not psutil.pid_exists(int(pid)) or not wait_gone([psutil.Process(int(pid))], 10)


def test_daemon_child_that_ignores_sigterm_is_killed_at_parent_exit(tmp_path):
    out, _, detail = script_output(
        tmp_path,
        """
        a, b = ferropool.Pipe()
        p = ferropool.Process(target=tasks.ignore_sigterm, args=(b,), daemon=True)
        p.start()
        assert a.recv() == "ignoring SIGTERM"
        atexit.register(lambda: print("daemon exitcode", p.exitcode, flush=True))
        """,
    )
    assert out == ["daemon exitcode -9"], detail


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
    assert result.returncode == 0, program_report(result)
    out = result.stdout.splitlines()
    assert out[0] == "main done", program_report(result)
    assert sorted(out[1:]) == ["child done", "exit codes 0 0"], program_report(result)
    assert out[-1] == "exit codes 0 0", program_report(result)


def test_exit_code_of_a_child_that_sets_it_does_not_change_the_parents(tmp_path):
    out, _, detail = script_output(
        tmp_path,
        """
        p = ferropool.Process(target=tasks.exit_with, args=(3,))
        p.start()
        p.join(30)
        print(p.exitcode)
        """,
    )
    assert out == ["3"], detail


# each blocked call runs in a script that has made a pipe ``a, b`` and started a child ``p``
SLEEPER = "ferropool.Process(target=time.sleep, args=(60,))"
WAITER = "ferropool.Process(target=tasks.wait_for, args=(b,))"  # until a sends or closes
BLOCKED = {
    "join": (SLEEPER, "p.join()"),
    "recv": (WAITER, "a.recv()"),
    "poll": (WAITER, "a.poll(None)"),
    "wait": (WAITER, "ferropool.connection.wait([a, p.sentinel])"),
    # nobody reads: the socket fills and send blocks
    "send": (SLEEPER, "while True:\n    a.send_bytes(bytes(1 << 20))"),
}


@pytest.mark.parametrize("blocked_in", sorted(BLOCKED))
def test_ctrl_c_interrupts_a_blocked_call_and_ends_the_children(tmp_path, blocked_in):
    """SIGINT to the parent alone: the blocked call raises KeyboardInterrupt at once, and the
    interrupted interpreter terminates its children instead of joining them."""
    process, call = BLOCKED[blocked_in]
    blocked = f'a, b = ferropool.Pipe()\np = {process}\np.start()\nprint("waiting", flush=True)\n{call}\n'
    text = SCRIPT_PRELUDE + blocked + 'print("not interrupted")\n'
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
    out, _, detail = script_output(
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
    assert out == ["True", "True", "0 0 -15 5 0"], detail
