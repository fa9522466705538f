#!/usr/bin/env python3
"""Where the time of a large-payload round trip goes: each copy of the shared-memory path alone.

Usage (from the repository root, numpy installed)::

    python benches/payload_profile.py            # 64 MiB, median of 7

An echo of a ``bytes`` object through a worker makes four copies: into a memfd segment in the
parent, out of it into a fresh ``bytes`` in the worker (one ``pread``), into a new segment for
the result, and out of it into a fresh ``bytes`` in the parent. A numpy array makes two (the arrays are built on
the mappings). This script times each of those steps in one process, next to the in-process
fresh copy that compare.py uses as its reference, and the whole echo through a pool, so the
bound that the copies set can be read off directly.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import ferropool
import numpy as np
from ferropool._runtime import buffers

SIZE = 64 * 1024 * 1024
REPEAT = 7


def _median_seconds(step: Callable[[], Any]) -> float:
    step()
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def echo(x: Any) -> Any:
    return x


def main() -> int:
    data = bytes(range(256)) * (SIZE // 256)
    array = np.arange(SIZE // 8, dtype=np.float64)
    rows: list[tuple[str, float]] = []

    def gbps(name: str, seconds: float, volume: int = SIZE) -> None:
        rows.append((name, volume / seconds / 1e9))

    gbps("reference: bytes(memoryview(b)) into fresh memory", _median_seconds(lambda: bytes(memoryview(data))))
    gbps("reference: ndarray.copy() into fresh memory", _median_seconds(array.copy))

    def to_segment() -> None:
        buffers.close_all(buffers.to_segments([memoryview(data)]))

    gbps("copy into a new memfd segment (pwrite)", _median_seconds(to_segment))

    def read_back(buffer: Any) -> float:
        fds = buffers.to_segments([memoryview(buffer)])
        start = time.perf_counter()
        (contents,) = buffers.from_segments(fds)
        bytes(contents)
        return time.perf_counter() - start

    gbps("read a bytes segment back (pread)", statistics.median(read_back(data) for _ in range(REPEAT)))
    as_array = bytearray(data)
    gbps("map a segment (MAP_POPULATE) + copy out", statistics.median(read_back(as_array) for _ in range(REPEAT)))

    with ferropool.ProcessPoolExecutor(1) as ex:
        ex.submit(echo, b"warm").result()
        for name, obj in (("bytes", data), ("ndarray", array)):
            seconds = _median_seconds(lambda obj=obj: ex.submit(echo, obj).result())
            gbps(f"pool echo, {name} (GB/s counts there and back)", seconds, 2 * SIZE)

    width = max(len(name) for name, _ in rows)
    print(f"| {'step (64 MiB, median of ' + str(REPEAT) + ')':<{width}} | GB/s |")
    print(f"|{'-' * (width + 2)}|-----:|")
    for name, rate in rows:
        print(f"| {name:<{width}} | {rate:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
