"""What a process pool sets up in each worker before its first task, around the user's initializer.

``Pool`` and ``ProcessPoolExecutor`` turn their ``worker_logs``, ``worker_output`` and
``limit_blas_threads`` arguments into a :class:`WorkerSetup`. The backend hands it the user's
initializer and gets back ``_worker/start.start_worker`` bound to this pool's settings, which
each worker runs at start-up: BLAS thread variables, output forwarding to the pool's output
thread, then the user's initializer, whose value ``ferropool.worker_state()`` returns.

This module runs in the parent only; the worker's side is ``_worker/start.py``.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

from .._runtime import env
from .._worker.start import WorkerConfig, start_worker
from . import logs


class WorkerSetup:
    """A process pool's per-worker set-up, and the parent's side of it (the output thread).

    Args:
        workers: the pool's size (for the BLAS thread limit).
        worker_logs: see ``Pool``: ``True``, ``False``/``None``, or a level.
        worker_output: see ``Pool``: ``True``, ``False``/``None``, or a prefix template.
        limit_blas_threads: set the BLAS/OpenMP variables in each worker.
        authkey: the key each worker takes as ``current_process().authkey``.

    Raises:
        ValueError, TypeError: an argument is not one of the accepted values.
    """

    def __init__(
        self,
        workers: int,
        worker_logs: object,
        worker_output: object,
        limit_blas_threads: bool,
        authkey: bytes | None = None,
    ) -> None:
        self.authkey = authkey
        self.level = logs.worker_logs_level(worker_logs)
        self.prefix = logs.output_prefix(worker_output)
        self.env = env.blas_env(workers) if limit_blas_threads else {}
        self.collector: logs.Collector | None = None
        # how the output thread learns how a worker ended; a list the thread holds, not this object
        self._exit_lookup: list[Callable[[int], Any]] = [lambda pid: None]

    def wrap(
        self, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]
    ) -> tuple[Callable[..., object] | None, tuple[Any, ...]]:
        """The initializer (and its arguments) the backend passes to the engine."""
        if self.level is None and self.prefix is None and not self.env and self.authkey is None:
            if initializer is None:
                return None, initargs
            return functools.partial(start_worker, WorkerConfig({}, None, False), initializer), initargs
        if self.level is not None or self.prefix is not None:
            lookup = self._exit_lookup
            self.collector = logs.Collector(self.prefix or None, lambda pid: lookup[0](pid))
            # this object lives as long as its pool (or dies at once if making the pool failed):
            # then the output thread stops once the engine has finished
            weakref.finalize(self, self.collector.close)
        config = WorkerConfig(self.env, self.level, self.prefix is not None, self.authkey)
        return functools.partial(start_worker, config, initializer), initargs

    def output_fd(self) -> int | None:
        """The descriptor the engine hands each new worker's output socket to (``logs.py``).

        The caller owns it from here on; ``None`` when the pool forwards no output.
        """
        return None if self.collector is None else self.collector.engine_end()

    def results_hook(self, deliver: Callable[[Any], None]) -> Callable[[Any], None]:
        """``deliver``, preceded by writing the output that arrived before these results."""
        collector = self.collector
        if collector is None:
            return deliver

        def deliver_after_output(batch: Any) -> None:
            collector.drain()
            deliver(batch)

        return deliver_after_output

    def attach(self, backend: Any) -> None:
        """Starts the output thread for ``backend``'s pool (now that its fork server exists)."""
        logs.get_logger().debug("pool started: %d worker processes", backend.workers)
        if self.collector is None:
            return
        pool = weakref.ref(backend)

        def exit_info(pid: int) -> tuple[str, int | None, int | None] | None:
            live = pool()
            if live is None:
                return None
            for e in reversed(live.engine.stats()["exits"]):
                if e["pid"] == pid:
                    return e["cause"], e["exitcode"], e["signal"]
            return None

        self._exit_lookup[0] = exit_info
        self.collector.start()

    def close(self) -> None:
        """The pool has finished: deliver the last output, then stop the output thread."""
        if self.collector is not None:
            self.collector.close(wait=5.0)
            logs.get_logger().debug("pool shut down")
