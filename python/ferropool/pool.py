"""``multiprocessing.pool`` on ferropool's engine: Pool, ThreadPool and their results.

A ``Pool`` drives the same backend as ``ProcessPoolExecutor`` (``_pool.backend.ProcessBackend``), a
``ThreadPool`` the same one as ``ThreadPoolExecutor``: each call or chunk becomes one task with
one ``Future``, and the result objects here wrap those futures.

Differences from the stdlib, all on purpose:

- ``imap`` and ``imap_unordered`` read their input lazily, keeping at most ``buffersize`` chunks
  submitted or finished-but-unread, so an endless input works in bounded memory.
- A worker that dies fails the chunk it was running (``WorkerDiedError``); the pool goes on.
- A callback that raises is logged; later results are still delivered.
- Callbacks run on one dedicated thread per pool, in completion order, also for results that
  were ready at once.
"""

from __future__ import annotations

import collections
import copy
import functools
import itertools
import logging
import multiprocessing.pool
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import _core
from ._pool import aio as _aio
from ._pool import progress as _progress
from ._pool import stats as _stats
from ._pool.backend import (
    ProcessBackend,
    ThreadBackend,
    check_callable,
    check_timeout,
    failed,
    process_backend,
)
from ._pool.batching import BatchSizer, EagerMap, unpack_outcomes
from ._pool.future import Future
from ._runtime import start_methods
from ._worker import state as _state
from .errors import CancelledError, MaybeEncodingError, TimeoutError

if TYPE_CHECKING:
    from ._pool.cluster import ClusterBackend

__all__ = [
    "ApplyResult",
    "AsyncResult",
    "IMapIterator",
    "MapResult",
    "MaybeEncodingError",
    "Pool",
    "RemoteTraceback",
    "ThreadPool",
]

T = TypeVar("T")
#: the cause of a task's exception: its formatted traceback in the worker (the stdlib's class)
RemoteTraceback = multiprocessing.pool.RemoteTraceback  # type: ignore[attr-defined]
_log = logging.getLogger("ferropool")

RUN, CLOSE, TERMINATE = "RUN", "CLOSE", "TERMINATE"
_NO_KWDS: dict[str, Any] = {}  # never mutated: submit only reads it

#: Chunks ``imap`` keeps submitted or finished-but-unread, per worker, unless told otherwise.
IMAP_BUFFER_PER_WORKER = 64


#: ``active`` on the threads that run pools' callbacks
_callback_thread = threading.local()


def _report_callback_error(kind: str, callback: Callable[..., object], exc: BaseException) -> None:
    _log.error("%s %r raised; the pool goes on", kind, callback, exc_info=exc)


class AsyncResult(Generic[T]):
    """The result of ``apply_async`` (and the base of ``MapResult``).

    Wraps the ``Future`` of its task. ``callback`` receives the value, ``error_callback`` the
    exception; both run on the pool's result thread, in completion order.
    """

    __slots__ = ("_future", "_settled")

    def __init__(
        self,
        future: Future[Any],
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        callbacks: _CallbackRunner | None = None,
    ) -> None:
        self._future = future
        #: set once the callbacks have run: until then the result is not ready (as in the stdlib)
        self._settled: threading.Event | None = None
        if callback is not None or error_callback is not None:
            self._settled = threading.Event()
            deliver = self._callback_for(callback, error_callback)
            future.add_done_callback(deliver if callbacks is None else callbacks.schedule(deliver))

    def _callback_for(
        self, callback: Callable[[T], object] | None, error_callback: Callable[[BaseException], object] | None
    ) -> Callable[[Future[Any]], None]:
        settled = self._settled
        assert settled is not None

        def deliver(fut: Future[Any]) -> None:
            try:
                exc = fut.exception()
            except CancelledError as cancelled:
                exc = cancelled
            try:
                if exc is None:
                    if callback is not None:
                        try:
                            callback(self._value(fut))
                        except BaseException as err:
                            _report_callback_error("callback", callback, err)
                elif error_callback is not None:
                    try:
                        error_callback(exc)
                    except BaseException as err:
                        _report_callback_error("error_callback", error_callback, err)
            finally:
                settled.set()

        return deliver

    def _value(self, fut: Future[Any]) -> Any:
        return fut.result()

    def ready(self) -> bool:
        """Whether the call has completed (and its callback has run)."""
        return self._future.done() and (self._settled is None or self._settled.is_set())

    def _wait_ready(self, timeout: float | None) -> bool:
        """Waits for the call, then for its callback; whether both happened within ``timeout``."""
        end = None if timeout is None else time.monotonic() + timeout
        try:
            self._future.exception(timeout)
        except CancelledError:
            pass
        except TimeoutError:
            return False
        settled = self._settled
        if settled is None or getattr(_callback_thread, "active", False):
            return True  # on the callback thread, a callback queued behind this one cannot run
        return settled.wait(None if end is None else max(0.0, end - time.monotonic()))

    def successful(self) -> bool:
        """Whether the call completed without raising.

        Raises:
            ValueError: the result is not ready yet.
        """
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return not self._future.cancelled() and self._future.exception() is None

    def wait(self, timeout: float | None = None) -> None:
        """Waits until the result is available or ``timeout`` seconds pass."""
        self._wait_ready(timeout)

    def get(self, timeout: float | None = None) -> T:
        """Returns the result when it arrives.

        Raises:
            TimeoutError: it did not arrive within ``timeout`` seconds (``ferropool.TimeoutError``,
                also a ``multiprocessing.TimeoutError``).
            Exception: whatever the call raised, with the worker's traceback as ``__cause__``.
        """
        if self._settled is None and type(self) is AsyncResult:  # no callback: the future says it all
            return self._future.result(timeout)  # type: ignore[no-any-return]
        if not self._wait_ready(timeout):
            raise TimeoutError()
        return self._value(self._future)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        state = "ready" if self.ready() else "pending"
        return f"<{type(self).__name__} {state}>"


