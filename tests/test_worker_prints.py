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
