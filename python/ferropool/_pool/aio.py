"""asyncio on top of ferropool: ``await executor.run(fn, ...)`` and ``async for`` over ``imap``.

Nothing here blocks the event loop. A result that is already there is returned at once; a
result still on its way is awaited through a done-callback of the pool's future that wakes the
loop (``loop.call_soon_threadsafe``), so no thread sits blocked on the loop's behalf and a
cancelled ``async for`` leaves the iterator exactly where it was: no result is taken and lost.

Cancelling the asyncio task that awaits ``run()`` cancels the pool's future: a queued call never
runs, and with ``cancel_running=True`` (process pools) a running call is stopped too.

``asyncio`` is imported on first use, not with ferropool: most programs never need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import asyncio

    from ..pool import IMapIterator
    from .future import Future

T = TypeVar("T")


async def result(fut: Future[T]) -> T:
    """The future's value, awaited; cancelling the awaiting task cancels ``fut``."""
    import asyncio

    return await asyncio.wrap_future(fut)


def _waker(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> Any:
    """A callable for any thread that completes ``waiter`` on ``loop`` (once, if still pending)."""

    def wake_up() -> None:
        if not waiter.done():
            waiter.set_result(None)

    def from_any_thread(*_: object) -> None:
        try:
            loop.call_soon_threadsafe(wake_up)
        except RuntimeError:
            pass  # the loop was closed: nobody is waiting any more

    return from_any_thread


async def imap_next(it: IMapIterator[T]) -> T:
    """The next result of an ``imap``/``imap_unordered`` iterator, without blocking the loop.

    Raises:
        StopAsyncIteration: every result has been returned.
        Exception: whatever the call raised for this item.
    """
    import asyncio

    loop = asyncio.get_running_loop()
    not_ready = object()
    while True:
        try:
            got = it._take(0, not_ready)
        except StopIteration:
            raise StopAsyncIteration from None
        if got is not not_ready:
            return got
        waiter: asyncio.Future[None] = loop.create_future()
        wake = _waker(loop, waiter)
        if it._ordered:
            # results come in order: only the oldest task's future matters
            it._tasks[0][0].add_done_callback(wake)
        else:
            it._on_arrival = wake
            if it._done:  # arrived between the look above and the hook
                wake()
        try:
            await waiter
        finally:
            if not it._ordered:
                it._on_arrival = None
