"""This process's name and key, as ``current_process()`` gives them: ferropool's and the stdlib's.

A pool worker calls itself ``PoolWorker-<n>``, a ``Process`` child takes its object's name.
Whoever names the process calls ``rename``; ``process.py`` listens (``on_rename``), so neither
side reaches into the other's module. A spawned pool worker takes its parent's ``authkey``
(``adopt_authkey``) the same way, so proxies and pickled connections authenticate there.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable

#: The name given by ``rename``; ``None`` in a main program.
name: str | None = None
#: The key given by ``adopt_authkey``; ``None`` in a main program (it makes its own).
authkey: bytes | None = None
_listeners: list[Callable[[str], None]] = []
_key_listeners: list[Callable[[bytes], None]] = []


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


def on_authkey(listener: Callable[[bytes], None]) -> None:
    """Calls ``listener(key)`` at each later ``adopt_authkey``."""
    _key_listeners.append(listener)


def adopt_authkey(key: bytes) -> None:
    """Makes ``key`` what ``current_process().authkey`` gives, ferropool's and the stdlib's.

    A spawned pool worker starts with a random key of its own; the stdlib gives a spawned child
    its parent's, and a manager's proxies in that worker need it.
    """
    global authkey
    authkey = bytes(key)
    for listener in _key_listeners:
        listener(authkey)
    import multiprocessing.process

    multiprocessing.process.current_process().authkey = authkey
