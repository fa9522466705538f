"""Programs written for ``multiprocessing.Pool`` and ``concurrent.futures``, run unchanged as
scripts: what the stdlib guarantees them about callbacks, initializers, lazy inputs, errors and
Ctrl-C (issue 11's user programs)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, Child, program_report, run_script, script_output

CALLBACKS_DONE_AT_JOIN = """
import threading
out = {out!r}
def append(line):
    with open(out, "a") as f:  # slow enough that callbacks queue up behind the results
        f.write(f"{{line}}\\n")
def fail(x):
    raise ValueError(x)
open(out, "w").close()
import ferropool.pool
p = ferropool.pool.{cls}(2)
for i in range(1000):
    p.apply_async(abs, (i,), callback=append)
for i in range(100):
    p.apply_async(fail, (i,), error_callback=lambda e: append(f"error {{e}}"))
p.map_async(abs, range(10), callback=lambda v: append(f"map {{len(v)}}"))
p.starmap_async(pow, [(2, 3)] * 5, callback=lambda v: append(f"starmap {{len(v)}}"))
p.map_async(fail, range(3), error_callback=lambda e: append("map error"))
p.close()
p.join()
with open(out) as f:
    lines = f.read().splitlines()
print(len(lines), sum(l.startswith("error") for l in lines), "map 10" in lines, "starmap 5" in lines,
      "map error" in lines)
"""


@pytest.mark.parametrize("cls", ["Pool", "ThreadPool"])
def test_join_returns_after_every_callback_ran(tmp_path, cls):
    """``close(); join()`` returns only once every callback and error callback has run, as the
    stdlib's join does: a program reading what its callbacks wrote right after join sees all."""
    result = run_script(tmp_path, CALLBACKS_DONE_AT_JOIN.format(out=str(tmp_path / "lines"), cls=cls))
    assert result.returncode == 0, program_report(result)
    assert result.stdout.split() == ["1103", "100", "True", "True", "True"], program_report(result)


def test_join_from_a_callback_does_not_wait_for_itself(tmp_path):
    """A callback that closes and joins its own pool returns instead of waiting on itself."""
    result = run_script(
        tmp_path,
        """
        import threading
        p = ferropool.Pool(1)
        done = threading.Event()
        def stop(_):
            p.close()
            p.join()
            done.set()
        p.apply_async(abs, (1,), callback=stop)
        print(done.wait(30))
        p.join()
        """,
    )
    assert result.returncode == 0, program_report(result)
    assert result.stdout.split() == ["True"], program_report(result)


def test_terminate_then_join_returns(tmp_path):
    """``terminate(); join()`` with calls queued and callbacks registered returns promptly."""
    result = run_script(
        tmp_path,
        """
        p = ferropool.Pool(2)
        seen = []
        for i in range(50):
            p.apply_async(time.sleep, (0.2,), callback=seen.append, error_callback=seen.append)
        p.terminate()
        started = time.monotonic()
        p.join()
        print(time.monotonic() - started < 10)
        """,
    )
    assert result.returncode == 0, program_report(result)
    assert result.stdout.split() == ["True"], program_report(result)


INITIALIZER_GLOBALS = """
g = None
cache = {{}}
def init(value):
    global g
    g = value
    cache["conn"] = value.upper()
def describe(x):
    return f"{{g}}-{{cache.get('conn')}}-{{x}}"
def task(x):
    return describe(x)
if __name__ == "__main__":
    with ferropool.Pool(2, initializer=init, initargs=("hi",), context={method!r}) as p:
        print(*p.map(task, range(3)), p.apply(task, (9,)), *p.imap(lambda x: g + str(x), [1]))
    with ferropool.ProcessPoolExecutor(1, {method!r}, init, ("ex",)) as ex:
        print(ex.submit(task, 5).result(), *ex.map(task, [6]), ex.submit(lambda: (g, cache["conn"])).result())
"""


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_initializer_globals_reach_tasks_defined_in_main(tmp_path, method):
    """An initializer in the main script sets ``global g`` and fills a module-level dict; tasks
    from the same script, and the helpers they call, see both, as with the stdlib."""
    result = run_script(tmp_path, INITIALIZER_GLOBALS.format(method=method))
    assert result.returncode == 0, program_report(result)
    out = result.stdout.splitlines()
    assert out[0].split() == ["hi-HI-0", "hi-HI-1", "hi-HI-2", "hi-HI-9", "hi1"], program_report(result)
    assert out[1].split() == ["ex-EX-5", "ex-EX-6", "('ex',", "'EX')"], program_report(result)


