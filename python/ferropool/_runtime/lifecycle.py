"""Interpreter exit and fork: finish every child process and pool before the interpreter finalizes.

Registered with ``threading._register_atexit``, the hook ``concurrent.futures`` uses, which runs
before ``atexit`` callbacks and before finalization: the pools' threads must be gone before the
interpreter they attach to is.
"""

from __future__ import annotations

import os
import sys
import threading

from .. import _core

shutting_down = False


def _dying_of_interrupt() -> bool:
    """Whether the program is ending because of an uncaught ``KeyboardInterrupt``."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _python_exit() -> None:
    """Finishes every child process and every pool, as the stdlib does at exit.

    Daemonic ``Process`` children are terminated and the others joined
    (``process._finish_children``); queued pool work runs.

    A program ending with Ctrl-C does not wait for its work: its pools are terminated. A second
    Ctrl-C during the wait terminates them too. Either way no pool thread outlives this call.
    """
    global shutting_down
    batching = sys.modules.get("ferropool._pool.batching")  # importing anything now is too late
    if batching is not None and not _dying_of_interrupt():
        batching.flush_all()  # a map nobody read still runs every item, as the stdlib's does
    shutting_down = True
    # processes first, as multiprocessing does at exit: daemonic ones terminated, others joined
    processes = sys.modules.get("ferropool.process")
    if processes is not None:
        try:
            processes._finish_children(_dying_of_interrupt())
        except KeyboardInterrupt:
            _core.shutdown_all(terminate=True)
            raise
    if _dying_of_interrupt():
        _core.shutdown_all(terminate=True)
        return
    try:
        _core.shutdown_all()
    except KeyboardInterrupt:
        _core.shutdown_all(terminate=True)
        raise


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
# in a child of os.fork(), the parent's pools are not ours to use, wait for or shut down
os.register_at_fork(after_in_child=_core.after_fork_in_child)
