"""``Pool(cluster=...)`` and ``ProcessPoolExecutor(cluster=...)``: a Dask cluster as one more backend.

A :class:`ClusterBackend` is a ``backend.PickledBackend``, as the local ``ProcessBackend`` is: the
same code turns calls and chunks into pickled tasks (submit, submitters for chunks), and only how
a task travels differs, so ``Pool`` and the executor keep one task model: every call, or chunk of
a map, is one task with one ``ferropool.Future``. Here a
task is one Dask task, ``_worker.cluster.run``, submitted with ``pure=False`` (identical calls are
never merged) under a key starting ``ferropool-``.

Life of a task::

    submit ──▶ queue (here) ──▶ client.map of the batch queued ──▶ Dask scheduler ──▶ Dask worker: run()
                 │ at most `window` tasks sent and unfinished       (client's event loop)          │
                 ▼                                                                                 ▼
    cancel() of a queued task: never sent       kill(): run() interrupted       watch (event loop) ─┘
                                                                                       │
    future.set_result / set_exception ◀── results thread: one client.gather per batch ─┘

Only ``window`` tasks are with Dask at a time (``max_workers``/``processes`` when given), so a
queued task is still ours to cancel, and the pool's size keeps its meaning. Submitting takes no
lock: the first call queued schedules a send on the client's event loop, and every call queued
before it runs goes in the same ``client.map`` (one graph, one scheduler update). Results are
fetched by one thread in batches: one ``gather`` round trip serves every task that finished
meanwhile.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from .._runtime import lifecycle
from .._runtime.serialize import (
    FLAG_POOL_ERRORS,
    dumps,
    load_exception,
    loads,
)
from .._worker import cluster as remote
from ..errors import BrokenProcessPool, InvalidStateError, TimeoutError, WorkerDiedError
from . import logs as _logs
from .backend import PickledBackend, broken_error, check_positive_int
from .batching import flush_all
from .future import Future

INSTALL_HINT = "pip install 'ferropool[dask]'"
#: Seconds past a task's time limit after which the caller stops waiting for a call that the
#: worker could not interrupt (it was in C code): the future fails with TimeoutError anyway.
TIMEOUT_GRACE_S = 5.0
#: Tasks sent to Dask per worker thread when the pool has no explicit size (see ``window``):
#: enough that the workers never wait for the next batch while results come back in batches of
#: up to ``GATHER_BATCH`` (with 64, a burst of short calls cost 2-8% more CPU per call on the
#: scheduler and the workers in two alternated runs: the refills after each fetch are smaller graphs).
SEND_AHEAD = 256
#: Pickled functions or arguments at least this large are scattered to the cluster once and
#: handed to the tasks as a Dask future, instead of travelling inside each task's graph.
SCATTER_MIN = 1 << 20
#: Results the result thread waits for before a fetch (see ``_coalesce``), at most
#: ``COALESCE_S`` seconds, and only while more than half of the tasks sent are still running: a
#: lone result is never held. Each fetch costs the scheduler and each worker holding a result a
#: round trip (~1 ms of CPU each here), nearly whatever it carries, so short tasks are fetched
#: ~50-64 at a time; at ~10 to a fetch a burst of short calls cost 7-20% more CPU per call
#: (docs/cluster-bench.md).
GATHER_BATCH = 64
COALESCE_S = 0.1
#: ...but a fetch waits no longer once this many seconds pass without a task finishing: longer
#: tasks are fetched as before, without being held for the batch.
COALESCE_GAP_S = 0.02
#: With no explicit pool size, queued calls are sent once this part of the window is free, not
#: after every fetch: a graph costs the scheduler nearly as much for 10 tasks as for 100, and
#: the workers still have three quarters of the window ahead of them (2,000 calls: ~11 graphs,
#: where a refill per fetch made ~65).
REFILL_PART = 4
#: Seconds to wait for the Dask workers to connect when the cluster has none yet.
CONNECT_TIMEOUT_S = 30.0

_live: weakref.WeakSet[ClusterBackend] = weakref.WeakSet()
_WATCHABLE: bool | None = None  # see _watchable


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            f"cluster= needs Dask distributed, which is not installed: {INSTALL_HINT}", name="distributed"
        ) from exc
    return distributed


def refuse(front_end: str, **options: Any) -> None:
    """Raises ``ValueError`` for options a pool on a cluster cannot honour (given, not default)."""
    for name, value in options.items():
        if value is not None and value is not False:
            raise ValueError(
                f"{front_end}(cluster=...) does not support {name}={value!r}: Dask runs the workers, "
                "so ferropool cannot start, recycle or watch them (see docs/scale-out.md)"
            )


def connect(cluster: Any) -> tuple[Any, bool]:
    """A ``distributed.Client`` for ``cluster``, and whether it is ours to close.

    ``cluster``: a ``Client``; a scheduler address (``"tcp://host:8786"``); or the path of a
    scheduler file (``dask scheduler --scheduler-file``).
    """
    distributed = _distributed()
    if isinstance(cluster, distributed.Client):
        return cluster, False
    if isinstance(cluster, os.PathLike):
        cluster = os.fspath(cluster)
    if not isinstance(cluster, str):
        raise TypeError(
            "cluster must be a distributed.Client, a scheduler address ('tcp://host:8786') or the path "
            f"of a scheduler file, not {type(cluster).__name__!r}"
        )
    if "://" in cluster:
        return distributed.Client(cluster, set_as_default=False), True
    if os.path.exists(cluster):
        return distributed.Client(scheduler_file=cluster, set_as_default=False), True
    raise ValueError(
        f"cluster={cluster!r} is neither a scheduler address (it has no '://', as in 'tcp://host:8786') "
        "nor an existing scheduler file"
    )


class ClusterBackend(PickledBackend):
    """Runs a pool's tasks on a Dask cluster; the front ends' view is ``ProcessBackend``'s.

    Args:
        cluster: see :func:`connect`.
        workers: tasks sent to Dask at a time; ``None``: ``SEND_AHEAD`` per thread of the
            workers connected now (waiting up to ``CONNECT_TIMEOUT_S`` for a first worker).
            A task sent is running as far as its future goes: ``cancel()`` no longer stops it.
        initializer, initargs: run once per Dask worker process, before its first task of this
            pool (see ``_worker/cluster.py``).
        pool_errors: ``Pool``'s errors (``MaybeEncodingError``, its remote traceback class).
        worker_output: forward what calls print (see ``_logs.output_prefix``).
        worker_logs: forward log records at or above this level (``None``: none).
    """

    def __init__(
        self,
        cluster: Any,
        workers: int | None,
        initializer: Callable[..., object] | None,
        initargs: tuple[Any, ...],
        pool_errors: bool = False,
        worker_output: object = True,
        worker_logs: object = True,
    ) -> None:
        if workers is not None:
            check_positive_int(workers, "max_workers", "max_workers must be greater than 0")
        prefix = _logs.output_prefix(worker_output)
        level = _logs.worker_logs_level(worker_logs)
        init = None if initializer is None else dumps((initializer, tuple(initargs)))
        limited = workers is not None
        self.client, self._own_client = connect(cluster)
        try:
            if workers is None:
                workers = self._cluster_threads()
            self._register_plugin()
        except BaseException:
            if self._own_client:
                self.client.close()
            raise
        self.workers = workers
        # an explicit limit is kept exactly; else tasks are sent ahead, so that each worker
        # thread finds its next task waiting instead of a round trip to this process away
        self.window = workers if limited else workers * SEND_AHEAD
        # refills of at least a quarter of the window (see REFILL_PART); an explicit limit is
        # refilled task by task, so that the pool's size stays exact
        self._refill = 1 if limited else max(1, self.window // REFILL_PART)
        self.token = uuid.uuid4().hex[:16]
        self._spec = (self.token, None if init is None else self._ship(init), prefix, level)
        self.call_flags = FLAG_POOL_ERRORS if pool_errors else 0
        self.pool_errors = pool_errors
        self.closed = False
        self.broken: str | None = None
        self._broken_cause: bytes | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._queue: deque[tuple[_ClusterFuture, Any, int, Any, float | None]] = deque()
        self._send_scheduled = False
        self._key_prefix = f"{remote.KEY_PREFIX}{self.token}-"
        self._sent: dict[str, tuple[Future[Any], Any]] = {}  # key -> (our future, Dask's future)
        self._arrived: deque[Any] = deque()  # Dask futures done, not yet gathered
        self._wanted = 1  # arrivals that wake the results thread (see _on_done)
        self._deadlines: list[tuple[float, str]] = []  # (monotonic deadline, key) of timed tasks
        self._stopping = False
        global _WATCHABLE
        if _WATCHABLE is None:
            _WATCHABLE = _watchable()
        self._thread = threading.Thread(target=self._gather_loop, name="ferropool-cluster-results", daemon=True)
        self._thread.start()
        _live.add(self)

    def _cluster_threads(self) -> int:
        nthreads = self.client.nthreads()
        if not nthreads:
            self.client.wait_for_workers(1, timeout=CONNECT_TIMEOUT_S)
            nthreads = self.client.nthreads()
        return max(1, int(sum(nthreads.values())))

    def _register_plugin(self) -> None:
        plugin = remote.no_retry_plugin()
        try:
            self.client.register_plugin(plugin, name=plugin.name)
        except Exception as exc:  # a scheduler that refuses pickled plugins
            raise RuntimeError(
                "could not register ferropool's scheduler plugin (it fails a task at the first death of its "
                f"worker instead of letting Dask run it again): {type(exc).__name__}: {exc}"
            ) from exc

    @property
    def engine(self) -> Any:
        raise NotImplementedError(
            "stats() is not available for a pool on a Dask cluster: the Dask dashboard shows its workers"
        )

    # -- submitting -------------------------------------------------------------------------

    def check_open(self) -> None:
        """Raises what a submit to this pool would raise now, if anything."""
        if self.broken is not None:
            raise broken_error(self.broken, self._broken_cause)
        if self.closed:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def _ship(self, fn_bytes: bytes) -> Any:
        """``data``, or for large data a Dask future of it: sent once, fetched by the workers."""
        if len(fn_bytes) < SCATTER_MIN:
            return fn_bytes
        return self.client.scatter(fn_bytes, hash=False, direct=False)

    def _pack(self, value: Any, chunk: bool) -> tuple[bytes, None]:
        # no shared memory across machines: buffers travel inside the pickle
        return dumps(list(value) if chunk else value), None

    def submit_call(
        self, fn_bytes: Any, flags: int, payload: bytes, timeout: float | None = None, fds: list[int] | None = None
    ) -> Future[Any]:
        """Queues an already pickled call; it is sent to Dask once fewer than ``window`` are there."""
        self.check_open()
        fut = _ClusterFuture(self)
        # no lock: a deque's append is atomic, and the sender takes what it finds
        self._queue.append((fut, fn_bytes, flags | self.call_flags, self._ship(payload), timeout))
        if not self._send_scheduled and self._room():
            self._schedule_send()  # else the results thread does, when tasks free room
        return fut

    def _schedule_send(self) -> None:
        """Has ``_send_queued`` run soon on the client's event loop.

        Calls submitted meanwhile go with it: one graph, one message and one scheduler update
        for the batch, where ``client.submit`` costs one of each per call.
        """
        self._send_scheduled = True
        if self.client.status in ("running", "connecting", "newly-created"):
            self.client.loop.add_callback(self._send_queued)
        else:  # closing or closed: Dask refuses the batch, and each queued future fails with why
            self._send_queued()

    def _send_queued(self) -> None:
        """Sends queued tasks while there is room, as one ``client.map``."""
        self._send_scheduled = False  # first: a call queued from here on schedules another send
        with self._lock:
            batch: list[tuple[_ClusterFuture, Any, int, Any, float | None]] = []
            room = self.window - len(self._sent)
            while self._queue and len(batch) < room:
                task = self._queue.popleft()
                task[0]._key = f"{self._key_prefix}{next(self._ids)}"  # kill() may come at once
                try:
                    if not task[0].set_running_or_notify_cancel():
                        continue  # cancelled while queued: it never runs
                except RuntimeError:  # cancelled, and its waiters told, by _ClusterFuture.cancel
                    continue
                batch.append(task)
            if batch:
                self._send(batch)
            self._lock.notify_all()  # the result thread may wait for the queue to empty

    def _send(self, batch: list[tuple[_ClusterFuture, Any, int, Any, float | None]]) -> None:
        futs, fns, flags, payloads, limits = zip(*batch, strict=True)
        keys = [fut._key for fut in futs]
        try:
            specs = [self._spec] * len(keys)
            args = (specs, keys, fns, flags, payloads, limits)
            dfuts = self.client.map(remote.run, *args, key=keys, pure=False, retries=0)
        except BaseException as exc:  # the client is closed, say
            for fut in futs:
                _settle(fut, exc)
            return
        for key, fut, limit, dfut in zip(keys, futs, limits, dfuts, strict=True):
            self._sent[key] = (fut, dfut)
            if limit is not None:
                if len(self._deadlines) > 2 * len(self._sent) + 64:  # drop those of finished tasks
                    self._deadlines = [d for d in self._deadlines if d[1] in self._sent]
                    heapq.heapify(self._deadlines)
                heapq.heappush(self._deadlines, (time.monotonic() + limit + TIMEOUT_GRACE_S, key))
            if _WATCHABLE:
                self.client.loop.add_callback(self._watch, dfut)
            else:
                dfut.add_done_callback(self._on_done)

    async def _watch(self, dfut: Any) -> None:
        # on the client's event loop: what add_done_callback does, without handing each
        # completion to Dask's callback thread first (a fifth of the caller's CPU per task)
        while dfut.status == "pending":
            await dfut._state.wait()
        self._on_done(dfut)

    def _on_done(self, dfut: Any) -> None:
        # on the event loop (or Dask's callback thread): hand over to the results thread, which
        # batches the fetches; it is woken only once its batch is in (one thread switch per fetch, not one per task)
        with self._lock:
            self._arrived.append(dfut)
            if len(self._arrived) >= self._wanted:
                self._lock.notify()

    def stop(self, key: str) -> bool:
        """Stops the task ``key`` wherever it runs (``kill()``).

        ``False`` if it has finished already (its result is on its way) or Dask is out of reach.
        """
        sent = self._sent.get(key)
        if sent is not None and sent[1].status != "pending":
            return False
        try:  # every worker: only the scheduler knows where the task went, if anywhere yet
            self.client.run(remote.stop, key, on_error="ignore")
        except Exception:
            return False
        return True

    # -- results ----------------------------------------------------------------------------

    def _gather_loop(self) -> None:
        while True:
            with self._lock:
                while not self._arrived and not self._done_and_closed():
                    self._lock.wait(self._next_deadline())
                    self._expire_overdue()
                self._expire_overdue()  # also while results keep arriving
                if not self._arrived and self._done_and_closed():
                    break
                self._coalesce()
                batch = list(self._arrived)
                self._arrived.clear()
            self._settle_batch(batch)
        self._finish()

    def _coalesce(self) -> None:
        """Waits briefly for more tasks to finish, so one ``gather`` fetches them together.

        Each fetch is a round trip through the scheduler, whose cost hardly depends on how many
        results it carries; short tasks finish in bursts (with the lock held).
        """
        self._wanted = min(GATHER_BATCH, len(self._sent) // 2)
        now = time.monotonic()
        deadline = now + COALESCE_S
        seen, last_arrival = len(self._arrived), now
        while seen < self._wanted and (left := deadline - now) > 0:
            # the lock is also notified for other reasons (a batch sent, a batch settled): only
            # COALESCE_GAP_S without an arrival, not any wake-up without one, ends the wait
            self._lock.wait(min(left, last_arrival + COALESCE_GAP_S - now))
            now = time.monotonic()
            if len(self._arrived) != seen:
                seen, last_arrival = len(self._arrived), now
            elif now - last_arrival >= COALESCE_GAP_S:
                break  # nothing finished meanwhile: these tasks are not short ones in a burst
        self._wanted = 1

    def _done_and_closed(self) -> bool:
        return (self.closed or self._stopping) and not self._queue and not self._sent

    def _next_deadline(self) -> float | None:
        if not self._deadlines:
            return None
        return max(0.0, self._deadlines[0][0] - time.monotonic())

    def _expire_overdue(self) -> None:
        """Fails the timed tasks whose worker could not stop them (with the lock held)."""
        if not self._deadlines or self._deadlines[0][0] > time.monotonic():
            return
        now = time.monotonic()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, key = heapq.heappop(self._deadlines)
            sent = self._sent.pop(key, None)
            if sent is None:
                continue
            fut, dfut = sent
            dfut.release()
            _settle(
                fut,
                TimeoutError(
                    f"the task ran past its time limit and the Dask worker could not interrupt it (key {key}); "
                    "its thread there stays busy until the call returns"
                ),
            )
        if self._queue:
            self._schedule_send()

    def _settle_batch(self, batch: list[Any]) -> None:
        finished = [d for d in batch if d.status == "finished"]
        outcomes: dict[str, Any] = {}
        if finished:
            try:  # one round trip for the whole batch
                outcomes = dict(zip((d.key for d in finished), self.client.gather(finished), strict=True))
            except BaseException:  # one of them was lost meanwhile: each on its own
                outcomes = {d.key: _gather_one(d) for d in finished}
        with self._lock:
            sents = [self._sent.pop(dfut.key, None) for dfut in batch]
        for dfut, sent in zip(batch, sents, strict=True):
            if sent is None:
                continue  # timed out here already, or terminated
            fut = sent[0]
            if dfut.key in outcomes:
                self._deliver(fut, outcomes[dfut.key])
            else:
                _settle(fut, self._failure(dfut))
            dfut.release()
        if self._queue and self._room():
            self._schedule_send()
        with self._lock:
            self._lock.notify_all()

    def _room(self) -> bool:
        """Whether enough tasks have left Dask to send more: a refill of at least ``_refill``."""
        return self.window - len(self._sent) >= self._refill

    def _deliver(self, fut: Future[Any], outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            _settle(fut, outcome)
            return
        try:
            if type(outcome) is bytes:  # a value returned, nothing printed or logged
                _settle(fut, None, loads(outcome))
                return
            kind, payload, output, records = outcome
            self._forward(output, records)
            if kind == remote.KIND_OK:
                _settle(fut, None, loads(payload))
            elif kind == remote.KIND_ERR:
                _settle(fut, load_exception(payload, self.pool_errors))
            elif kind == remote.KIND_KILLED:
                fut._stopped()  # kill() has ended it already
            elif kind == remote.KIND_TIMED_OUT:
                _settle(fut, TimeoutError(f"the task ran longer than its {payload:g} s limit and was stopped"))
            else:
                self._break(payload)
                _settle(fut, broken_error(self.broken or "", payload))
        except BaseException as exc:  # the value itself could not be unpickled here
            _settle(fut, exc)

    def _failure(self, dfut: Any) -> BaseException:
        """The error for a Dask task that did not finish."""
        distributed = _distributed()
        if dfut.status == "error":
            try:
                exc = dfut.exception(timeout=5)
            except Exception as err:
                exc = err
            if isinstance(exc, distributed.KilledWorker):
                return WorkerDiedError(
                    f"the Dask worker running this task ({exc.last_worker.address}) died before the task "
                    "finished; ferropool does not let Dask run it again. Resubmit it if it is safe to run again."
                )
            return exc if isinstance(exc, BaseException) else BrokenProcessPool(repr(exc))
        return BrokenProcessPool(
            f"the Dask cluster lost this task (status {dfut.status!r}): the client was closed or lost its scheduler"
        )

    def _break(self, cause: bytes) -> None:
        with self._lock:
            if self.broken is not None:
                return
            self.broken = "A worker's initializer failed: the pool on the Dask cluster cannot run tasks"
            self._broken_cause = cause
            queued = list(self._queue)
            self._queue.clear()
        for fut, *_ in queued:
            with contextlib.suppress(RuntimeError):  # cancelled already
                if fut.set_running_or_notify_cancel():
                    _settle(fut, broken_error(self.broken, cause))

    def _forward(self, output: list[tuple[str, str]], records: list[dict[str, Any]]) -> None:
        for stream_name, text in output:
            stream = sys.stdout if stream_name == "stdout" else sys.stderr
            stream.write(text)
        if output:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
        for data in records:
            record = logging.makeLogRecord(data)
            logging.getLogger(record.name).handle(record)

    # -- ending -----------------------------------------------------------------------------

    def shutdown(self, cancel_pending: bool) -> None:
        """Stops accepting work; queued work is sent (or cancelled), then the client closes."""
        flush_all(self)
        with self._lock:
            self.closed = True
            queued = list(self._queue) if cancel_pending else []
            self._lock.notify_all()
        for fut, *_ in queued:
            fut.cancel()  # skipped when its turn comes
        self._schedule_send()  # sends what is left, or drops the cancelled: the results thread waits for it

    def terminate(self) -> None:
        """Cancels queued work and fails the work Dask has (its threads finish their calls)."""
        with self._lock:
            self.closed = True
            queued = list(self._queue)
            self._queue.clear()
            sent = list(self._sent.values())
            self._sent.clear()
            self._lock.notify_all()
        for fut, *_ in queued:
            fut.cancel()
        if sent:
            try:
                self.client.cancel([dfut for _, dfut in sent], force=True)
            except Exception:
                pass
        for running, _ in sent:
            _settle(running, BrokenProcessPool("the pool was terminated while this task ran on the Dask cluster"))

    def join(self, timeout: float | None = None) -> bool:
        """Waits until every task has finished and the client is closed."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _finish(self) -> None:
        _live.discard(self)
        if self._own_client:
            try:
                self.client.close()
            except Exception:
                pass


