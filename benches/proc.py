#!/usr/bin/env python3
"""Benchmark ferropool's Process and Pipe against multiprocessing's, side by side.

Usage (from the repository root)::

    python benches/proc.py                      # 5 repeats, markdown to stdout
    python benches/proc.py --out docs/proc-bench.md
    python benches/proc.py --quick              # smaller sizes, 1 repeat

Measurements:

* ``pipe``: round trips per second of a small object (``send`` then ``recv``) between the
  measuring process and an echoing child, and of a 1 MiB ``send_bytes``/``recv_bytes`` message.
* ``start``: latency of ``Process(target=noop).start()`` + ``join()``, per process (median of
  the rounds in one measurement).

Each measurement runs in a fresh child interpreter (``proc.py --child NAME IMPL``), so imports,
fork servers and caches never carry over; repeats are round-robin over the implementations, and
the table reports the median over repeats. Only the standard library is imported at the top;
ferropool is imported by the children that measure it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

from _report import publish

MARKER = "@@proc-bench@@ "
SIZES = {"round_trips": 20_000, "big_round_trips": 200, "starts": 20}
QUICK = {"round_trips": 2_000, "big_round_trips": 20, "starts": 5}
BIG = 1 << 20


def noop() -> None:
    pass


def echo(conn: Any) -> None:
    """Sends back every message, bytes as bytes, until it receives ``None``."""
    while True:
        data = conn.recv_bytes()
        if data == b"":
            return
        conn.send_bytes(data)


def echo_objects(conn: Any) -> None:
    """Sends back every object until it receives ``None``, then the CPU seconds it spent echoing."""
    obj = conn.recv()
    cpu = time.process_time()  # from the first message: start-up not counted
    while obj is not None:
        conn.send(obj)
        obj = conn.recv()
    conn.send(time.process_time() - cpu)


def _library(impl: str) -> tuple[Any, Any]:
    """``(module, context)``: the Process/Pipe provider and the start method to use."""
    if impl == "ferropool":
        import ferropool

        return ferropool, ferropool
    import multiprocessing

    method = impl.split("-", 1)[1]
    return multiprocessing, multiprocessing.get_context(method)


def measure_pipe(impl: str, sizes: dict[str, int]) -> dict[str, float]:
    _, ctx = _library(impl)
    out: dict[str, float] = {}
    for name, target, payload, count in (
        ("small round trips/s", echo_objects, ("key", 12345, 6.5), sizes["round_trips"]),
        ("1 MiB round trips/s", echo, b"x" * BIG, sizes["big_round_trips"]),
    ):
        a, b = ctx.Pipe()
        p = ctx.Process(target=target, args=(b,))
        p.start()
        b.close()
        send, recv = (a.send, a.recv) if target is echo_objects else (a.send_bytes, a.recv_bytes)
        for _ in range(20):  # warm up
            send(payload)
            recv()
        started = time.perf_counter()
        cpu = time.process_time()
        for _ in range(count):
            send(payload)
            got = recv()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu
        if got != payload:
            raise AssertionError(f"{impl}: wrong echo")
        send(None if target is echo_objects else b"")
        if target is echo_objects:
            # CPU time of both ends per round trip, which a busy machine inflates less than the
            # rate (the echo's count includes the 20 warm-up round trips)
            out["small round trip CPU µs, both ends"] = (cpu + recv()) / count * 1e6
        p.join(30)
        a.close()
        out[name] = count / elapsed
    return out


def measure_start(impl: str, sizes: dict[str, int]) -> dict[str, float]:
    _, ctx = _library(impl)
    out = {}
    # a function of the main script (ferropool ships it by value with cloudpickle, which the
    # child must import; the stdlib's spawn re-imports the script instead), and a builtin that
    # both pickle by reference
    for label, target in (("__main__ target", noop), ("importable target", os.getpid)):
        times = []
        for _ in range(sizes["starts"]):
            started = time.perf_counter()
            p = ctx.Process(target=target)
            p.start()
            p.join()
            times.append(time.perf_counter() - started)
            if p.exitcode != 0:
                raise AssertionError(f"{impl}: exit code {p.exitcode}")
        out[f"start+join ms, {label}"] = statistics.median(times) * 1000
    return out


WORKLOADS = {
    "pipe": (measure_pipe, ["ferropool", "mp-fork"]),
    "start": (measure_start, ["ferropool", "mp-spawn", "mp-fork", "mp-forkserver"]),
}


def child(workload: str, impl: str, quick: bool) -> None:
    fn = WORKLOADS[workload][0]
    print(MARKER + json.dumps(fn(impl, QUICK if quick else SIZES)), flush=True)


def run_child(workload: str, impl: str, quick: bool) -> dict[str, float]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", workload, impl] + (["--quick"] if quick else [])
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])  # type: ignore[no-any-return]
    raise RuntimeError(f"{workload}/{impl} failed:\n{done.stdout}\n{done.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "IMPL"))
    parser.add_argument("--only", choices=sorted(WORKLOADS), help="run this workload only")
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.quick)
        return
    repeat = 1 if args.quick else args.repeat
    load = os.getloadavg()[0]
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    workloads = {k: v for k, v in WORKLOADS.items() if args.only in (None, k)}
    for r in range(repeat):
        for workload, (_, impls) in workloads.items():
            for impl in impls[r % len(impls) :] + impls[: r % len(impls)]:
                results.setdefault((workload, impl), []).append(run_child(workload, impl, args.quick))
    sizes = QUICK if args.quick else SIZES
    lines = [
        "# Process and Pipe: ferropool vs multiprocessing",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        f"- command: `python benches/proc.py {' '.join(sys.argv[1:])}`",
        f"- repeats: {repeat} (each a fresh interpreter; median shown, min–max in brackets); sizes: {sizes}",
        "- small round trip: `send(('key', 12345, 6.5))` + `recv()` with an echoing child; "
        "1 MiB: `send_bytes` + `recv_bytes`; start: `Process(target=...).start(); join()`, median of the "
        "rounds in each fresh interpreter",
        f"- load average at the start: {load:.1f}; on a small or shared machine the "
        "figures are a rough guide: compare rows of one run, not runs",
        "",
        "| workload | implementation | metric | median [min–max] | vs multiprocessing |",
        "|---|---|---|---|---|",
    ]
    for workload, (_, impls) in workloads.items():
        baseline = {
            k: statistics.median(d[k] for d in results[(workload, impls[1])]) for k in results[(workload, impls[1])][0]
        }
        for impl in impls:
            runs = results[(workload, impl)]
            for metric in runs[0]:
                values = [d[metric] for d in runs]
                med = statistics.median(values)
                ratio = med / baseline[metric] if "/s" in metric else baseline[metric] / med  # µs, ms: lower is better
                lines.append(
                    f"| {workload} | {impl} | {metric} | {med:,.1f} [{min(values):,.1f}–{max(values):,.1f}] "
                    f"| {ratio:.2f}× |"
                )
    lines += [
        "",
        f"Ratios compare with the `{WORKLOADS['pipe'][1][1]}` / `{WORKLOADS['start'][1][1]}` rows; above 1 means "
        "ferropool is faster (throughput ratio for round trips, inverse latency ratio for starts). "
        "A ferropool `Process` is forked from ferropool's fork server (a fresh interpreter where none "
        "can be made), so its start compares with the stdlib's spawn and forkserver; the fork rows show "
        "what a fork of the parent costs, which ferropool never does (the parent runs threads).",
        "",
        "Where a small round trip's time goes: ferropool sends a message in one non-blocking `sendmsg` "
        "(the GIL kept) and receives it in one `recv`, against the stdlib's `write` and two `read`s; "
        "before sleeping, `recv` looks for the message for up to 50 µs, yielding the CPU between looks. "
        "The rest is the kernel's: when the scheduler keeps both processes on one CPU a round trip costs "
        "two context switches; over two CPUs each message also costs an inter-processor wake-up of a "
        "sleeping CPU, several times dearer in a virtual machine, and the stdlib's rate drops 2-3x "
        "(the spread of its rows). ferropool's look-before-sleeping avoids most of those wake-ups; the "
        "CPU row counts the looking too.",
    ]
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
