"""ferropool.dummy: multiprocessing.dummy's API, with ferropool's ThreadPool as its Pool."""

from __future__ import annotations

import multiprocessing.dummy
import os
import threading

import ferropool
import ferropool.dummy
import pytest

from tests import _tasks
from tests.conftest import WAIT


def test_names_match_the_stdlib():
    missing = [name for name in multiprocessing.dummy.__all__ if not hasattr(ferropool.dummy, name)]
    assert not missing, missing
    for name in ferropool.dummy.__all__:
        assert hasattr(ferropool.dummy, name), name


def test_pool_is_a_thread_pool():
    from ferropool.dummy import Pool

    with Pool(2) as p:
        assert isinstance(p, ferropool.ThreadPool)
        assert p.map(_tasks.square, range(10)) == [i * i for i in range(10)]
        assert p.apply(_tasks.get_pid) == os.getpid()  # threads, not processes
        assert p.apply(_tasks.thread_name) != threading.current_thread().name
        assert list(p.imap(_tasks.square, range(4))) == [0, 1, 4, 9]
        assert p.starmap(_tasks.add, [(1, 2), (3, 4)]) == [3, 7]
        assert p.apply_async(_tasks.add, (2, 2)).get(timeout=WAIT) == 4


def test_pool_arguments():
    with ferropool.dummy.Pool(processes=1, initializer=_tasks.init_record, initargs=("dummy",)) as p:
        assert p.map(_tasks.get_init_state, range(3)) == ["dummy"] * 3
    with pytest.raises(ValueError):
        ferropool.dummy.Pool(0)


def test_pool_takes_local_functions():
    """Threads need no pickling: a local function that holds a lock works."""
    lock = threading.Lock()
    total = []

    def add(x):
        with lock:
            total.append(x)
        return x

    with ferropool.dummy.Pool(2) as p:
        assert p.map(add, range(20)) == list(range(20))
    assert sorted(total) == list(range(20))


def _producer(q, lock, counter, n):
    for i in range(n):
        with lock:
            counter["value"] += 1
        q.put(i)
    q.put(None)


def test_process_queue_lock_program():
    q = ferropool.dummy.Queue()
    lock = ferropool.dummy.Lock()
    counter = {"value": 0}
    procs = [ferropool.dummy.Process(target=_producer, args=(q, lock, counter, 50)) for _ in range(3)]
    for proc in procs:
        proc.start()
    got, ends = [], 0
    while ends < len(procs):
        item = q.get(timeout=WAIT)
        if item is None:
            ends += 1
        else:
            got.append(item)
    for proc in procs:
        proc.join(WAIT)
        assert not proc.is_alive()
        assert proc.exitcode == 0
    assert sorted(got) == sorted(list(range(50)) * 3)
    assert counter["value"] == 150


def test_event_and_active_children():
    started = ferropool.dummy.Event()
    release = ferropool.dummy.Event()
    names = []

    def worker():
        names.append(ferropool.dummy.current_process().name)
        started.set()
        release.wait(WAIT)

    proc = ferropool.dummy.Process(target=worker, name="dummy-child")
    proc.start()
    try:
        assert started.wait(WAIT)
        assert proc in ferropool.dummy.active_children()
        assert proc.is_alive()
    finally:
        release.set()
        proc.join(WAIT)
    assert names == ["dummy-child"]
    assert proc not in ferropool.dummy.active_children()
    assert not proc.is_alive()


def test_current_process_in_the_main_thread():
    assert ferropool.dummy.current_process() is threading.current_thread()


def test_shutdown_and_freeze_support_exist():
    ferropool.dummy.shutdown()
    ferropool.dummy.freeze_support()
