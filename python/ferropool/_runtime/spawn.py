"""Fresh interpreters' command lines (the start method is decided in ``start_methods.py``).

The command lines are those of a pool worker and of a ``Process``'s child.
"""

from __future__ import annotations

import os
import sys

#: the interpreter fresh children run, when ``set_executable()`` chose one
_executable: str | None = None


def set_executable(executable: str | os.PathLike[str]) -> None:
    """Sets the Python interpreter that fresh children run (``ferropool.set_executable``).

    Raises:
        TypeError: ``executable`` is not a path.
    """
    global _executable
    _executable = os.fsdecode(executable)


def interpreter_argv(code: str) -> list[str]:
    """``python [flags] -S -c <code>``, where ``code`` runs with the parent's ``sys.path``.

    Interpreter flags (``-X dev``, ``-W``, ``-O``...) are passed on as multiprocessing's spawn does.
    ``-S`` skips ``site``, whose work the copied ``sys.path`` already holds.
    """
    executable = _executable or sys.executable
    if not executable:
        raise RuntimeError("sys.executable is not set; ferropool needs a Python executable to start processes")
    import subprocess  # here: a start by the fork server needs no command line

    flags = [f for f in subprocess._args_from_interpreter_flags() if f != "-S"]  # type: ignore[attr-defined]
    return [executable, *flags, "-S", "-c", f"import sys; sys.path[:] = {sys.path!r}; {code}"]


def worker_argv() -> list[str]:
    """The command line of a pool worker."""
    return interpreter_argv(f"from ferropool._worker.main import main; main({os.getpid()})")


def process_argv(payload_fd: int) -> list[str]:
    """The command line of a ``Process``'s child, which reads its process object from ``payload_fd``."""
    return interpreter_argv(f"from ferropool.process import _child_main; _child_main({payload_fd})")
