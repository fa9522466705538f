"""Manager proxies, ferropool against the standard library, side by side in one run.

    python benches/manager_ops.py                 # 5 repeats, markdown table to stdout
    python benches/manager_ops.py --repeat 3 --ops 5000 --json raw.json

Workloads, each measured in a fresh interpreter per library and repeat (medians reported):

* ``start+shutdown``: ``Manager()`` then ``shutdown()``, milliseconds;
* ``d[k] = v, 1 client``: a ``manager.dict()`` item assignment from the parent, ops/s;
* ``d[k] = v, 4 clients``: four client processes assigning to one dict at once, ops/s over the
  span from the first client's start to the last one's end (clients start on one Event);
* ``lock acquire+release``: a ``manager.Lock()`` taken and released by one client, pairs/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, sys, time
    LIB, OPS, CLIENTS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if LIB == "stdlib":
        import multiprocessing as mp
    else:
        import ferropool as mp

    def client(d, go, ready, results, ops, n):
        d[n] = n  # connected
        ready.put(n)
        go.wait()
        t0 = time.perf_counter()
        for i in range(ops):
            d[i % 64] = i
        results.put((t0, time.perf_counter()))

    def main():
        out = {}
        t = time.perf_counter()
        m = mp.Manager()
        m.shutdown()
        out["start+shutdown (ms)"] = (time.perf_counter() - t) * 1000
        with mp.Manager() as m:
            d = m.dict()
            for i in range(200):  # warm: connection made, caches filled
                d[i % 64] = i
            t = time.perf_counter()
            for i in range(OPS):
                d[i % 64] = i
            out["d[k] = v, 1 client (ops/s)"] = OPS / (time.perf_counter() - t)
            lock = m.Lock()
            lock.acquire(); lock.release()
            t = time.perf_counter()
            for _ in range(OPS // 2):
                lock.acquire()
                lock.release()
            out["lock acquire+release (pairs/s)"] = (OPS // 2) / (time.perf_counter() - t)
            go = m.Event()
            ready, results = mp.Queue(), mp.Queue()
            procs = [mp.Process(target=client, args=(d, go, ready, results, OPS, n)) for n in range(CLIENTS)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=300)
            go.set()
            spans = [results.get(timeout=300) for _ in procs]
            for p in procs:
                p.join()
            start = min(s for s, _ in spans)
            end = max(e for _, e in spans)
            out[f"d[k] = v, {CLIENTS} clients (ops/s)"] = CLIENTS * OPS / (end - start)
        print(json.dumps(out))

    if __name__ == "__main__":
        main()
    """
)


def measure(lib: str, ops: int, clients: int) -> dict[str, float]:
    """One fresh interpreter's figures for ``lib``."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, lib, str(ops), str(clients)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{lib} run failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ops", type=int, default=10000, help="operations per client and repeat")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args()
    raw: dict[str, list[dict[str, float]]] = {"stdlib": [], "ferropool": []}
    for _ in range(args.repeat):
        for lib in raw:  # interleaved, so drift in the machine's load hits both alike
            raw[lib].append(measure(lib, args.ops, args.clients))
    names = list(raw["stdlib"][0])
    import os

    print(f"Manager proxies: median of {args.repeat} runs, {args.ops} operations per client, {os.cpu_count()} CPUs\n")
    print("| workload | stdlib | ferropool | ferropool / stdlib |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        std = statistics.median(r[name] for r in raw["stdlib"])
        fp = statistics.median(r[name] for r in raw["ferropool"])
        ratio = std / fp if "(ms)" in name else fp / std
        label = "x faster" if ratio >= 1 else "x (slower)"
        print(f"| {name} | {std:,.1f} | {fp:,.1f} | {ratio:.2f}{label} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    main()
