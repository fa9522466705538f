"""Runs CPython's multiprocessing test suite against ferropool and compares with the expected results.

    python -m tests.stdlib_suite            # check: fails on a regression or an unlisted failure
    python -m tests.stdlib_suite --update   # rewrites expected-<python version>.txt from this run
    python -m tests.stdlib_suite -k Queue   # only the test ids containing "Queue" (no check of the rest)

The tests are the interpreter's installed ``test._test_multiprocessing``, made to use ferropool's
objects by ``suite.py``. They run in worker subprocesses (``--jobs``), one test class at a time,
each test under a deadline (``--timeout``): a test that overruns it, or takes its worker down, is
a failure; the worker and everything it started are killed, and a new worker goes on with the
rest of the class. The expected outcome of every test is in ``expected-3.X.txt`` next to this
file, one line per test::

    WithProcessesTestQueue.test_get pass
    WithProcessesTestPool.test_make_pool not-applicable: reads Pool._pool, the stdlib's list of worker processes

``pass``; ``skip: <why>`` (the suite skips it itself); ``difference: <why>`` (an intended
difference, docs/migration.md); ``not-applicable: <why>`` (inspects CPython's private state: not
run); ``pending-manager: <why>`` (needs Manager, Listener/Client or connection pickling);
``fail: <cause>`` (a known failure to fix). ``rules.py`` holds the reasons of the differences,
the tests not applicable or pending, and the failures that show only at times.

The check fails when a test expected to pass does not (after one rerun in a fresh worker, so a
test that fails only under load is reported as flaky, not as a regression) or when a test with
no line fails; a test that starts passing is reported, with a reminder to run ``--update``.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VERSION = f"{sys.version_info[0]}.{sys.version_info[1]}"

# groups of the closing table: the test class's name without "With<Kind>Test", folded as below
GROUP_OF = {
    "subclassingprocess": "process",
    "poolworkererrors": "pool",
    "poolworkerlifetime": "pool",
    "poll": "connection",
    "polleintr": "connection",
    "listener": "connection",
    "listenerclient": "connection",
    "picklingconnections": "connection",
}


def group_of(test_id: str) -> tuple[str, str]:
    """``(kind, group)`` of a test id: ``("processes", "queue")``; ``("misc", "TestWait")``."""
    cls = test_id.split(".", 1)[0]
    match = re.match(r"With(Processes|Threads|Manager)Test(\w+)$", cls)
    if not match:
        return "misc", cls
    name = match.group(2).lower()
    return match.group(1).lower(), GROUP_OF.get(name, name)


# --------------------------------------------------------------------------------------------
# the worker: runs the classes the orchestrator sends, reports each test on a pipe


class Reporter(unittest.TestResult):
    """Sends one JSON line per test start and end, and one per class-fixture error."""

    def __init__(self, emit: Any, timeout: float) -> None:
        super().__init__()
        self.emit = emit
        self.timeout = timeout
        self.outcome: tuple[str, str] = ("pass", "")
        self.started = 0.0

    def startTest(self, test: unittest.TestCase) -> None:
        import faulthandler

        super().startTest(test)
        self.outcome = ("pass", "")
        self.started = time.monotonic()
        # the stacks of a test about to be killed for overrunning its deadline, in the worker's log
        faulthandler.dump_traceback_later(max(self.timeout - 1.0, 1.0), exit=False)
        self.emit({"event": "start", "test": test._testMethodName})

    def stopTest(self, test: unittest.TestCase) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        super().stopTest(test)
        outcome, detail = self.outcome
        self.emit(
            {
                "event": "end",
                "test": test._testMethodName,
                "outcome": outcome,
                "detail": detail[-6000:],
                "seconds": round(time.monotonic() - self.started, 3),
            }
        )

    def _fail(self, detail: str) -> None:
        if self.outcome[0] != "fail":
            self.outcome = ("fail", detail)

    def addError(self, test: Any, err: Any) -> None:
        if not isinstance(test, unittest.TestCase):  # setUpClass / tearDownClass / setUpModule
            self.emit({"event": "fixture", "description": str(test), "detail": self._exc_info_to_string(err, test)})
            return
        self._fail(self._exc_info_to_string(err, test))

    def addFailure(self, test: Any, err: Any) -> None:
        self._fail(self._exc_info_to_string(err, test))

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        if err is not None:
            self._fail(f"{subtest}\n" + self._exc_info_to_string(err, test))

    def addSkip(self, test: Any, reason: str) -> None:
        if not isinstance(test, unittest.TestCase):
            self.emit({"event": "fixture-skip", "description": str(test), "detail": reason})
            return
        if self.outcome[0] == "pass":
            self.outcome = ("skip", reason)

    def addExpectedFailure(self, test: Any, err: Any) -> None:
        pass  # CPython marks it as failing everywhere: it behaves as the stdlib's does

    def addUnexpectedSuccess(self, test: Any) -> None:
        self._fail("unexpected success of a test CPython marks as an expected failure")


def worker(commands_fd: int, results_fd: int, timeout: float) -> None:
    results = os.fdopen(results_fd, "w", buffering=1)
    commands = os.fdopen(commands_fd, "r")

    def emit(message: dict[str, Any]) -> None:
        results.write(json.dumps(message) + "\n")

    import ferropool

    from tests.stdlib_suite import suite

    # the fork server is made now, while this process has one thread: every child is then a copy
    # of this process, test module rebound; a spawned child would import the test module afresh
    starter = ferropool.Process(target=int)
    starter.start()
    starter.join()
    emit({"event": "ready"})
    for line in commands:
        unit = json.loads(line)
        cls = suite.CLASSES[unit["class"]]
        tests = unittest.TestSuite(cls(name) for name in unit["tests"])
        tests.run(Reporter(emit, timeout))
        emit({"event": "done"})


# --------------------------------------------------------------------------------------------
# the orchestrator


@dataclass
class Result:
    outcome: str  # pass, fail, skip, timeout, not-run
    detail: str = ""
    seconds: float = 0.0


def cause_of(detail: str) -> str:
    """One line saying why a test failed: the exception line of its traceback, addresses masked."""
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()]
    if not lines:
        return "failed"
    line = lines[-1]
    for candidate in reversed(lines):  # the exception line, not a chained traceback's tail
        if re.match(r"^[\w.]+(Error|Exception|Exit|Interrupt|Warning|Failure)\b", candidate):
            line = candidate
            break
    line = re.sub(r"0x[0-9a-f]+", "0x...", line)
    line = re.sub(r"\b\d{4,}\b", "N", line)  # pids, ids: the same failure reads the same in every run
    return line[:200]


@dataclass
class Unit:
    cls: str
    tests: list[str]


@dataclass
class Worker:
    proc: subprocess.Popen[bytes]
    commands: Any
    results: int
    log: Path
    buffer: bytes = b""
    unit: Unit | None = None
    ready: bool = False
    running: str | None = None
    last_event: float = field(default_factory=time.monotonic)


def kill_tree(pid: int) -> None:
    """SIGKILL the worker ``pid`` and every process below it in its session (pool workers, fork
    servers, their children). Processes that left the session (ferropool's shared-memory
    watchdog) are spared: they clean up after the killed ones and then exit by themselves."""
    import psutil

    try:
        tree = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        tree = []
    # the worker leads its own session; a process that called setsid() is not ours to kill
    victims = [pid, *(p.pid for p in tree if _session(p.pid) in (None, pid))]
    for victim in victims:
        try:
            os.kill(victim, signal.SIGKILL)
        except OSError:
            pass  # gone already


def _session(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def _close(stream: Any) -> None:
    try:
        stream.close()
    except BrokenPipeError:
        pass  # the worker is gone already


class Runner:
    """Runs units on ``jobs`` workers, each test under ``timeout`` seconds."""

    def __init__(self, jobs: int, timeout: float, logs: Path, verbose: bool) -> None:
        self.jobs = jobs
        self.timeout = timeout
        self.logs = logs
        self.verbose = verbose
        self.results: dict[str, Result] = {}
        self.started = 0
        self.failed_starts = 0

    def _spawn(self) -> Worker:
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        self.started += 1
        log = self.logs / f"worker-{os.getpid()}-{self.started}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.stdlib_suite.driver", "--worker", str(cmd_r), str(res_w)]
                + ["--timeout", str(self.timeout)],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                pass_fds=(cmd_r, res_w),
                start_new_session=True,  # Ctrl-C in a terminal reaches the orchestrator only
            )
        os.close(cmd_r)
        os.close(res_w)
        return Worker(proc, os.fdopen(cmd_w, "w", buffering=1), res_r, log)

    def _finish(self, key: str, result: Result) -> None:
        from tests.stdlib_suite import rules

        self.results[key] = result
        # a line as it happens for each failure no rule explains: CI's log shows progress
        if self.verbose or (result.outcome not in ("pass", "skip") and rules.rule_for(key) is None):
            extra = f": {cause_of(result.detail)}" if result.outcome not in ("pass", "skip") else ""
            print(f"  {key} ... {result.outcome}{extra}", flush=True)

    def _abandon(self, w: Worker, why: str, pending: list[Unit]) -> None:
        """The worker hung or died in its unit: the running test fails, the rest go back in line."""
        kill_tree(w.proc.pid)
        w.proc.wait()
        os.close(w.results)
        _close(w.commands)
        unit = w.unit
        if unit is None:
            return
        victim = w.running or (unit.tests[0] if unit.tests else None)
        if victim is not None:
            detail = f"(worker log: {w.log})\n{why}"
            self._finish(f"{unit.cls}.{victim}", Result("timeout" if "deadline" in why else "fail", detail, 0.0))
            rest = [t for t in unit.tests if t != victim and f"{unit.cls}.{t}" not in self.results]
            if rest:
                pending.insert(0, Unit(unit.cls, rest))

    def _handle(self, w: Worker, message: dict[str, Any]) -> None:
        w.last_event = time.monotonic()
        event = message["event"]
        unit = w.unit
        if event == "ready":
            w.ready = True
        elif event == "start":
            w.running = message["test"]
        elif event == "end" and unit is not None:
            w.running = None
            self._finish(
                f"{unit.cls}.{message['test']}", Result(message["outcome"], message["detail"], message["seconds"])
            )
        elif event in ("fixture", "fixture-skip") and unit is not None:
            # a setUpClass that failed or skipped stands for each test of the class not run yet;
            # a failing tearDownClass after the tests ran is only logged
            outcome = "fail" if event == "fixture" else "skip"
            for name in unit.tests:
                key = f"{unit.cls}.{name}"
                if key not in self.results:
                    self._finish(key, Result(outcome, f"{message['description']}: {message['detail']}"))
            if event == "fixture" and message["description"].startswith("tearDown"):
                print(f"  {unit.cls}: {cause_of(message['detail'])} in {message['description']}", flush=True)
        elif event == "done":
            w.unit = None
            w.running = None

    def _check(self, w: Worker, readable: bool, pending: list[Unit]) -> bool:
        """Reads what ``w`` reported; False when it hung or died and was abandoned."""
        if readable:
            chunk = os.read(w.results, 65536)
            w.buffer += chunk
            *lines, w.buffer = w.buffer.split(b"\n")
            for line in lines:
                self._handle(w, json.loads(line))
            if chunk:
                return True
        # start-up, setUpClass and the first test share one deadline; tearDownClass shares the last's
        overdue = time.monotonic() - w.last_event > self.timeout + (30.0 if not w.ready else 0.0)
        died = w.proc.poll() is not None
        if died and not w.ready:
            self.failed_starts += 1
            if self.failed_starts >= 3:
                raise RuntimeError(f"workers exit before running a test; the last one's log:\n{w.log.read_text()}")
        if not (overdue or died):
            return True
        why = (
            f"the worker exited with status {w.proc.returncode} during the test"
            if died
            else f"no result within the {self.timeout:.0f} s deadline: killed"
        )
        self._abandon(w, why, pending)
        return False

    def run(self, units: list[Unit]) -> dict[str, Result]:
        pending = list(units)
        workers: list[Worker] = []
        try:
            while pending or any(w.unit is not None for w in workers):
                while len(workers) < min(self.jobs, len(pending) + sum(w.unit is not None for w in workers)):
                    workers.append(self._spawn())
                for w in workers:
                    if w.ready and w.unit is None and pending:
                        w.unit = pending.pop(0)
                        w.last_event = time.monotonic()
                        try:
                            w.commands.write(json.dumps({"class": w.unit.cls, "tests": w.unit.tests}) + "\n")
                        except BrokenPipeError:
                            pass  # it died: found below like any other death
                readable, _, _ = select.select([w.results for w in workers], [], [], 0.5)
                for w in list(workers):
                    if not self._check(w, w.results in readable, pending):
                        workers.remove(w)
        finally:
            for w in workers:
                _close(w.commands)
            for w in workers:
                try:
                    w.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
                kill_tree(w.proc.pid)  # leftover fork servers and children of the last tests
                w.proc.wait()
                os.close(w.results)
        return self.results


# --------------------------------------------------------------------------------------------
# expected results


def expected_path(version: str = VERSION) -> Path:
    return HERE / f"expected-{version}.txt"


def read_expected(path: Path) -> dict[str, str]:
    expected: dict[str, str] = {}
    if not path.exists():
        return expected
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, outcome = line.partition(" ")
        expected[test_id] = outcome.strip()
    return expected


def kind(outcome_line: str) -> str:
    return outcome_line.partition(":")[0].strip()


def classify(test_id: str, result: Result | None) -> str:
    """The line for ``test_id`` in the expected file, from this run's result and the rules."""
    from tests.stdlib_suite import rules

    rule = rules.rule_for(test_id)
    if rule is not None and rule[0] == "fail":
        return f"fail: {rule[1]}"  # intermittent: the same line whichever way this run went
    if result is None and rule is not None:
        return f"{rule[0]}: {rule[1]}"  # not run: not applicable, or it would block for minutes
    if result is None:
        return "fail: not run"
    if result.outcome == "pass":
        return "pass"
    if result.outcome == "skip":
        return f"skip: {result.detail.splitlines()[0][:200] if result.detail else 'skipped'}"
    if rule is not None:
        return f"{rule[0]}: {rule[1]}"
    if result.outcome == "timeout":
        return "fail: hangs (no result before the per-test deadline; killed)"
    return f"fail: {cause_of(result.detail)}"


