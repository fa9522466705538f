"""Prints and log records of worker processes reach the parent; ferropool's own logger."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import threading

import ferropool
import pytest
from ferropool._worker import forwarding

from tests.conftest import WAIT, Child, run_program

LINES_PER_TASK = 50


# tasks: module level, so workers import them by reference


def print_lines(task: int) -> int:
    for line in range(LINES_PER_TASK):
        print(f"task {task} line {line} " + "x" * (line * 37 % 300))
    return os.getpid()


def print_to_stderr(task: int) -> int:
    print(f"err {task}", file=sys.stderr)
    return task


def log_records(task: int) -> int:
    log = logging.getLogger("tests.worker")
    log.debug("debug %d", task)
    log.info("info %d", task)
    log.warning("warning %d", task)
    try:
        raise KeyError(task)
    except KeyError:
        log.exception("failed %d", task)
    return os.getpid()


def write_junk_then_long_line(_: object = None) -> int:
    sys.stdout.buffer.write(b"junk \xff\xfe\x00 end\n")
    sys.stdout.write("L" * 200_000 + "\n")
    print("after the junk")
    return 0


def flood(nbytes: int) -> int:
    line = "f" * 99
    for _ in range(nbytes // 100):
        print(line)
    return os.getpid()


def print_after_backlog_is_sent(text: str) -> int:
    link = forwarding._link
    assert link is not None
    with link._lock:  # the parent takes output again: the worker no longer counts it as stuck
        link._sent_one.wait_for(lambda: not link._stalled, WAIT)
    forwarding.catch_up()
    print(text)
    return os.getpid()


def stall_after(seconds: float) -> None:
    """An initializer: the worker counts a parent that takes nothing for ``seconds`` as stuck."""
    forwarding.STALL = seconds


def print_without_newline(text: str) -> int:
    print(text, end="", flush=True)
    return 0


def exit_with(code: int) -> None:
    os._exit(code)


def _finish(pool: ferropool.Pool) -> None:
    pool.close()
    pool.join()


# --------------------------------------------------------------------------------------------
# prints


def test_prints_of_several_workers_arrive_whole_and_complete(capsys):
    with ferropool.Pool(4) as pool:
        pids = pool.map(print_lines, range(40), chunksize=1)
        _finish(pool)
    out = capsys.readouterr().out.splitlines()
    expected = {f"task {t} line {n} " + "x" * (n * 37 % 300) for t in range(40) for n in range(LINES_PER_TASK)}
    assert sorted(out) == sorted(expected)  # every line, none cut or glued to another
    assert len(set(pids)) > 1  # several workers printed at once


def test_each_tasks_lines_arrive_in_order_and_before_its_result(capsys):
    with ferropool.ProcessPoolExecutor(2) as ex:
        for task in range(5):
            ex.submit(print_lines, task).result(timeout=WAIT)
            out = capsys.readouterr().out.splitlines()
            assert out == [f"task {task} line {n} " + "x" * (n * 37 % 300) for n in range(LINES_PER_TASK)]


def test_stderr_goes_to_the_parents_stderr(capsys):
    with ferropool.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(print_to_stderr, range(6))) == list(range(6))
    captured = capsys.readouterr()
    assert sorted(captured.err.splitlines()) == [f"err {t}" for t in range(6)]
    assert captured.out == ""


def test_prefix_names_the_worker(capsys):
    with ferropool.Pool(2, worker_output="[{name}|{pid}] ") as pool:
        pids = set(pool.map(print_lines, range(4), chunksize=1))
        _finish(pool)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 * LINES_PER_TASK
    seen = set()
    for line in lines:
        m = re.match(r"\[PoolWorker-\d+\|(\d+)\] task \d+ line \d+ x*$", line)
        assert m, line
        seen.add(int(m.group(1)))
    assert seen == pids


def test_a_line_without_newline_arrives_when_flushed(capsys):
    with ferropool.ProcessPoolExecutor(1) as ex:
        ex.submit(print_without_newline, "partial").result(timeout=WAIT)
        ex.submit(print_without_newline, " more").result(timeout=WAIT)
    assert capsys.readouterr().out == "partial more"


def test_binary_junk_and_very_long_lines_do_not_stop_later_output(capsys):
    with ferropool.ProcessPoolExecutor(1) as ex:
        ex.submit(write_junk_then_long_line).result(timeout=WAIT)
        ex.submit(print_lines, 1).result(timeout=WAIT)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "junk \ufffd\ufffd\x00 end"
    assert out[1] == "L" * 200_000  # sent in pieces, written whole
    assert out[2] == "after the junk"
    assert len(out) == 3 + LINES_PER_TASK


class StuckStream:
    """A stdout whose writes block until released: a parent that cannot keep up."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.entered = threading.Event()
        self.chunks: list[str] = []

    def write(self, text: str) -> int:
        self.entered.set()
        self.released.wait(WAIT)
        self.chunks.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_a_flooding_worker_cannot_stall_the_pool(monkeypatch, capsys):
    stuck = StuckStream()
    monkeypatch.setattr(sys, "stdout", stuck)
    with ferropool.ProcessPoolExecutor(1, initializer=stall_after, initargs=(0.5,)) as ex:
        # 20 MB of output while the parent writes nothing: the task still finishes (its output
        # waits for the parent until it has taken nothing for half a second, then is dropped)
        pid = ex.submit(flood, 20_000_000).result(timeout=WAIT)
        assert stuck.entered.is_set()
        assert ex.submit(os.getpid).result(timeout=WAIT) == pid  # and the pool goes on
        stuck.released.set()
        ex.submit(print_after_backlog_is_sent, "after the flood").result(timeout=WAIT)
        ex.shutdown(wait=True)
    text = "".join(stuck.chunks)
    assert text.endswith("after the flood\n")  # later output is not lost
    received = text.count("f" * 99 + "\n")
    err = capsys.readouterr().err
    m = re.search(r"\[ferropool\] PoolWorker-\d+: (\d+) lines \((\d+) bytes\) of output dropped", err)
    assert m, err
    assert 0 < received < 200_000
    assert received + int(m.group(1)) == 200_000  # every line arrived whole or was counted


