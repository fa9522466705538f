"""Hooks the Rust thread pool calls on its threads (see ``src/threads.rs``)."""

from __future__ import annotations

import threading
from concurrent.futures import _base


def thread_started(name: str) -> None:
    """Gives the thread the name ``threading.current_thread()`` reports."""
    threading.current_thread().name = name


def thread_finished() -> None:
    """Forgets the thread's ``threading`` record, which a foreign thread never removes itself."""
    lock = getattr(threading, "_active_limbo_lock", None)
    active = getattr(threading, "_active", None)
    if lock is not None and active is not None:
        with lock:
            active.pop(threading.get_ident(), None)


def initializer_failed(exc: BaseException) -> None:
    """Logs a failed initializer the way ``concurrent.futures`` does."""
    _base.LOGGER.critical("Exception in initializer:", exc_info=exc)