ApplyResult = AsyncResult


class MapResult(AsyncResult[list[T]]):
    """The result of ``map_async``/``starmap_async``: the chunks' results, in order, as one list.

    It is ready when every chunk has finished, or as soon as one fails (as in the stdlib).
    """

    __slots__ = ("_chunks", "_lock", "_remaining")

    def __init__(
        self,
        chunks: list[Future[Any]] | EagerMap,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        callbacks: _CallbackRunner | None = None,
    ) -> None:
        # the whole result first: a chunk that already failed completes it during the loop below
        super().__init__(Future(), callback, error_callback, callbacks)
        if isinstance(chunks, EagerMap):  # adaptively sized chunks, fed as earlier ones finish
            self._chunks = []
            chunks.deliver_to(self._future)
            return
        self._chunks = chunks
        self._remaining = len(chunks)
        self._lock = threading.Lock()
        if not chunks:
            self._future.set_result([])
        for chunk in chunks:
            chunk.add_done_callback(self._chunk_done)

    def _chunk_done(self, chunk: Future[Any]) -> None:
        try:
            exc = chunk.exception()
        except CancelledError as cancelled:
            exc = cancelled
        with self._lock:
            if self._future.done():
                return
            if exc is not None:
                self._future.set_exception(exc)
                return
            self._remaining -= 1
            if self._remaining:
                return
            self._future.set_result(list(itertools.chain.from_iterable(c.result() for c in self._chunks)))


