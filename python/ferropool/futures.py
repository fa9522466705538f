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
``fn`` and complete the future themselves. Both executors are thin adapters over the backends in
``_pool/backend.py``, which ``Pool`` and ``ThreadPool`` use too.
"""

from __future__ import annotations

import copy
import itertools
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, _base
from concurrent.futures import process as _process
from concurrent.futures import thread as _thread
from concurrent.futures import wait as _stdlib_wait
from concurrent.futures._base import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION
from typing import TYPE_CHECKING, Any, TypeVar

from . import _core
from ._pool import aio as _aio
from ._pool import progress as _progress
from ._pool import stats as _stats
from ._pool.backend import (
    ProcessBackend,
    ThreadBackend,
    check_callable,
    check_positive_int,
    check_timeout,
    chunks,
    process_backend,
)
from ._pool.batching import EagerMap
from ._pool.future import Future, slice_until
from ._runtime import start_methods
from ._worker import state as _state
from .errors import TimeoutError

if TYPE_CHECKING:
    from ._pool.cluster import ClusterBackend

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "Executor",
    "Future",
    "ProcessPoolExecutor",
    "ThreadPoolExecutor",
    "as_completed",
    "wait",
]

T = TypeVar("T")


def wait(fs: Iterable[Future[Any]], timeout: float | None = None, return_when: str = ALL_COMPLETED) -> Any:
    """Waits for the futures to complete; the stdlib's ``concurrent.futures.wait``.

    Returns:
        A named 2-tuple of sets, ``done`` and ``not_done``.
    """
    fs = set(fs)
    deadline = None if timeout is None else time.monotonic() + timeout
    # In slices, as Future.result() waits: a lock wait notices Ctrl-C only if the signal comes
    # while it sleeps, and one that lands just before would go unseen until the futures finish.
    while True:
        outcome = _stdlib_wait(fs, max(0.0, slice_until(deadline)), return_when)
        if _wait_is_over(*outcome, return_when) or (deadline is not None and time.monotonic() >= deadline):
            return outcome


def _wait_is_over(done: set[Any], not_done: set[Any], return_when: str) -> bool:
    """Whether ``wait(..., return_when)`` returns with ``done`` and ``not_done`` as they are."""
    if not not_done:
        return True
    if return_when == FIRST_COMPLETED:
        return bool(done)
    if return_when == FIRST_EXCEPTION:
        return any(not f.cancelled() and f.exception(0) is not None for f in done)
    return False


def _as_completed(fs: Iterable[Future[T]], timeout: float | None) -> Iterator[Future[T]]:
    """The futures of ``fs`` as they complete, each once; waits in slices, as ``wait`` does.

    Each future's done-callback puts it on one queue, which this generator reads: no waiter is
    installed and removed on every future per completion.
    """
    futures = set(fs)
    deadline = None if timeout is None else time.monotonic() + timeout
    arrived: queue.SimpleQueue[Future[T]] = queue.SimpleQueue()
    for fut in futures:
        fut.add_done_callback(arrived.put)  # at once for a future already done
    for left in range(len(futures), 0, -1):
        while True:
            wait_for = slice_until(deadline)
            if wait_for < 0:
                raise TimeoutError(f"{left} (of {len(futures)}) futures unfinished")
            try:
                fut = arrived.get(timeout=wait_for)
            except queue.Empty:
                continue
            break
        yield fut


def as_completed(
    fs: Iterable[Future[T]], timeout: float | None = None, *, progress: Any = False
) -> Iterator[Future[T]]:
    """Yields the futures as they complete (finished or cancelled).

    ``progress=True`` shows a progress bar that advances as each future is yielded (a dict:
    tqdm options; a tqdm instance: that bar).

    Raises:
        TimeoutError: some futures were still running after ``timeout`` seconds.
        TypeError: ``progress`` is not an accepted value.
    """
    _progress.check(progress)
    if progress is not None and progress is not False:
        fs = set(fs)
    try:
        yield from _progress.iterate(
            _as_completed(fs, timeout),
            progress,
            _progress.length_hint(fs),
        )
    except TimeoutError:
        raise
    except _base.TimeoutError as exc:
        raise TimeoutError(*exc.args) from None


class _Executor(Executor):
    """What both executors share: ``submit``, ``map`` and the context-manager protocol."""

    _backend: ProcessBackend | ThreadBackend | ClusterBackend
    #: the time limit of each call submitted through this object (process pools only)
    _task_timeout: float | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedules ``fn(*args, **kwargs)`` and returns a ``Future`` for it.

        For a process pool, a function or argument that cannot be pickled fails only the
        returned future, with the pickling error.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
            BrokenExecutor: the pool cannot run work (an initializer failed).
        """
        if not callable(fn):
            check_callable(fn)
        return self._backend.submit(fn, args, kwargs, self._task_timeout)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        """``shutdown(wait=True)``; after Ctrl-C, stops the work instead of waiting for it.

        Leaving the block with ``KeyboardInterrupt`` (or a second Ctrl-C during the wait)
        cancels the queued calls and ends the running ones as ``terminate_workers()`` does for a
        process pool, so one Ctrl-C ends the program. A thread pool cancels its queued calls;
        its running calls cannot be stopped.
        """
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._interrupted()
            return
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self._interrupted()
            raise

    def _interrupted(self) -> None:
        self._backend.shutdown(cancel_pending=True)

    def stats(self) -> _stats.PoolStats:
        """A snapshot of the executor: its workers' counters, queue depth and worker exits.

        Per worker: tasks done, time busy and idle; for the executor: tasks queued and in flight,
        and why worker processes ended (see docs/tuning.md).
        """
        return _stats.snapshot(self._backend.engine, self._backend.workers)

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Calls ``fn(*args, **kwargs)`` in the pool and awaits its result (asyncio).

        The event loop is never blocked. Cancelling the awaiting task cancels the call: a queued
        call never runs, and with ``cancel_running=True`` a running one is stopped.

        Raises:
            TypeError: ``fn`` is not callable.
            RuntimeError: the executor was shut down.
            Exception: whatever ``fn`` raised.
        """
        return await _aio.result(self.submit(fn, *args, **kwargs))

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: Any = False,
    ) -> Iterator[T]:
        """Returns an iterator equivalent to ``map(fn, *iterables)``, run in the pool.

        Results come in order. ``timeout`` counts from this call; ``chunksize`` groups items into
        one task (process pools; the function is pickled once per call); ``buffersize`` bounds
        how many tasks are submitted ahead of the results consumed (Python 3.14's parameter),
        so an endless input works. ``progress=True`` shows a progress bar (a dict: tqdm
        options), counting items as their results arrive.

        Without ``chunksize`` or ``buffersize``, a process pool sizes its tasks itself: each
        carries about a millisecond of work, measured as results come back, and each item still
        raises its own exception at its place. Every item runs even if the results are never
        read, as with the stdlib.

        Raises:
            TimeoutError: a result is not ready ``timeout`` seconds after the call.
            Exception: whatever ``fn`` raised for an item, when that item's result is reached.
        """
        check_callable(fn)
        adaptive = chunksize is None
        if chunksize is None:
            chunksize = 1
        elif not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None:
            if not isinstance(buffersize, int) or isinstance(buffersize, bool):
                raise TypeError("buffersize must be an integer or None")
            if buffersize < 1:
                raise ValueError("buffersize must be None or > 0")
        _progress.check(progress)
        end_time = None if timeout is None else timeout + time.monotonic()
        process = not isinstance(self._backend, ThreadBackend)  # process pools and clusters chunk
        single = len(iterables) == 1
        if adaptive and buffersize is None and process and self._task_timeout is None:
            items_list = list(iterables[0]) if single else list(zip(*iterables, strict=False))
            submit_batch = self._backend.outcome_submitter(fn, star=not single)
            eager = EagerMap(
                submit_batch, items_list, self._backend.workers, per_item=True, owner=self._backend, progress=progress
            )
            return eager.results(end_time)
        chunked = chunksize > 1 and process
        items: Iterator[Any]
        submit: Callable[[Any], Future[Any]]
        if chunked:
            # one iterable: chunks of the items themselves, called as fn(x), less to pickle
            items = chunks(iter(iterables[0]) if single else zip(*iterables, strict=False), chunksize)
            submit = self._backend.chunk_submitter(fn, star=not single, timeout=self._task_timeout)
        else:
            items = zip(*iterables, strict=False)
            submit = self._backend.one_submitter(fn, self._task_timeout)
        track = _progress.tracker(progress, _progress.shortest(iterables))
        if track is not None:
            submit = track.submitter(submit, len if chunked else _one)
            items = track.items(items)
        first: Iterable[Any] = items if buffersize is None else itertools.islice(items, buffersize)
        fs = [submit(x) for x in first]
        return _map_results(fs, items if buffersize is not None else None, submit, end_time, chunked)


def _one(_: object) -> int:
    return 1


def _map_results(
    fs: list[Future[Any]],
    more: Iterator[Any] | None,
    submit: Callable[[Any], Future[Any]],
    end_time: float | None,
    chunked: bool,
) -> Iterator[Any]:
    """Yields results in order.

    Tops up from ``more`` as each result is taken, and cancels the rest when the consumer stops
    early.
    """
    fs.reverse()
    try:
        while fs:
            fut = fs.pop()
            if more is not None:
                for x in itertools.islice(more, 1):
                    fs.insert(0, submit(x))
            value = fut.result() if end_time is None else fut.result(end_time - time.monotonic())
            if chunked:
                yield from value
            else:
                yield value
            del fut, value
    finally:
        for f in fs:
            f.cancel()


class ProcessPoolExecutor(_Executor, _process.ProcessPoolExecutor):
    """An executor that runs calls in a pool of worker processes.

    The same constructor and methods as ``concurrent.futures.ProcessPoolExecutor``, and an
    instance of it for ``isinstance`` checks (none of its machinery runs). Functions
    and lambdas defined in ``__main__`` work, and a worker that dies fails only the tasks it held
    (``WorkerDiedError``) while a replacement takes its place.

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
        task_timeout: seconds each call may run once a worker starts it (each chunk, for
            ``map``). A call that runs longer fails with ``ferropool.TimeoutError``; its worker
            is killed with its process group and replaced. ``options(timeout=...)`` sets it
            for some calls only.
        max_memory_per_child: bytes of resident memory past which a worker is replaced, after
            the call it is running.
        cancel_running: if true, ``Future.cancel()`` also stops calls that are already running
            (as ``Future.kill()`` does), so cancelling the asyncio side of
            ``loop.run_in_executor`` stops the call in its worker. The stdlib's ``cancel()``
            leaves running calls alone, which is the default.
        worker_logs: log records of the workers go to the parent's handlers (``True``: those at
            or above the parent's root level when the executor is made; a level: those at or
            above it; ``False``/``None``: workers keep their own logging).
        worker_output: what the workers print reaches the parent's ``sys.stdout``/``sys.stderr``,
            line by line (``True``; a string such as ``"[{name}] "`` prefixes each line, with
            ``{name}`` and ``{pid}``; ``False``: workers write to the inherited descriptors).
        limit_blas_threads: start workers with ``OMP_NUM_THREADS`` and the like set to
            ``cpu_count() // max_workers`` unless already set (see docs/tuning.md).
        cluster: run the calls on a Dask cluster instead of local processes: a
            ``distributed.Client``, a scheduler address (``"tcp://host:8786"``) or a scheduler
            file. ``max_workers`` then limits the calls sent to the cluster at a time (default:
            its worker threads). Needs ``pip install 'ferropool[dask]'``; see docs/scale-out.md
            for what maps to what and what a cluster cannot do.

    The value ``initializer`` returns is kept in each worker for ``ferropool.worker_state()``.

    Raises:
        ValueError: ``max_workers``, ``max_tasks_per_child``, ``task_timeout`` or
            ``max_memory_per_child`` is not positive, or ``mp_context`` is not one of the
            accepted values.
        TypeError: ``initializer`` is not callable.
        ImportError: ``cluster`` is given and Dask distributed is not installed.
    """

    _backend: ProcessBackend | ClusterBackend

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        task_timeout: float | None = None,
        max_memory_per_child: int | None = None,
        cancel_running: bool = False,
        worker_logs: bool | int | str | None = True,
        worker_output: bool | str = True,
        limit_blas_threads: bool = True,
        cluster: Any = None,
    ) -> None:
        if cluster is not None:  # --- a Dask cluster runs the calls (_pool/cluster.py) ---
            from ._pool import cluster as _cluster

            _cluster.refuse(
                "ProcessPoolExecutor",
                mp_context=mp_context,
                max_tasks_per_child=max_tasks_per_child,
                max_memory_per_child=max_memory_per_child,
                cancel_running=cancel_running,
            )
            if initializer is not None:
                check_callable(initializer, "initializer")
            self._task_timeout = check_timeout(task_timeout, "task_timeout")
            self._backend = _cluster.ClusterBackend(
                cluster, max_workers, initializer, tuple(initargs), False, worker_output, worker_logs
            )
            self._max_workers = self._backend.workers
            return  # ---
        if max_workers is None:
            max_workers = _core.cpu_count()
        check_positive_int(max_workers, "max_workers", "max_workers must be greater than 0")
        method = start_methods.for_pool(mp_context)
        if initializer is not None:
            check_callable(initializer, "initializer")
        if max_tasks_per_child is not None:
            check_positive_int(max_tasks_per_child, "max_tasks_per_child", "max_tasks_per_child must be >= 1")
        self._task_timeout = check_timeout(task_timeout, "task_timeout")
        self._max_workers = max_workers
        self._backend = process_backend(
            max_workers,
            method,
            initializer,
            initargs,
            (worker_logs, worker_output, limit_blas_threads),
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            cancel_running=bool(cancel_running),
        )

    def options(self, *, timeout: float | None = None) -> ProcessPoolExecutor:
        """This executor, with options for the calls submitted through the returned object.

        ``pool.options(timeout=5).submit(fn, x)`` limits that call to 5 s without touching
        ``fn``'s own arguments (so ``loop.run_in_executor(pool.options(timeout=5), fn, x)``
        works too). The returned object shares this executor's workers; shutting it down shuts
        them down.

        Args:
            timeout: seconds each call may run once started (``None``: no limit), overriding
                ``task_timeout``.

        Raises:
            ValueError: ``timeout`` is not positive.
        """
        view = copy.copy(self)
        view._task_timeout = check_timeout(timeout, "timeout")
        return view

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting work and frees the workers once queued work is done.

        Args:
            wait: wait until all pending futures are done and the workers have exited.
            cancel_futures: cancel every future that has not started running.
        """
        self._backend.shutdown(cancel_futures)
        if wait:
            self._backend.join()

    def terminate_workers(self) -> None:
        """Stops every worker now (SIGKILL to each worker's process group) and shuts down.

        Pending futures are cancelled; running ones fail with ``BrokenProcessPool``.
        """
        self._backend.terminate()

    def _interrupted(self) -> None:
        self.terminate_workers()

    # Python 3.14 sends SIGTERM for terminate_workers() and SIGKILL for kill_workers(); both
    # SIGKILL here, since a task can ignore SIGTERM (docs/ARCHITECTURE.md, last section)
    kill_workers = terminate_workers


class ThreadPoolExecutor(_Executor, _thread.ThreadPoolExecutor):
    """An executor that runs calls on a pool of threads owned by the Rust core.

    The same constructor and methods as ``concurrent.futures.ThreadPoolExecutor``, and an
    instance of it, so ``loop.set_default_executor`` accepts it (none of its machinery runs).

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

    _backend: ThreadBackend
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
        check_positive_int(max_workers, "max_workers", "max_workers must be greater than 0")
        if initializer is not None:
            check_callable(initializer, "initializer")
        self._max_workers = max_workers
        self._thread_name_prefix = thread_name_prefix or f"ThreadPoolExecutor-{self._counter()}"
        self._backend = ThreadBackend(
            max_workers, self._thread_name_prefix, _state.for_threads(initializer), tuple(initargs)
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting work; the threads exit once queued work is done.

        Args:
            wait: wait until the threads have finished.
            cancel_futures: cancel every future that has not started running.
        """
        self._backend.shutdown(cancel_futures, wait)
