"""Type stubs for ``ferropool._core``, the Rust core. User-facing documentation lives in the
Python facade (``futures.py``); these are the native building blocks it uses."""

from collections.abc import Callable, Sequence
from typing import Any, final

__version__: str
__all__ = [
    "ProcessEngine",
    "TaskHandle",
    "ThreadEngine",
    "__version__",
    "after_fork_in_child",
    "any_readable",
    "cpu_count",
    "die_with_parent",
    "shutdown_all",
    "worker_main",
]

def cpu_count() -> int:
    """CPUs this process may use (affinity, cgroup quota, ``FERROPOOL_CPU_COUNT``); at least 1."""

def shutdown_all(timeout: float | None = None, terminate: bool = False) -> bool:
    """Shuts down (or terminates) every pool still running and waits; ``False`` on timeout."""

def any_readable(fds: list[int]) -> bool:
    """Whether any descriptor is readable now; never waits, keeps the GIL."""

def after_fork_in_child() -> None:
    """Marks every pool as the parent's (called in the child of ``os.fork()``)."""

def worker_main(handler: Any, parent_pid: int) -> int:
    """The worker loop; returns the process exit code."""

def die_with_parent(parent_pid: int) -> bool:
    """Sets the parent-death signal; ``False`` if the parent is already gone."""

@final
class TaskHandle:
    """A task's atomic state, shared with the scheduler."""

    def cancel(self) -> bool: ...
    def running(self) -> bool: ...
    def stop(self) -> bool: ...
    @property
    def cancel_stops(self) -> bool: ...

@final
class ProcessEngine:
    """A process pool's engine: scheduler, workers and completion thread."""

    def __new__(
        cls,
        argv: Sequence[str],
        workers: int,
        on_results: Callable[[list[tuple[int, int, Any]]], object],
        init: tuple[int, int, bytes] | None = None,
        max_tasks_per_child: int | None = None,
        forkserver_fd: int | None = None,
        max_memory_per_child: int | None = None,
        cancel_running: bool = False,
    ) -> ProcessEngine: ...
    def submit(
        self, id: int, fn_bytes: bytes, args: bytes, flags: int, future: Any, timeout: float | None = None
    ) -> None: ...
    def shutdown(self, cancel_pending: bool = False) -> None: ...
    def terminate(self) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def pids(self) -> list[int]: ...
    @property
    def broken(self) -> str | None: ...

@final
class ThreadEngine:
    """A thread pool of Rust-owned threads."""

    def __new__(
        cls,
        max_workers: int,
        name_prefix: str,
        hooks: Any,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] | None = None,
    ) -> ThreadEngine: ...
    def submit(
        self, future: Any, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> None: ...
    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...
    def join(self, timeout: float | None = None) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    @property
    def threads(self) -> int: ...
