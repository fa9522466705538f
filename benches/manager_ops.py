"""Manager proxies, ferropool against the standard library, side by side in one run.

    python benches/manager_ops.py                 # 5 repeats, markdown table to stdout
    python benches/manager_ops.py --repeat 3 --ops 5000 --json raw.json

Workloads, each measured in a fresh interpreter per library and repeat (medians reported):

* ``import + first Manager()``: importing the library, then the first ``Manager()`` and its
  ``shutdown()``, milliseconds (what a script pays once);
* ``later Manager()``: the median ``Manager()`` + ``shutdown()`` of five more, milliseconds;
* ``d[k] = v, 1 client``: a ``manager.dict()`` item assignment from the parent, ops/s, and the
  CPU time of the client and the server process per assignment (a busy machine inflates it
  less than the rate);
* ``lock acquire+release``: a ``manager.Lock()`` taken and released by one client, pairs/s;
* ``d[k] = v, 4 clients``: four client processes assigning to one dict at once, ops/s over the
  span from the first client's start to the last one's end (clients start on one Event), and
  the CPU time of the four clients and the server per assignment: with more runnable processes
  than CPUs, the rate is the CPUs' time divided by this;
* ``floor``: what no manager can beat here, a raw two-process ping-pong of one small message
  (``socket.socketpair``, an echoing ``os.fork`` child; no pickling, no library), round trips/s,
  for one pair and for four pairs at once, and the CPU time of both processes per round trip.

Children run with bytecode writing on (``PYTHONDONTWRITEBYTECODE`` removed), as an installed
wheel has its ``.pyc`` files: the standard library's modules always have theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, os, statistics, sys, time
    T0 = time.perf_counter()
    LIB, OPS, CLIENTS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if LIB == "stdlib":
        import multiprocessing as mp
    elif LIB == "ferropool":
        import ferropool as mp

    def cpu_seconds(pid):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def client(d, go, ready, results, ops, n):
        d[n] = n  # connected
        ready.put(n)
        go.wait()
        cpu = time.process_time()
        t0 = time.perf_counter()
        for i in range(ops):
            d[i % 64] = i
        results.put((t0, time.perf_counter(), time.process_time() - cpu))

    def ping_pong(pairs):
        # raw round trips/s of `pairs` client/echo process pairs at once: the floor
        import socket

        spans_r, spans_w = os.pipe()
        pids = []
        for _ in range(pairs):
            a, b = socket.socketpair()
            echo = os.fork()
            if echo == 0:
                a.close()
                while data := b.recv(4096):
                    b.sendall(data)
                os._exit(0)
            client = os.fork()
            if client == 0:
                b.close()
                msg = b"x" * 64  # about the size of a pickled d[k] = v request
                t0 = time.perf_counter()
                for _ in range(OPS):
                    a.sendall(msg)
                    a.recv(4096)
                os.write(spans_w, json.dumps([t0, time.perf_counter()]).encode() + b"\\n")
                os._exit(0)
            a.close()
            b.close()
            pids += [echo, client]
        os.close(spans_w)
        cpu = os.times()
        for pid in pids:
            os.waitpid(pid, 0)
        after = os.times()
        cpu = after.children_user + after.children_system - cpu.children_user - cpu.children_system
        with os.fdopen(spans_r) as f:
            spans = [json.loads(line) for line in f]
        rate = pairs * OPS / (max(e for _, e in spans) - min(s for s, _ in spans))
        return rate, cpu / (pairs * OPS) * 1e6

    def main():
        out = {}
        if LIB == "floor":
            for pairs in (1, CLIENTS):
                rate, cpu = ping_pong(pairs)
                out[f"floor: raw ping-pong, {pairs} pair{'s' if pairs > 1 else ''} (round trips/s)"] = rate
                out[f"floor: raw ping-pong, {pairs} pair{'s' if pairs > 1 else ''}: CPU µs per round trip"] = cpu
            print(json.dumps(out))
            return
        m = mp.Manager()
        m.shutdown()
        out["import + first Manager() start+shutdown (ms)"] = (time.perf_counter() - T0) * 1000
        later = []
        for _ in range(5):
            t = time.perf_counter()
            m = mp.Manager()
            m.shutdown()
            later.append((time.perf_counter() - t) * 1000)
        out["later Manager() start+shutdown (ms)"] = statistics.median(later)
        with mp.Manager() as m:
            d = m.dict()
            for i in range(200):  # warm: connection made, caches filled
                d[i % 64] = i
            server_cpu = cpu_seconds(m._process.pid)
            cpu = time.process_time()
            t = time.perf_counter()
            for i in range(OPS):
                d[i % 64] = i
            out["d[k] = v, 1 client (ops/s)"] = OPS / (time.perf_counter() - t)
            cpu = time.process_time() - cpu + cpu_seconds(m._process.pid) - server_cpu
            out["d[k] = v, 1 client: CPU µs per op, client + server"] = cpu / OPS * 1e6
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
            server_cpu = cpu_seconds(m._process.pid)
            go.set()
            spans = [results.get(timeout=300) for _ in procs]
            server_cpu = cpu_seconds(m._process.pid) - server_cpu
            for p in procs:
                p.join()
            start = min(s for s, _, _ in spans)
            end = max(e for _, e, _ in spans)
            out[f"d[k] = v, {CLIENTS} clients (ops/s)"] = CLIENTS * OPS / (end - start)
            cpu = sum(c for _, _, c in spans) + server_cpu
            out[f"d[k] = v, {CLIENTS} clients: CPU µs per op, clients + server"] = cpu / (CLIENTS * OPS) * 1e6
        print(json.dumps(out))

    if __name__ == "__main__":
        main()
    """
)


