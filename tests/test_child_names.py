"""Children's names where ``logging`` and the stdlib look for them, as a user's script meets them."""

from __future__ import annotations

import ast

from tests.conftest import program_output

PROGRAM = """
import logging
import multiprocessing
import ferropool as mp

def task(x):
    mp.get_logger().warning("in task %s", x)
    return mp.current_process().name, multiprocessing.current_process().name

def child():
    mp.get_logger().warning("in process")
    assert multiprocessing.current_process().name == mp.current_process().name == "Process-1"

if __name__ == "__main__":
    mp.log_to_stderr(logging.INFO)
    p = mp.Process(target=child)
    p.start()
    p.join()
    print("exitcode", p.exitcode)
    with mp.Pool(2, worker_logs=False) as pool:
        print("pool", sorted(set(pool.map(task, range(4), chunksize=1))))
    with mp.get_context("spawn").Pool(1) as pool:
        print("spawn", pool.map(task, [9]))
"""


def test_records_logged_in_children_carry_the_childs_name(tmp_path):
    out, stderr, detail = program_output(tmp_path, PROGRAM)
    err = stderr.splitlines()
    assert "exitcode 0" in out, detail
    # Process start and exit, with the stdlib's messages, and the child's own record
    for line in [
        "[INFO/Process-1] child process calling self.run()",
        "[WARNING/Process-1] in process",
        "[INFO/Process-1] process exiting with exitcode 0",
    ]:
        assert line in err, detail
    pool = next(line for line in out if line.startswith("pool "))
    names = ast.literal_eval(pool[len("pool ") :])
    assert names and all(ours == stdlib and ours.startswith("PoolWorker-") for ours, stdlib in names), detail
    task_records = [line for line in err if "in task" in line and not line.endswith("in task 9")]
    assert len(task_records) == 4, detail
    assert {line.split("]")[0].split("/")[1] for line in task_records} <= {ours for ours, _ in names}, detail
    assert "spawn [('PoolWorker-1', 'PoolWorker-1')]" in out, detail
