"""``concurrent.futures`` on ferropool's engine: Future, the two executors, wait, as_completed.

Life of a task in a ``ProcessPoolExecutor``::

    submit(fn, *args)                                                  parent, caller's thread
      │ pickle fn (cached when importable) and (args, kwargs)
      │ _ResultSink.pending[id] = future
      ▼
    _core.ProcessEngine.submit  ──▶  engine thread (Rust, no GIL)  ──▶  worker process
                                     queue, dispatch, watch liveness     unpickle, call, pickle
                                                                              │
    future.set_result / set_exception  ◀── completion thread (Rust) ◀─────────┘
      (done-callbacks run here, in completion order)

A ``ThreadPoolExecutor`` hands ``(future, fn, args, kwargs)`` to Rust-owned threads, which call
``fn`` and complete the future themselves.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import _base
from concurrent.futures import as_completed as _stdlib_as_completed
from concurrent.futures import wait as _stdlib_wait
from concurrent.futures._base import (
    ALL_COMPLETED,
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    PENDING,
    RUNNING,
)
from typing import Any, TypeVar

from . import _core, _exit, _forkserver, _threads
from ._serialize import (
    FLAG_ITEM_CHUNK,
    FLAG_STAR_CHUNK,
    OUT_CANCELLED,
    OUT_DIED,
    OUT_ERR,
    OUT_OK,
    dump_function,
    dumps,
    load_exception,
    loads,
)
from ._spawn import worker_argv
from .errors import BrokenProcessPool, CancelledError, InvalidStateError, TimeoutError, WorkerDiedError

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Future",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor",
    "as_completed",
    "wait",
]

T = TypeVar("T")


_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_condition_lock = threading.Lock()


class Future(_base.Future[T]):
    """The result of a call that runs elsewhere; a ``concurrent.futures.Future``.

    Everything the stdlib offers works on it (``concurrent.futures.wait``, ``as_completed``,
    ``asyncio.wrap_future``). Beyond it, it can be awaited directly, and ``cancel()`` takes effect
    at once: a cancelled task never reaches a worker.
    """

    # How a ferropool future differs inside (see docs/ARCHITECTURE.md, "Futures"): whether a
    # task is cancelled or started is decided by one atomic compare-and-swap in the core
    # (`_ferro_task`), not under this future's lock. The only transition left to the engine is
    # PENDING/RUNNING -> FINISHED, which it makes without the lock while nobody waits: it
    # stores the outcome, then the state, then looks for a condition; a waiter makes the
    # condition first, then reads the state. Under the GIL one of them always sees the other,
    # so the condition (and its lock) exists only for futures someone actually waits on.
    __slots__ = ("_cond", "_ferro_task")
    _cond: threading.Condition

    def __init__(self) -> None:
        self._ferro_task: Any = None
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Any] = []

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        try:
            return self._cond
        except AttributeError:
            with _condition_lock:
                try:
                    return self._cond
                except AttributeError:
                    cond = self._cond = threading.Condition()
                    return cond

    def _finish_unlocked(self) -> None:
        """Wakes whoever started waiting while the outcome was being stored."""
        cond = getattr(self, "_cond", None)
        if cond is not None:
            with cond:
                for waiter in self._waiters:
                    if self._exception is None:
                        waiter.add_result(self)
                    else:
                        waiter.add_exception(self)
                cond.notify_all()
        if self._done_callbacks:
            self._invoke_callbacks()  # type: ignore[attr-defined]

    def set_result(self, result: Any) -> None:
        """Sets the future's value and wakes its waiters (executors and tests only)."""
        if self._ferro_task is None or getattr(self, "_cond", None) is not None:
            return super().set_result(result)
        if self._state in _DONE:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._result = result
        self._state = FINISHED
        self._finish_unlocked()

    def set_exception(self, exception: BaseException | None) -> None:
        """Sets the future's exception and wakes its waiters (executors and tests only)."""
        if self._ferro_task is None or getattr(self, "_cond", None) is not None:
            return super().set_exception(exception)
        if self._state in _DONE:
            raise InvalidStateError(f"{self._state}: {self!r}")
        self._exception = exception
        self._state = FINISHED
        self._finish_unlocked()

    def cancel(self) -> bool:
        """Cancels the call if it has not started running.

        Returns:
            ``False`` if the call is running or finished, otherwise ``True``.
        """
        task = self._ferro_task
        if task is None:
            return super().cancel()
        if not task.cancel():
            # a worker already has it: too late, as with the stdlib's running futures
            return self.cancelled()
        if not super().cancel():
            return False
        with self._condition:
            if self._state == CANCELLED:
                # no executor thread will ever pick this task up to notify waiters: do it now
                self.set_running_or_notify_cancel()
        return True

    def done(self) -> bool:
        """``True`` if the call finished or was cancelled."""
        return self._state in _DONE

    def running(self) -> bool:
        """``True`` if the call is being run by a worker (or was sent to one)."""
        if self._state == RUNNING:
            return True
        task = self._ferro_task
        return task is not None and self._state == PENDING and task.running()

    def result(self, timeout: float | None = None) -> Any:
        """Returns the call's value, waiting up to ``timeout`` seconds for it.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: the call did not finish in time.
            Exception: whatever the call raised, with the worker's traceback as ``__cause__``.
        """
        if self._state != FINISHED:
            with self._condition:
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise CancelledError()
                if self._state != FINISHED:
                    self._condition.wait(timeout)
                    if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                        raise CancelledError()
                    if self._state != FINISHED:
                        raise TimeoutError()
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # type: ignore[assignment]  # break the cycle through the traceback
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Returns the exception the call raised, waiting up to ``timeout`` seconds.

        Returns:
            The exception, or ``None`` if the call returned.

        Raises:
            CancelledError: the future was cancelled.
            TimeoutError: the call did not finish in time.
        """
        if self._state != FINISHED:
            with self._condition:
                if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                    raise CancelledError()
                if self._state != FINISHED:
                    self._condition.wait(timeout)
                    if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                        raise CancelledError()
                    if self._state != FINISHED:
                        raise TimeoutError()
        return self._exception

    def __await__(self) -> Any:
        import asyncio

        return asyncio.wrap_future(self).__await__()


def wait(fs: Iterable[Future[Any]], timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
    """Waits for the futures to complete; the stdlib's ``concurrent.futures.wait``.

    Returns:
        A named 2-tuple of sets, ``done`` and ``not_done``.
    """
    return _stdlib_wait(fs, timeout, return_when)


def as_completed(fs: Iterable[Future[T]], timeout: float | None = None) -> Iterator[Future[T]]:
    """Yields the futures as they complete (finished or cancelled).

    Raises:
        TimeoutError: some futures were still running after ``timeout`` seconds.
    """
    try:
        yield from _stdlib_as_completed(fs, timeout)  # type: ignore[misc, arg-type]
    except TimeoutError:
        raise
    except _base.TimeoutError as exc:
        raise TimeoutError(*exc.args) from None


class _ResultSink:
    """Completes process-pool futures from the outcomes the core delivers.

    Called on the pool's completion thread with a batch of ``(id, kind, payload)``. It holds no
    reference to its executor, so an executor nobody uses can be garbage-collected while its
    last tasks finish.
    """

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: dict[int, Future[Any]] = {}

    def deliver(self, batch: list[tuple[int, int, Any]]) -> None:
        pop = self.pending.pop
        for tid, kind, payload in batch:
            fut = pop(tid, None)
            if fut is None:
                continue
            try:
                if kind == OUT_OK:
                    fut.set_result(loads(payload))
                elif kind == OUT_ERR:
                    fut.set_exception(load_exception(payload))
                elif kind == OUT_CANCELLED:
                    fut.cancel()
                elif kind == OUT_DIED:
                    fut.set_exception(WorkerDiedError.from_exit(*payload))
                else:
                    fut.set_exception(_broken_error(*payload))
            except InvalidStateError:
                pass
            except BaseException as exc:  # the payload itself could not be unpickled
                try:
                    fut.set_exception(exc)
                except InvalidStateError:
                    pass


def _broken_error(why: str, cause: bytes | None) -> BrokenProcessPool:
    err = BrokenProcessPool(why)
    if cause is not None:
        try:
            err.__cause__ = load_exception(cause)
        except Exception:
            pass
    return err


def _check_callable(fn: Any, what: str = "fn") -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__!r}; pass a function or other callable")


def _check_max_workers(max_workers: Any) -> None:
    if not isinstance(max_workers, int) or isinstance(max_workers, bool):
        raise TypeError(f"max_workers must be an int or None, not {type(max_workers).__name__!r}")
    if max_workers <= 0:
        raise ValueError("max_workers must be greater than 0")


_START_METHODS = ("spawn", "forkserver", "fork")


def _start_method(mp_context: Any) -> str:
    """How workers start: ``"spawn"`` (always a fresh interpreter) or ``"forkserver"``.

    ferropool never forks a threaded parent. ``"fork"`` and ``"forkserver"`` (and ``None``) mean
    "fork from ferropool's fork server when this process allows one, else spawn".
    """
    if mp_context is None:
        return "forkserver"
    method = mp_context if isinstance(mp_context, str) else None
    get = getattr(mp_context, "get_start_method", None)
    if method is None and callable(get):
        method = get()
    if method not in _START_METHODS:
        raise ValueError(
            f"mp_context must be None, one of {', '.join(map(repr, _START_METHODS))}, or a "
            f"multiprocessing context (multiprocessing.get_context(...)), not {mp_context!r}"
        )
    return "spawn" if method == "spawn" else "forkserver"


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


class _Executor(_base.Executor):
    """What both executors share: ``map`` and the context-manager protocol."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        raise NotImplementedError

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
    ) -> Iterator[T]:
        """Returns an iterator equivalent to ``map(fn, *iterables)``, run in the pool.

        Results come in order. ``timeout`` counts from this call; ``chunksize`` groups items into
        one task (process pools); ``buffersize`` bounds how many tasks are submitted ahead of
        the results consumed (Python 3.14's parameter), so an endless input works.

        Raises:
            TimeoutError: a result is not ready ``timeout`` seconds after the call.
            Exception: whatever ``fn`` raised for an item, when that item's result is reached.
        """
        _check_callable(fn)
        if not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        end_time = None if timeout is None else timeout + time.monotonic()
        single = len(iterables) == 1
        submit, chunked = self._map_submitter(fn, chunksize, single)
        items: Iterator[Any] = zip(*iterables, strict=False)
        if chunked:
            # one iterable: chunks of the items themselves, called as fn(x), less to pickle
            items = _chunks(iter(iterables[0]) if single else items, chunksize)
        if buffersize is None:
            fs = [submit(x) for x in items]
        else:
            fs = [submit(x) for x in itertools.islice(items, buffersize)]
        return self._map_results(fs, items if buffersize is not None else None, submit, end_time, chunked)

    def _map_submitter(
        self, fn: Callable[..., Any], chunksize: int, single: bool
    ) -> tuple[Callable[[Any], Future[Any]], bool]:
        """How ``map`` submits: a function of one item (or chunk), and whether items are chunked.

        A chunk of a single-iterable ``map`` holds the items; otherwise it holds argument tuples.

        By default items go one per task: ``chunksize`` has no effect, as in the stdlib's
        ``ThreadPoolExecutor``.
        """
        return (lambda args: self.submit(fn, *args)), False

    @staticmethod
    def _map_results(
        fs: list[Future[Any]],
        more: Iterator[Any] | None,
        submit: Callable[[Any], Future[Any]],
        end_time: float | None,
        chunked: bool,
    ) -> Iterator[Any]:
        fs.reverse()
        try:
            while fs:
                fut = fs.pop()
                if more is not None:
                    for x in itertools.islice(more, 1):
                        fs.insert(0, submit(x))
                if end_time is None:
                    value = fut.result()
                else:
                    value = fut.result(end_time - time.monotonic())
                if chunked:
                    yield from value
                else:
                    yield value
                del fut, value
        finally:
            for f in fs:
                f.cancel()


