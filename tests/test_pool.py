"""multiprocessing.Pool's API on ferropool: Pool (processes) and ThreadPool (threads)."""

from __future__ import annotations

import builtins
import functools
import logging
import multiprocessing
import os
import queue
import threading

import ferropool
import ferropool.pool
import psutil
import pytest

from tests import _tasks
from tests.conftest import WAIT, assert_times_out, cluster_pool, live_processes, run_program, task_sizes

POOLS = {"process": ferropool.Pool, "thread": ferropool.ThreadPool, "cluster": cluster_pool}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(params=sorted(POOLS))
def pool_cls(request):
    if request.param == "cluster":
        return cluster_pool(request)
    return POOLS[request.param]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


# --------------------------------------------------------------------------------------------
# names


def test_names():
    assert ferropool.Pool is ferropool.pool.Pool
    assert ferropool.ThreadPool is ferropool.pool.ThreadPool
    assert issubclass(ferropool.ThreadPool, ferropool.Pool)
    assert ferropool.AsyncResult is ferropool.pool.AsyncResult


# --------------------------------------------------------------------------------------------
# apply, map, starmap


def test_apply(pool_cls):
    with pool_cls(2) as p:
        assert p.apply(_tasks.add, (2, 3)) == 5
        assert p.apply(_tasks.echo, (1,), {"k": "v"}) == ((1,), {"k": "v"})
        assert isinstance(p.apply(_tasks.get_pid), int)  # no arguments
        assert p.apply(_tasks.square, [4]) == 16  # args may be any iterable


def test_apply_runs_where_expected(pool_cls):
    with pool_cls(2) as p:
        pid = p.apply(_tasks.get_pid)
    if pool_cls is ferropool.ThreadPool:
        assert pid == os.getpid()
    else:
        assert pid != os.getpid()


def test_apply_raises_the_task_error(pool_cls):
    with pool_cls(2) as p:
        with pytest.raises(ValueError, match="nope"):
            p.apply(_tasks.fail, ("nope",))
        assert p.apply(_tasks.square, (3,)) == 9


def test_apply_async(pool_cls):
    with pool_cls(2) as p:
        results = [p.apply_async(_tasks.square, (i,)) for i in range(10)]
        assert [r.get(timeout=WAIT) for r in results] == [i * i for i in range(10)]
        assert all(r.ready() and r.successful() for r in results)
        kw = p.apply_async(_tasks.echo, (1, 2), {"a": 3})
        assert kw.get(timeout=WAIT) == ((1, 2), {"a": 3})


def test_apply_async_failure(pool_cls):
    with pool_cls(2) as p:
        r = p.apply_async(_tasks.fail, ("bad",))
        r.wait(WAIT)
        assert r.ready()
        assert not r.successful()
        with pytest.raises(ValueError, match="bad"):
            r.get(timeout=WAIT)
        with pytest.raises(ValueError, match="bad"):
            r.get()  # the error stays


def test_map(pool_cls):
    with pool_cls(2) as p:
        assert p.map(_tasks.square, range(50)) == [i * i for i in range(50)]
        assert p.map(_tasks.square, range(50), chunksize=7) == [i * i for i in range(50)]
        assert p.map(_tasks.square, range(5), chunksize=100) == [0, 1, 4, 9, 16]
        assert p.map(_tasks.square, [3]) == [9]


def test_map_empty(pool_cls):
    with pool_cls(2) as p:
        assert p.map(_tasks.square, []) == []
        assert p.map(_tasks.square, iter(())) == []
        assert p.map_async(_tasks.square, []).get(timeout=WAIT) == []
        assert p.starmap(_tasks.add, []) == []


def test_map_consumes_a_generator(pool_cls):
    pulled = []

    def gen():
        for i in range(30):
            pulled.append(i)
            yield i

    with pool_cls(2) as p:
        assert p.map(_tasks.square, gen()) == [i * i for i in range(30)]
    assert pulled == list(range(30))


