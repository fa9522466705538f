"""Task functions for tests/test_cluster.py that the shared ``_tasks`` module lacks."""

from __future__ import annotations

import os

from tests import _tasks


def start_then_wait(log, gate, beacon):
    """Appends this process's pid to ``log`` (one line per start), then waits at ``gate``."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return _tasks.wait_gate(gate, None, beacon)


def print_and_return_pid(text):
    print(text)
    return os.getpid()