class ProcessPoolExecutor(_Executor):
    """An executor that runs calls in a pool of worker processes.

    The same constructor and methods as ``concurrent.futures.ProcessPoolExecutor``. Workers are
    fresh interpreters started by the Rust core; functions and lambdas defined in ``__main__``
    work, and a worker that dies fails only the tasks it held (``WorkerDiedError``) while a
    replacement takes its place.

    Args:
        max_workers: the number of worker processes; default ``ferropool.cpu_count()``, the CPUs
            this process may use (affinity and cgroup quota; ``FERROPOOL_CPU_COUNT`` overrides).
        mp_context: ``None``, a start-method name or a multiprocessing context. ``"spawn"``
            starts every worker as a fresh interpreter. Anything else forks workers from
            ferropool's fork server, which is made only while this process has a single thread
            (so the first pool of a program gets it); without one, workers are spawned.
        initializer: called as ``initializer(*initargs)`` in each worker before its first task.
            If it raises, the pool is broken: pending and later work fails with
            ``BrokenProcessPool``.
        initargs: the arguments for ``initializer``.
        max_tasks_per_child: the tasks a worker runs before it is replaced by a fresh one.

    Raises:
        ValueError: ``max_workers`` or ``max_tasks_per_child`` is not positive, or
            ``mp_context`` is not one of the accepted values.
        TypeError: ``initializer`` is not callable.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = _core.cpu_count()
        _check_max_workers(max_workers)
        start_method = _start_method(mp_context)
        if initializer is not None:
            _check_callable(initializer, "initializer")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int) or isinstance(max_tasks_per_child, bool):
                raise TypeError("max_tasks_per_child must be an integer or None")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        init = None
        if initializer is not None:
            fn_bytes, flags = dump_function(initializer)
            init = (flags, len(fn_bytes), fn_bytes + dumps((tuple(initargs), {})))
        self._max_workers = max_workers
        self._sink = _ResultSink()
        self._ids = itertools.count(1)
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        server = _forkserver.connect() if start_method == "forkserver" else None
        self._engine = _core.ProcessEngine(
            worker_argv(), max_workers, self._sink.deliver, init, max_tasks_per_child, server
        )

    def _check_open(self) -> None:
        broken = self._engine.broken
        if broken is not None:
            raise BrokenProcessPool(broken)
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exit.shutting_down:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _submit_call(self, fn_bytes: bytes, flags: int, payload: bytes) -> Future[Any]:
        fut: Future[Any] = Future()
        tid = next(self._ids)
        self._sink.pending[tid] = fut
        try:
            self._engine.submit(tid, fn_bytes, payload, flags, fut)
        except BaseException:
            del self._sink.pending[tid]
            raise
        return fut

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedules ``fn(*args, **kwargs)`` to run in a worker.

        Returns:
            A ``Future`` for the call. If the function or an argument cannot be pickled, the
            future fails with the pickling error and the executor goes on.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
            BrokenProcessPool: the pool cannot run work (its initializer failed).
        """
        if not callable(fn):
            _check_callable(fn)
        if _exit.shutting_down:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        try:
            fn_bytes, flags = dump_function(fn)
            payload = dumps((args, kwargs))
        except Exception as exc:
            self._check_open()
            fut: Future[Any] = Future()
            fut.set_exception(exc)
            return fut
        return self._submit_call(fn_bytes, flags, payload)

    def _map_submitter(
        self, fn: Callable[..., Any], chunksize: int, single: bool
    ) -> tuple[Callable[[Any], Future[Any]], bool]:
        """The function is pickled once for the whole ``map``; chunks travel as one task each."""
        try:
            fn_bytes, flags = dump_function(fn)
        except Exception as exc:
            error = exc  # every task fails with the pickling error, as each submit would

            def fail(_: Any) -> Future[Any]:
                self._check_open()
                fut: Future[Any] = Future()
                fut.set_exception(error)
                return fut

            return fail, False
        if chunksize > 1:
            chunk_flags = flags | (FLAG_ITEM_CHUNK if single else FLAG_STAR_CHUNK)
            return (lambda chunk: self._submit_pickled(fn_bytes, chunk_flags, chunk)), True
        return (lambda args: self._submit_pickled(fn_bytes, flags, (args, {}))), False

    def _submit_pickled(self, fn_bytes: bytes, flags: int, args: Any) -> Future[Any]:
        try:
            payload = dumps(args)
        except Exception as exc:
            self._check_open()
            fut: Future[Any] = Future()
            fut.set_exception(exc)
            return fut
        return self._submit_call(fn_bytes, flags, payload)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting work and frees the workers once queued work is done.

        Args:
            wait: wait until all pending futures are done and the workers have exited.
            cancel_futures: cancel every future that has not started running.
        """
        with self._shutdown_lock:
            self._shutdown_thread = True
        self._engine.shutdown(cancel_futures)
        if wait:
            self._engine.join()

    def terminate_workers(self) -> None:
        """Stops every worker now (SIGKILL to each worker's process group) and shuts down.

        Pending futures are cancelled; running ones fail with ``BrokenProcessPool``.
        """
        with self._shutdown_lock:
            self._shutdown_thread = True
        self._engine.terminate()
        self._engine.join()

    kill_workers = terminate_workers


class ThreadPoolExecutor(_Executor):
    """An executor that runs calls on a pool of threads owned by the Rust core.

    The same constructor and methods as ``concurrent.futures.ThreadPoolExecutor``.

    Args:
        max_workers: the most threads it starts; default ``min(32, cpu_count() + 4)``. Threads
            start on demand, when no idle thread can take a submitted call.
        thread_name_prefix: names the threads ``<prefix>_<n>``.
        initializer: called as ``initializer(*initargs)`` at the start of each thread. If it
            raises, the pool is broken: pending and later work fails with ``BrokenThreadPool``.
        initargs: the arguments for ``initializer``.

    Raises:
        ValueError: ``max_workers`` is not positive.
        TypeError: ``initializer`` is not callable.
    """

    _counter = itertools.count().__next__

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if max_workers is None:
            max_workers = min(32, _core.cpu_count() + 4)
        _check_max_workers(max_workers)
        if initializer is not None:
            _check_callable(initializer, "initializer")
        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix or f"ThreadPoolExecutor-{self._counter()}"
        self._engine = _core.ThreadEngine(max_workers, self._thread_name_prefix, _threads, initializer, tuple(initargs))

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedules ``fn(*args, **kwargs)`` to run on a pool thread.

        Returns:
            A ``Future`` for the call.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
            BrokenThreadPool: the pool cannot run work (an initializer failed).
        """
        if not callable(fn):
            _check_callable(fn)
        if _exit.shutting_down:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        fut: Future[Any] = Future()
        self._engine.submit(fut, fn, args, kwargs or None)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting work; the threads exit once queued work is done.

        Args:
            wait: wait until the threads have finished.
            cancel_futures: cancel every future that has not started running.
        """
        self._engine.shutdown(wait, cancel_futures)