def test_map_default_chunksize():
    """Without a chunk size, tasks start at one item and grow with measured item time, never past
    the stdlib's four chunks per worker; a given chunk size is kept (white box: counts them)."""
    with ferropool.Pool(2) as p:
        sizes = task_sizes(p, "chunk_submitter")
        assert p.map(_tasks.square, range(100)) == [i * i for i in range(100)]
        assert sum(sizes) == 100
        assert sizes[0] == 1  # nothing measured yet
        assert max(sizes) <= 13  # ceil(100 / (4 * 2))
        sizes.clear()
        big = range(200_000)  # no-ops: tasks grow to the cap once a result has come back
        assert p.map(_tasks.square, big) == [i * i for i in big]
        assert sum(sizes) == 200_000
        assert 1_000 < max(sizes) <= 25_000 and len(sizes) < 400
        sizes.clear()
        assert p.map(_tasks.square, range(10), chunksize=4) == [i * i for i in range(10)]
        assert sizes == [4, 4, 2]


def test_map_error_raises(pool_cls):
    with pool_cls(2) as p:
        with pytest.raises(ValueError, match="bad item 7"):
            p.map(functools.partial(_tasks.fail_on, bad=7), range(20))
        assert p.map(_tasks.square, range(4)) == [0, 1, 4, 9]


def test_map_async(pool_cls):
    with pool_cls(2) as p:
        r = p.map_async(_tasks.square, range(20), chunksize=3)
        assert r.get(timeout=WAIT) == [i * i for i in range(20)]
        assert r.ready() and r.successful()
        bad = p.map_async(functools.partial(_tasks.fail_on, bad=2), range(5))
        bad.wait(WAIT)
        assert bad.ready() and not bad.successful()
        with pytest.raises(ValueError, match="bad item 2"):
            bad.get(timeout=WAIT)


def test_starmap(pool_cls):
    with pool_cls(2) as p:
        pairs = [(i, 10 * i) for i in range(25)]
        assert p.starmap(_tasks.add, pairs) == [11 * i for i in range(25)]
        assert p.starmap(_tasks.add, iter(pairs), chunksize=4) == [11 * i for i in range(25)]
        assert p.starmap_async(_tasks.add, pairs).get(timeout=WAIT) == [11 * i for i in range(25)]


def test_lambdas_and_closures():
    k = 7

    def closure(x):
        return x * k

    with ferropool.Pool(2) as p:
        assert p.apply(lambda a, b: a * b, (6, 7)) == 42
        assert p.map(lambda x: x + 1, range(5)) == [1, 2, 3, 4, 5]
        assert p.map(closure, range(4)) == [0, 7, 14, 21]
        assert list(p.imap(closure, range(4))) == [0, 7, 14, 21]
        assert sorted(p.imap_unordered(lambda x: -x, range(4))) == [-3, -2, -1, 0]
        assert p.starmap(lambda a, b: a - b, [(5, 1), (1, 5)]) == [4, -4]
        assert p.apply_async(closure, (2,)).get(timeout=WAIT) == 14
        assert p.map(_tasks.Multiplier(3).times, range(3)) == [0, 3, 6]


# --------------------------------------------------------------------------------------------
# AsyncResult: get, wait, ready, successful


def test_get_timeout(pool_cls, gate):
    with pool_cls(2) as p, gate:
        r = p.apply_async(_tasks.wait_gate, (gate.path, "late"))
        assert_times_out(
            r.get, (ferropool.TimeoutError, 0.01), (multiprocessing.TimeoutError, 0.01), (builtins.TimeoutError, 0)
        )
        assert not r.ready()
        gate.open()
        assert r.get(timeout=WAIT) == "late"
        assert r.ready() and r.successful()


def test_map_async_get_timeout(pool_cls, gate):
    with pool_cls(2) as p, gate:
        r = p.map_async(functools.partial(_tasks.wait_gate, gate.path), range(4))
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(timeout=0.01)
        gate.open()
        assert r.get(timeout=WAIT) == [0, 1, 2, 3]


def test_wait_and_successful(pool_cls, gate, beacon):
    with pool_cls(2) as p, gate:
        r = p.apply_async(_tasks.wait_gate, (gate.path, "v", beacon.path))
        beacon.wait()
        assert r.wait(timeout=0.01) is None  # returns after the timeout, quietly
        assert not r.ready()
        with pytest.raises(ValueError):
            r.successful()
        assert "pending" in repr(r)
        gate.open()
        r.wait(WAIT)
        assert r.ready()
        assert r.successful()
        assert r.get(timeout=0) == "v"
        r.wait()  # no timeout: returns at once when ready


