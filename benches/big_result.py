#!/usr/bin/env python3
"""How a large in-band result arrives: its round trip, and whether the parent's other threads
keep running meanwhile.

Usage (from the repository root)::

    python benches/big_result.py            # 512 MiB, ferropool and concurrent.futures
    python benches/big_result.py --mib 256 --impl ferropool

A task returns a ``str`` of the given size (``str`` pickles in-band: no shared-memory segment).
Reported per implementation: the round trip from ``submit`` to the result (to within 50 ms);
the longest gap seen by a thread that wakes every 10 ms while it runs; and the longest of the
``submit()`` calls made every 50 ms meanwhile. Each implementation runs in a fresh child interpreter.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time


def big_str(mib: int) -> str:
    return "x" * (mib << 20)


def noop() -> None:
    return None


def measure(impl: str, mib: int) -> dict[str, float]:
    if impl == "ferropool":
        from ferropool import ProcessPoolExecutor
    else:
        from concurrent.futures import ProcessPoolExecutor
    stop = threading.Event()
    gaps = [0.0]

    def ticker() -> None:
        last = time.perf_counter()
        while not stop.wait(0.01):
            now = time.perf_counter()
            gaps[0] = max(gaps[0], now - last)
            last = now

    with ProcessPoolExecutor(max_workers=2) as ex:
        ex.submit(noop).result()  # workers started
        ex.submit(noop).result()
        tick = threading.Thread(target=ticker)
        tick.start()
        t0 = time.perf_counter()
        fut = ex.submit(big_str, mib)
        submit_s = 0.0
        while not fut.done():  # a submit() every 50 ms until the result is in
            s0 = time.perf_counter()
            ex.submit(noop)
            submit_s = max(submit_s, time.perf_counter() - s0)
            time.sleep(0.05)
        n = len(fut.result())
        total = time.perf_counter() - t0
        stop.set()
        tick.join()
    assert n == mib << 20
    return {"round_trip_s": round(total, 2), "max_tick_gap_s": round(gaps[0], 3), "submit_s": round(submit_s, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--impl", default="ferropool,stdlib")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.impl, args.mib)))
        return
    for impl in args.impl.split(","):
        cmd = [sys.executable, __file__, "--child", "--impl", impl, "--mib", str(args.mib)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(f"{impl:10} {args.mib} MiB str: {out.strip()}")


if __name__ == "__main__":
    main()
