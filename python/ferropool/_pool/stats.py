"""``stats()`` of every pool and executor: what the workers did, and what is waiting.

The counters live in the Rust core, where the engine (process pools) or each thread (thread
pools) updates them in passing: a result adds one task and its run time to its worker. Nothing
is measured per submit, so they are always on; ``stats()`` takes a snapshot under the engine's
lock and costs about as much as a ``dict`` of a few entries per worker.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["ExitStats", "PoolStats", "WorkerStats", "snapshot"]


@dataclasses.dataclass(frozen=True)
class WorkerStats:
    """One worker (a process, or a thread of a thread pool) as ``stats()`` saw it.

    Attributes:
        name: ``"pid <n>"`` for a process, the thread's name for a thread.
        pid: the worker process's id; ``None`` for a thread.
        tasks_done: calls (or chunks of a map, or batches of an imap) it finished.
        busy_seconds: time spent running them (measured in the worker, pickling included).
        idle_seconds: the rest of its life so far.
        in_flight: tasks it holds now, running or queued behind the running one (processes).
        ready: it has started and run its initializer (processes); alive (threads).
    """

    name: str
    pid: int | None
    tasks_done: int
    busy_seconds: float
    idle_seconds: float
    in_flight: int
    ready: bool


@dataclasses.dataclass(frozen=True)
class ExitStats:
    """A worker process that ended.

    Attributes:
        pid: its process id.
        exitcode: its exit code, if it exited; ``signal``: the signal that killed it, if one did.
        cause: why: ``"shutdown"``, ``"max_tasks_per_child"``, ``"max_memory_per_child"``,
            ``"timeout"``, ``"killed"`` (``Future.kill()``), ``"terminated"`` (``terminate()`` or
            a broken pool), ``"initializer_failed"``, or ``"died"`` (a crash nobody asked for).
        tasks_done: the tasks it finished.
    """

    pid: int
    exitcode: int | None
    signal: int | None
    cause: str
    tasks_done: int


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool.

    Attributes:
        workers: the live workers.
        queued: tasks submitted that no worker has yet (the queue depth).
        in_flight: tasks workers hold (process pools) or are running (thread pools).
        tasks_done: tasks finished since the pool started, by live and ended workers.
        workers_started: worker processes started, replacements included (0 for threads).
        respawns: replacements started after a worker ended while the pool was running.
        exits_by_cause: ended worker processes counted by cause (see ``ExitStats.cause``).
        exits: the most recent ended workers (up to 64), oldest first.
    """

    workers: tuple[WorkerStats, ...]
    queued: int
    in_flight: int
    tasks_done: int
    workers_started: int
    respawns: int
    exits_by_cause: dict[str, int]
    exits: tuple[ExitStats, ...]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as plain dicts and lists (for logging or JSON)."""
        return dataclasses.asdict(self)


def snapshot(engine: Any, workers: int) -> PoolStats:
    """The stats of a ``_core.ProcessEngine`` or ``_core.ThreadEngine`` of ``workers`` workers."""
    raw = engine.stats()
    rows = tuple(
        WorkerStats(
            name=w["name"] if "name" in w else f"pid {w['pid']}",
            pid=w.get("pid"),
            tasks_done=w["tasks_done"],
            busy_seconds=w["busy_seconds"],
            idle_seconds=w["idle_seconds"],
            in_flight=w.get("in_flight", 0),
            ready=w["ready"] if "ready" in w else w["alive"],
        )
        for w in raw["workers"]
    )
    exits = tuple(ExitStats(**e) for e in raw.get("exits", ()))
    started = raw.get("workers_started", 0)
    return PoolStats(
        workers=rows,
        queued=raw["queued"],
        in_flight=raw["in_flight"],
        tasks_done=raw["tasks_done"],
        workers_started=started,
        respawns=max(0, started - workers),
        exits_by_cause=dict(raw.get("exits_by_cause", {})),
        exits=exits,
    )
