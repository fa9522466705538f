"""Which logging set-up a new child inherits.

That is ferropool's logger, once this process has made it, and the handler ``log_to_stderr()``
gave it.

``_pool/logs`` (the logger, ``log_to_stderr``) and a child's start (``process``) record here what
they set up; ``Process`` reads it when it starts a child. It imports nothing, so ``process``
learns the set-up without importing the pools' logging machinery or ``logging`` itself, and
neither side imports the other.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    import logging

#: ``logging.getLogger("ferropool")``, once ferropool has made it in this process.
logger: logging.Logger | None = None
#: The handler ``log_to_stderr()`` added to ``logger`` (it may have been removed since).
stderr_handler: logging.Handler | None = None


def for_child() -> tuple[int | None, bool]:
    """The logger's effective level and whether it writes to stderr, for a new child.

    As the stdlib passes them: only once the logger exists (``None`` and ``False`` before).
    """
    if logger is None:
        return None, False
    return logger.getEffectiveLevel(), stderr_handler is not None and stderr_handler in logger.handlers
