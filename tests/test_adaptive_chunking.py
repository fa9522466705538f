"""Adaptive chunking: maps without a chunk size size their tasks from measured item time.

Every map variant must give the right results in the right order, whatever the task sizes were;
exceptions stay at their item's place; an unread map still runs every item.
"""

from __future__ import annotations

import pickle
import threading

import ferropool
import pytest

from . import _tasks
from .conftest import WAIT, task_sizes


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 100_000])
def test_executor_map_results_in_order(n):
    with ferropool.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(_tasks.square, range(n))) == [i * i for i in range(n)]


def test_executor_map_several_iterables_stops_at_the_shortest():
    with ferropool.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(_tasks.add, range(50_000), range(10, 40_000))) == [2 * i + 10 for i in range(39_990)]


def test_executor_map_grows_tasks_for_tiny_items():
    with ferropool.ProcessPoolExecutor(2) as ex:
        sizes = task_sizes(ex, "outcome_submitter")
        assert list(ex.map(_tasks.square, range(100_000))) == [i * i for i in range(100_000)]
    assert sizes[0] == 1
    assert sum(sizes) == 100_000
    assert max(sizes) > 1_000  # far fewer tasks than items


def test_executor_map_keeps_slow_items_one_per_task():
    with ferropool.ProcessPoolExecutor(2) as ex:
        sizes = task_sizes(ex, "outcome_submitter")
        assert list(ex.map(_tasks.sleep_then, [0.02] * 12, range(12))) == list(range(12))
    assert max(sizes) == 1  # 20 ms an item is more than a task's target


def test_executor_map_exception_at_its_item():
    with ferropool.ProcessPoolExecutor(2) as ex:
        it = ex.map(_tasks.fail_on, range(10_000), [5_000] * 10_000)
        got = [next(it) for _ in range(5_000)]
        assert got == list(range(5_000))
        with pytest.raises(ValueError, match="5000"):
            next(it)
        with pytest.raises(StopIteration):
            next(it)


def test_executor_map_unpicklable_item_fails_only_that_item():
    items: list[object] = list(range(100))
    items[50] = threading.Lock()
    with ferropool.ProcessPoolExecutor(2) as ex:
        it = ex.map(_tasks.identity, items)
        assert [next(it) for _ in range(50)] == list(range(50))
        with pytest.raises((TypeError, pickle.PicklingError)):
            next(it)


def test_executor_map_unpicklable_result_fails_only_that_item():
    with ferropool.ProcessPoolExecutor(2) as ex:
        it = ex.map(_tasks.unpicklable_if, range(100), [30] * 100)
        assert [next(it) for _ in range(30)] == list(range(30))
        with pytest.raises(Exception, match="pickle"):
            next(it)


def test_unread_executor_map_still_runs_every_item(tmp_path):
    paths = [str(tmp_path / f"ran-{i}") for i in range(300)]
    with ferropool.ProcessPoolExecutor(2) as ex:
        ex.map(_tasks.touch, paths)  # never read
    assert all((tmp_path / f"ran-{i}").exists() for i in range(300))


def test_executor_map_timeout():
    with ferropool.ProcessPoolExecutor(2) as ex:
        it = ex.map(_tasks.sleep_then, [5.0, 0.0], timeout=0.2)
        with pytest.raises(TimeoutError):
            next(it)


def test_executor_map_after_shutdown_raises():
    ex = ferropool.ProcessPoolExecutor(1)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.map(_tasks.square, range(10))


def test_executor_map_with_explicit_chunksize_one_is_per_item():
    with ferropool.ProcessPoolExecutor(2) as ex:
        assert list(ex.map(_tasks.square, range(100), chunksize=1)) == [i * i for i in range(100)]


@pytest.mark.parametrize("n", [0, 1, 7, 1000, 100_000])
def test_pool_map_starmap_results_in_order(n):
    with ferropool.Pool(2) as p:
        assert p.map(_tasks.square, range(n)) == [i * i for i in range(n)]
        assert p.starmap(_tasks.add, [(i, 1) for i in range(n)]) == [i + 1 for i in range(n)]
        assert p.map_async(_tasks.square, list(range(n))).get(WAIT) == [i * i for i in range(n)]
        assert p.starmap_async(_tasks.add, zip(range(n), range(n), strict=True)).get(WAIT) == [2 * i for i in range(n)]


def test_pool_map_first_failure_fails_the_whole_map():
    with ferropool.Pool(2) as p:
        with pytest.raises(ValueError, match="777"):
            p.starmap(_tasks.fail_on, [(i, 777) for i in range(10_000)])


def test_pool_map_async_callbacks():
    done = threading.Event()
    got: list[object] = []
    with ferropool.Pool(2) as p:
        result = p.map_async(_tasks.square, range(5_000), callback=lambda v: (got.append(v), done.set()))
        assert done.wait(WAIT)
        assert got == [[i * i for i in range(5_000)]]
        assert result.successful()
        errors: list[BaseException] = []
        failed = threading.Event()
        p.starmap_async(
            _tasks.fail_on,
            [(i, 3) for i in range(10)],
            error_callback=lambda e: (errors.append(e), failed.set()),
        )
        assert failed.wait(WAIT)
        assert len(errors) == 1


def test_pool_map_slow_uneven_items_spread_over_workers():
    """Twelve 20 ms items go one to a task: the stdlib's 4-per-worker rule would bunch them."""
    with ferropool.Pool(2) as p:
        sizes = task_sizes(p, "chunk_submitter")
        assert p.map(_tasks.sleep_then, [0.02] * 12) == [None] * 12
    assert max(sizes) == 1


def test_unread_pool_map_async_runs_every_item_before_close(tmp_path):
    paths = [str(tmp_path / f"ran-{i}") for i in range(300)]
    p = ferropool.Pool(2)
    p.map_async(_tasks.touch, paths)
    p.close()
    p.join()
    assert all((tmp_path / f"ran-{i}").exists() for i in range(300))
