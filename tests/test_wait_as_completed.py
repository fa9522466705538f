"""wait and as_completed: ferropool's and the stdlib's own, on ferropool futures."""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import multiprocessing

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT


def test_wait_all_completed(make_executor):
    with make_executor() as ex:
        fs = [ex.submit(_tasks.square, i) for i in range(10)]
        done, not_done = ferropool.wait(fs, timeout=WAIT)
    assert done == set(fs) and not not_done
    assert sorted(f.result() for f in done) == [i * i for i in range(10)]


def test_wait_returns_named_tuple(make_executor):
    with make_executor() as ex:
        result = ferropool.wait([ex.submit(_tasks.square, 2)], timeout=WAIT)
    assert len(result.done) == 1 and not result.not_done


def test_wait_empty():
    done, not_done = ferropool.wait([], timeout=1)
    assert done == set() and not_done == set()


def test_wait_first_completed(make_executor, gate):
    with make_executor() as ex, gate:
        # the quick task goes first: see test_executor_basic's idle-worker test for the other order
        fast = ex.submit(_tasks.square, 3)
        slow = ex.submit(_tasks.wait_gate, gate.path)
        done, not_done = ferropool.wait([slow, fast], timeout=WAIT, return_when=ferropool.FIRST_COMPLETED)
        assert fast in done
        assert slow in not_done


def test_wait_first_exception(make_executor, gate):
    with make_executor() as ex, gate:
        bad = ex.submit(_tasks.fail)
        slow = ex.submit(_tasks.wait_gate, gate.path)
        done, not_done = ferropool.wait([slow, bad], timeout=WAIT, return_when=ferropool.FIRST_EXCEPTION)
        assert bad in done
        assert slow in not_done


def test_wait_first_exception_without_exception_waits_for_all(make_executor):
    with make_executor() as ex:
        fs = [ex.submit(_tasks.square, i) for i in range(5)]
        done, not_done = ferropool.wait(fs, timeout=WAIT, return_when=ferropool.FIRST_EXCEPTION)
    assert done == set(fs) and not not_done


def test_wait_timeout(make_executor, gate):
    with make_executor() as ex, gate:
        fast = ex.submit(_tasks.square, 3)
        slow = ex.submit(_tasks.wait_gate, gate.path)
        fast.result(timeout=WAIT)
        done, not_done = ferropool.wait([slow, fast], timeout=0.1)
        assert not_done == {slow}
        assert done == {fast}


def test_stdlib_wait_accepts_ferropool_futures(make_executor, gate):
    with make_executor() as ex, gate:
        fs = [ex.submit(_tasks.square, i) for i in range(5)]
        done, not_done = cf.wait(fs, timeout=WAIT)
        assert done == set(fs) and not not_done
        slow = ex.submit(_tasks.wait_gate, gate.path)
        done, not_done = cf.wait([slow], timeout=0.1)
        assert not_done == {slow}
        done, not_done = cf.wait([slow, fs[0]], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
        assert fs[0] in done and slow in not_done


def test_wait_mixes_ferropool_and_stdlib_futures(make_executor):
    plain = cf.Future()
    plain.set_result("plain")
    with make_executor() as ex:
        fut = ex.submit(_tasks.square, 2)
        done, not_done = ferropool.wait([plain, fut], timeout=WAIT)
    assert done == {plain, fut} and not not_done


def test_as_completed_yields_every_future(make_executor):
    with make_executor() as ex:
        fs = [ex.submit(_tasks.square, i) for i in range(10)]
        seen = list(ferropool.as_completed(fs, timeout=WAIT))
    assert len(seen) == 10 and set(seen) == set(fs)


def test_as_completed_fast_before_slow(make_executor, gate):
    with make_executor() as ex, gate:
        fast = ex.submit(_tasks.square, 4)
        slow = ex.submit(_tasks.wait_gate, gate.path, "slow")
        it = ferropool.as_completed([slow, fast], timeout=WAIT)
        assert next(it) is fast
        gate.open()
        assert next(it) is slow
        assert slow.result() == "slow"


def test_as_completed_includes_finished_and_cancelled(make_executor):
    cancelled = ferropool.Future()
    cancelled.cancel()
    cancelled.set_running_or_notify_cancel()  # what an executor does with a cancelled item
    with make_executor() as ex:
        finished = ex.submit(_tasks.square, 1)
        finished.result(timeout=WAIT)
        seen = set(ferropool.as_completed([cancelled, finished], timeout=WAIT))
    assert seen == {cancelled, finished}


@pytest.mark.parametrize(
    "cls", [ferropool.TimeoutError, builtins.TimeoutError, cf.TimeoutError, multiprocessing.TimeoutError]
)
def test_as_completed_timeout(make_executor, gate, cls):
    with make_executor() as ex, gate:
        fast = ex.submit(_tasks.square, 2)
        slow = ex.submit(_tasks.wait_gate, gate.path)
        fast.result(timeout=WAIT)  # done before the short timeout starts, however slow the start-up
        seen = []
        with pytest.raises(cls):
            for f in ferropool.as_completed([slow, fast], timeout=0.2):
                seen.append(f)
        assert seen == [fast]


def test_as_completed_timeout_is_ferropool_timeout_error(make_executor, gate):
    with make_executor() as ex, gate:
        slow = ex.submit(_tasks.wait_gate, gate.path)
        with pytest.raises(TimeoutError) as excinfo:
            list(ferropool.as_completed([slow], timeout=0.1))
        assert isinstance(excinfo.value, ferropool.TimeoutError)


def test_stdlib_as_completed_accepts_ferropool_futures(make_executor, gate):
    with make_executor() as ex, gate:
        fs = [ex.submit(_tasks.square, i) for i in range(5)]
        assert set(cf.as_completed(fs, timeout=WAIT)) == set(fs)
        slow = ex.submit(_tasks.wait_gate, gate.path)
        with pytest.raises(cf.TimeoutError):
            list(cf.as_completed([slow], timeout=0.1))


def test_cancelled_queued_process_future_is_done_for_wait_at_once(gate, beacon):
    """A process pool's cancel() takes effect at once: wait/as_completed see it without waiting
    for the busy worker to reach the task."""
    with ferropool.ProcessPoolExecutor(max_workers=1) as ex, gate:
        ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        beacon.wait()
        queued = [ex.submit(_tasks.square, i) for i in range(3)]
        assert queued[-1].cancel()
        done, not_done = ferropool.wait([queued[-1]], timeout=WAIT)
        assert done == {queued[-1]}
        assert list(ferropool.as_completed([queued[-1]], timeout=WAIT)) == [queued[-1]]
        done, _ = cf.wait([queued[-1]], timeout=WAIT)
        assert done == {queued[-1]}
