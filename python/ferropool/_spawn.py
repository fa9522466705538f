"""The command line that starts a worker process."""

from __future__ import annotations

import os
import subprocess
import sys


def worker_argv() -> list[str]:
    """``python [flags] -S -c <bootstrap>`` with the parent's ``sys.path``.

    Interpreter flags (``-X dev``, ``-W``, ``-O``...) are passed on as multiprocessing's spawn does.
    ``-S`` skips ``site``, whose work the copied ``sys.path`` already holds.
    """
    if not sys.executable:
        raise RuntimeError("sys.executable is not set; ferropool needs a Python executable to start workers")
    flags = [f for f in subprocess._args_from_interpreter_flags() if f != "-S"]  # type: ignore[attr-defined]
    code = f"import sys; sys.path[:] = {sys.path!r}; from ferropool._worker import main; main({os.getpid()})"
    return [sys.executable, *flags, "-S", "-c", code]