def test_dropped_lines_are_counted_where_they_would_have_been(monkeypatch):
    # the worker's side alone, against a parent (the other end) that reads nothing, then reads
    monkeypatch.setattr(forwarding, "STALL", 0.2)
    monkeypatch.setattr(forwarding, "PENDING_MAX", 64 * 1024)
    worker_end, parent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker_end.setblocking(False)
    link = forwarding._Link(worker_end)
    line = b"x" * 99 + b"\n"
    try:
        attempts = 0
        while not link._stalled:  # the socket fills, then the queue, then one wait of STALL
            link.send(b"o", line)
            attempts += 1
        for _ in range(10):
            link.send(b"o", line)  # the parent is stuck: counted, not waited for
        parent_end.settimeout(WAIT)
        received, notices = 0, []
        link.send(b"o", b"after\n")  # queued behind the notice once the parent reads again
        while True:
            message = parent_end.recv(1 << 20)
            if message.startswith(b"d"):
                notices.append(message[1:].split())
                continue
            received += message.count(line)
            if message.endswith(b"after\n"):
                break
        assert notices == [[b"11", str(11 * len(line)).encode()]]
        assert received + 11 == attempts + 10
    finally:
        with link._lock:
            link._closed = True
            link._sent_one.notify_all()
        link._sender.join(WAIT)
        worker_end.close()
        parent_end.close()


