"""ferropool.worker_state(): what the initializer returned, once per worker."""

from __future__ import annotations

import os
import threading

import ferropool
import pytest

from tests.conftest import WAIT


class Model:
    """Something expensive to build: built once per worker."""

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.built_in = os.getpid()
        self.thread = threading.get_ident()
        self.uses = 0


def build_model(scale: int) -> Model:
    return Model(scale)


def predict(x: int) -> tuple[int, int, int, int]:
    model = ferropool.worker_state()
    model.uses += 1
    return x * model.scale, model.built_in, os.getpid(), model.uses


def predict_in_thread(x: int) -> tuple[int, int, int]:
    model = ferropool.worker_state()
    return x * model.scale, model.thread, threading.get_ident()


def state_or_error(_: object = None) -> str:
    try:
        return repr(ferropool.worker_state())
    except LookupError as exc:
        return f"LookupError: {exc}"


def map_with_model(front, workers, scale, fn, n):
    """``fn`` over ``range(n)`` in a pool (``Pool.map``, one item a chunk) or an executor of
    ``workers`` whose initializer builds a ``Model(scale)``."""
    with front(workers, initializer=build_model, initargs=(scale,)) as pool:
        if isinstance(pool, ferropool.Executor):
            return list(pool.map(fn, range(n)))
        return pool.map(fn, range(n), chunksize=1)


@pytest.mark.parametrize("front", [ferropool.Pool, ferropool.ProcessPoolExecutor])
def test_each_process_builds_its_state_once(front):
    out = map_with_model(front, 2, 3, predict, 40)
    assert [value for value, *_ in out] == [3 * x for x in range(40)]
    assert all(built_in == pid for _, built_in, pid, _ in out)  # the worker's own object
    per_worker: dict[int, list[int]] = {}
    for _, _, pid, uses in out:
        per_worker.setdefault(pid, []).append(uses)
    # one object per worker, reused by each task: its use count only grows
    assert all(uses == sorted(uses) and len(set(uses)) == len(uses) for uses in per_worker.values())
    assert sum(len(u) for u in per_worker.values()) == 40


def test_a_lambda_initializer_works():
    with ferropool.ProcessPoolExecutor(1, initializer=lambda: {"answer": 42}) as ex:
        assert ex.submit(state_or_error).result(timeout=WAIT) == "{'answer': 42}"


@pytest.mark.parametrize("front", [ferropool.ThreadPool, ferropool.ThreadPoolExecutor])
def test_each_thread_has_its_own_state(front):
    out = map_with_model(front, 3, 2, predict_in_thread, 60)
    assert [value for value, _, _ in out] == [2 * x for x in range(60)]
    assert all(built_by == running_on for _, built_by, running_on in out)


def test_without_an_initializer_it_is_a_lookup_error():
    with ferropool.ProcessPoolExecutor(1) as ex:
        message = ex.submit(state_or_error).result(timeout=WAIT)
    assert message.startswith("LookupError: worker_state() is only set in the workers of a pool")
    with ferropool.ThreadPoolExecutor(1) as ex:
        assert ex.submit(state_or_error).result(timeout=WAIT).startswith("LookupError")


def test_in_the_parent_it_is_a_lookup_error():
    with pytest.raises(LookupError, match="initializer"):
        ferropool.worker_state()


def test_the_value_is_whatever_the_initializer_returned_none_included():
    with ferropool.Pool(1, initializer=os.getpid) as pool:
        assert pool.apply(state_or_error) == repr(pool.apply(os.getpid))
    with ferropool.Pool(1, initializer=lambda: None) as pool:
        assert pool.apply(state_or_error) == "None"