class _ClusterFuture(Future[Any]):
    """A cluster task's future: ``cancel()`` of a queued task tells its waiters at once.

    ``kill()`` stops a running one. (``wait()`` and ``as_completed()`` learn of a cancellation only from
    ``set_running_or_notify_cancel``, which an executor calls when it dequeues the task.)
    """

    __slots__ = ("_backend", "_key")

    def __init__(self, backend: ClusterBackend) -> None:
        super().__init__()
        self._backend = backend
        self._key: str | None = None  # its Dask key, once it is being sent

    def kill(self) -> bool:
        """Stops the call even if it is already running on the cluster.

        A queued call is cancelled as by ``cancel()``. A running call is stopped in its Dask
        worker as a time limit stops it (see ``_worker/cluster.py``): the worker's thread is
        free again once the call is back in Python code. The future ends cancelled.

        Returns:
            ``True`` if the future is now cancelled; ``False`` if the call had already finished.
        """
        if self.cancel():
            return True
        key = self._key
        if key is None or self.done() or not self._backend.stop(key):
            return self.cancelled()
        self._stopped()
        return True

    def cancel(self) -> bool:
        """Cancels the call if it has not been sent to the cluster yet."""
        if not super().cancel():
            return False
        with self._condition:
            if self._state == "CANCELLED":
                self.set_running_or_notify_cancel()
        return True


def _watchable() -> bool:
    """Whether Dask's futures have the state ``_watch`` waits on (a private attribute)."""
    state = getattr(_distributed().client, "FutureState", None)
    return callable(getattr(state, "wait", None))


def _gather_one(dfut: Any) -> Any:
    try:
        return dfut.result()
    except BaseException as exc:
        return exc


def _settle(fut: Future[Any], exc: BaseException | None, value: Any = None) -> None:
    try:
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)
    except InvalidStateError:
        pass


def _at_exit(interrupted: bool) -> None:
    # as a local pool at exit: queued work runs (unless the program dies of Ctrl-C), then the
    # pools end; before the ``atexit`` callbacks, among them Dask's, which close every client
    backends = list(_live)
    for backend in backends:
        backend.shutdown(cancel_pending=interrupted)
    for backend in backends:
        backend.join()


lifecycle.finish_at_exit(_at_exit)