def test_map_result_successful_before_ready(pool_cls, gate):
    with pool_cls(2) as p, gate:
        r = p.map_async(functools.partial(_tasks.wait_gate, gate.path), range(3))
        with pytest.raises(ValueError):
            r.successful()
        gate.open()
        r.wait(WAIT)
        assert r.successful()


# --------------------------------------------------------------------------------------------
# callbacks


def test_callbacks_on_one_thread_in_completion_order(pool_cls):
    """With one worker, completion order is submission order."""
    seen = []
    done = threading.Event()

    def callback(value):
        seen.append(("ok", threading.get_ident(), value))

    def error_callback(exc):
        seen.append(("err", threading.get_ident(), str(exc)))

    def last(value):
        callback(value)
        done.set()

    with pool_cls(1) as p:
        for i in range(5):
            p.apply_async(_tasks.square, (i,), callback=callback, error_callback=error_callback)
        p.apply_async(_tasks.fail, ("e1",), callback=callback, error_callback=error_callback)
        p.map_async(_tasks.square, range(3), callback=callback, error_callback=error_callback)
        p.starmap_async(_tasks.add, [(1, 2)], callback=callback, error_callback=error_callback)
        p.map_async(
            functools.partial(_tasks.fail_on, bad=1), range(3), callback=callback, error_callback=error_callback
        )
        p.apply_async(_tasks.identity, ("end",), callback=last)
        assert done.wait(WAIT)
    assert [(kind, value) for kind, _, value in seen] == [
        ("ok", 0),
        ("ok", 1),
        ("ok", 4),
        ("ok", 9),
        ("ok", 16),
        ("err", "e1"),
        ("ok", [0, 1, 4]),
        ("ok", [3]),
        ("err", "bad item 1"),
        ("ok", "end"),
    ]
    threads = {ident for _, ident, _ in seen}
    assert len(threads) == 1, threads
    assert threads != {threading.get_ident()}


def test_callbacks_share_one_thread_with_many_workers(pool_cls):
    idents: queue.SimpleQueue[int] = queue.SimpleQueue()
    with pool_cls(2) as p:
        results = [
            p.apply_async(
                _tasks.sleep_then, (0.002 + 0.001 * (i % 3), i), callback=lambda _: idents.put(threading.get_ident())
            )
            for i in range(20)
        ]
        results += [
            p.apply_async(_tasks.fail, ("x",), error_callback=lambda _: idents.put(threading.get_ident()))
            for _ in range(5)
        ]
        got = {idents.get(timeout=WAIT) for _ in results}
    assert len(got) == 1, got


def test_callback_of_empty_map_async_runs_on_the_callback_thread(pool_cls):
    """An empty map is ready at once; its callback still runs on the pool's one callback thread."""
    idents: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
    with pool_cls(1) as p:
        p.apply_async(_tasks.sleep_then, (0.01, 1), callback=lambda _: idents.put(("apply", threading.get_ident())))
        first = idents.get(timeout=WAIT)
        p.map_async(_tasks.square, [], callback=lambda _: idents.put(("empty map", threading.get_ident())))
        second = idents.get(timeout=WAIT)
    assert first[1] != threading.get_ident()
    assert second[1] == first[1], f"callbacks ran on {first} and {second}; the test thread is {threading.get_ident()}"


def test_error_callback_for_unpicklable_argument_runs_on_the_callback_thread():
    """A call that fails before reaching a worker still reports on the pool's callback thread."""
    idents: queue.SimpleQueue[tuple[str, int]] = queue.SimpleQueue()
    with ferropool.Pool(1) as p:
        p.apply_async(_tasks.sleep_then, (0.01, 1), callback=lambda _: idents.put(("apply", threading.get_ident())))
        first = idents.get(timeout=WAIT)
        p.apply_async(
            _tasks.identity, (threading.Lock(),), error_callback=lambda _: idents.put(("error", threading.get_ident()))
        )
        second = idents.get(timeout=WAIT)
    assert first[1] != threading.get_ident()
    assert second[1] == first[1], f"callbacks ran on {first} and {second}; the test thread is {threading.get_ident()}"


def test_error_callback_receives_the_exception(pool_cls):
    errors: queue.SimpleQueue[BaseException] = queue.SimpleQueue()
    with pool_cls(2) as p:
        r = p.apply_async(
            _tasks.fail, ("why",), callback=lambda v: errors.put(AssertionError(v)), error_callback=errors.put
        )
        exc = errors.get(timeout=WAIT)
        assert isinstance(exc, ValueError) and str(exc) == "why"
        with pytest.raises(ValueError):
            r.get(timeout=WAIT)


