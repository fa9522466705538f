"""``python -m ferropool``: a CPU-bound job, serially and on every usable core.

It prints both times and the speedup of a ProcessPoolExecutor over the serial run.
"""

from __future__ import annotations

import time

import ferropool


def count_primes(bounds: tuple[int, int]) -> int:
    """Counts primes in ``[lo, hi)`` by trial division: pure-Python CPU work."""
    lo, hi = bounds
    found = 0
    for n in range(max(lo, 2), hi):
        if n % 2 == 0:
            found += n == 2
            continue
        d = 3
        while d * d <= n:
            if n % d == 0:
                break
            d += 2
        else:
            found += 1
    return found


def main() -> None:
    """Runs the demo."""
    workers = ferropool.cpu_count()
    limit, pieces = 800_000, 16 * max(workers, 2)
    step = limit // pieces
    chunks = [(i * step, (i + 1) * step) for i in range(pieces)]
    print(f"ferropool {ferropool.__version__}: counting primes below {limit:,} in {pieces} tasks")

    start = time.perf_counter()
    serial = sum(map(count_primes, chunks))
    serial_s = time.perf_counter() - start
    print(f"  serial:                      {serial_s:6.2f} s  ({serial:,} primes)")

    start = time.perf_counter()
    with ferropool.ProcessPoolExecutor(max_workers=workers) as pool:
        parallel = sum(pool.map(count_primes, chunks))
    parallel_s = time.perf_counter() - start
    print(f"  ProcessPoolExecutor({workers} workers): {parallel_s:6.2f} s  ({parallel:,} primes)")

    if parallel != serial:
        raise SystemExit("the pool's answer differs from the serial one")
    print(f"  speedup: {serial_s / parallel_s:.2f}x on {workers} usable CPU(s)")


if __name__ == "__main__":
    main()
