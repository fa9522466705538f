"""Bad arguments fail at the call, with the stdlib's exception types and a useful message."""

from __future__ import annotations

import multiprocessing

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT


@pytest.mark.parametrize("not_callable", [None, 42, "square", [_tasks.square]])
def test_submit_non_callable(make_executor, not_callable):
    with make_executor() as ex:
        with pytest.raises(TypeError):
            ex.submit(not_callable)
        with pytest.raises(TypeError):
            ex.submit(not_callable, 1, 2)
        assert ex.submit(_tasks.square, 3).result(timeout=WAIT) == 9


def test_map_non_callable(make_executor):
    with make_executor() as ex:
        with pytest.raises(TypeError):
            ex.map(None, range(3))


def test_submit_without_fn(make_executor):
    with make_executor() as ex:
        with pytest.raises(TypeError):
            ex.submit()


@pytest.mark.parametrize("max_workers", [0, -1, -100])
def test_max_workers_not_positive(executor_cls, max_workers):
    with pytest.raises(ValueError):
        executor_cls(max_workers=max_workers)


@pytest.mark.parametrize("max_workers", ["2", 1.5])
def test_max_workers_wrong_type(executor_cls, max_workers):
    with pytest.raises(TypeError):
        executor_cls(max_workers=max_workers)


def test_initializer_not_callable(executor_cls):
    with pytest.raises(TypeError):
        executor_cls(max_workers=1, initializer=42)


@pytest.mark.parametrize("mp_context", [42, "threads", "", object()])
def test_bad_mp_context(mp_context):
    with pytest.raises(ValueError) as excinfo:
        ferropool.ProcessPoolExecutor(max_workers=1, mp_context=mp_context)
    message = str(excinfo.value)
    for accepted in ("spawn", "fork", "forkserver"):
        assert accepted in message, message


@pytest.mark.parametrize(
    "mp_context",
    [
        "spawn",
        "fork",
        "forkserver",
        multiprocessing.get_context("spawn"),
        multiprocessing.get_context("fork"),
        multiprocessing.get_context("forkserver"),
        multiprocessing.get_context(),
    ],
    ids=["spawn", "fork", "forkserver", "ctx-spawn", "ctx-fork", "ctx-forkserver", "ctx-default"],
)
def test_accepted_mp_context(mp_context):
    with ferropool.ProcessPoolExecutor(max_workers=1, mp_context=mp_context) as ex:
        assert ex.submit(_tasks.square, 4).result(timeout=WAIT) == 16


def test_mp_context_positional():
    with ferropool.ProcessPoolExecutor(1, "spawn") as ex:
        assert ex.submit(_tasks.square, 2).result(timeout=WAIT) == 4


@pytest.mark.parametrize("value", [0, -1])
def test_max_tasks_per_child_not_positive(value):
    with pytest.raises(ValueError):
        ferropool.ProcessPoolExecutor(max_workers=1, max_tasks_per_child=value)


def test_max_tasks_per_child_wrong_type():
    with pytest.raises(TypeError):
        ferropool.ProcessPoolExecutor(max_workers=1, max_tasks_per_child="2")


def test_max_tasks_per_child_is_keyword_only():
    with pytest.raises(TypeError):
        ferropool.ProcessPoolExecutor(1, None, None, (), 2)


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_chunksize_not_positive(make_executor, chunksize):
    with make_executor() as ex:
        with pytest.raises(ValueError):
            ex.map(_tasks.square, range(3), chunksize=chunksize)


@pytest.mark.parametrize("buffersize", [0, -1])
def test_map_buffersize_not_positive(make_executor, buffersize):
    with make_executor() as ex:
        with pytest.raises(ValueError):
            ex.map(_tasks.square, range(3), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [1.5, "2"])
def test_map_buffersize_wrong_type(make_executor, buffersize):
    with make_executor() as ex:
        with pytest.raises(TypeError):
            ex.map(_tasks.square, range(3), buffersize=buffersize)


def test_bad_map_arguments_submit_nothing(make_executor):
    consumed = []

    def items():
        for i in range(3):
            consumed.append(i)
            yield i

    with make_executor() as ex:
        with pytest.raises(ValueError):
            ex.map(_tasks.square, items(), chunksize=0)
    assert consumed == []


def test_unknown_keyword_argument(executor_cls):
    with pytest.raises(TypeError):
        executor_cls(max_workers=1, no_such_option=True)
