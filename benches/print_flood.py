#!/usr/bin/env python3
"""Tasks that print a lot, in a plain script: how many lines arrive, and what it costs.

Usage (from the repository root)::

    python benches/print_flood.py                     # 5 rounds: ferropool against the stdlib
    python benches/print_flood.py --rounds 3 --also prev=/tmp/prevvenv/bin/python

Each round runs, each in a fresh child with stdout a file, ``Pool(2).map`` of 4 tasks that
print 20,000 lines of 100 bytes each, then ``terminate()`` and ``join()``, as a ``with Pool()``
block ends. It reports the lines that reached the file (80,000 expected), the map's wall time
(until the results are in) and the parent's CPU, as medians over rounds; the implementations
alternate within each round. ``--also LABEL=PYTHON`` adds another interpreter (a virtual
environment holding another build of ferropool) to every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

LINES = 20_000
TASKS = 4


def _child(which: str) -> None:
    if which == "stdlib":
        import multiprocessing as mp
    else:
        import ferropool as mp  # type: ignore[no-redef]
    with mp.Pool(2) as pool:
        pool.map(abs, [1, 2])  # the workers are up before the clock starts
        cpu, start = time.process_time(), time.perf_counter()
        pool.map(_task, range(TASKS))
        wall = time.perf_counter() - start
        pool.terminate()
        pool.join()
        cpu = time.process_time() - cpu
    print(json.dumps({"map_s": wall, "parent_cpu_s": cpu}), file=sys.stderr)


def _task(x: int) -> int:
    for i in range(LINES):
        print(f"task {x} line {i:05d} " + "y" * 80)
    return x


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=PYTHON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child)
        return 0
    runs = [("ferropool", sys.executable, "ferropool"), ("stdlib", sys.executable, "stdlib")]
    runs += [(f"{label}: ferropool", python, "ferropool") for label, python in (a.split("=", 1) for a in args.also)]
    got: dict[str, list[tuple[int, float, float]]] = {label: [] for label, _, _ in runs}
    for n in range(args.rounds):
        for label, python, which in runs:
            with tempfile.TemporaryFile() as out:
                done = subprocess.run(
                    [python, __file__, "--child", which], stdout=out, stderr=subprocess.PIPE, text=True, timeout=300
                )
                out.seek(0)
                lines = out.read().count(b"\n")
            figures = json.loads(done.stderr.strip().splitlines()[-1])
            got[label].append((lines, figures["map_s"], figures["parent_cpu_s"]))
        print(f"round {n + 1}/{args.rounds} done", file=sys.stderr)
    print(f"\n{TASKS} tasks x {LINES:,} lines, Pool(2), stdout a file; medians of {args.rounds} rounds\n")
    print("| implementation | lines arrived (min) | map ms | parent CPU ms |")
    print("|---|---:|---:|---:|")
    for label, rows in got.items():
        lines = min(r[0] for r in rows)
        wall = statistics.median(r[1] for r in rows) * 1000
        cpu = statistics.median(r[2] for r in rows) * 1000
        print(f"| {label} | {lines:,} of {TASKS * LINES:,} | {wall:.0f} | {cpu:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
