"""Programs that print from process-pool tasks, run as a user runs them: a script, stdout a pipe
or a terminal, workers from the fork server or fresh interpreters (``spawn``)."""

from __future__ import annotations

import pytest

from tests.conftest import program_output

PROGRAM = """
import sys, threading
import ferropool as mp

def task(x):
    print("print", x)
    sys.stdout.write(f"write {x}\\n")
    print("stderr", x, file=sys.stderr)
    print("flushed", x, flush=True)
    print("partial", x, end="")
    print(" end", x)
    threads = [threading.Thread(target=print, args=(f"thread {x} {i}\\n",), kwargs={"end": ""}) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return x * x

if __name__ == "__main__":
    SETUP
    with POOL(2) as p:
        print("map", p.map(task, range(4)))
    with EXECUTOR(2) as ex:
        print("executor", list(ex.map(task, range(4, 8))))
        ex.submit(print, "submitted").result()
"""

STARTS = {
    "forkserver": ("pass", "mp.Pool", "mp.ProcessPoolExecutor"),
    "set_start_method-spawn": ("mp.set_start_method('spawn')", "mp.Pool", "mp.ProcessPoolExecutor"),
    "get_context-spawn": (
        "ctx = mp.get_context('spawn')",
        "ctx.Pool",
        "(lambda n: mp.ProcessPoolExecutor(n, mp_context=ctx))",
    ),
}


def expected_stdout(items: range) -> list[str]:
    lines = []
    for x in items:
        lines += [f"print {x}", f"write {x}", f"flushed {x}", f"partial {x} end {x}"]
        lines += [f"thread {x} {i}" for i in range(3)]
    return lines


@pytest.mark.parametrize("start", list(STARTS))
@pytest.mark.parametrize(("tty", "unbuffered"), [(False, False), (False, True), (True, False)])
def test_prints_from_tasks_reach_the_parent(tmp_path, start, tty, unbuffered):
    setup, pool, executor = STARTS[start]
    source = PROGRAM.replace("SETUP", setup).replace("POOL", pool).replace("EXECUTOR", executor)
    env = {"PYTHONUNBUFFERED": "1"} if unbuffered else {}
    out, stderr, detail = program_output(tmp_path, source, tty=tty, env=env)
    assert "map [0, 1, 4, 9]" in out, detail
    assert "executor [16, 25, 36, 49]" in out, detail
    task_lines = [line for line in out if not line.startswith(("map ", "executor "))]
    assert sorted(task_lines) == sorted([*expected_stdout(range(8)), "submitted"]), detail
    assert sorted(stderr.splitlines()) == sorted(f"stderr {x}" for x in range(8)), detail


FLOOD = """
import ferropool as mp

LINES = 3000

def task(x):
    for i in range(LINES):
        print(f"task {x} line {i} " + "z" * 80)
    return x

if __name__ == "__main__":
    with mp.Pool(2) as p:
        p.map(task, range(0, 3))
    print("after the pool")
    with mp.ProcessPoolExecutor(2) as ex:
        list(ex.map(task, range(3, 6)))
    print("after the executor")
    left = mp.Pool(2)  # never closed: the program's exit finishes it
    left.map(task, range(6, 9))
    print("end of the program")
"""


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "terminal"])
def test_a_flood_of_prints_arrives_whole_before_the_pool_ends(tmp_path, tty):
    # each task prints more than its output socket holds, faster than the parent writes: the
    # rest waits in the worker, and must neither be lost when the with block ends the workers
    # (Pool's terminate()) or the program exits, nor come after the program's next line
    out, stderr, detail = program_output(tmp_path, FLOOD, tty=tty)
    assert "dropped" not in stderr, detail
    lines = {x: [line for line in out if line.startswith(f"task {x} ")] for x in range(9)}
    for x, got in lines.items():
        assert got == [f"task {x} line {i} " + "z" * 80 for i in range(3000)], f"task {x}: {len(got)} lines"
    last = {x: out.index(got[-1]) for x, got in lines.items()}
    assert max(last[x] for x in range(3)) < out.index("after the pool")
    assert max(last[x] for x in range(3, 6)) < out.index("after the executor")
