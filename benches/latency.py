#!/usr/bin/env python3
"""One call's round trip, against two processes bouncing one byte over pipes (the floor).

Usage (from the repository root)::

    python benches/latency.py                  # 2,000 round trips per front end, 7 rounds
    python benches/latency.py --rounds 3 --n 500
    python benches/latency.py --also old=/tmp/oldvenv/bin/python   # another build, same rounds

Each round measures, in this order and each in a fresh child process, the raw pipe ping-pong
with a forked process, ``ProcessPoolExecutor.submit(...).result()``, ``Pool.apply(...)`` and
``Pool.apply_async(...).get()`` (2 workers, a no-op task, 100 round trips unmeasured first).
Rounds alternate the front ends, so a noisy moment of the machine lands on all of them; the
table gives the median over rounds of each round's p50 and p99, and their ratio to the pipe's
in the same rounds. It also measures the CPU an idle pool takes: parent and workers, over one
second with nothing submitted.

``--also LABEL=PYTHON`` measures the three front ends once more per round with another
interpreter (a virtual environment holding another build of ferropool), interleaved with this
one's, so a before/after comparison comes from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

KINDS = ("pipe", "submit", "apply", "apply_async")


def noop(x: int) -> int:
    return x


def _percentiles(samples: list[float]) -> tuple[float, float]:
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def _pipe(n: int, warm: int) -> list[float]:
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(a_w)
        os.close(b_r)
        while os.read(a_r, 1):
            os.write(b_w, b"x")
        os._exit(0)
    os.close(a_r)
    os.close(b_w)
    times = []
    for i in range(warm + n):
        t = time.perf_counter()
        os.write(a_w, b"x")
        os.read(b_r, 1)
        if i >= warm:
            times.append(time.perf_counter() - t)
    os.close(a_w)
    os.waitpid(pid, 0)
    os.close(b_r)
    return times


def _calls(kind: str, n: int, warm: int) -> tuple[list[float], float]:
    import ferropool
    import psutil

    pool = ferropool.ProcessPoolExecutor(2) if kind == "submit" else ferropool.Pool(2)
    with pool:
        if kind == "submit":
            call = lambda i: pool.submit(noop, i).result()  # noqa: E731
        elif kind == "apply":
            call = lambda i: pool.apply(noop, (i,))  # noqa: E731
        else:
            call = lambda i: pool.apply_async(noop, (i,)).get()  # noqa: E731
        times = []
        for i in range(warm + n):
            t = time.perf_counter()
            call(i)
            if i >= warm:
                times.append(time.perf_counter() - t)
        # an idle pool: CPU of the parent and its workers over one second with nothing to do
        procs = [psutil.Process()] + psutil.Process().children(recursive=True)
        before = sum(p.cpu_times().user + p.cpu_times().system for p in procs)
        time.sleep(1.0)
        idle = sum(p.cpu_times().user + p.cpu_times().system for p in procs) - before
    return times, idle


def _child(kind: str, n: int, warm: int) -> None:
    if kind == "pipe":
        times, idle = _pipe(n, warm), 0.0
    else:
        times, idle = _calls(kind, n, warm)
    p50, p99 = _percentiles(times)
    print(json.dumps({"p50": p50, "p99": p99, "idle_ms": idle * 1e3}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--also", action="append", default=[], metavar="LABEL=PYTHON")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        _child(options.child, options.n, 100)
        return 0
    # (row name, interpreter, child kind): the pipe once, then each build's three front ends
    runs = [(k, sys.executable, k) for k in KINDS]
    for also in options.also:
        label, _, python = also.partition("=")
        runs += [(f"{label} {k}", python, k) for k in KINDS[1:]]
    got: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in runs}
    for r in range(options.rounds):
        for name, python, kind in runs if r % 2 == 0 else reversed(runs):
            out = subprocess.run(
                [python, __file__, "--child", kind, "--n", str(options.n)],
                check=True,
                capture_output=True,
                text=True,
                timeout=300,
            ).stdout
            got[name].append(json.loads(out.strip().splitlines()[-1]))
        print(f"round {r + 1}/{options.rounds}: " + ", ".join(f"{k} p50 {g[-1]['p50']:.0f}" for k, g in got.items()))
    ratios = {
        k: (
            statistics.median(g["p50"] / p["p50"] for g, p in zip(got[k], got["pipe"], strict=True)),
            statistics.median(g["p99"] / p["p99"] for g, p in zip(got[k], got["pipe"], strict=True)),
        )
        for k in got
    }
    print()
    print(f"{options.n:,} round trips x {options.rounds} rounds; medians over rounds; ratios to the same round's pipe")
    print()
    print("| front end | p50 µs | p99 µs | p50 / pipe | p99 / pipe | idle pool CPU ms/s |")
    print("|---|---:|---:|---:|---:|---:|")
    names = {
        "pipe": "raw pipe ping-pong (floor)",
        "submit": "`ProcessPoolExecutor.submit().result()`",
        "apply": "`Pool.apply()`",
        "apply_async": "`Pool.apply_async().get()`",
    }
    for k in got:
        label, _, kind = k.rpartition(" ")
        p50 = statistics.median(g["p50"] for g in got[k])
        p99 = statistics.median(g["p99"] for g in got[k])
        idle = statistics.median(g["idle_ms"] for g in got[k])
        idle_s = "-" if k == "pipe" else f"{idle:.1f}"
        name = f"{label}: {names[kind]}" if label else names[kind]
        print(f"| {name} | {p50:.1f} | {p99:.0f} | {ratios[k][0]:.2f}x | {ratios[k][1]:.2f}x | {idle_s} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
