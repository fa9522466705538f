"""ferropool.Future: states, results, exceptions, timeouts, cancellation and callbacks."""

from __future__ import annotations

import builtins
import concurrent.futures as cf
import concurrent.futures.process
import multiprocessing
import threading
import traceback

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, assert_times_out, running_and_queued

# --------------------------------------------------------------------------------------------
# the classes


def test_future_is_a_concurrent_futures_future():
    assert issubclass(ferropool.Future, cf.Future)


def test_exported_exceptions_are_the_stdlib_classes():
    assert ferropool.CancelledError is cf.CancelledError
    assert ferropool.InvalidStateError is cf.InvalidStateError
    assert ferropool.BrokenExecutor is cf.BrokenExecutor
    assert issubclass(ferropool.BrokenProcessPool, cf.process.BrokenProcessPool)
    assert issubclass(ferropool.BrokenThreadPool, cf.thread.BrokenThreadPool)
    assert issubclass(ferropool.WorkerDiedError, ferropool.BrokenProcessPool)
    assert issubclass(ferropool.BrokenProcessPool, ferropool.BrokenExecutor)


def test_timeout_error_is_caught_by_all_three_timeout_classes():
    for cls in (builtins.TimeoutError, cf.TimeoutError, multiprocessing.TimeoutError):
        assert issubclass(ferropool.TimeoutError, cls)
        with pytest.raises(cls):
            raise ferropool.TimeoutError()


def test_exports():
    for name in ferropool.__all__:
        assert getattr(ferropool, name) is not None
    assert isinstance(ferropool.__version__, str) and ferropool.__version__
    assert isinstance(ferropool.cpu_count(), int) and ferropool.cpu_count() >= 1
    assert ferropool.FIRST_COMPLETED == cf.FIRST_COMPLETED
    assert ferropool.FIRST_EXCEPTION == cf.FIRST_EXCEPTION
    assert ferropool.ALL_COMPLETED == cf.ALL_COMPLETED
    with pytest.raises(AttributeError):
        ferropool.NoSuchName  # noqa: B018


def test_standalone_future_works_like_the_stdlib_one():
    fut = ferropool.Future()
    assert not fut.done() and not fut.running() and not fut.cancelled()
    with pytest.raises(ferropool.TimeoutError):
        fut.result(timeout=0)
    fut.set_result(42)
    assert fut.done() and fut.result() == 42 and fut.exception() is None
    with pytest.raises(ferropool.InvalidStateError):
        fut.set_result(43)
    with pytest.raises(ferropool.InvalidStateError):
        fut.set_exception(ValueError())
    assert fut.result() == 42


def test_standalone_future_exception_and_cancel():
    fut = ferropool.Future()
    fut.set_exception(KeyError("k"))
    with pytest.raises(KeyError):
        fut.result()
    assert isinstance(fut.exception(), KeyError)

    pending = ferropool.Future()
    assert pending.cancel() is True
    assert pending.cancelled() and pending.done()
    with pytest.raises(ferropool.CancelledError):
        pending.result()
    with pytest.raises(ferropool.CancelledError):
        pending.exception()


# --------------------------------------------------------------------------------------------
# futures from executors (both kinds)


def test_submit_returns_a_ferropool_future(make_executor):
    with make_executor() as ex:
        fut = ex.submit(_tasks.add, 1, 2)
        assert isinstance(fut, ferropool.Future)
        assert isinstance(fut, cf.Future)
        assert fut.result(timeout=WAIT) == 3


def test_finished_future_states(make_executor):
    with make_executor() as ex:
        fut = ex.submit(_tasks.identity, None)
        assert fut.result(timeout=WAIT) is None
        assert fut.exception(timeout=WAIT) is None
        assert fut.done()
        assert not fut.running()
        assert not fut.cancelled()
        assert fut.cancel() is False  # finished futures cannot be cancelled
        assert "finished" in repr(fut)


def test_exception_keeps_its_type_and_message(make_executor):
    with make_executor() as ex:
        fut = ex.submit(_tasks.fail, "the message")
        with pytest.raises(ValueError, match="the message"):
            fut.result(timeout=WAIT)
        exc = fut.exception(timeout=WAIT)
        assert type(exc) is ValueError
        assert str(exc) == "the message"
        assert fut.done() and not fut.cancelled()


