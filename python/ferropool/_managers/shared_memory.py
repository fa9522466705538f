"""``SharedMemoryManager``: shared-memory blocks released when the manager shuts down.

The blocks are ``ferropool.shared_memory`` objects made in the calling process; the manager's
server only keeps their names and unlinks every one still there when it stops, whether the
stop is a ``shutdown()``, the end of a ``with`` block or the death of the process that
started it.
"""

from __future__ import annotations

from ..managers import BaseManager

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from ..shared_memory import ShareableList, SharedMemory

__all__ = ["SharedMemoryManager"]


class _SegmentTracker:
    """The server-side record of the blocks a ``SharedMemoryManager`` made."""

    def __init__(self) -> None:
        from ..process import current_process

        self._names: list[str] = []
        server = getattr(current_process(), "_manager_server", None)
        if server is not None:
            server.add_cleanup(self.unlink_all)

    def track_segment(self, name: str) -> None:
        """Remembers block ``name``, to unlink it at shutdown."""
        self._names.append(name)

    def release_segment(self, name: str) -> None:
        """Unlinks block ``name`` now and forgets it."""
        if name in self._names:
            self._names.remove(name)
        _unlink(name)

    def list_segments(self) -> list[str]:
        """The names of the blocks still tracked."""
        return list(self._names)

    def unlink_all(self) -> None:
        """Unlinks every tracked block (the server's stop runs this)."""
        names, self._names = self._names, []
        for name in reversed(names):
            _unlink(name)


def _unlink(name: str) -> None:
    from ..shared_memory import SharedMemory

    try:
        block = SharedMemory(name)
    except FileNotFoundError:
        return
    try:
        block.unlink()
    finally:
        block.close()


_TRACKER = "_SegmentTracker"


class SharedMemoryManager(BaseManager):
    """A manager whose shared-memory blocks are unlinked when it shuts down.

    ``SharedMemory(size)`` and ``ShareableList(sequence)`` make blocks in the calling process, as
    ``multiprocessing.managers.SharedMemoryManager``'s do.
    """

    def start(self, *args: Any, **kwargs: Any) -> None:
        """Starts the server process and the record of blocks in it."""
        super().start(*args, **kwargs)
        self._tracker = self._make_tracker()

    def connect(self) -> None:
        """Connects to a running ``SharedMemoryManager`` server."""
        super().connect()
        self._tracker = self._make_tracker()

    def _started_tracker(self) -> Any:
        tracker = getattr(self, "_tracker", None)
        if tracker is None:
            raise ValueError("the SharedMemoryManager is not started: call start() or use it in a with block")
        return tracker

    def _make_tracker(self) -> Any:
        token, exposed = self._create(_TRACKER)
        from ..managers import AutoProxy

        proxy = AutoProxy(token, self._serializer, manager=self, authkey=self._authkey, exposed=exposed, incref=False)
        proxy._adopt()
        return proxy

    def SharedMemory(self, size: int) -> SharedMemory:
        """A new shared-memory block of ``size`` bytes, unlinked when the manager shuts down."""
        from ..shared_memory import SharedMemory

        tracker = self._started_tracker()
        block = SharedMemory(None, create=True, size=size)
        try:
            tracker.track_segment(block.name)
        except BaseException:
            block.unlink()
            block.close()
            raise
        return block

    def ShareableList(self, sequence: Iterable[Any] | None) -> ShareableList:
        """A new ``ShareableList`` of ``sequence``, unlinked when the manager shuts down."""
        from ..shared_memory import ShareableList

        tracker = self._started_tracker()
        shared = ShareableList(sequence)
        try:
            tracker.track_segment(shared.shm.name)
        except BaseException:
            shared.shm.unlink()
            shared.shm.close()
            raise
        return shared


SharedMemoryManager.register(_TRACKER, _SegmentTracker, create_method=False)