def test_a_print_made_while_a_line_is_sent_goes_once():
    # a signal handler that prints runs in the thread whose print is waiting for the parent
    sent = []

    class Link:
        def send(self, kind: bytes, payload: bytes) -> None:
            sent.append(payload)
            if len(sent) == 1:
                sink.write(b"from a handler\n")

    sink = forwarding._LineSink(Link(), b"o")  # type: ignore[arg-type]
    sink.write(b"first\npartial")
    sink.flush()
    # as on any stream, the handler's line ends the unfinished one; no byte goes twice
    assert sent == [b"first\n", b"partialfrom a handler\n"]


def test_worker_output_false_leaves_prints_in_the_worker(capsys):
    with ferropool.ProcessPoolExecutor(1, worker_output=False, mp_context="spawn") as ex:
        ex.submit(print_to_stderr, 1).result(timeout=WAIT)
    assert "err 1" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# log records


@pytest.mark.parametrize("context", [None, "spawn"])
def test_worker_records_reach_the_parents_handlers(caplog, context):
    # spawned workers set logging up when a task first imports it; forked ones have it already
    caplog.set_level(logging.INFO)
    with ferropool.Pool(2, worker_logs=logging.INFO, context=context) as pool:
        pids = set(pool.map(log_records, range(6), chunksize=1))
        _finish(pool)
    records = [r for r in caplog.records if r.name == "tests.worker"]
    assert sorted(r.getMessage() for r in records if r.levelno == logging.INFO) == [f"info {t}" for t in range(6)]
    assert not [r for r in records if r.levelno == logging.DEBUG]
    assert {r.process for r in records} == pids
    assert all(r.processName.startswith("PoolWorker-") for r in records)
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 6
    assert all("KeyError" in r.exc_text and "Traceback" in r.exc_text for r in errors)


def test_default_level_follows_the_parents_root_logger(caplog):
    caplog.set_level(logging.WARNING)  # the root level when the pool is made
    with ferropool.ProcessPoolExecutor(1) as ex:
        ex.submit(log_records, 1).result(timeout=WAIT)
        ex.shutdown(wait=True)
    levels = {r.levelname for r in caplog.records if r.name == "tests.worker"}
    assert levels == {"WARNING", "ERROR"}


def test_the_parents_level_filters_again(caplog):
    caplog.set_level(logging.ERROR, logger="tests.worker")
    with ferropool.ProcessPoolExecutor(1, worker_logs="DEBUG") as ex:
        ex.submit(log_records, 1).result(timeout=WAIT)
        ex.shutdown(wait=True)
    assert {r.levelname for r in caplog.records if r.name == "tests.worker"} == {"ERROR"}