def test_exception_traceback_names_the_raising_function(make_executor):
    with make_executor() as ex:
        exc = ex.submit(_tasks.fail).exception(timeout=WAIT)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "in fail" in text, text


def test_process_exception_has_remote_traceback_as_cause():
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        exc = ex.submit(_tasks.fail, "remote").exception(timeout=WAIT)
    assert type(exc) is ValueError
    cause = exc.__cause__
    assert cause is not None
    assert type(cause) is concurrent.futures.process._RemoteTraceback  # the stdlib's own class
    text = str(cause)
    assert "in fail" in text, text
    assert "ValueError: remote" in text, text


def test_base_exception_in_task_fails_only_that_future(make_executor):
    with make_executor() as ex:
        fut = ex.submit(_tasks.raise_base_exception)
        with pytest.raises(_tasks.CustomBaseException):
            fut.result(timeout=WAIT)
        exit_fut = ex.submit(_tasks.raise_system_exit)
        with pytest.raises(SystemExit):
            exit_fut.result(timeout=WAIT)
        assert ex.submit(_tasks.square, 7).result(timeout=WAIT) == 49


def test_result_timeout_on_blocked_task(make_executor, gate):
    with make_executor() as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "done")
        assert_times_out(
            fut.result,
            (ferropool.TimeoutError, 0.1),
            (builtins.TimeoutError, 0.05),
            (cf.TimeoutError, 0.05),
            (multiprocessing.TimeoutError, 0.05),
            (ferropool.TimeoutError, 0),
        )
        assert_times_out(fut.exception, (ferropool.TimeoutError, 0.1))
        assert not fut.done()
        gate.open()
        assert fut.result(timeout=WAIT) == "done"


# --------------------------------------------------------------------------------------------
# cancellation


def test_cancel_queued_future_but_not_running_one(make_executor, gate, beacon):
    with make_executor(max_workers=1) as ex, gate:
        running, queued = running_and_queued(ex, gate, beacon, 4)
        last = queued[-1]

        assert running.running()
        assert running.cancel() is False
        assert not running.cancelled()

        assert not last.running()
        assert last.cancel() is True
        assert last.cancelled()
        assert last.done()
        assert last.cancel() is True  # cancelling again still reports cancelled
        with pytest.raises(ferropool.CancelledError):
            last.result(timeout=WAIT)
        with pytest.raises(ferropool.CancelledError):
            last.exception(timeout=WAIT)

        gate.open()
        assert running.result(timeout=WAIT) == "first"
        for i, fut in enumerate(queued[:-1]):
            if not fut.cancelled():
                assert fut.result(timeout=WAIT) == i * i
        assert last.cancelled()


def test_cancel_runs_done_callbacks(make_executor, gate, beacon):
    with make_executor(max_workers=1) as ex, gate:
        ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        beacon.wait()
        queued = [ex.submit(_tasks.square, i) for i in range(3)]
        seen = []
        queued[-1].add_done_callback(seen.append)
        assert queued[-1].cancel()
        assert seen == [queued[-1]]


def test_cancelled_task_never_runs(make_executor, gate, beacon, tmp_path):
    marker = tmp_path / "ran"
    with make_executor(max_workers=1) as ex, gate:
        first = ex.submit(_tasks.wait_gate, gate.path, None, beacon.path)
        beacon.wait()
        others = [ex.submit(_tasks.square, i) for i in range(2)]
        victim = ex.submit(_tasks.touch, str(marker))
        assert victim.cancel()
        gate.open()
        first.result(timeout=WAIT)
        for fut in others:
            if not fut.cancelled():
                fut.result(timeout=WAIT)
        # a later task on the single worker runs after the victim's turn would have come
        assert ex.submit(_tasks.identity, 5).result(timeout=WAIT) == 5
    assert victim.cancelled()
    assert not marker.exists(), "a cancelled task ran"
    with pytest.raises(ferropool.CancelledError):
        victim.result()


# --------------------------------------------------------------------------------------------
# callbacks


def test_done_callback_is_called_with_the_future(make_executor):
    called = threading.Event()
    seen = []

    def callback(f):
        seen.append(f)
        called.set()

    with make_executor() as ex:
        fut = ex.submit(_tasks.square, 3)
        fut.add_done_callback(callback)
        assert called.wait(WAIT)
        assert seen == [fut]
        assert fut.result() == 9


