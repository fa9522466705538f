"""What the executors and the pools share: one backend per kind of pool.

``ProcessPoolExecutor`` and ``Pool`` drive a :class:`ProcessBackend`; ``ThreadPoolExecutor`` and
``ThreadPool`` drive a :class:`ThreadBackend`. Every call, chunk of a map, or initializer becomes
the same task with the same :class:`~ferropool.Future`; the front ends only adapt names and
return types (one task model, DESIGN.md principle 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from .. import _core
from .._core import OUT_CANCELLED, OUT_DIED, OUT_ERR, OUT_KILLED, OUT_OK, OUT_OK_BUFFERS, OUT_TIMED_OUT
from .._runtime import forkserver, lifecycle
from .._runtime.buffers import close_all, pack_call, pack_chunk, unpack
from .._runtime.serialize import (
    FLAG_ITEM_CHUNK,
    FLAG_OUTCOMES,
    FLAG_POOL_ERRORS,
    FLAG_STAR_CHUNK,
    FLAG_TIMED,
    dump_function,
    dumps,
    load_exception,
    loads,
)
from .._runtime.spawn import worker_argv
from .._worker import chunk
from ..errors import BrokenProcessPool, InvalidStateError, TimeoutError, WorkerDiedError
from . import setup as _setup
from . import threads
from .batching import flush_all
from .future import Future


class ResultSink:
    """Completes process-pool futures from the outcomes the core delivers.

    Called on the pool's completion thread with a batch of ``(id, kind, payload)``, or in a
    caller's thread with its own outcome, which it read off its worker's link while it waited
    (``scheduler/claim.rs``). It holds no
    reference to its pool, so a pool nobody uses can be garbage-collected while its last tasks
    finish.
    """

    __slots__ = ("pending", "pool")

    def __init__(self, pool: bool = False) -> None:
        self.pending: dict[int, Future[Any]] = {}
        self.pool = pool  # a Pool's: its remote tracebacks are multiprocessing.pool's class

    def deliver(self, batch: list[tuple[int, int, Any]]) -> None:
        """Sets the future of each outcome in ``batch``."""
        pop = self.pending.pop
        for tid, kind, payload in batch:
            fut = pop(tid, None)
            if fut is None:
                if kind == OUT_OK_BUFFERS:
                    close_all(payload[1])
                continue
            try:
                if kind == OUT_OK:
                    fut.set_result(loads(payload))
                elif kind == OUT_OK_BUFFERS:
                    fut.set_result(unpack(*payload))
                elif kind == OUT_ERR:
                    fut.set_exception(load_exception(payload, self.pool))
                elif kind == OUT_CANCELLED:
                    fut.cancel()
                elif kind == OUT_DIED:
                    fut.set_exception(WorkerDiedError.from_exit(*payload))
                elif kind == OUT_TIMED_OUT:
                    fut.set_exception(timed_out_error(*payload))
                elif kind == OUT_KILLED:
                    fut._stopped()
                else:
                    fut.set_exception(broken_error(*payload))
            except InvalidStateError:
                pass
            except BaseException as exc:  # the payload itself could not be unpickled
                try:
                    fut.set_exception(exc)
                except InvalidStateError:
                    pass


def broken_error(why: str, cause: bytes | None) -> BrokenProcessPool:
    """The error for work a broken pool could not run, with the worker's exception as cause."""
    err = BrokenProcessPool(why)
    if cause is not None:
        try:
            err.__cause__ = load_exception(cause)
        except Exception:
            pass
    return err


def timed_out_error(limit: float, pid: int) -> TimeoutError:
    """The error of a task stopped for running past its time limit."""
    return TimeoutError(
        f"the task ran longer than its {limit:g} s limit; its worker (pid {pid}) was killed with its "
        "process group, and a fresh worker took its place"
    )


def check_timeout(value: Any, what: str) -> float | None:
    """A task time limit in seconds: ``None``, or a positive number."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or None, not {type(value).__name__!r}")
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{what} must be a positive number of seconds, not {value!r}")
    return float(value)


def check_callable(fn: Any, what: str = "fn") -> None:
    """Raises ``TypeError`` unless ``fn`` is callable."""
    if not callable(fn):
        raise TypeError(f"{what} must be callable, not {type(fn).__name__!r}; pass a function or other callable")


def check_positive_int(value: Any, what: str, message: str) -> None:
    """Raises ``TypeError`` for a non-integer and ``ValueError(message)`` for one below 1."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int or None, not {type(value).__name__!r}")
    if value <= 0:
        raise ValueError(message)


def chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Lists of up to ``size`` items, taken from ``items`` as they are needed."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def failed(exc: BaseException) -> Future[Any]:
    """A future that already failed with ``exc``."""
    fut: Future[Any] = Future()
    fut.set_exception(exc)
    return fut


def chunk_flags(star: bool, outcomes: bool, timed: bool) -> int:
    """The flags of a chunk task: ``fn(*item)`` or ``fn(item)``, and what its future holds."""
    flags = FLAG_STAR_CHUNK if star else FLAG_ITEM_CHUNK
    if outcomes:
        return flags | FLAG_OUTCOMES
    return flags | FLAG_TIMED if timed else flags


class Backend:
    """What every backend offers the front ends for maps: submitters of chunks."""

    def chunk_submitter(
        self,
        fn: Callable[..., Any],
        star: bool,
        outcomes: bool = False,
        timeout: float | None = None,
        timed: bool = False,
    ) -> Callable[[Sequence[Any]], Future[Any]]:
        """A function that queues one chunk, whose future holds the list of results.

        ``fn`` is pickled once here, not once per chunk; ``star`` calls ``fn(*item)``;
        ``outcomes`` see ``outcome_submitter``; ``timed`` makes it ``(seconds, results)``.
        """
        return self._chunk_sender(fn, chunk_flags(star, outcomes, timed), timeout)

    def outcome_submitter(
        self, fn: Callable[..., Any], timeout: float | None = None, star: bool = False
    ) -> Callable[[Sequence[Any]], Future[Any]]:
        """Like ``chunk_submitter``, but each item keeps its own outcome.

        The future holds ``(seconds, [(True, value) | (False, (exception, traceback text))])``.
        """
        return self.chunk_submitter(fn, star, outcomes=True, timeout=timeout)

    def _chunk_sender(
        self, fn: Callable[..., Any], flags: int, timeout: float | None
    ) -> Callable[[Sequence[Any]], Future[Any]]:
        raise NotImplementedError


class PickledBackend(Backend):
    """A backend whose workers are other processes: every call is pickled here, once.

    The process pool and the Dask cluster differ only in how a task travels (``submit_call``,
    ``_pack``, ``_ship``); how calls and chunks become tasks is this class's.
    """

    def check_open(self) -> None:
        """Raises what a submit to this pool would raise now, if anything."""
        raise NotImplementedError

    def submit_call(
        self, fn_bytes: Any, flags: int, payload: bytes, timeout: float | None = None, fds: list[int] | None = None
    ) -> Future[Any]:
        """Queues an already pickled call."""
        raise NotImplementedError

    def _pack(self, value: Any, chunk: bool) -> tuple[bytes, list[int] | None]:
        """The pickled arguments (``(args, kwargs)``, or a chunk's items) and their buffers."""
        return pack_chunk(value) if chunk else pack_call(*value)

    def _ship(self, fn_bytes: bytes) -> Any:
        """What a task carries for its pickled function."""
        return fn_bytes

    def _failing(self, error: BaseException) -> Callable[[Any], Future[Any]]:
        def fail(_: Any) -> Future[Any]:
            self.check_open()
            return failed(error)

        return fail

    def _sender(self, fn_bytes: Any, flags: int, timeout: float | None, chunk: bool) -> Callable[[Any], Future[Any]]:
        """Queues a task of ``fn_bytes`` for each value: a chunk, or ``(args, kwargs)``."""

        def send(value: Any) -> Future[Any]:
            try:
                payload, fds = self._pack(value, chunk)
            except Exception as exc:  # a pickling error fails only this task's future
                self.check_open()
                return failed(exc)
            return self.submit_call(fn_bytes, flags, payload, timeout, fds)

        return send

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None = None
    ) -> Future[Any]:
        """Queues ``fn(*args, **kwargs)``; a pickling error fails only the returned future."""
        try:
            fn_bytes, flags = dump_function(fn)
            payload, fds = self._pack((args, kwargs), False)
            shipped = self._ship(fn_bytes)
        except Exception as exc:
            return self._failing(exc)(None)
        return self.submit_call(shipped, flags, payload, timeout, fds)

    def _chunk_sender(
        self, fn: Callable[..., Any], flags: int, timeout: float | None
    ) -> Callable[[Sequence[Any]], Future[Any]]:
        try:
            fn_bytes, fn_flags = dump_function(fn)
            shipped = self._ship(fn_bytes)
        except Exception as exc:  # every chunk fails with the pickling error, as each submit would
            return self._failing(exc)
        return self._sender(shipped, flags | fn_flags, timeout, chunk=True)

    def one_submitter(
        self, fn: Callable[..., Any], timeout: float | None = None
    ) -> Callable[[tuple[Any, ...]], Future[Any]]:
        """A function that queues ``fn(*args)`` for each args tuple, ``fn`` pickled once."""
        try:
            fn_bytes, flags = dump_function(fn)
            shipped = self._ship(fn_bytes)
        except Exception:
            return lambda args: self.submit(fn, args, {}, timeout)
        send = self._sender(shipped, flags, timeout, chunk=False)
        return lambda args: send((args, {}))


