"""What every benchmark script does with its finished report: the file ``--out`` names, and stdout.

A module of its own, beside ``_bench_tasks``, so that the scripts import it by name the same way.
"""

from __future__ import annotations

import sys
from pathlib import Path


def publish(text: str, out: str | None) -> None:
    """Writes ``text``, ending in one newline, to the file ``out`` (when given) and to stdout."""
    text = text.rstrip("\n") + "\n"
    if out:
        Path(out).write_text(text, encoding="utf-8")
    sys.stdout.write(text)