class IMapIterator(Generic[T]):
    """The iterator ``imap`` (ordered) and ``imap_unordered`` return.

    Reads the input lazily: at most ``buffersize`` chunks' worth of items are submitted or
    finished-but-unread at any time; once half of them have been read, more are submitted
    together, so a reader that is the bottleneck costs the pool one wake-up per batch.

    Short calls travel several to a task: the worker reports how long the items took, and each
    task is made to carry about ``_pool.batching.TARGET_S`` of work (never fewer items than
    ``chunksize``, and few enough to keep every worker busy). Every item keeps its own outcome, so
    an exception is raised at that item's place and iteration can go on after it, as with
    ``chunksize=1``. If the input itself raises, ``next()`` raises that exception where the chunk
    it broke off in would have been (in ``imap_unordered``: after every earlier result), and the
    iteration ends there.
    """

    def __init__(
        self,
        submit: Callable[[Sequence[Any]], Future[Any]],
        items: Iterator[Any],
        chunksize: int,
        buffersize: int,
        workers: int,
        ordered: bool,
        batch: bool = True,
    ) -> None:
        self._submit = submit
        self._batch = batch
        self._items = items
        self._ordered = ordered
        self._limit = buffersize * chunksize  # items submitted or unread, at most
        self._chunksize = chunksize
        self._read = 0  # items taken from the input
        self._input_error: Future[Any] | None = None  # what the input raised (unordered mode)
        self._sizer = BatchSizer(chunksize, self._limit // (2 * workers))
        self._buffer: collections.deque[tuple[bool, Any]] = collections.deque()  # read, not returned
        self._tasks: collections.deque[tuple[Future[Any], int]] = collections.deque()  # ordered mode
        # unordered mode: finished tasks in completion order. Not a queue.SimpleQueue: before 3.11
        # its get(timeout=...) can block forever once the timeout has passed (a negative wait)
        self._done: collections.deque[tuple[Future[Any], int]] = collections.deque()
        self._arrived = threading.Condition(threading.Lock())
        self._in_flight_tasks = 0
        self._outstanding = 0  # items submitted whose results were not returned yet
        self._exhausted = False
        self._lock = threading.Lock()
        #: called (from any thread) when a task of an unordered iterator finishes: ``async for``
        self._on_arrival: Callable[[], object] | None = None
        self._top_up()

    def _top_up(self) -> None:
        while not self._exhausted and self._outstanding < self._limit:
            batch: list[Any] = []
            try:  # extend keeps the items read before the input raised
                batch.extend(itertools.islice(self._items, min(self._sizer.per_task, self._limit - self._outstanding)))
            except Exception as exc:
                self._input_failed(batch, exc)
                return
            if not batch:
                self._exhausted = True
                return
            self._read += len(batch)
            self._add_task(self._submit(batch), len(batch))

    def _add_task(self, fut: Future[Any], n: int) -> None:
        self._outstanding += n
        self._in_flight_tasks += 1
        if self._ordered:
            self._tasks.append((fut, n))
        else:
            fut.add_done_callback(functools.partial(self._task_done, n))

    def _input_failed(self, batch: list[Any], exc: Exception) -> None:
        """The input raised ``exc`` after yielding ``batch``: ``exc`` becomes the last result.

        As in the stdlib, the items of the chunk the input broke off in are dropped, so the
        exception stands where that chunk's results would have been.
        """
        self._exhausted = True
        whole = max(len(batch) - (self._read + len(batch)) % self._chunksize, 0)
        if whole:
            self._add_task(self._submit(batch[:whole]), whole)
        if self._ordered:
            self._add_task(failed(exc), 1)
        else:  # after every earlier result, whenever those arrive
            self._outstanding += 1
            self._in_flight_tasks += 1
            self._input_error = failed(exc)

    def _task_done(self, n: int, fut: Future[Any]) -> None:
        with self._arrived:
            self._done.append((fut, n))
            self._arrived.notify()
        wake = self._on_arrival
        if wake is not None:
            wake()

    def __iter__(self) -> IMapIterator[T]:
        return self

    def __aiter__(self) -> IMapIterator[T]:
        return self

    def __anext__(self) -> Awaitable[T]:
        """The next result, awaited without blocking the event loop (``async for``)."""
        return _aio.imap_next(self)

    def next(self, timeout: float | None = None) -> T:
        """Returns the next result, waiting up to ``timeout`` seconds.

        Raises:
            StopIteration: every result has been returned.
            TimeoutError: the next result did not arrive in time.
            Exception: whatever the call raised for this item.
        """
        return self._take(timeout, None)

    __next__ = next

    def _take(self, timeout: float | None, not_ready: Any) -> T:
        """``next()``, returning ``not_ready`` (when not None) instead of raising ``TimeoutError``.

        A caller polling with ``timeout=0`` can so tell a task that raised ``TimeoutError`` apart.
        """
        with self._lock:
            if not self._buffer:
                if self._in_flight_tasks == 0:
                    raise StopIteration
                try:
                    fut, n = self._next_task(timeout)
                except TimeoutError:
                    if not_ready is None:
                        raise
                    return not_ready  # type: ignore[no-any-return]
                self._in_flight_tasks -= 1
                self._buffer.extend(self._unpack(fut, n))
            ok, value = self._buffer.popleft()
            self._outstanding -= 1
            if self._outstanding <= self._limit // 2:
                self._top_up()
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _next_task(self, timeout: float | None) -> tuple[Future[Any], int]:
        if self._ordered:
            self._tasks[0][0].exception(timeout)  # TimeoutError leaves it in place for the next call
            return self._tasks.popleft()
        if self._input_error is not None and self._in_flight_tasks == 1:
            error, self._input_error = self._input_error, None
            return error, 1
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._done, timeout):
                raise TimeoutError()
            return self._done.popleft()

    def _unpack(self, fut: Future[Any], n: int) -> list[tuple[bool, Any]]:
        """The task's items as ``(ok, value or exception)``, learning the item time."""
        try:
            seconds, outcomes = fut.result()
        except BaseException as exc:  # the whole task failed: a dead worker, say
            return [(False, exc)] * n
        if self._batch:
            self._sizer.learn(seconds, len(outcomes))
        return unpack_outcomes(outcomes, pool=True)


