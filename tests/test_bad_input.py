"""Bad arguments and misuse fail at the call, with the stdlib's exception types and a useful message:
the executors first, then ``Pool`` and ``ThreadPool``."""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.pool
import pickle
import queue
import threading

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


def test_executor_initializer_not_callable(executor_cls):
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


POOLS = {"process": ferropool.Pool, "thread": ferropool.ThreadPool}


@pytest.fixture(params=sorted(POOLS))
def pool_cls(request):
    return POOLS[request.param]


CALLS = {
    "apply": lambda p: p.apply(_tasks.square, (2,)),
    "apply_async": lambda p: p.apply_async(_tasks.square, (2,)),
    "map": lambda p: p.map(_tasks.square, range(3)),
    "map_async": lambda p: p.map_async(_tasks.square, range(3)),
    "starmap": lambda p: p.starmap(_tasks.add, [(1, 2)]),
    "starmap_async": lambda p: p.starmap_async(_tasks.add, [(1, 2)]),
    "imap": lambda p: p.imap(_tasks.square, range(3)),
    "imap_unordered": lambda p: p.imap_unordered(_tasks.square, range(3)),
}


# --------------------------------------------------------------------------------------------
# a pool that is not running


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize("end", ["close", "terminate"])
def test_call_on_ended_pool(pool_cls, call, end):
    p = pool_cls(2)
    try:
        assert p.apply(_tasks.square, (3,)) == 9
        getattr(p, end)()
        with pytest.raises(ValueError, match="Pool not running"):
            CALLS[call](p)
    finally:
        p.terminate()
        p.join()


def test_with_statement_on_ended_pool(pool_cls):
    p = pool_cls(1)
    p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        with p:
            pass
    p.join()


def test_join_while_running(pool_cls):
    p = pool_cls(2)
    try:
        with pytest.raises(ValueError):
            p.join()
        assert p.apply(_tasks.square, (3,)) == 9  # the failed join changed nothing
    finally:
        p.close()
        p.join()


def test_close_twice_and_terminate_twice(pool_cls):
    p = pool_cls(2)
    assert p.apply(_tasks.square, (3,)) == 9
    p.close()
    p.close()
    p.terminate()
    p.terminate()
    p.join()
    p.terminate()
    p.close()


def test_terminate_twice_without_close(pool_cls):
    p = pool_cls(2)
    p.terminate()
    p.terminate()
    p.join()


# --------------------------------------------------------------------------------------------
# constructor arguments


@pytest.mark.parametrize("processes", [0, -1])
def test_processes_not_positive(pool_cls, processes):
    with pytest.raises(ValueError):
        pool_cls(processes)
    with pytest.raises(ValueError):
        pool_cls(processes=processes)


def test_processes_wrong_type(pool_cls):
    with pytest.raises(TypeError):
        pool_cls("2")


def test_pool_initializer_not_callable(pool_cls):
    with pytest.raises(TypeError):
        pool_cls(1, initializer=42)


@pytest.mark.parametrize("maxtasks", [0, -1])
def test_maxtasksperchild_not_positive(maxtasks):
    with pytest.raises(ValueError):
        ferropool.Pool(1, maxtasksperchild=maxtasks)


def test_bad_context():
    with pytest.raises(ValueError):
        ferropool.Pool(1, context="threads")


# --------------------------------------------------------------------------------------------
# call arguments


@pytest.mark.parametrize("chunksize", [0, -1])
def test_chunksize_not_positive(pool_cls, chunksize):
    with pool_cls(2) as p:
        with pytest.raises(ValueError):
            p.map(_tasks.square, range(5), chunksize)
        with pytest.raises(ValueError):
            p.map_async(_tasks.square, range(5), chunksize=chunksize)
        with pytest.raises(ValueError):
            p.starmap(_tasks.add, [(1, 2)], chunksize=chunksize)
        with pytest.raises(ValueError):
            p.imap(_tasks.square, range(5), chunksize)
        with pytest.raises(ValueError):
            p.imap_unordered(_tasks.square, range(5), chunksize=chunksize)
        assert p.map(_tasks.square, range(3)) == [0, 1, 4]


@pytest.mark.parametrize("buffersize", [0, -1])
def test_buffersize_not_positive(pool_cls, buffersize):
    with pool_cls(2) as p:
        with pytest.raises(ValueError):
            p.imap(_tasks.square, range(5), buffersize=buffersize)
        with pytest.raises(ValueError):
            p.imap_unordered(_tasks.square, range(5), buffersize=buffersize)


@pytest.mark.parametrize("not_callable", [None, 42, "square"])
def test_func_not_callable(pool_cls, not_callable):
    with pool_cls(2) as p:
        with pytest.raises(TypeError):
            p.apply(not_callable)
        with pytest.raises(TypeError):
            p.apply_async(not_callable, (1,))
        with pytest.raises(TypeError):
            p.map(not_callable, range(3))
        with pytest.raises(TypeError):
            p.map_async(not_callable, range(3))
        with pytest.raises(TypeError):
            p.starmap(not_callable, [(1,)])
        with pytest.raises(TypeError):
            p.imap(not_callable, range(3))
        with pytest.raises(TypeError):
            p.imap_unordered(not_callable, range(3))
        assert p.apply(_tasks.square, (3,)) == 9


