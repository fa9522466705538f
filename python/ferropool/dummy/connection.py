"""``multiprocessing.dummy.connection`` for ferropool.dummy: Listener, Client and Pipe between threads.

The thread world's connections are queues in one process, with nothing to authenticate; they
are the stdlib's own, as the rest of ``ferropool.dummy``'s thread-side objects are.
"""

from __future__ import annotations

from multiprocessing.dummy.connection import Client, Connection, Listener, Pipe, families

__all__ = ["Client", "Connection", "Listener", "Pipe", "families"]
