"""Interpreter exit and fork: every hook ferropool registers with the interpreter, in one place.

Other modules never call ``os.register_at_fork``, ``atexit.register`` or
``threading._register_atexit`` themselves; they hand their step to this module, which keeps
the order explicit.

**Exit.** One hook, registered with ``threading._register_atexit`` (the hook
``concurrent.futures`` uses, which runs before ``atexit`` callbacks and before finalization: the
pools' threads must be gone before the interpreter they attach to is). Its steps, in order:

1. ``flush_at_exit`` steps: maps nobody read submit what they still hold back, so they run
   every item as the stdlib's do (skipped when the program dies of Ctrl-C);
2. ``shutting_down`` becomes true: no pool takes new work;
3. ``finish_at_exit`` steps, told whether the program dies of Ctrl-C: ``Process`` children
   are joined (daemonic ones terminated; every one when interrupted);
4. every pool shuts down (``_core.shutdown_all``; terminated when interrupted, or on a second
   Ctrl-C);
5. ``deliver_at_exit`` steps, told whether the program dies of Ctrl-C: what the pools' workers
   printed is written (their output threads are daemon threads, which finalization would stop
   mid-delivery).

Then, among the ``atexit`` callbacks in their usual last-registered-first order (from where the
first step was registered), the ``after_exit`` steps: queue backlogs written to their rings, as
the stdlib joins its feeders. A ``Process`` child forked from the fork server drops the
``atexit`` callbacks it inherited but keeps these (``forget_inherited_atexit``).

**Fork.** One ``os.register_at_fork(after_in_child=...)`` hook: in a child of ``os.fork()``
the parent's pools are marked unusable first (``_core.after_fork_in_child``), then each
``after_fork_in_child`` step runs in the order registered (the fork server connection, output
collectors, ``Process`` children, a worker's output socket). The Rust side's own
``pthread_atfork`` handler (``src/sync/mod.rs``) covers cross-process locks below Python.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading

from .. import _core

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable

#: True once the interpreter is exiting: pools refuse new work.
shutting_down = False

_flush_steps: list[Callable[[], object]] = []
_finish_steps: list[Callable[[bool], object]] = []
_fork_steps: list[Callable[[], object]] = [_core.after_fork_in_child]
_after_exit_steps: list[Callable[[], object]] = []
_deliver_steps: list[Callable[[bool], object]] = []


def flush_at_exit(step: Callable[[], object]) -> None:
    """Runs ``step`` first at exit, unless the program dies of Ctrl-C (step 1)."""
    _flush_steps.append(step)


def finish_at_exit(step: Callable[[bool], object], first: bool = False) -> None:
    """Runs ``step(interrupted)`` at exit, before the pools shut down (step 3).

    ``first``: before the steps already registered (a manager's server must be told to stop
    before the ``Process`` children, the server among them, are joined).
    """
    if first:
        _finish_steps.insert(0, step)
    else:
        _finish_steps.append(step)


def deliver_at_exit(step: Callable[[bool], object]) -> None:
    """Runs ``step(interrupted)`` at exit once every pool has shut down (step 5)."""
    _deliver_steps.append(step)


def after_exit(step: Callable[[], object]) -> None:
    """Runs ``step`` among the ``atexit`` callbacks, after every pool has shut down."""
    if not _after_exit_steps:
        atexit.register(_run_after_exit)
    _after_exit_steps.append(step)


def _run_after_exit() -> None:
    for step in _after_exit_steps:
        step()


def forget_inherited_atexit() -> None:
    """In a ``Process`` child forked from the fork server, before its target runs.

    The parent's ``atexit`` callbacks came with the fork and are not the child's; ferropool's
    own ``after_exit`` steps stay, and what the target registers runs at its end, as in a
    spawned child (and in the stdlib's forked children since 3.13).
    """
    atexit._clear()
    if _after_exit_steps:
        atexit.register(_run_after_exit)


def run_atexit_in_forked_child() -> None:
    """At the end of such a child, which leaves with ``os._exit``: runs its ``atexit`` callbacks."""
    atexit._run_exitfuncs()


def after_fork_in_child(step: Callable[[], object]) -> None:
    """Runs ``step`` in the child of each ``os.fork()`` from now on."""
    _fork_steps.append(step)


def _dying_of_interrupt() -> bool:
    """Whether the program is ending because of an uncaught ``KeyboardInterrupt``."""
    last = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    return isinstance(last, KeyboardInterrupt)


def _python_exit() -> None:
    """Finishes every child process and every pool, as the stdlib does at exit.

    A program ending with Ctrl-C does not wait for its work: its pools are terminated. A second
    Ctrl-C during the wait terminates them too. Either way no pool thread outlives this call.
    """
    global shutting_down
    interrupted = _dying_of_interrupt()
    if not interrupted:
        for flush in _flush_steps:
            flush()
    shutting_down = True
    try:
        _shut_down_pools(interrupted)
    finally:
        for deliver in _deliver_steps:
            deliver(interrupted)


def _shut_down_pools(interrupted: bool) -> None:
    try:
        for finish in _finish_steps:
            finish(interrupted)
    except KeyboardInterrupt:
        _core.shutdown_all(terminate=True)
        raise
    if interrupted:
        _core.shutdown_all(terminate=True)
        return
    try:
        _core.shutdown_all()
    except KeyboardInterrupt:
        _core.shutdown_all(terminate=True)
        raise


def _after_fork_in_child() -> None:
    for step in _fork_steps:
        step()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_after_fork_in_child)
