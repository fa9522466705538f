"""Worker output where a program's descriptors stray from the usual: numbers past 1024, and a
task that leaves a child process behind. Each runs as a user's script in a subprocess."""

from __future__ import annotations

import os

from tests.conftest import program_output

HIGH_DESCRIPTORS = """
import os, resource, sys, threading, time
import ferropool as mp

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < 2048 and hard >= 2048:
    resource.setrlimit(resource.RLIMIT_NOFILE, (2048, hard))
held = [os.open(os.devnull, os.O_RDONLY)]
while held[-1] < 1100:  # every descriptor the pool makes from here on is numbered past 1024
    held.append(os.dup(held[0]))

def work(x):
    print("line", x)
    return x

if __name__ == "__main__":
    pool = mp.Pool(2)
    print("result", pool.map(work, range(20)), flush=True)
    pool.close()
    started = time.monotonic()
    joining = threading.Thread(target=pool.join)
    joining.start()
    joining.join(3.0)
    print("joined", not joining.is_alive(), flush=True)
    print(f"join took {time.monotonic() - started:.2f} s", file=sys.stderr)
"""


def test_descriptors_past_1024_do_not_stall_output_or_shutdown(tmp_path):
    out, _, detail = program_output(tmp_path, HIGH_DESCRIPTORS)
    assert "result " + str(list(range(20))) in out, detail
    assert sorted(line for line in out if line.startswith("line ")) == sorted(f"line {x}" for x in range(20))
    assert "joined True" in out, detail


LEFT_BEHIND = """
import os, sys, threading
import ferropool as mp

FIFO = sys.argv[1]

def leave_a_child(_):
    pid = os.fork()
    if pid == 0:
        print("the child's own line", flush=True)
        fd = os.open(FIFO, os.O_RDONLY)
        os.read(fd, 1)  # until the script writes or closes its end: it outlives the pool
        os._exit(0)
    print("task line")
    return pid

if __name__ == "__main__":
    keep = os.open(FIFO, os.O_RDWR)  # the only writer: the child blocks until this goes
    try:
        pool = mp.Pool(1)
        pool.map(leave_a_child, [0])
        pool.close()
        joining = threading.Thread(target=pool.join)
        joining.start()
        joining.join(3.0)
        print("joined", not joining.is_alive(), flush=True)
    finally:
        os.write(keep, b"x")
        os.close(keep)
"""


def test_a_child_a_task_left_behind_does_not_hold_up_shutdown(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    source = LEFT_BEHIND.replace("sys.argv[1]", repr(str(fifo)))
    out, _, detail = program_output(tmp_path, source)
    assert "joined True" in out, detail
    assert "task line" in out, detail
    # the child writes where the worker's stdout was, as it would without ferropool
    assert "the child's own line" in out, detail