def test_callback_that_raises_is_logged_and_later_callbacks_run(pool_cls, caplog):
    delivered: queue.SimpleQueue[object] = queue.SimpleQueue()

    def callback(value):
        if value == 4:
            raise RuntimeError("callback fails on purpose")
        delivered.put(value)

    def error_callback(exc):
        delivered.put(("error", str(exc)))
        raise RuntimeError("error_callback fails on purpose")

    with caplog.at_level(logging.ERROR, logger="ferropool"), pool_cls(1) as p:
        for i in range(4):
            p.apply_async(_tasks.square, (i,), callback=callback)
        p.apply_async(_tasks.fail, ("e",), error_callback=error_callback)
        for i in range(4):
            p.apply_async(_tasks.square, (i,), callback=callback)
        got = [delivered.get(timeout=WAIT) for _ in range(7)]
        assert p.apply(_tasks.square, (5,)) == 25
    assert got == [0, 1, 9, ("error", "e"), 0, 1, 9]
    messages = [r.getMessage() for r in caplog.records if r.name == "ferropool"]
    assert sum("callback" in m for m in messages) >= 3, messages
    texts = "\n".join(r.exc_text or "" for r in caplog.records) + "\n".join(
        str(r.exc_info[1]) for r in caplog.records if r.exc_info
    )
    assert "callback fails on purpose" in texts
    assert "error_callback fails on purpose" in texts


def test_map_async_callback_gets_the_list(pool_cls):
    got: queue.SimpleQueue[object] = queue.SimpleQueue()
    with pool_cls(2) as p:
        p.map_async(_tasks.square, range(10), chunksize=2, callback=got.put)
        assert got.get(timeout=WAIT) == [i * i for i in range(10)]
        p.map_async(_tasks.square, [], callback=got.put)
        assert got.get(timeout=WAIT) == []


# --------------------------------------------------------------------------------------------
# workers: initializer, maxtasksperchild, death


def test_initializer(pool_cls):
    with pool_cls(2, initializer=_tasks.init_record, initargs=("hello",)) as p:
        assert p.map(_tasks.get_init_state, range(8), chunksize=1) == ["hello"] * 8


def test_maxtasksperchild():
    with ferropool.Pool(1, maxtasksperchild=2) as p:
        pids = [p.apply(_tasks.get_pid) for _ in range(6)]
    assert len(set(pids)) == 3, pids
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5], pids


def test_failing_initializer_breaks_without_hanging():
    with ferropool.Pool(1, initializer=_tasks.init_fail) as p:
        r = p.apply_async(_tasks.square, (2,))
        with pytest.raises(ferropool.BrokenProcessPool):
            r.get(timeout=WAIT)


@pytest.mark.broken_pool
def test_worker_death_fails_the_map_and_the_pool_goes_on():
    with ferropool.Pool(2) as p:
        with pytest.raises(ferropool.WorkerDiedError) as excinfo:
            p.map(functools.partial(_tasks.exit_if, bad=7, code=4), range(20), chunksize=2)
        err = excinfo.value
        assert isinstance(err, ferropool.BrokenProcessPool)
        assert err.exitcode == 4
        assert "4" in str(err)
        assert p.apply(_tasks.square, (3,)) == 9
        assert p.map(_tasks.square, range(6)) == [0, 1, 4, 9, 16, 25]


def test_worker_death_in_apply_async():
    with ferropool.Pool(2) as p:
        r = p.apply_async(_tasks.exit_now, (5,))
        with pytest.raises(ferropool.WorkerDiedError) as excinfo:
            r.get(timeout=WAIT)
        assert excinfo.value.exitcode == 5
        assert r.ready() and not r.successful()
        assert p.apply(_tasks.add, (1, 1)) == 2


# --------------------------------------------------------------------------------------------
# ending: close, join, terminate, the with statement


def test_close_join_finishes_queued_work(pool_cls):
    p = pool_cls(2)
    results = [p.apply_async(_tasks.sleep_then, (0.01, i)) for i in range(8)]
    mapped = p.map_async(_tasks.square, range(10))
    p.close()
    p.join()
    assert [r.get(timeout=0) for r in results] == list(range(8))
    assert mapped.get(timeout=0) == [i * i for i in range(10)]


