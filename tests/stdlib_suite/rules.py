"""Why a test of CPython's multiprocessing suite is not expected to pass with ferropool.

Each rule is ``(glob over "Class.test_method", kind, reason)``; the first match wins. Kinds:

* ``not-applicable``: the test inspects CPython's private state or machinery that ferropool does
  not have by design (``Pool._pool``, ``multiprocessing.util``, the stdlib's fork server or
  resource tracker); it is not run.
* ``pending-manager``: the test needs ``Manager``, ``connection.Listener``/``Client`` or
  connection pickling, which the Manager work brings; it runs, and is reported when it passes.
* ``difference``: ferropool behaves differently on purpose; docs/migration.md says why.

A failing test no rule covers is listed in the expected file as ``fail: <cause>``.
"""

from __future__ import annotations

import fnmatch

RULES: list[tuple[str, str, str]] = [
    # --- Manager, Listener/Client, connection pickling
    ("WithManager*", "pending-manager", "Manager() is not in ferropool yet"),
    ("TestSyncManagerTypes.*", "pending-manager", "Manager() is not in ferropool yet"),
]


def rule_for(test_id: str) -> tuple[str, str] | None:
    """``(kind, reason)`` of the first rule matching ``test_id``, or ``None``."""
    for pattern, kind, reason in RULES:
        if fnmatch.fnmatchcase(test_id, pattern):
            return kind, reason
    return None