class ProcessBackend(PickledBackend):
    """One process-pool engine (``_core.ProcessEngine``), its result sink and its task ids."""

    def __init__(
        self,
        workers: int,
        method: str,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        *,
        max_tasks_per_child: int | None,
        max_memory_per_child: int | None = None,
        cancel_running: bool = False,
        setup: Any = None,
        pool_errors: bool = False,
        run_initializer: bool = False,
    ) -> None:
        # setup: a _setup.WorkerSetup (worker output and logs, BLAS limits, worker_state)
        self.setup = setup
        # pool_errors: Pool's error for a result that cannot be pickled (MaybeEncodingError)
        # run_initializer: Pool's promise that each worker runs the user's initializer, even in a
        # pool closed before any task (setup.wrap may give a pool an initializer of its own)
        self.call_flags = FLAG_POOL_ERRORS if pool_errors else 0
        if setup is not None:
            initializer, initargs = setup.wrap(initializer, initargs)
        init = None
        if initializer is not None:
            fn_bytes, flags = dump_function(initializer)
            init = (flags, len(fn_bytes), fn_bytes + dumps((tuple(initargs), {})))
        self.workers = workers
        self.sink = ResultSink(pool_errors)
        self._ids = itertools.count(1)
        self.closed = False
        server = forkserver.connect() if method == "forkserver" else None
        self.engine = _core.ProcessEngine(
            worker_argv(),
            workers,
            on_results=self.sink.deliver if setup is None else setup.results_hook(self.sink.deliver),
            init=init,
            max_tasks_per_child=max_tasks_per_child,
            forkserver_fd=server,
            max_memory_per_child=max_memory_per_child,
            cancel_running=cancel_running,
            run_initializer=run_initializer,
            # last: the engine owns the descriptor from here on, even if it then fails to start
            output_fd=None if setup is None else setup.output_fd(),
        )
        if setup is not None:
            setup.attach(self)

    def check_open(self) -> None:
        """Raises what a submit to this pool would raise now, if anything."""
        broken = self.engine.broken
        if broken is not None:
            raise BrokenProcessPool(broken)
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if lifecycle.shutting_down:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def submit_call(
        self,
        fn_bytes: bytes,
        flags: int,
        payload: bytes,
        timeout: float | None = None,
        fds: list[int] | None = None,
    ) -> Future[Any]:
        """Queues an already pickled call; the engine takes over ``fds`` (see ``_runtime/buffers.py``)."""
        fut: Future[Any] = Future()
        tid = next(self._ids)
        self.sink.pending[tid] = fut
        try:
            self.engine.submit(tid, fn_bytes, payload, flags | self.call_flags, fut, timeout, fds)
        except BaseException:
            del self.sink.pending[tid]
            raise
        return fut

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None = None
    ) -> Future[Any]:
        """Queues ``fn(*args, **kwargs)``; a pickling error fails only the returned future.

        ``PickledBackend.submit`` with its steps inlined: this runs once per task, and each
        Python call it saves is a tenth of a microsecond or more.
        """
        if lifecycle.shutting_down:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        try:
            fn_bytes, flags = dump_function(fn)
            payload, fds = pack_call(args, kwargs)
        except Exception as exc:
            return self._failing(exc)(None)
        fut: Future[Any] = Future()
        tid = next(self._ids)
        pending = self.sink.pending
        pending[tid] = fut
        try:
            self.engine.submit(tid, fn_bytes, payload, flags | self.call_flags, fut, timeout, fds)
        except BaseException:
            del pending[tid]
            raise
        return fut

    def shutdown(self, cancel_pending: bool) -> None:
        """Stops accepting work; queued work runs (or is cancelled), then the workers stop.

        Cancelled futures are cancelled before this returns, as the stdlib's are.
        """
        flush_all(self)
        self.closed = True
        if cancel_pending:
            for fut in list(self.sink.pending.values()):
                fut.cancel()  # a no-op for tasks a worker already has
        self.engine.shutdown(cancel_pending)

    def terminate(self) -> None:
        """Kills every worker now; queued work is cancelled, running work fails.

        Returns once the workers have exited and what they printed is written, as the stdlib's
        ``terminate()`` returns once it has joined them: the end of a ``with Pool()`` block
        loses none of its tasks' output to the program's next lines or to its exit.
        """
        self.closed = True
        self.engine.terminate()
        self.join()

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the workers to exit and every outcome to be delivered."""
        done = self.engine.join(timeout)
        if done and self.setup is not None:
            self.setup.close()
        return done


def process_backend(
    workers: int,
    method: str,
    initializer: Callable[..., object] | None,
    initargs: Iterable[Any],
    setup: tuple[Any, Any, bool],
    *,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    cancel_running: bool = False,
    pool_errors: bool = False,
    run_initializer: bool = False,
) -> ProcessBackend:
    """A local process pool's backend, set up as ``Pool`` and the executor both promise.

    ``setup``: ``(worker_logs, worker_output, limit_blas_threads)`` as the front end was given them.
    """
    from ..process import current_process

    if max_memory_per_child is not None:
        check_positive_int(max_memory_per_child, "max_memory_per_child", "max_memory_per_child must be >= 1 byte")
    return ProcessBackend(
        workers,
        method,
        initializer,
        tuple(initargs),
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        cancel_running=cancel_running,
        # every worker takes the parent's key (a spawned one has its own otherwise), as a stdlib
        # child does: a manager's proxies and pickled connections authenticate with it
        setup=_setup.WorkerSetup(workers, *setup, authkey=current_process().authkey),
        pool_errors=pool_errors,
        run_initializer=run_initializer,
    )


class ThreadBackend(Backend):
    """One thread pool (``_core.ThreadEngine``)."""

    def __init__(
        self,
        max_workers: int,
        name_prefix: str,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
    ) -> None:
        self.workers = max_workers
        self.closed = False
        self.engine = _core.ThreadEngine(max_workers, name_prefix, threads, initializer, tuple(initargs))

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None = None
    ) -> Future[Any]:
        """Queues ``fn(*args, **kwargs)`` on the pool's threads.

        ``timeout`` is not supported (a thread cannot be stopped); the front ends refuse it.
        """
        if lifecycle.shutting_down:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        fut: Future[Any] = Future()
        self.engine.submit(fut, fn, args, kwargs or None)
        return fut

    def _chunk_sender(
        self, fn: Callable[..., Any], flags: int, timeout: float | None
    ) -> Callable[[Sequence[Any]], Future[Any]]:
        run = chunk.per_item if flags & FLAG_OUTCOMES else chunk.timed if flags & FLAG_TIMED else chunk.values
        star = bool(flags & FLAG_STAR_CHUNK)
        return lambda items: self.submit(run, (fn, items, star), {})

    def one_submitter(
        self, fn: Callable[..., Any], timeout: float | None = None
    ) -> Callable[[tuple[Any, ...]], Future[Any]]:
        """A function that queues ``fn(*args)`` for each args tuple."""
        return lambda args: self.submit(fn, args, {})

    def shutdown(self, cancel_pending: bool, wait: bool = False) -> None:
        """Stops accepting work; queued work runs (or is cancelled); ``wait`` joins the threads."""
        flush_all(self)
        self.closed = True
        self.engine.shutdown(wait, cancel_pending)

    def terminate(self) -> None:
        """Cancels queued work; threads finish what they run (a thread cannot be killed)."""
        self.shutdown(cancel_pending=True)

    def join(self, timeout: float | None = None) -> bool:
        """Waits for every thread to end."""
        return self.engine.join(timeout)