HEADER = """\
# Expected outcome of CPython {version}'s multiprocessing tests (test._test_multiprocessing) run
# against ferropool by tests/stdlib_suite/driver.py. Rewritten by `python -m tests.stdlib_suite
# --update`; the reasons of difference/not-applicable/pending-manager lines live in rules.py.
# pass | skip: why | difference: why | not-applicable: why | pending-manager: why | fail: cause
"""


def write_expected(path: Path, lines: dict[str, str]) -> None:
    body = "".join(f"{test_id} {lines[test_id]}\n" for test_id in sorted(lines))
    path.write_text(HEADER.format(version=VERSION) + body)


def all_test_ids() -> list[str]:
    from tests.stdlib_suite import suite

    loader = unittest.TestLoader()
    ids = []
    for name, cls in suite.CLASSES.items():
        for method in loader.getTestCaseNames(cls):
            ids.append(f"{name}.{method}")
    return ids


def summary(lines: dict[str, str]) -> str:
    """A table: per kind and group, how many tests have each outcome."""
    columns = ("pass", "fail", "difference", "pending-manager", "not-applicable", "skip")
    counts: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for test_id, line in lines.items():
        counts[group_of(test_id)][kind(line)] += 1
    order = {"processes": 0, "threads": 1, "manager": 2, "misc": 3}
    rows = [f"| kind | group | {' | '.join(columns)} |", "|" + " --- |" * (len(columns) + 2)]
    total: collections.Counter[str] = collections.Counter()
    for key in sorted(counts, key=lambda k: (order[k[0]], k[1])):
        total.update(counts[key])
        rows.append(f"| {key[0]} | {key[1]} | " + " | ".join(str(counts[key][c]) for c in columns) + " |")
    rows.append("| all | all | " + " | ".join(str(total[c]) for c in columns) + " |")
    return "\n".join(rows)