def test_close_join_leaves_no_worker():
    p = ferropool.Pool(2)
    pids = set(p.map(_tasks.get_pid, range(20), chunksize=1))
    p.close()
    p.join()
    assert not pids & _children()


def test_terminate_while_task_runs(gate, beacon):
    p = ferropool.Pool(1)
    with gate:
        r = p.apply_async(_tasks.wait_gate, (gate.path, "never", beacon.path))
        worker = int(beacon.wait())
        p.terminate()
        p.join()
        assert worker not in _children()
        r.wait(WAIT)
        assert r.ready()
        with pytest.raises(ferropool.BrokenProcessPool):
            r.get(timeout=0)


def test_thread_pool_terminate_lets_running_call_finish(gate, beacon):
    p = ferropool.ThreadPool(1)
    with gate:
        running = p.apply_async(_tasks.wait_gate, (gate.path, "done", beacon.path))
        beacon.wait()
        queued = p.apply_async(_tasks.square, (3,))
        p.terminate()
        gate.open()
        p.join()
        assert running.get(timeout=WAIT) == "done"
        queued.wait(WAIT)
        assert queued.ready()


def test_with_statement_terminates(pool_cls):
    with pool_cls(2) as p:
        assert p.apply(_tasks.square, (2,)) == 4
    assert "TERMINATE" in repr(p)
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply(_tasks.square, (2,))
    p.join()


def test_repr(pool_cls):
    p = pool_cls(2)
    try:
        assert "RUN" in repr(p) and "pool_size=2" in repr(p)
    finally:
        p.terminate()
        p.join()


def test_join_after_terminate_then_close(pool_cls):
    p = pool_cls(2)
    assert p.map(_tasks.square, range(3)) == [0, 1, 4]
    p.terminate()
    p.close()  # after terminate: nothing to do
    p.join()
    p.join()  # twice is fine


# --------------------------------------------------------------------------------------------
# pools nobody closed


GC_SCRIPT = """
import gc, os, sys
sys.path.insert(0, {root!r})
import ferropool
import psutil
from tests import _tasks
from tests.conftest import live_processes

def use():
    p = ferropool.{cls}(2)
    pids = set(p.map(_tasks.get_pid, range(40), chunksize=1))
    assert p.apply(_tasks.square, (4,)) == 16
    return p, pids

p, pids = use()
print("workers", *sorted(pids), flush=True)
del p
gc.collect()
# a worker may exit between two looks at it: live_processes skips those already gone
procs = live_processes(pid for pid in pids if pid != os.getpid())
_, alive = psutil.wait_procs(procs, timeout=10)
print("alive-after-del", *[p.pid for p in alive], flush=True)
"""

EXIT_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
import ferropool
from tests import _tasks

p = ferropool.{cls}(2)
pids = set(p.map(_tasks.get_pid, range(40), chunksize=1))
print("workers", *sorted(pids), flush=True)
r = p.map_async(_tasks.sleep_then, [0.05] * 4)
# no close, no terminate: the interpreter ends with the pool alive and work queued
"""


def _run_script(tmp_path, text):
    proc = run_program(tmp_path, text, name="script.py")
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr
    lines = {line.split()[0]: [int(x) for x in line.split()[1:]] for line in proc.stdout.splitlines()}
    return lines, proc


@pytest.mark.parametrize("cls", ["Pool", "ThreadPool"])
def test_garbage_collected_pool_cleans_up(tmp_path, cls):
    lines, proc = _run_script(tmp_path, GC_SCRIPT.format(root=ROOT, cls=cls))
    assert lines["workers"], proc.stdout
    if cls == "Pool":
        assert os.getpid() not in lines["workers"]
        assert lines["alive-after-del"] == [], f"workers still running after del: {proc.stdout}"
        _, alive = psutil.wait_procs(live_processes(lines["workers"]), timeout=5)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their interpreter"


@pytest.mark.parametrize("cls", ["Pool", "ThreadPool"])
def test_pool_left_at_interpreter_exit(tmp_path, cls):
    lines, proc = _run_script(tmp_path, EXIT_SCRIPT.format(root=ROOT, cls=cls))
    assert lines["workers"], proc.stdout
    if cls == "Pool":
        _, alive = psutil.wait_procs(live_processes(lines["workers"]), timeout=5)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their interpreter"