def measure(lib: str, ops: int, clients: int) -> dict[str, float]:
    """One fresh interpreter's figures for ``lib`` (``"floor"``: the raw ping-pong only)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, lib, str(ops), str(clients)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
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
    raw: dict[str, list[dict[str, float]]] = {"stdlib": [], "ferropool": [], "floor": []}
    load = os.getloadavg()[0]
    for _ in range(args.repeat):
        for lib in raw:  # interleaved, so drift in the machine's load hits all alike
            raw[lib].append(measure(lib, args.ops, args.clients))

    def median(lib: str, name: str) -> float:
        return statistics.median(r[name] for r in raw[lib])

    print(
        f"Manager proxies: median of {args.repeat} runs, {args.ops} operations per client, "
        f"{os.cpu_count()} CPUs, load average {load:.1f} at the start\n"
    )
    print("| workload | stdlib | ferropool | ferropool / stdlib |")
    print("| --- | ---: | ---: | ---: |")
    for name in raw["stdlib"][0]:
        std, fp = median("stdlib", name), median("ferropool", name)
        lower_is_better = "(ms)" in name or "CPU" in name
        ratio = std / fp if lower_is_better else fp / std
        print(f"| {name} | {std:,.1f} | {fp:,.1f} | {ratio:.2f}x{'' if ratio >= 1 else ' (slower)'} |")
    for name in raw["floor"][0]:
        pairs = name.split(", ")[1].split()[0]
        if "CPU" in name:
            same = f"d[k] = v, {pairs} client{'s' if pairs != '1' else ''}: CPU µs per op, client"
            same += "s + server" if pairs != "1" else " + server"
            floor = median("floor", name)
            print(
                f"| {name} | the stdlib's {median('stdlib', same) / floor:.2f}x this "
                f"| ferropool's {median('ferropool', same) / floor:.2f}x this | {floor:,.1f} |"
            )
            continue
        same = "d[k] = v, 1 client (ops/s)" if pairs == "1" else f"d[k] = v, {pairs} clients (ops/s)"
        floor = median("floor", name)
        print(
            f"| {name} | {floor / median('stdlib', same):.2f}x the stdlib's `{same}` "
            f"| {floor / median('ferropool', same):.2f}x ferropool's | {floor:,.1f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=2)


if __name__ == "__main__":
    main()