def versions_table() -> str:
    """Per group, each Python's counts from the committed expected files (docs/migration.md)."""
    columns = ("pass", "fail", "difference", "pending-manager", "not-applicable", "skip")
    versions = sorted(
        (p.stem.split("-", 1)[1] for p in HERE.glob("expected-*.txt")), key=lambda v: tuple(map(int, v.split(".")))
    )
    cells: dict[str, dict[str, collections.Counter[str]]] = collections.defaultdict(dict)
    for version in versions:
        for test_id, line in read_expected(expected_path(version)).items():
            kind_, group = group_of(test_id)
            row = group if kind_ != "misc" else "other (TestWait, TestStartMethod, ...)"
            cells[row].setdefault(version, collections.Counter())[kind(line)] += 1
    head = "| group | " + " | ".join(versions) + " |"
    rows = [head, "|" + " --- |" * (len(versions) + 1)]
    for row in sorted(cells, key=lambda r: (r.startswith("other"), r)):
        rows.append(
            f"| {row} | "
            + " | ".join("/".join(str(cells[row].get(v, collections.Counter())[c]) for c in columns) for v in versions)
            + " |"
        )
    return "\n".join(rows)


def units_for(ids: list[str]) -> list[Unit]:
    by_class: dict[str, list[str]] = {}
    for test_id in ids:
        cls, _, method = test_id.partition(".")
        by_class.setdefault(cls, []).append(method)
    # pools and processes first: they take longest, and the short classes fill in behind them
    slow = ("Pool", "Process", "Condition", "Queue", "Barrier", "Event", "Connection", "Misc")
    rank = {cls: next((i for i, s in enumerate(slow) if s in cls), len(slow)) for cls in by_class}
    return [Unit(cls, tests) for cls, tests in sorted(by_class.items(), key=lambda kv: (rank[kv[0]], kv[0]))]