class _PoolCommon:
    """What a ``Pool`` and its ``options()`` views share besides the backend.

    Its state (closing a view closes the pool) and its one callback thread (a callback of a
    call made through a view runs on the pool's thread, after the pool's earlier callbacks).
    """

    __slots__ = ("_lock", "runner", "state")

    def __init__(self) -> None:
        self.state = RUN
        self.runner: _CallbackRunner | None = None
        self._lock = threading.Lock()

    def callbacks(self) -> _CallbackRunner:
        """The callback thread, started on first use."""
        if self.runner is None:
            with self._lock:
                if self.runner is None:
                    self.runner = _CallbackRunner()
        return self.runner

    def close_callbacks(self) -> None:
        """Runs the callbacks handed over so far, then ends the thread (see ``_CallbackRunner``)."""
        if self.runner is not None:
            self.runner.close()


class _CallbackRunner:
    """The one thread that runs a pool's callbacks, in completion order.

    A future's done-callbacks run on whichever thread completes it (a process pool's completion
    thread, a thread pool's worker), or at once in the caller's thread if it is already done
    (an empty ``map_async``, an argument that cannot be pickled). Handing every callback to this
    thread gives ``Pool``'s guarantee in all cases. Backed by a one-thread ``ThreadBackend``, so
    it is joined at exit like every pool.
    """

    def __init__(self) -> None:
        self._thread = ThreadBackend(1, "ThreadPool-callbacks", None, ())
        self._ident: int | None = None  # the thread's, once it has run a callback

    def schedule(self, deliver: Callable[[Future[Any]], None]) -> Callable[[Future[Any]], None]:
        def hand_over(fut: Future[Any]) -> None:
            self._thread.submit(self._run, (deliver, fut), {})

        return hand_over

    def _run(self, deliver: Callable[[Future[Any]], None], fut: Future[Any]) -> None:
        self._ident = threading.get_ident()
        _callback_thread.active = True
        deliver(fut)

    def close(self) -> None:
        """Runs every callback already handed over, then ends the thread.

        Waits for them unless called from a callback itself (``join()`` inside a callback),
        which would wait for its own end.
        """
        self._thread.shutdown(cancel_pending=False, wait=threading.get_ident() != self._ident)


def _check_pool_size(processes: Any) -> int:
    if processes is None:
        return _core.cpu_count()
    if not isinstance(processes, int) or isinstance(processes, bool):
        raise TypeError(f"processes must be an int or None, not {type(processes).__name__!r}")
    if processes < 1:
        raise ValueError("Number of processes must be at least 1")
    return processes


def _default_chunksize(n: int, workers: int) -> int:
    """The stdlib's rule: about four chunks per worker."""
    chunksize, extra = divmod(n, workers * 4)
    return chunksize + 1 if extra else chunksize


