"""This process's name, as ``current_process().name`` gives it: ferropool's and the stdlib's.

A pool worker calls itself ``PoolWorker-<n>``, a ``Process`` child takes its object's name.
Whoever names the process calls ``rename``; ``process.py`` listens (``on_rename``), so neither
side reaches into the other's module.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable

#: The name given by ``rename``; ``None`` in a main program.
name: str | None = None
_listeners: list[Callable[[str], None]] = []


def on_rename(listener: Callable[[str], None]) -> None:
    """Calls ``listener(new_name)`` at each later ``rename``."""
    _listeners.append(listener)


def rename(new_name: str) -> None:
    """Makes ``new_name`` what ``current_process().name`` gives, ferropool's and the stdlib's.

    ``logging`` labels each record (``processName``) with the stdlib's
    ``multiprocessing.current_process().name``, and only if ``multiprocessing`` is loaded, so
    it is loaded here if need be (the fork server has it loaded already).
    """
    global name
    name = new_name
    for listener in _listeners:
        listener(new_name)
    import multiprocessing.process

    multiprocessing.process.current_process().name = new_name