def test_done_callback_on_already_done_future_runs_at_once_in_caller(make_executor):
    with make_executor() as ex:
        fut = ex.submit(_tasks.square, 4)
        assert fut.result(timeout=WAIT) == 16
        seen = []
        fut.add_done_callback(lambda f: seen.append((f, threading.current_thread())))
        assert seen == [(fut, threading.current_thread())]


def test_done_callbacks_run_in_order_added_and_once(make_executor, gate):
    all_called = threading.Event()
    order = []

    def make(i):
        def cb(f):
            order.append(i)
            if len(order) == 3:
                all_called.set()

        return cb

    with make_executor() as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "v")
        for i in range(3):
            fut.add_done_callback(make(i))
        gate.open()
        assert fut.result(timeout=WAIT) == "v"
        assert all_called.wait(WAIT)
    assert order == [0, 1, 2]


def test_raising_callback_is_logged_and_others_still_run(make_executor, caplog):
    ok = threading.Event()

    def bad(_):
        raise RuntimeError("callback failure")

    with make_executor() as ex:
        fut = ex.submit(_tasks.square, 5)
        fut.add_done_callback(bad)
        fut.add_done_callback(lambda f: ok.set())
        assert ok.wait(WAIT)
        assert fut.result() == 25
        assert ex.submit(_tasks.square, 6).result(timeout=WAIT) == 36
    assert any("callback" in r.getMessage() for r in caplog.records), caplog.records


def test_done_callback_sees_failed_future(make_executor):
    done = threading.Event()
    seen = []

    def callback(f):
        seen.append(type(f.exception()))
        done.set()

    with make_executor() as ex:
        ex.submit(_tasks.fail).add_done_callback(callback)
        assert done.wait(WAIT)
    assert seen == [ValueError]


# --------------------------------------------------------------------------------------------
# a process pool's caller reading its own result (scheduler/claim.rs): the same outcomes, the
# same threads for callbacks, whatever ends the task while the caller waits on its worker


def test_every_waiter_sees_a_result_the_caller_read_itself(make_executor, gate):
    with make_executor() as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "done")
        seen = []
        other = threading.Thread(target=lambda: seen.append(cf.wait([fut], timeout=WAIT)))
        other.start()
        opener = threading.Timer(0, gate.open)
        opener.start()
        assert fut.result(timeout=WAIT) == "done"
        other.join(WAIT)
        opener.join(WAIT)
        assert seen and seen[0].done == {fut}


def test_done_callbacks_run_on_the_pools_thread_while_the_caller_waits(gate):
    with ferropool.ProcessPoolExecutor(2) as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "done")
        ran_on = []
        fut.add_done_callback(lambda f: ran_on.append(threading.current_thread()))
        gate.open()
        assert fut.result(timeout=WAIT) == "done"
        ex.shutdown(wait=True)
        assert len(ran_on) == 1
        assert ran_on[0] is not threading.current_thread()


def test_a_time_limit_ends_a_call_its_caller_waits_on():
    # a limit far shorter than the caller's first slice on the worker's link: the engine stops
    # the call while the caller reads that link
    with ferropool.ProcessPoolExecutor(2) as ex:
        fut = ex.options(timeout=0.01).submit(_tasks.sleep_then, 30)
        with pytest.raises(ferropool.TimeoutError, match="0.01 s limit"):
            fut.result(timeout=WAIT)
        assert ex.submit(_tasks.square, 5).result(timeout=WAIT) == 25


def test_a_kill_from_another_thread_ends_the_wait_on_a_running_call(beacon):
    with ferropool.ProcessPoolExecutor(2) as ex:
        fut = ex.submit(_tasks.beacon_then_sleep, beacon.path, 30)

        def kill_when_started():
            beacon.wait()
            fut.kill()

        killer = threading.Thread(target=kill_when_started)
        killer.start()
        with pytest.raises(ferropool.CancelledError):
            fut.result(timeout=WAIT)
        killer.join(WAIT)
        assert ex.submit(_tasks.square, 6).result(timeout=WAIT) == 36


def test_a_worker_dying_under_a_waiting_caller_fails_only_its_call():
    with ferropool.ProcessPoolExecutor(2) as ex:
        with pytest.raises(ferropool.WorkerDiedError, match="exited with code 3"):
            ex.submit(_tasks.exit_now, 3).result(timeout=WAIT)
        assert [ex.submit(_tasks.square, i).result(timeout=WAIT) for i in range(20)] == [i * i for i in range(20)]
