#!/usr/bin/env python3
"""Where each process's CPU goes in a flood of tiny tasks, by thread and by kernel path (perf).

Usage (from the repository root; needs ``perf`` and permission to sample the kernel)::

    python benches/cpu_shares.py            # submit_profile.py under perf record
    python benches/cpu_shares.py --pool     # the same with Pool.apply_async

``submit_profile.py`` says how many microseconds of CPU a task costs the parent and the workers;
this says what those microseconds are. It samples every thread of the run (``perf record -g``)
and, for each role (the submitting thread, the engine thread, the completion thread, the
workers), prints the share of its samples whose call stack passes through each path below.
A sample can pass through several (a socket write that wakes a sleeper is both a write and a
wake-up), so shares do not add up to 100%. The kernel's paths are whole; the user-space rows
(bytecode, pickle) are lower bounds, as CPython and glibc keep no frame pointers and many of
their stacks are cut short.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict

#: path -> substrings of a frame's symbol that mark it
PATHS = {
    "socket write (sendmsg)": ("unix_stream_sendmsg",),
    "  of which waking the reader": ("sock_def_readable",),
    "  of which allocating the buffer": ("sock_alloc_send_pskb",),
    "socket read (recvmsg)": ("unix_stream_recvmsg", "unix_stream_read_generic"),
    "poll": ("do_sys_poll",),
    "futex (GIL, locks, condition variables)": ("futex_wait", "futex_wake", "do_futex"),
    "scheduler (switching threads)": ("__schedule",),
    "Python bytecode": ("_PyEval_EvalFrameDefault",),
    "pickle": ("_pickle_", "Pickler_", "Unpickler_", "load", "save"),
}


#: the first line of a sample: its thread's name, pid/tid; the stack's frames follow
HEADER = re.compile(r"^\s*(\S+)\s+(\d+)/(\d+)\s*$")


def _role(comm: str, pid: str, tid: str, parent: str) -> str:
    if pid != parent:
        return "workers"
    if comm.startswith("ferropool-engin"):
        return "engine thread"
    if comm.startswith("ferropool-resul"):
        return "completion thread"
    return "submitting thread" if tid == pid else "other parent threads"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", action="store_true", help="Pool.apply_async instead of submit")
    options = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = [sys.executable, os.path.join(here, "submit_profile.py")] + (["--pool"] if options.pool else [])
        run = subprocess.run(
            ["perf", "record", "-q", "-F", "4999", "-g", "-o", data, "--", *cmd],
            capture_output=True,
            text=True,
            check=True,
        )
        print("\n".join(run.stdout.splitlines()[:4]))
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", "comm,pid,tid,ip,sym"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    samples: list[tuple[str, str, str, list[str]]] = []
    for line in script.splitlines():
        head = HEADER.match(line)
        if head:
            samples.append((head[1], head[2], head[3], []))
        elif line.strip() and samples:
            samples[-1][3].append(line.split(None, 1)[-1])  # the symbol, without its address
    # the benchmark's own process: the first sampled pid that has an engine thread
    parent = next(pid for comm, pid, _, _ in samples if comm.startswith("ferropool-engin"))
    by_role: dict[str, list[list[str]]] = defaultdict(list)
    for comm, pid, tid, frames in samples:
        by_role[_role(comm, pid, tid, parent)].append(frames)
    total = sum(len(v) for v in by_role.values())
    roles = ["submitting thread", "engine thread", "completion thread", "workers"]
    print()
    print("| path | " + " | ".join(roles) + " |")
    print("|---|" + "---:|" * len(roles))
    print("| share of all samples | " + " | ".join(f"{100 * len(by_role[r]) / total:.0f}%" for r in roles) + " |")
    for path, marks in PATHS.items():
        cells = []
        for r in roles:
            stacks = by_role[r]
            hit = sum(1 for frames in stacks if any(m in f for f in frames for m in marks))
            cells.append(f"{100 * hit / max(1, len(stacks)):.0f}%")
        print(f"| {path} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