@pytest.mark.parametrize("not_iterable", [5, None, object()])
def test_input_not_iterable(pool_cls, not_iterable):
    with pool_cls(2) as p:
        with pytest.raises(TypeError):
            p.map(_tasks.square, not_iterable)
        with pytest.raises(TypeError):
            p.map_async(_tasks.square, not_iterable)
        with pytest.raises(TypeError):
            p.starmap(_tasks.add, not_iterable)
        with pytest.raises(TypeError):
            p.imap(_tasks.square, not_iterable)  # at the call, not at the first next()
        with pytest.raises(TypeError):
            p.imap_unordered(_tasks.square, not_iterable)
        assert p.map(_tasks.square, range(3)) == [0, 1, 4]


def test_pool_cannot_be_pickled(pool_cls):
    with pool_cls(1) as p:
        with pytest.raises(NotImplementedError):
            pickle.dumps(p)


def test_pool_cannot_be_sent_to_a_task():
    with ferropool.Pool(1) as p:
        r = p.apply_async(_tasks.identity, (p,))
        with pytest.raises(NotImplementedError):
            r.get(timeout=WAIT)
        assert p.apply(_tasks.square, (3,)) == 9


# --------------------------------------------------------------------------------------------
# values that cannot cross to a worker or back: only their own result fails


def _check_pool_works(p):
    assert p.apply(_tasks.square, (3,)) == 9
    assert p.map(_tasks.square, range(5)) == [0, 1, 4, 9, 16]


def test_unpicklable_argument_fails_only_its_result():
    errors: queue.SimpleQueue[BaseException] = queue.SimpleQueue()
    with ferropool.Pool(2) as p:
        good = p.apply_async(_tasks.square, (4,))
        bad = p.apply_async(_tasks.identity, (threading.Lock(),), error_callback=errors.put)
        with pytest.raises(TypeError):
            bad.get(timeout=WAIT)
        assert bad.ready() and not bad.successful()
        assert isinstance(errors.get(timeout=WAIT), TypeError)
        assert good.get(timeout=WAIT) == 16
        _check_pool_works(p)


def test_unpicklable_keyword_argument():
    with ferropool.Pool(1) as p:
        with pytest.raises(TypeError):
            p.apply(_tasks.echo, (), {"lock": threading.Lock()})
        _check_pool_works(p)


def test_unpicklable_result_fails_only_its_result():
    errors: queue.SimpleQueue[BaseException] = queue.SimpleQueue()
    with ferropool.Pool(2) as p:
        bad = p.apply_async(_tasks.return_unpicklable, error_callback=errors.put)
        good = p.apply_async(_tasks.square, (5,))
        with pytest.raises(multiprocessing.pool.MaybeEncodingError, match="cannot pickle"):
            bad.get(timeout=WAIT)
        assert isinstance(errors.get(timeout=WAIT), multiprocessing.pool.MaybeEncodingError)
        assert good.get(timeout=WAIT) == 25
        _check_pool_works(p)


def test_unpicklable_item_in_map():
    errors: queue.SimpleQueue[BaseException] = queue.SimpleQueue()
    with ferropool.Pool(2) as p:
        items = [1, 2, threading.Lock(), 4]
        # map_async first, with a timeout: a blocking map() that never returns would hang the test
        r = p.map_async(_tasks.identity, items, chunksize=1, error_callback=errors.put)
        with pytest.raises(TypeError):
            r.get(timeout=WAIT)
        assert isinstance(errors.get(timeout=WAIT), TypeError)
        r = p.map_async(_tasks.identity, items)  # default chunksize: one chunk fails
        with pytest.raises(TypeError):
            r.get(timeout=WAIT)
        with pytest.raises(TypeError):
            p.map(_tasks.identity, items)
        _check_pool_works(p)


def test_unpicklable_item_in_imap_fails_at_its_position():
    with ferropool.Pool(2) as p:
        it = p.imap(_tasks.identity, [1, 2, threading.Lock(), 4])
        assert next(it) == 1
        assert next(it) == 2
        with pytest.raises(TypeError):
            next(it)
        assert next(it) == 4
        with pytest.raises(StopIteration):
            next(it)
        _check_pool_works(p)


def test_unpicklable_result_in_map():
    with ferropool.Pool(2) as p:
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            p.map(functools.partial(_tasks.unpicklable_if, bad=2), [1, 2, 3], chunksize=1)
        it = p.imap(functools.partial(_tasks.unpicklable_if, bad=2), [1, 2, 3])
        assert next(it) == 1
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            next(it)
        assert next(it) == 3
        _check_pool_works(p)


def test_unpicklable_func():
    with ferropool.Pool(1) as p:
        with pytest.raises(TypeError):
            p.apply(_tasks.UnpicklableCallable())
        with pytest.raises(TypeError):
            p.map(_tasks.UnpicklableCallable(), [1, 2])
        _check_pool_works(p)


def test_os_errors_from_the_core_keep_their_errno_and_subclass():
    # every Rust error reaches Python through src/errors.rs, as OSError(errno, strerror[, name])
    import errno

    from ferropool import shared_memory

    with pytest.raises(FileNotFoundError) as info:
        shared_memory.SharedMemory(name="ferropool_no_such_segment_anywhere")
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == "/ferropool_no_such_segment_anywhere"
    reader, writer = ferropool.Pipe(duplex=False)
    reader.close()
    with pytest.raises(BrokenPipeError) as info:
        writer.send_bytes(b"x")
    assert info.value.errno == errno.EPIPE
    writer.close()