class Pool:
    """A pool of worker processes; ``multiprocessing.Pool`` on ferropool's engine.

    Args:
        processes: the number of workers; default ``ferropool.cpu_count()``.
        initializer: called as ``initializer(*initargs)`` in each worker before its first task.
        initargs: the arguments for ``initializer``.
        maxtasksperchild: tasks (calls or chunks) a worker runs before a fresh one replaces it.
        context: ``None``, a start-method name or a multiprocessing context; ``"spawn"`` starts
            every worker as a fresh interpreter (see ``ProcessPoolExecutor``).
        task_timeout: seconds each call (or chunk, for the map methods) may run once a worker
            starts it; past that it fails with ``ferropool.TimeoutError`` and its worker is
            killed and replaced. ``options(timeout=...)`` sets it for some calls only.
        max_memory_per_child: bytes of resident memory past which a worker is replaced.
        worker_logs: log records of the workers go to the parent's handlers (``True``: those at
            or above the parent's root level when the pool is made; a level: those at or above
            it; ``False``/``None``: workers keep their own logging).
        worker_output: what the workers print reaches the parent's ``sys.stdout``/``sys.stderr``,
            line by line (``True``; a string such as ``"[{name}] "`` prefixes each line, with
            ``{name}`` and ``{pid}``; ``False``: workers write to the inherited descriptors).
        limit_blas_threads: start workers with ``OMP_NUM_THREADS`` and the like set to
            ``cpu_count() // processes`` unless already set (see docs/tuning.md).
        cluster: run the tasks on a Dask cluster instead of local processes: a
            ``distributed.Client``, a scheduler address (``"tcp://host:8786"``) or a scheduler
            file. ``processes`` then limits the tasks sent to the cluster at a time (default:
            its worker threads). Needs ``pip install 'ferropool[dask]'``; see docs/scale-out.md.

    The value ``initializer`` returns is kept in each worker for ``ferropool.worker_state()``.

    Raises:
        ValueError: ``processes``, ``maxtasksperchild``, ``task_timeout`` or
            ``max_memory_per_child`` is not positive, or ``context`` is unknown.
        TypeError: ``initializer`` is not callable.
        ImportError: ``cluster`` is given and Dask distributed is not installed.
    """

    _backend: ProcessBackend | ThreadBackend | ClusterBackend
    #: what this pool and every view of it (``options()``) share: its state and callback thread
    _common: _PoolCommon
    #: the time limit of each call or chunk submitted through this object (process pools only)
    _task_timeout: float | None = None
    #: made by options(): its end is the pool's, so it warns of nothing when collected
    _is_view = False

    @property
    def _state(self) -> str:
        """``RUN``, ``CLOSE`` or ``TERMINATE``: the pool's, for the pool and each of its views."""
        return self._common.state

    @_state.setter
    def _state(self, state: str) -> None:
        self._common.state = state

    @property
    def _callbacks(self) -> _CallbackRunner:
        """The pool's callback thread, started on first use."""
        return self._common.callbacks()

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        task_timeout: float | None = None,
        max_memory_per_child: int | None = None,
        worker_logs: bool | int | str | None = True,
        worker_output: bool | str = True,
        limit_blas_threads: bool = True,
        cluster: Any = None,
    ) -> None:
        self._common = _PoolCommon()
        if cluster is not None:  # --- a Dask cluster runs the tasks (_pool/cluster.py) ---
            from ._pool import cluster as _cluster

            _cluster.refuse(
                "Pool", maxtasksperchild=maxtasksperchild, context=context, max_memory_per_child=max_memory_per_child
            )
            if processes is not None:
                _check_pool_size(processes)
            if initializer is not None and not callable(initializer):
                raise TypeError("initializer must be a callable")
            self._task_timeout = check_timeout(task_timeout, "task_timeout")
            self._backend = _cluster.ClusterBackend(
                cluster, processes, initializer, tuple(initargs), True, worker_output, worker_logs
            )
            self._processes = self._backend.workers
            return  # ---
        processes = _check_pool_size(processes)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if maxtasksperchild is not None and (
            not isinstance(maxtasksperchild, int) or isinstance(maxtasksperchild, bool) or maxtasksperchild <= 0
        ):
            raise ValueError("maxtasksperchild must be a positive int or None")
        method = start_methods.for_pool(context, "context")
        self._task_timeout = check_timeout(task_timeout, "task_timeout")
        self._processes = processes
        self._backend = process_backend(
            processes,
            method,
            initializer,
            initargs,
            (worker_logs, worker_output, limit_blas_threads),
            max_tasks_per_child=maxtasksperchild,
            max_memory_per_child=max_memory_per_child,
            pool_errors=True,
            run_initializer=initializer is not None,
        )

    def options(self, *, timeout: float | None = None) -> Pool:
        """This pool, with options for the calls made through the returned object.

        ``pool.options(timeout=5).apply_async(fn, (x,))`` limits that call to 5 s (each chunk,
        for the map methods). The returned object shares this pool's workers; closing or
        terminating it closes or terminates them.

        Raises:
            ValueError: ``timeout`` is not positive.
            TypeError: the pool runs threads, which cannot be stopped.
        """
        if isinstance(self._backend, ThreadBackend):
            raise TypeError("a ThreadPool cannot limit a call's time: a running thread cannot be stopped")
        view = copy.copy(self)
        view._task_timeout = check_timeout(timeout, "timeout")
        return view

    # -- submitting -------------------------------------------------------------------------

    def _check_running(self) -> None:
        if self._state != RUN:
            raise ValueError("Pool not running")

    def apply(self, func: Callable[..., T], args: Iterable[Any] = (), kwds: Mapping[str, Any] | None = None) -> T:
        """Calls ``func(*args, **kwds)`` in a worker and returns its result (blocking)."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(
        self,
        func: Callable[..., T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] | None = None,
        callback: Callable[[T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[T]:
        """Schedules ``func(*args, **kwds)``; returns an ``AsyncResult``.

        Raises:
            ValueError: the pool was closed or terminated.
            TypeError: ``func`` is not callable.
        """
        if self._common.state != RUN:
            raise ValueError("Pool not running")
        if not callable(func):
            check_callable(func, "func")
        fut = self._backend.submit(
            func, args if type(args) is tuple else tuple(args), dict(kwds) if kwds else _NO_KWDS, self._task_timeout
        )
        if callback is None and error_callback is None:
            return AsyncResult(fut)
        return AsyncResult(fut, callback, error_callback, self._callbacks)

    async def run(self, func: Callable[..., T], /, *args: Any, **kwds: Any) -> T:
        """Calls ``func(*args, **kwds)`` in a worker and awaits its result (asyncio).

        Cancelling the awaiting task cancels the call if it has not started.

        Raises:
            ValueError: the pool was closed or terminated.
            Exception: whatever the call raised.
        """
        return await _aio.result(self.apply_async(func, args, kwds)._future)

    def map(
        self, func: Callable[[Any], T], iterable: Iterable[Any], chunksize: int | None = None, *, progress: Any = False
    ) -> list[T]:
        """``list(map(func, iterable))`` run in the pool, in order (blocking).

        The input is consumed at once; without ``chunksize``, it is cut into about four chunks
        per worker. ``progress=True`` shows a progress bar (a dict: tqdm options; see
        docs/progress-and-logging.md).
        """
        return self._map_async(func, iterable, False, chunksize, progress=progress).get()

    def starmap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        *,
        progress: Any = False,
    ) -> list[T]:
        """Like ``map``, but calls ``func(*item)`` for each item."""
        return self._map_async(func, iterable, True, chunksize, progress=progress).get()

    def map_async(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: Any = False,
    ) -> MapResult[T]:
        """Like ``map``, but returns a ``MapResult`` at once."""
        return self._map_async(func, iterable, False, chunksize, callback, error_callback, progress)

    def starmap_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        *,
        progress: Any = False,
    ) -> MapResult[T]:
        """Like ``starmap``, but returns a ``MapResult`` at once."""
        return self._map_async(func, iterable, True, chunksize, callback, error_callback, progress)

    def _map_async(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        star: bool,
        chunksize: int | None,
        callback: Callable[[list[T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
        progress: Any = False,
    ) -> MapResult[T]:
        self._check_running()
        if not callable(func):
            check_callable(func, "func")
        _progress.check(progress)
        # sequences are sliced as they are (a slice of a range pickles as three numbers); any
        # other iterable is consumed into a list first, as the stdlib does
        items = iterable if isinstance(iterable, (list, tuple, range)) else list(iterable)
        runner = self._callbacks if callback is not None or error_callback is not None else None
        if chunksize is None and self._task_timeout is None and not isinstance(self._backend, ThreadBackend):
            submit_timed = self._backend.chunk_submitter(func, star, timed=True)
            eager = EagerMap(
                submit_timed, items, self._processes, per_item=False, owner=self._backend, progress=progress
            )
            return MapResult(eager, callback, error_callback, runner)
        if chunksize is None:
            chunksize = _default_chunksize(len(items), self._processes)
        else:
            _check_chunksize(chunksize)
        submit = self._backend.chunk_submitter(func, star, timeout=self._task_timeout)
        step = max(chunksize, 1)
        chunks = [submit(items[i : i + step]) for i in range(0, len(items), step)]
        _progress.track_all(progress, chunks, len(items), step)
        return MapResult(chunks, callback, error_callback, runner)

    def imap(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        buffersize: int | None = None,
        progress: Any = False,
    ) -> IMapIterator[T]:
        """Results of ``func`` over ``iterable``, in order, as they become available.

        The input is read lazily: at most ``buffersize`` chunks (default
        ``IMAP_BUFFER_PER_WORKER`` per worker) are submitted or waiting to be read.
        ``progress=True`` shows a progress bar (its total is ``len(iterable)`` when that exists).
        The iterator also supports ``async for`` (see docs/asyncio.md).
        """
        return self._imap(func, iterable, chunksize, buffersize, ordered=True, progress=progress)

    def imap_unordered(
        self,
        func: Callable[[Any], T],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        buffersize: int | None = None,
        progress: Any = False,
    ) -> IMapIterator[T]:
        """Like ``imap``, but in completion order."""
        return self._imap(func, iterable, chunksize, buffersize, ordered=False, progress=progress)

    def _imap(
        self,
        func: Callable[..., T],
        iterable: Iterable[Any],
        chunksize: int,
        buffersize: int | None,
        ordered: bool,
        progress: Any = False,
    ) -> IMapIterator[T]:
        self._check_running()
        if not callable(func):
            check_callable(func, "func")
        _check_chunksize(chunksize)
        _progress.check(progress)
        if buffersize is None:
            buffersize = IMAP_BUFFER_PER_WORKER * self._processes
        elif not isinstance(buffersize, int) or isinstance(buffersize, bool) or buffersize < 1:
            raise ValueError("buffersize must be a positive int or None")
        items = iter(iterable)
        submit = self._backend.outcome_submitter(func, self._task_timeout)
        track = _progress.tracker(progress, _progress.length_hint(iterable))
        if track is not None:
            submit, items = track.submitter(submit, len), track.items(items)
        # a time limit applies per task: batching items would stretch it over several calls
        batch = self._task_timeout is None
        return IMapIterator(submit, items, chunksize, buffersize, self._processes, ordered, batch)

    def stats(self) -> _stats.PoolStats:
        """A snapshot of the pool: its workers' counters, queue depth and worker exits.

        Per worker: tasks done, time busy and idle; for the pool: tasks queued and in flight,
        and why worker processes ended (see docs/tuning.md).
        """
        return _stats.snapshot(self._backend.engine, self._backend.workers)

    # -- ending -----------------------------------------------------------------------------

    def close(self) -> None:
        """Accepts no more work; the workers exit once the queued work is done."""
        if self._state == RUN:
            self._state = CLOSE
            self._backend.shutdown(cancel_pending=False)

    def terminate(self) -> None:
        """Stops the workers now: queued work is cancelled, running work fails.

        With local worker processes, returns once they have exited and what they printed is
        written, as the stdlib's returns once it has joined them.
        """
        if self._state != TERMINATE:
            self._state = TERMINATE
            self._backend.terminate()

    def join(self) -> None:
        """Waits for the workers to exit and every callback to run.

        Call ``close()`` or ``terminate()`` first.

        Raises:
            ValueError: the pool is still running.
        """
        if self._state == RUN:
            raise ValueError("Pool is still running")
        self._backend.join()
        self._common.close_callbacks()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.terminate()

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __copy__(self) -> Any:
        # a view for options(): the same pool, not a new one (pickling a pool is refused)
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view._is_view = True
        return view

    def __del__(self) -> None:
        # the stdlib's warning; the pool itself still finishes its queued work (see _runtime/lifecycle.py).
        # A constructor that raised made no pool: nothing to warn of.
        common = self.__dict__.get("_common")
        made = common is not None and common.state == RUN and "_backend" in self.__dict__
        if made and not self._is_view:
            warnings.warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, stacklevel=2, source=self)

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} state={self._state} pool_size={self._processes}>"


def _check_chunksize(chunksize: Any) -> None:
    if not isinstance(chunksize, int) or isinstance(chunksize, bool):
        raise TypeError(f"chunksize must be an int, not {type(chunksize).__name__!r}")
    if chunksize < 1:
        raise ValueError(f"Chunksize must be 1+, not {chunksize}")


class ThreadPool(Pool):
    """A pool of threads with the ``Pool`` API; ``multiprocessing.pool.ThreadPool``.

    Args:
        processes: the number of threads; default ``ferropool.cpu_count()``.
        initializer: called as ``initializer(*initargs)`` at the start of each thread.
        initargs: the arguments for ``initializer``.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
    ) -> None:
        self._common = _PoolCommon()
        processes = _check_pool_size(processes)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._processes = processes
        self._backend = ThreadBackend(processes, "ThreadPool", _state.for_threads(initializer), tuple(initargs))

    def terminate(self) -> None:
        """Accepts no more work and cancels what is queued.

        Running calls finish: a thread cannot be killed.
        """
        super().terminate()
