"""Executor.map on both executors: order, several iterables, chunks, errors, timeouts, buffersize."""

from __future__ import annotations

import itertools
import pickle
import threading

import ferropool
import pytest

from tests import _tasks


def test_map_results_in_order(make_executor):
    with make_executor() as ex:
        assert list(ex.map(_tasks.square, range(50))) == [i * i for i in range(50)]


def test_map_several_iterables_stops_at_shortest(make_executor):
    with make_executor() as ex:
        assert list(ex.map(_tasks.add, [1, 2, 3, 4], (10, 20, 30))) == [11, 22, 33]


def test_map_empty_input(make_executor):
    with make_executor() as ex:
        assert list(ex.map(_tasks.square, [])) == []


def test_map_generator_input(make_executor):
    with make_executor() as ex:
        assert list(ex.map(_tasks.square, (i for i in range(10)))) == [i * i for i in range(10)]


@pytest.mark.parametrize("chunksize", [1, 2, 7, 100])
def test_map_chunksize_gives_same_results(make_executor, chunksize):
    with make_executor() as ex:
        got = list(ex.map(_tasks.add, range(23), range(100, 123), chunksize=chunksize))
    assert got == [i + 100 + i for i in range(23)]


def test_map_returns_an_iterator(make_executor):
    with make_executor() as ex:
        it = ex.map(_tasks.square, range(3))
        assert iter(it) is it
        assert next(it) == 0
        assert list(it) == [1, 4]


@pytest.mark.parametrize("chunksize", [1, 3])
def test_map_exception_raised_at_its_item(make_executor, chunksize):
    with make_executor() as ex:
        it = ex.map(_tasks.fail_on, range(10), itertools.repeat(5), chunksize=chunksize)
        got = []
        with pytest.raises(ValueError, match="bad item 5"):
            for value in it:
                got.append(value)
        if chunksize == 1:
            assert got == [0, 1, 2, 3, 4]
        else:
            # a process pool fails the chunk holding item 5 as a whole; a thread pool may ignore
            # chunksize, as the stdlib's does
            assert got in ([0, 1, 2], [0, 1, 2, 3, 4])
        # the pool is still fine
        assert list(ex.map(_tasks.square, range(3))) == [0, 1, 4]


def test_map_timeout(make_executor, gate):
    with make_executor() as ex, gate:
        it = ex.map(_tasks.wait_gate, [gate.path] * 2, timeout=0.1)
        with pytest.raises(ferropool.TimeoutError):
            next(it)


def test_map_timeout_caught_as_builtin_timeout_error(make_executor, gate):
    with make_executor() as ex, gate:
        it = ex.map(_tasks.wait_gate, [gate.path], timeout=0.05)
        with pytest.raises(TimeoutError):
            list(it)


def test_map_timeout_not_hit_when_results_are_fast(make_executor):
    with make_executor() as ex:
        assert list(ex.map(_tasks.square, range(5), timeout=30)) == [0, 1, 4, 9, 16]


def test_map_lambda(make_executor):
    with make_executor() as ex:
        assert list(ex.map(lambda x, y: x * y, range(5), range(5))) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("buffersize", [1, 2, 5])
def test_map_buffersize_with_endless_input(make_executor, buffersize):
    with make_executor() as ex:
        it = ex.map(_tasks.square, itertools.count(), buffersize=buffersize)
        assert list(itertools.islice(it, 12)) == [i * i for i in range(12)]
        it.close()


def test_map_buffersize_finite_input(make_executor):
    with make_executor() as ex:
        assert list(ex.map(_tasks.add, range(20), range(20), buffersize=3)) == [2 * i for i in range(20)]


def test_map_buffersize_with_chunksize(make_executor):
    with make_executor() as ex:
        it = ex.map(_tasks.square, itertools.count(), chunksize=4, buffersize=2)
        assert list(itertools.islice(it, 10)) == [i * i for i in range(10)]
        it.close()


def test_map_buffersize_submits_lazily(make_executor):
    consumed = []

    def items():
        for i in range(100):
            consumed.append(i)
            yield i

    with make_executor() as ex:
        it = ex.map(_tasks.square, items(), buffersize=2)
        assert next(it) == 0
        assert len(consumed) <= 4, consumed
        it.close()


def test_map_abandoned_iterator_does_not_block_shutdown(make_executor, gate):
    with make_executor(max_workers=1) as ex, gate:
        it = ex.map(_tasks.wait_gate, [gate.path] * 5, timeout=0.05)
        with pytest.raises(TimeoutError):
            next(it)
        del it


def test_map_unpicklable_function_fails_at_its_item():
    lock = threading.Lock()
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        it = ex.map(lambda x: (lock, x), range(3))
        with pytest.raises((TypeError, pickle.PicklingError)) as excinfo:
            next(it)
        assert "pickle" in str(excinfo.value).lower()
        assert list(ex.map(_tasks.square, range(3))) == [0, 1, 4]


def test_map_error_keeps_where_the_task_raised_on_both_executors(make_executor, kind):
    # one chunk interpreter for both pools: a process pool's error carries the worker's
    # traceback as its cause, a thread pool's error keeps its own traceback object
    import traceback

    with make_executor() as ex:
        with pytest.raises(ValueError, match="bad item 3") as info:
            list(ex.map(_tasks.fail_on, range(6), itertools.repeat(3), chunksize=2))
    if kind == "process":
        where = str(info.value.__cause__)
    else:
        where = "".join(traceback.format_tb(info.value.__traceback__))
    assert "fail_on" in where and "_tasks.py" in where
