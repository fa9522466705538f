"""Progress bars for the map methods and ``as_completed``: ``progress=True``.

A bar counts *items* as their results arrive, but it is advanced once per finished task (a
chunk of a ``Pool.map``, a batch of an ``imap``), from the done-callback of that task's future.
So a million no-op items cost a few hundred bar updates, not a million, and the caller's thread
does no bar work at all.

``progress`` accepts:

- ``False`` or ``None``: no bar;
- ``True``: a ``tqdm.auto`` bar (a terminal bar, or a widget in Jupyter) when tqdm is installed,
  else a plain text line on ``sys.stderr`` at most once a second, plus a final line;
- a ``dict``: options for the ``tqdm.auto.tqdm`` constructor (``desc``, ``unit``, ``file``...);
  without tqdm, the text line honours ``desc``, ``file``, ``mininterval`` and ``disable``;
- a bar object you made (a ``tqdm`` instance, or anything with ``update(n)``): it is advanced,
  and its ``total`` is filled in when it has none; it is refreshed but not closed at the end,
  since it is yours.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

ACCEPTED = "progress must be True/False, a dict of tqdm options, or a progress bar with an update(n) method (a tqdm)"


class TextBar:
    """The bar used without tqdm: one text line at most every ``mininterval`` seconds.

    Lines look like ``ferropool: 250/1000 items (25%) in 1.0 s, 249/s``; the last one is written
    when the work is done. The stream is looked up on each write (``sys.stderr`` by default), so
    pytest's capture and Jupyter's redirection see it.
    """

    def __init__(
        self,
        total: int | None = None,
        desc: str | None = None,
        file: Any = None,
        mininterval: float = 1.0,
        disable: bool = False,
    ) -> None:
        self.total = total
        self.n = 0
        self.desc = desc or "ferropool"
        self._file = file
        self._mininterval = mininterval
        self._disable = disable
        self._started = time.monotonic()
        self._last = self._started
        self._closed = False

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more items; writes a line if ``mininterval`` has passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self._mininterval:
            self._last = now
            self._write(now)

    def close(self) -> None:
        """Writes the final line (once)."""
        if not self._closed:
            self._closed = True
            self._write(time.monotonic())

    def _write(self, now: float) -> None:
        if self._disable:
            return
        elapsed = now - self._started
        count = f"{self.n}" if self.total is None else f"{self.n}/{self.total}"
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        rate = f", {self.n / elapsed:.0f}/s" if elapsed > 0 else ""
        stream = self._file if self._file is not None else sys.stderr
        try:
            stream.write(f"{self.desc}: {count} items{share} in {elapsed:.1f} s{rate}\n")
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass  # a closed or odd stream must not fail the work the bar reports on


_TEXT_OPTIONS = ("desc", "file", "mininterval", "disable")


def _new_bar(total: int | None, options: dict[str, Any]) -> tuple[Any, bool]:
    """A new bar and whether we own it (close it at the end)."""
    import importlib

    try:
        # tqdm.auto: a widget in Jupyter, a terminal bar elsewhere (and tqdm is an optional extra)
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return TextBar(total, **{k: v for k, v in options.items() if k in _TEXT_OPTIONS}), True
    return tqdm(total=total, **options), True


def check(progress: object) -> None:
    """Raises ``TypeError`` unless ``progress`` is a value the ``progress`` argument accepts."""
    if progress is None or isinstance(progress, (bool, dict)):
        return
    if callable(getattr(progress, "update", None)):
        return
    raise TypeError(f"{ACCEPTED}, not {type(progress).__name__!r}")


def length_hint(iterable: object) -> int | None:
    """``len(iterable)`` when it has one, else ``None`` (an iterator's length is not asked)."""
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class Tracker:
    """Advances one bar as the futures of a call finish, and closes it when all have.

    ``add(future, n)`` registers a task carrying ``n`` items; ``seal()`` says no more will be
    added. The bar closes when the tracker is sealed and every added future is done. Futures
    that end cancelled (an ``Executor.map`` abandoned early) do not advance the bar.
    """

    def __init__(self, bar: Any, owned: bool) -> None:
        self.bar = bar
        self._owned = owned
        self._lock = threading.Lock()
        self._pending = 0
        self._sealed = False
        self._closed = False

    def add(self, fut: Any, n: int) -> Any:
        """Registers ``fut`` (a task of ``n`` items); returns it."""
        with self._lock:
            self._pending += 1
        fut.add_done_callback(lambda f: self._done(f, n))
        return fut

    def _done(self, fut: Any, n: int) -> None:
        cancelled = fut.cancelled()
        with self._lock:
            self._pending -= 1
            close = self._sealed and self._pending == 0
        if not cancelled:
            try:
                self.bar.update(n)
            except Exception:
                pass  # a broken bar must not break the pool's result thread
        if close:
            self._close()

    def seal(self) -> None:
        """No more futures will be added; closes the bar now if all are done."""
        with self._lock:
            self._sealed = True
            close = self._pending == 0
        if close:
            self._close()

    def _close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._owned:
                self.bar.close()
            elif callable(getattr(self.bar, "refresh", None)):
                self.bar.refresh()
        except Exception:
            pass

    def submitter(self, submit: Callable[[T], Any], size: Callable[[T], int]) -> Callable[[T], Any]:
        """``submit`` whose futures complete only after the bar has counted them.

        The reader of an ``imap`` or ``Executor.map`` wakes up when a task's future completes,
        which is before that future's done-callbacks run; so each task gets a relay future that
        the bar's callback completes after ``update``. When iteration ends, the bar is final.
        """

        def tracked(arg: T) -> Any:
            return self._relay(submit(arg), size(arg))

        return tracked

    def _relay(self, inner: Any, n: int) -> Any:
        """A future that takes ``inner``'s outcome once the bar has counted its ``n`` items.

        Cancelling the relay cancels ``inner`` (an abandoned map cancels what it submitted).
        """
        from .future import Future

        outer: Future[Any] = Future()

        def cancel() -> bool:
            return bool(inner.cancel())

        def done(fut: Any) -> None:
            self._done(fut, n)
            if fut.cancelled():
                if Future.cancel(outer):
                    outer.set_running_or_notify_cancel()
            elif fut.exception() is not None:
                outer.set_exception(fut.exception())
            else:
                outer.set_result(fut.result())

        outer.cancel = cancel  # type: ignore[method-assign]
        with self._lock:
            self._pending += 1
        inner.add_done_callback(done)
        return outer

    def items(self, items: Iterable[T]) -> Iterator[T]:
        """``items``, sealing the tracker once they are exhausted."""
        yield from items
        self.seal()


def tracker(progress: object, total: int | None) -> Tracker | None:
    """The tracker for a call's ``progress`` argument, or ``None`` for no bar.

    Raises:
        TypeError: ``progress`` is not one of the accepted values (see the module docstring).
    """
    if progress is None or progress is False:
        return None
    check(progress)
    if progress is True:
        bar, owned = _new_bar(total, {})
    elif isinstance(progress, dict):
        options = dict(progress)
        total = options.pop("total", total)
        bar, owned = _new_bar(total, options)
    else:
        bar, owned = progress, False
        bar_any: Any = bar
        if total is not None and getattr(bar, "total", 0) is None:
            try:
                bar_any.total = total
            except AttributeError:
                pass
    return Tracker(bar, owned)


def iterate(futures: Iterable[T], progress: object, total: int | None) -> Iterator[T]:
    """``futures`` as ``as_completed`` yields them, advancing a bar by one for each."""
    track = tracker(progress, total)
    if track is None:
        yield from futures
        return
    try:
        for fut in futures:
            track.bar.update(1)
            yield fut
    finally:
        track.seal()


def track_all(progress: object, chunks: list[Any], total: int, step: int) -> None:
    """Puts a bar on the futures of ``Pool.map``: ``total`` items in chunks of ``step``.

    Called before the ``MapResult`` is made, so the bar's callbacks run first and the bar is
    complete (and closed) by the time ``map`` returns.
    """
    track = tracker(progress, total)
    if track is None:
        return
    for i, fut in enumerate(chunks):
        track.add(fut, min(step, total - i * step))
    track.seal()


def shortest(iterables: Iterable[object]) -> int | None:
    """The length of the shortest of ``iterables`` (``zip``'s length), if all have one."""
    lengths = [length_hint(it) for it in iterables]
    if not lengths or None in lengths:
        return None
    return min(n for n in lengths if n is not None)
