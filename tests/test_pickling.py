"""What travels to process workers: lambdas, closures, __main__ functions; and what cannot."""

from __future__ import annotations

import functools
import pickle
import threading

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, program_report, run_program

PICKLING_ERRORS = (TypeError, pickle.PicklingError, AttributeError)


def test_lambda(make_executor):
    with make_executor() as ex:
        assert ex.submit(lambda x: x + 1, 41).result(timeout=WAIT) == 42


def test_closure(make_executor):
    offset = 100

    def add_offset(x):
        return x + offset

    with make_executor() as ex:
        assert ex.submit(add_offset, 5).result(timeout=WAIT) == 105
        assert list(ex.map(add_offset, range(3))) == [100, 101, 102]


def test_nested_function_calling_module_function(make_executor):
    def nested(x):
        return _tasks.square(x) + 1

    with make_executor() as ex:
        assert ex.submit(nested, 3).result(timeout=WAIT) == 10


def test_partial_of_lambda(make_executor):
    with make_executor() as ex:
        assert ex.submit(functools.partial(lambda a, b: a * b, 6), 7).result(timeout=WAIT) == 42


def test_lambda_argument_and_result():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        fn = ex.submit(_tasks.identity, lambda: "inner").result(timeout=WAIT)
    assert fn() == "inner"


def test_closure_sees_state_at_submit_time():
    state = {"value": 1}

    def read():
        return state["value"]

    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        first = ex.submit(read)
        state["value"] = 2
        second = ex.submit(read)
        assert first.result(timeout=WAIT) == 1
        assert second.result(timeout=WAIT) == 2


def test_locally_defined_class_instances():
    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def norm1(self):
            return abs(self.x) + abs(self.y)

    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        assert ex.submit(Point.norm1, Point(3, -4)).result(timeout=WAIT) == 7
        result = ex.submit(lambda: Point(1, 2)).result(timeout=WAIT)
    assert (result.x, result.y) == (1, 2)


def test_unpicklable_argument_fails_only_that_future():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(_tasks.identity, threading.Lock())
        assert isinstance(fut, ferropool.Future)
        exc = fut.exception(timeout=WAIT)
        assert isinstance(exc, PICKLING_ERRORS), repr(exc)
        with pytest.raises(PICKLING_ERRORS):
            fut.result()
        assert ex.submit(_tasks.square, 5).result(timeout=WAIT) == 25


def test_unpicklable_keyword_argument():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(_tasks.echo, lock=threading.Lock())
        assert isinstance(fut.exception(timeout=WAIT), PICKLING_ERRORS)
        assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4


def test_unpicklable_callable():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(_tasks.UnpicklableCallable())
        assert isinstance(fut.exception(timeout=WAIT), PICKLING_ERRORS)
        assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4


def test_unpicklable_result_fails_only_that_future():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        fut = ex.submit(_tasks.return_unpicklable)
        exc = fut.exception(timeout=WAIT)
        assert isinstance(exc, PICKLING_ERRORS), repr(exc)
        assert ex.submit(_tasks.square, 5).result(timeout=WAIT) == 25


def test_unpicklable_item_in_map():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        it = ex.map(_tasks.identity, [1, threading.Lock(), 3])
        assert next(it) == 1
        with pytest.raises(PICKLING_ERRORS):
            next(it)
        assert list(ex.map(_tasks.identity, [1, 2, 3])) == [1, 2, 3]


def test_unpicklable_item_in_chunked_map():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        it = ex.map(_tasks.identity, [1, 2, threading.Lock(), 4], chunksize=2)
        assert next(it) == 1
        assert next(it) == 2
        with pytest.raises(PICKLING_ERRORS):
            next(it)
        assert list(ex.map(_tasks.identity, range(6), chunksize=2)) == list(range(6))


def test_unpicklable_exception_from_task():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        exc = ex.submit(_tasks.raise_unpicklable_error).exception(timeout=WAIT)
        assert exc is not None
        assert "UnpicklableError" in str(exc) or "UnpicklableError" in str(exc.__cause__), repr(exc)
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9


def test_exception_that_cannot_be_unpickled_in_parent():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(_tasks.raise_unloadable_error)
        exc = fut.exception(timeout=WAIT)
        assert exc is not None
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9


def test_result_that_cannot_be_unpickled_in_parent():
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex:
        fut = ex.submit(_tasks.identity, _tasks.UnloadableError("a", "b"))
        exc = fut.exception(timeout=WAIT)
        assert isinstance(exc, TypeError), repr(exc)
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9


MAIN_SCRIPT = """
import os
import ferropool

FACTOR = 3


def triple(x):
    return FACTOR * x


def init(value):
    os.environ["FERROPOOL_INIT_VALUE"] = value


def read_init():
    return os.environ.get("FERROPOOL_INIT_VALUE"), os.getpid()


class Box:
    def __init__(self, v):
        self.v = v


ex = ferropool.ProcessPoolExecutor(max_workers=2)
print("map", list(ex.map(triple, range(4))), flush=True)
print("lambda", ex.submit(lambda x: x * FACTOR, 5).result(timeout=30), flush=True)
print("box", ex.submit(lambda b: Box(b.v + 1), Box(1)).result(timeout=30).v, flush=True)
ex.shutdown()

with ferropool.ProcessPoolExecutor(max_workers=2, initializer=init, initargs=("yes",)) as ex2:
    value, pid = ex2.submit(read_init).result(timeout=30)
    print("init", value, pid != os.getpid(), flush=True)
print("done", flush=True)
"""


def test_functions_defined_in_main_without_guard(tmp_path):
    proc = run_program(tmp_path, MAIN_SCRIPT, name="main_script.py")
    report = program_report(proc)
    assert proc.returncode == 0, report
    lines = proc.stdout.splitlines()
    assert lines == ["map [0, 3, 6, 9]", "lambda 15", "box 2", "init yes True", "done"], report
    assert proc.stderr == "", report