def compare(ids: list[str], expected: dict[str, str], lines: dict[str, str], results: dict[str, Result]) -> list[str]:
    """Prints what changed against the expected file; returns the problems that fail the check."""
    problems, better = [], []
    for test_id in ids:
        want, got = expected.get(test_id), lines[test_id]
        if want is None:
            if kind(got) == "fail":
                problems.append(f"UNLISTED FAILURE: {test_id} {got}\n{results[test_id].detail}")
            else:
                better.append(f"{test_id} {got} (no line yet)")
        elif kind(want) == "pass" and kind(got) not in ("pass", "skip"):
            detail = results[test_id].detail if test_id in results else ""
            problems.append(f"REGRESSION (expected to pass): {test_id} {got}\n{detail}")
        elif kind(want) != "pass" and kind(got) == "pass":
            better.append(f"{test_id} now passes (was: {want})")
    if better:
        print(f"\n{len(better)} test(s) better than expected; run with --update to record them:")
        print("\n".join(f"  {line}" for line in better))
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--update", action="store_true", help="rewrite the expected-results file from this run")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="worker processes (2)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds each test may take (30)")
    parser.add_argument(
        "-k", dest="pattern", action="append", help="only test ids containing this (a glob with * ? []); repeatable"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="a line for every test")
    parser.add_argument("--logs", type=Path, help="folder for the workers' output (default: a new temporary one)")
    parser.add_argument("--expected", type=Path, help=f"the expected-results file (expected-{VERSION}.txt)")
    parser.add_argument("--table", action="store_true", help="print the counts of every expected file, per group")
    parser.add_argument("--worker", nargs=2, type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        # Ctrl-C means what it means under a terminal, however the suite was started (a
        # background job of a script inherits SIGINT ignored, and tests send SIGINT)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        worker(args.worker[0], args.worker[1], args.timeout)
        return 0
    if args.table:
        print("pass/fail/difference/pending-manager/not-applicable/skip per Python")
        print(versions_table())
        return 0
    try:
        import test._test_multiprocessing  # noqa: F401
    except ImportError as exc:
        print(f"stdlib suite: FAILED: CPython's test._test_multiprocessing cannot be imported ({exc})", flush=True)
        return 2
    from tests.stdlib_suite import rules

    path = args.expected or expected_path()
    ids = all_test_ids()
    if args.pattern:
        globs = [p if any(c in p for c in "*?[") else f"*{p}*" for p in args.pattern]
        ids = [i for i in ids if any(fnmatch.fnmatchcase(i, glob) for glob in globs)]
    runnable = [i for i in ids if rules.runs(i)]
    logs = args.logs or Path(tempfile.mkdtemp(prefix=f"stdlib-suite-{VERSION}-"))
    logs.mkdir(parents=True, exist_ok=True)
    print(
        f"stdlib suite on Python {sys.version.split()[0]}: {len(ids)} tests, {len(runnable)} to run "
        f"on {args.jobs} workers, {args.timeout:.0f} s each at most; logs in {logs}",
        flush=True,
    )
    began = time.monotonic()
    results = Runner(args.jobs, args.timeout, logs, args.verbose).run(units_for(runnable))
    expected = read_expected(path)

    # a test expected to pass that did not gets one more try, alone in a fresh worker
    again = [i for i in runnable if expected.get(i) == "pass" and results[i].outcome not in ("pass", "skip")]
    if again and not args.update:
        print(f"rerunning {len(again)} test(s) that were expected to pass", flush=True)
        rerun = Runner(1, args.timeout, logs, args.verbose).run(units_for(again))
        for test_id in again:
            if rerun[test_id].outcome == "pass":
                print(f"FLAKY (failed, then passed alone): {test_id}")
                results[test_id] = rerun[test_id]
    elapsed = time.monotonic() - began

    lines = {i: classify(i, results.get(i)) for i in ids}
    (logs / "results.json").write_text(json.dumps({k: vars(v) for k, v in results.items()}, indent=1))
    slowest = sorted(results.items(), key=lambda kv: -kv[1].seconds)[:8]
    print("slowest: " + ", ".join(f"{k} {v.seconds:.1f}s" for k, v in slowest))
    print(summary(lines))
    print(f"stdlib suite: {len(runnable)} tests run in {elapsed:.0f} s")

    if args.update:
        write_expected(path, {**expected, **lines} if args.pattern else lines)
        print(f"wrote {path}")
        return 0
    problems = compare(ids, expected, lines, results)
    stale = sorted(set(expected) - set(ids)) if not args.pattern else []
    if stale:
        print(f"\n{len(stale)} line(s) of {path.name} name no test of this Python: " + ", ".join(stale[:10]))
    for problem in problems:
        print(f"\n{problem}")
    if problems:
        print(f"\nstdlib suite: FAILED: {len(problems)} regression(s) or unlisted failure(s)")
        return 1
    print("stdlib suite: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