def test_main_functions_share_one_namespace_in_a_worker(tmp_path):
    """Functions from ``__main__`` call each other (recursion, mutual recursion, methods), a
    ``global`` set by one task is seen by later ones, and a function redefined in the parent
    reaches the worker; a value the worker set is not overwritten by the parent's."""
    out, _, detail = script_output(
        tmp_path,
        """
        K = 1
        def fact(n):
            return 1 if n <= 1 else n * fact(n - 1)
        def even(n):
            return n == 0 or odd(n - 1)
        def odd(n):
            return n != 0 and even(n - 1)
        class C:
            def get(self):
                return K
        def set_k(v):
            global K
            K = v
        def get_k():
            return K
        with ferropool.ProcessPoolExecutor(1) as ex:
            print(ex.submit(fact, 5).result(), ex.submit(even, 10).result(), ex.submit(C().get).result())
            ex.submit(set_k, 42).result()
            print(ex.submit(get_k).result(), ex.submit(C().get).result(), ex.submit(lambda: K).result())
            def get_k():
                return ("redefined", K)
            K = 7
            print(*ex.submit(get_k).result())
        """,
    )
    assert out == ["120 True 1", "42 42 42", "redefined 42"], detail


RAISING_INPUT = """
import ferropool.pool
class SayWhen(ValueError):
    pass
def numbers(total, when):
    for i in range(total):
        if i == when:
            raise SayWhen(i)
        yield i
def square(x):
    return x * x
def drain(it):
    out = []
    try:
        for v in it:
            out.append(v)
    except SayWhen as exc:
        out.append(f"raised {{exc}}")
    out.append("more" if next(it, None) is not None else "end")
    return out
with ferropool.pool.{cls}(2) as p:
    for total, when, chunksize in [(1, 0, 1), (10, 3, 1), (20, 7, 2), (20, 7, 4), (3000, 2500, 7)]:
        print(*drain(p.imap(square, numbers(total, when), chunksize))[-4:])
        values = drain(p.imap_unordered(square, numbers(total, when), chunksize))
        print(len(values), *values[-2:], sorted(values[:-2]) == [i * i for i in range(len(values) - 2)])
"""


@pytest.mark.parametrize("cls", ["Pool", "ThreadPool"])
def test_imap_over_an_input_that_raises(tmp_path, cls):
    """The input raises while ``imap`` reads it: ``next()`` returns the results before the chunk
    it broke off in, then raises the input's exception, then the iteration ends (the stdlib's
    output for this script); in ``imap_unordered`` the exception comes after every earlier
    result."""
    out, _, detail = script_output(tmp_path, RAISING_INPUT.format(cls=cls))
    assert out == [
        "raised 0 end",
        "2 raised 0 end True",
        "1 4 raised 3 end",
        "5 raised 3 end True",
        "16 25 raised 7 end",
        "8 raised 7 end True",
        "4 9 raised 7 end",
        "6 raised 7 end True",
        f"{2497**2} {2498**2} raised 2500 end",
        "2501 raised 2500 end True",
    ], detail


POOL_ERRORS = """
import multiprocessing.pool
import threading
import ferropool.pool
def raising():
    raise KeyError("key")
def unpicklable_result(x=None):
    return threading.Lock()
if __name__ == "__main__":
    p = ferropool.Pool(2)
    print(ferropool.pool.RemoteTraceback is multiprocessing.pool.RemoteTraceback,
          issubclass(ferropool.pool.MaybeEncodingError, multiprocessing.pool.MaybeEncodingError))
    for i in range(20):  # the error callback has run when get() raises, every time
        seen = [None]
        res = p.apply_async(raising, error_callback=lambda e: seen.__setitem__(0, e))
        try:
            res.get(30)
        except KeyError as exc:
            assert seen[0] is exc, (i, seen)
            assert type(exc.__cause__) is multiprocessing.pool.RemoteTraceback, exc.__cause__
            assert "raise KeyError" in str(exc.__cause__), exc.__cause__  # its source line
        seen = [None]
        res = p.apply_async(unpicklable_result, error_callback=lambda e: seen.__setitem__(0, e))
        try:
            res.get(30)
        except multiprocessing.pool.MaybeEncodingError as exc:
            assert seen[0] is exc and exc.exc and exc.value, (i, seen)
            assert "cannot pickle" in str(exc) and "lock" in exc.value, exc
            assert isinstance(exc.__cause__, multiprocessing.pool.RemoteTraceback), exc.__cause__
        got = []
        res = p.map_async(abs, [-1, -2], callback=got.append)
        assert res.get(30) == [1, 2] and got == [[1, 2]] and res.ready(), (i, got)
    for call in (lambda: p.map(unpicklable_result, [1]), lambda: next(p.imap(unpicklable_result, [1]))):
        try:
            call()
        except multiprocessing.pool.MaybeEncodingError as exc:
            print(type(exc).__name__, "lock" in exc.value)
    print(p.apply(abs, (-3,)))
    p.close()
    p.join()
"""