def test_one_basic_config_shows_worker_records(tmp_path):
    run = run_program(
        tmp_path,
        "import logging, ferropool\n"
        "logging.basicConfig(level=logging.INFO, format='%(processName)s %(process)d %(message)s')\n"
        "def work(x):\n"
        "    logging.getLogger('app').info('working on %s', x)\n"
        "    return x\n"
        "with ferropool.Pool(2) as pool:\n"
        "    print(sum(pool.map(work, range(4))))\n",
        timeout=WAIT,
        name="main.py",
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == "6\n"
    lines = sorted(line for line in run.stderr.splitlines() if "working on" in line)
    assert sorted(line.split()[-1] for line in lines) == ["0", "1", "2", "3"]
    assert all(re.match(r"PoolWorker-\d+ \d+ working on", line) for line in lines)


@pytest.mark.parametrize("context", [None, "spawn"])
def test_a_workers_first_print_outside_pytest(tmp_path, context):
    """A fresh worker's first print() in a plain program (regression: on 3.11 it crashed the
    worker with SIGSEGV; pytest's own stdout capture hid it, so this runs as a script)."""
    text = f"""
        import ferropool

        def task(x):
            print("task", x)
            return x

        with ferropool.ProcessPoolExecutor(max_workers=1, mp_context={context!r}) as ex:
            print(ex.submit(print, "from the worker", flush=True).result(timeout=30))
        with ferropool.ProcessPoolExecutor(max_workers=1, mp_context={context!r}) as ex:
            print(ex.submit(task, 7).result(timeout=30))
        """
    with Child(tmp_path / "main.py", text) as child:
        child.exit_within(WAIT)
        assert child.proc.returncode == 0, child.report()
        # a task's lines are written before its result completes its future
        assert child.stdout.splitlines() == ["from the worker", "None", "task 7", "7"], child.report()


def test_worker_logs_false_keeps_records_in_the_worker(caplog):
    caplog.set_level(logging.INFO)
    with ferropool.ProcessPoolExecutor(1, worker_logs=False, mp_context="spawn") as ex:
        ex.submit(log_records, 1).result(timeout=WAIT)
        ex.shutdown(wait=True)
    assert not [r for r in caplog.records if r.name == "tests.worker"]


# --------------------------------------------------------------------------------------------
# life-cycle events and the ferropool logger


def test_lifecycle_events_are_logged(caplog):
    caplog.set_level(logging.DEBUG, logger="ferropool")
    ex = ferropool.ProcessPoolExecutor(1)
    with pytest.raises(ferropool.WorkerDiedError):
        ex.submit(exit_with, 7).result(timeout=WAIT)
    assert ex.submit(os.getpid).result(timeout=WAIT)
    ex.shutdown(wait=True)
    messages = [r.getMessage() for r in caplog.records if r.name == "ferropool"]
    assert "pool started: 1 worker processes" in messages
    assert sum(bool(re.match(r"worker PoolWorker-\d+ \(pid \d+\) started", m)) for m in messages) == 2
    assert any(re.search(r"exited with code 7 \(died\); a fresh worker takes its place", m) for m in messages)
    assert any(re.search(r"exited with code 0 at shutdown", m) for m in messages)
    assert messages[-1] == "pool shut down"


def test_recycled_workers_are_logged_at_info(caplog):
    caplog.set_level(logging.INFO, logger="ferropool")
    with ferropool.Pool(1, maxtasksperchild=1) as pool:
        pool.map(abs, range(3), chunksize=1)
        _finish(pool)
    recycled = [r for r in caplog.records if "(max_tasks_per_child)" in r.getMessage()]
    assert len(recycled) >= 2 and all(r.levelno == logging.INFO for r in recycled)


@pytest.fixture
def fresh_logger():
    log = logging.getLogger("ferropool")
    saved = (log.level, log.propagate, list(log.handlers))
    yield log
    log.setLevel(saved[0])
    log.propagate = saved[1]
    log.handlers[:] = saved[2]  # without log_to_stderr()'s handler, a later call adds one again


def test_get_logger_is_the_ferropool_logger():
    assert ferropool.get_logger() is logging.getLogger("ferropool")


def test_log_to_stderr(fresh_logger, capsys):
    log = ferropool.log_to_stderr("DEBUG")
    assert log is fresh_logger and log.level == logging.DEBUG and not log.propagate
    assert ferropool.log_to_stderr(logging.INFO) is log
    assert len(log.handlers) == 1  # added once
    assert log.level == logging.INFO
    log.info("hello")
    assert capsys.readouterr().err == "[INFO/MainProcess] hello\n"


@pytest.mark.parametrize("bad", ["LOUD", -1, "not a level"])
def test_log_to_stderr_rejects_a_bad_level(fresh_logger, bad):
    with pytest.raises(ValueError, match="level"):
        ferropool.log_to_stderr(bad)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"worker_logs": "LOUD"}, ValueError),
        ({"worker_logs": -5}, ValueError),
        ({"worker_logs": 1.5}, TypeError),
        ({"worker_output": 3}, TypeError),
        ({"worker_output": "[{worker}] "}, ValueError),
    ],
)
def test_bad_options_are_refused_at_the_call(kwargs, error):
    with pytest.raises(error):
        ferropool.Pool(1, **kwargs)
    with pytest.raises(error):
        ferropool.ProcessPoolExecutor(1, **kwargs)
