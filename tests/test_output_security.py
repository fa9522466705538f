"""Worker output as an attacker meets it: another local user, and a task that sends junk.

Each test runs the victim as a user's script in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import WAIT, program_output

VICTIM = """
import json, os, sys
import ferropool as mp

def work(x):
    print("worker line", x)
    return os.getpid()

if __name__ == "__main__":
    with mp.Pool(2) as p:
        pids = sorted(set(p.map(work, range(4))))
        print("PIDS", json.dumps([os.getpid(), *pids]), flush=True)
        sys.stdin.readline()  # the attacker has had its go
        p.map(work, range(4, 8))
    print("victim done", flush=True)
"""

ATTACKER = """
import json, socket, sys
names, results = json.loads(sys.argv[1]), {}
for name in names:
    address = "\\0" + name[1:] if name.startswith("@") else name
    for kind in (socket.SOCK_SEQPACKET, socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(socket.AF_UNIX, kind)
        try:
            s.settimeout(2)
            s.connect(address)
            s.send(b"oINJECTED\\n")
            results[name] = "connected"
        except OSError as exc:
            results.setdefault(name, repr(exc))
        finally:
            s.close()
print(json.dumps(results))
"""


def _socket_inodes(pids: list[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _named_unix_sockets(inodes: set[str]) -> list[str]:
    """The addresses (``@name`` for abstract ones) of the Unix sockets among ``inodes``."""
    names = []
    with open("/proc/net/unix") as table:
        next(table)
        for row in table:
            fields = row.split()
            if len(fields) >= 8 and fields[6] in inodes:
                names.append(fields[7])
    return names


def _unprivileged() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("SKIPPED LOUDLY: needs root to run the attacker as another user (uid 65534)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("SKIPPED LOUDLY: setpriv (util-linux) is missing; cannot run the attacker as another user")
    as_nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    # the attacker needs only the stdlib; this interpreter may live where uid 65534 cannot
    # reach it (a pyenv build under /root, its libpython beside it), so take the first that runs
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3", shutil.which("python3")]):
        if python and subprocess.run([*as_nobody, python, "-I", "-c", "pass"], capture_output=True).returncode == 0:
            return [*as_nobody, python]
    pytest.skip("SKIPPED LOUDLY: no Python interpreter that uid 65534 can run; cannot run the attacker")


def test_another_user_cannot_reach_the_output_thread(tmp_path):
    python_as_nobody = _unprivileged()
    (tmp_path / "victim.py").write_text(textwrap.dedent(VICTIM))
    victim = subprocess.Popen(
        [sys.executable, "victim.py"],
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first = ""
        while not first.endswith(("\n", "")) or "PIDS " not in first:
            line = victim.stdout.readline()
            assert line, "the victim ended early: " + first
            first += line
        pids = json.loads(first.splitlines()[-1][len("PIDS ") :])
        names = _named_unix_sockets(_socket_inodes(pids))
        attack = subprocess.run(
            [*python_as_nobody, "-I", "-c", ATTACKER, json.dumps(names)],
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert attack.returncode == 0, attack.stderr
        assert "connected" not in json.loads(attack.stdout).values(), attack.stdout
        # every endpoint of the pool is a socket pair: nothing has an address to connect to
        assert names == [], names
    finally:
        out, err = victim.communicate("go\n", timeout=WAIT)
    assert victim.returncode == 0, err
    lines = (first + out).splitlines()
    assert "INJECTED" not in out + err
    assert sorted(line for line in lines if line.startswith("worker line")) == sorted(
        f"worker line {x}" for x in range(8)
    )
    assert lines[-1] == "victim done"


MISBEHAVING = """
import json, logging, os, sys
import ferropool as mp
from ferropool._worker import start

NAMES = 5000

def misbehave(_):
    sock = start.connection
    sock.setblocking(True)
    for junk in [
        b"r{not json",
        b"r" + json.dumps([1, 2]).encode(),
        b"r" + json.dumps({"name": "forged", "levelno": "high"}).encode(),
        b"r" + json.dumps({"name": 5, "levelno": 40}).encode(),
        b"r" + json.dumps({"name": "forged", "levelno": 40, "created": "yesterday", "msg": ["a"],
                           "exc_info": [1], "lineno": "x", "args": [1]}).encode(),
        b"djunk",
        b"d1",
        b"zan unknown kind",
        b"",
        b"o" + b"x" * (start.MESSAGE_MAX + 100),
    ]:
        try:
            sock.send(junk)
        except OSError as exc:
            print("send failed", len(junk), exc, file=sys.stderr)
    for i in range(NAMES):
        sock.send(b"r" + json.dumps({"name": f"forged.{i}", "levelno": 40, "msg": f"many {i}"}).encode())
    logging.getLogger("big").error("y" * 1_000_000)
    print("still forwarded")
    return os.getpid()

def ordinary(x):
    print("ordinary", x)
    return x

class Keep(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []
    def emit(self, record):
        self.format(record)  # as a real handler would: the record must be formattable
        self.records.append(record)

if __name__ == "__main__":
    keep = Keep()
    logging.getLogger().addHandler(keep)
    logging.getLogger().setLevel(logging.ERROR)
    before = set(logging.Logger.manager.loggerDict)
    with mp.Pool(1, worker_logs=True) as p:
        p.map(misbehave, [0])
        # one write: forwarded lines may still be arriving (the flood left a backlog in the
        # worker), and print() makes several writes the output thread could come between
        sys.stdout.write(f"then {p.map(ordinary, range(3))}\\n")
    made = set(logging.Logger.manager.loggerDict) - before
    many = [r for r in keep.records if r.getMessage().startswith("many ")]
    big = [r for r in keep.records if r.name == "big"]
    print("REPORT", json.dumps({
        "made": sorted(made),
        "many": len(many),
        "names": sorted({r.name for r in many})[:3],
        "process": sorted({r.processName for r in keep.records}),
        "big": [len(r.getMessage()) for r in big],
        "big_marked": [r.getMessage().endswith("characters cut by ferropool]") for r in big],
    }))
"""


def test_a_worker_sending_junk_grows_nothing_and_output_goes_on(tmp_path):
    out, stderr, detail = program_output(tmp_path, MISBEHAVING)
    assert "still forwarded" in out, detail
    assert "then [0, 1, 2]" in out, detail
    assert sorted(line for line in out if line.startswith("ordinary")) == [f"ordinary {x}" for x in range(3)]
    assert not any(line.startswith("xxxx") for line in out), "an oversized message was written"
    report = json.loads(next(line for line in out if line.startswith("REPORT "))[len("REPORT ") :])
    forged = [name for name in report["made"] if name.startswith(("forged", "big"))]
    assert forged == [], "a worker's records created loggers in the parent"
    assert len(report["made"]) < 10, report["made"]  # ferropool's and the stdlib's own, made on use
    assert report["many"] == 5000, detail  # delivered, through the root logger
    assert report["names"] == ["forged.0", "forged.1", "forged.10"]
    assert report["process"] == ["PoolWorker-1"]
    assert report["big_marked"] == [True], detail
    assert 1000 < report["big"][0] < 200_000
    assert "Traceback" not in stderr and "Logging error" not in stderr, detail


CHURN = """
import ferropool as mp

def work(x):
    print("line", x)
    return x

if __name__ == "__main__":
    with mp.Pool(2, maxtasksperchild=1) as p:
        assert p.map(work, range(200), chunksize=1) == list(range(200))
"""


def test_output_survives_constant_worker_replacement(tmp_path):
    # each worker's socket is taken by the result thread or the output thread while others hang up
    out, stderr, detail = program_output(tmp_path, CHURN)
    assert sorted(out) == sorted(f"line {x}" for x in range(200)), detail
    assert stderr == "", detail