def test_pool_errors_are_the_stdlibs(tmp_path):
    """A result that cannot be pickled raises ``MaybeEncodingError`` from ``get()``, ``map`` and
    ``imap``; the error callback has run by the time ``get()`` raises, and a callback by the
    time it returns; the worker's traceback is a ``ferropool.pool.RemoteTraceback``, which is
    ``multiprocessing.pool.RemoteTraceback``, as CPython's own tests check; the pool goes on."""
    out, _, detail = script_output(tmp_path, POOL_ERRORS)
    assert out == [
        "True True",
        "MaybeEncodingError True",
        "MaybeEncodingError True",
        "3",
    ], detail


TOP_LEVEL_NAMES = """
import concurrent.futures
import multiprocessing
import sys
import ferropool
with open({preload!r}, "w") as f:
    f.write("import os\\nLOADED_IN = os.getpid()\\n")
class Celsius:
    def __init__(self, degrees):
        self.degrees = degrees
def as_kelvin(c):
    return Celsius, (c.degrees + 273,)
def degrees(c):
    return c.degrees
def has_preloaded():
    return "preloaded_mod" in sys.modules
if __name__ == "__main__":
    missing = sorted(n for n in dir(multiprocessing) if not n.startswith("_") and not hasattr(ferropool, n))
    print(*missing)
    ferropool.set_forkserver_preload(["preloaded_mod", "no_such_module_anywhere"])  # before the server
    with ferropool.Pool(1) as p:
        print(p.apply(has_preloaded), "preloaded_mod" in sys.modules)
    with ferropool.ProcessPoolExecutor(1) as ex, ferropool.ThreadPoolExecutor(1) as tx:
        print(isinstance(ex, concurrent.futures.Executor), isinstance(tx, ferropool.Executor))
    ferropool.reducer.register(Celsius, as_kelvin)
    ferropool.allow_connection_pickling()
    ferropool.set_executable({wrapper!r})
    with ferropool.Pool(1, context="spawn") as p:
        print(p.apply(degrees, (Celsius(20),)), p.apply(degrees, (Celsius(0),)))
    proc = ferropool.get_context("spawn").Process(target=print, args=("child ran",), kwargs={{"flush": True}})
    proc.start()
    proc.join()
    with open({marker!r}) as f:
        print(len(f.read().splitlines()) >= 2)
    try:
        ferropool.set_forkserver_preload("preloaded_mod")
    except TypeError as exc:
        print("TypeError:", exc)
"""


def test_stdlib_top_level_names(tmp_path):
    """``set_executable``, ``set_forkserver_preload``, ``allow_connection_pickling``, ``reducer``
    and ``Executor`` exist at the top level and do what the stdlib's do; no name of the stdlib's
    package is missing (``sys`` is the stdlib module's own import)."""
    marker = tmp_path / "executable-ran"
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho ran >> "{marker}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    code = TOP_LEVEL_NAMES.format(preload=str(tmp_path / "preloaded_mod.py"), wrapper=str(wrapper), marker=str(marker))
    out, _, detail = script_output(tmp_path, code)
    assert out == [
        "sys",
        "True False",
        "True True",
        "293 273",
        "child ran",
        "True",
        "TypeError: module_names must be a list of strings",
    ], detail


CTRL_C_HEADER = """
import functools, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner in the background ignores it
sys.path.insert(0, {root!r})
import ferropool
from tests import _tasks
task = functools.partial(_tasks.wait_gate, {gate!r}, beacon={beacon!r})
"""
CTRL_C_PROGRAMS = {
    "executor-map": """
        with ferropool.ProcessPoolExecutor(2) as ex:
            list(ex.map(task, range(6)))
    """,
    "executor-exit": """
        with ferropool.ProcessPoolExecutor(2) as ex:
            futures = [ex.submit(task) for _ in range(6)]
    """,
    "pool-map": """
        with ferropool.Pool(2) as p:
            p.map(task, range(6), chunksize=1)
    """,
}


@pytest.mark.parametrize("program", sorted(CTRL_C_PROGRAMS))
def test_one_ctrl_c_ends_a_pool_block_promptly(tmp_path, gate, beacon, program):
    """One SIGINT while the tasks of a ``with`` block run (in its body, or while ``__exit__``
    waits for them): the program ends within 10 s with the KeyboardInterrupt traceback, and no
    worker outlives it, instead of waiting for the running tasks."""
    script = tmp_path / "interrupted.py"
    header = CTRL_C_HEADER.format(root=ROOT, gate=gate.path, beacon=beacon.path)
    child = Child(script, header + textwrap.dedent(CTRL_C_PROGRAMS[program]) + 'print("not interrupted")\n')
    try:
        beacon.wait()  # a task has started
        child.snapshot_descendants()
        child.proc.send_signal(signal.SIGINT)
        try:
            child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill_all()
            pytest.fail("the program did not end within 10 s of one SIGINT (it was killed)\n" + child.report())
        assert child.proc.returncode != 0, child.report()
        assert "KeyboardInterrupt" in child.stderr, child.report()
        assert "not interrupted" not in child.stdout, child.report()
        child.assert_descendants_gone()
    finally:
        child.close()
