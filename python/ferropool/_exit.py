"""Interpreter exit: finish every pool before the interpreter finalizes.

Registered with ``threading._register_atexit``, the hook ``concurrent.futures`` uses, which runs
before ``atexit`` callbacks and before finalization: the pools' threads must be gone before the
interpreter they attach to is.
"""

from __future__ import annotations

import threading

from . import _core

shutting_down = False


def _python_exit() -> None:
    global shutting_down
    shutting_down = True
    _core.shutdown_all()


threading._register_atexit(_python_exit)  # type: ignore[attr-defined]
