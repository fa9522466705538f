"""Large buffers through shared memory instead of the worker socket.

Pickle protocol 5 leaves big buffers (``bytearray``, numpy arrays, large ``bytes`` wrapped in
``LargeBytes``) out of the pickled bytes; ``serialize.dumps`` collects them. Each goes into its
own memfd segment: written once by the sender, its descriptor sent with the frame
(``SCM_RIGHTS``, ``src/fdpass.rs``), mapped by the receiver. Nothing has a name, so nothing can be
left behind: a segment lives while a descriptor or a mapping of it does, and the kernel drops
both with a process that dies, also while the descriptor is still in flight in the socket.

The receiver's objects are ordinary and writable: numpy arrays are built straight on the
mapping (no copy; writing to one changes nobody else's data, as the sender's descriptor is gone
once the call or result is delivered), ``bytes`` and ``bytearray`` are copied out of it.
"""

from __future__ import annotations

import mmap
import os

from .. import _core
from .serialize import PLAIN_TYPES, PROTOCOL, dump_outcomes, dumps, loads, plain_dumps, wrap_large

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def pack(obj: Any) -> tuple[bytes, list[int] | None]:
    """Pickles ``obj``; large buffers go to memfd segments, whose descriptors come second.

    A large ``bytes`` travels through shared memory too when it is ``obj`` itself or one of its
    items (a result, say). The caller owns the descriptors (the core takes them over when it
    sends them).
    """
    if type(obj) in PLAIN_TYPES:  # most results: nothing to share, nothing to look for
        return plain_dumps(obj, PROTOCOL), None
    return _pack(wrap_large(obj))


def pack_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, list[int] | None]:
    """``pack`` for the arguments of one call: a large ``bytes`` argument is shared too."""
    if PLAIN_TYPES.issuperset(map(type, args)) and (not kwargs or PLAIN_TYPES.issuperset(map(type, kwargs.values()))):
        return plain_dumps((args, kwargs), PROTOCOL), None
    return _pack((wrap_large(args), kwargs))


def pack_chunk(items: Any) -> tuple[bytes, list[int] | None]:
    """``pack`` for a chunk of a map.

    Only buffers that pickle out of band by themselves are shared: looking at every item for a
    large ``bytes`` would cost every small one.
    """
    return _pack(items)


#: Segments one frame can carry (its header counts them in a byte).
MAX_SEGMENTS = 255


def pack_outcomes(
    seconds: float, outcomes: list[tuple[bool, Any]], pool: bool = False
) -> tuple[bytes, list[int] | None]:
    """``pack`` for the per-item outcomes of an ``imap`` task (``pool``: see ``dump_outcomes``)."""
    return _packed(lambda buffers: dump_outcomes(seconds, outcomes, buffers, pool))


def _pack(obj: Any) -> tuple[bytes, list[int] | None]:
    return _packed(lambda buffers: dumps(obj, buffers))


def _packed(dump: Callable[[list[memoryview] | None], bytes]) -> tuple[bytes, list[int] | None]:
    buffers: list[memoryview] = []
    data = dump(buffers)
    if not buffers:
        return data, None
    if len(buffers) > MAX_SEGMENTS:  # rare enough to pay the socket for
        return dump(None), None
    return data, to_segments(buffers)


def unpack(data: Any, fds: list[int]) -> Any:
    """Unpickles what ``pack`` made, in the process the descriptors were sent to; closes them."""
    return loads(data, buffers=from_segments(fds))


_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
# the segment's name says what it holds: a ``bytes`` is read back with one ``pread`` into a new
# ``bytes`` (which pickle then uses as it is), anything else is mapped
_BYTES_NAME = "ferropool-bytes"
_BUFFER_NAME = "ferropool-buffer"
_PREAD_MAX = 0x7FFFF000  # the most one read(2) returns on Linux


def to_segments(buffers: list[memoryview]) -> list[int]:
    """One memfd segment holding a copy of each buffer; their descriptors.

    In a worker, a buffer that is exactly a segment the running call's arguments came in (an
    argument returned as it is) goes back as that segment, without a copy.
    """
    fds: list[int] = []
    try:
        for buf in buffers:
            received = _received_as(buf) if _received else None
            if received is not None:
                received.forwarded = True
                fds.append(os.dup(received.fd))
                continue
            fd = os.memfd_create(_BYTES_NAME if type(buf.obj) is bytes else _BUFFER_NAME, os.MFD_CLOEXEC)
            fds.append(fd)
            size = buf.nbytes
            os.ftruncate(fd, size)
            done = 0
            while done < size:
                done += os.pwrite(fd, buf[done:], done)
    except BaseException:
        close_all(fds)
        raise
    return fds


def from_segments(fds: list[int], keep: bool = False) -> list[Any]:
    """Each segment's contents as a buffer for ``pickle.loads``; closes the descriptors.

    A ``bytes`` segment is read into a new ``bytes`` object, which becomes the unpickled value
    itself (one copy). Other segments are mapped (read and write, shared) and their pages mapped
    in at once (``MAP_POPULATE``: one call instead of a fault per page, about 1.5x faster for a
    buffer that is then read whole). With ``keep`` (a worker's arguments), the descriptors stay
    open until ``release_received()``, so that a result can send a segment back as it is.
    """
    try:
        contents = [_contents(fd) for fd in fds]
    except BaseException:
        close_all(fds)
        raise
    if not keep:
        close_all(fds)
        return contents
    for fd, item in zip(fds, contents, strict=True):
        _received.append(_Received(item, fd))
    return [memoryview(item) if type(item) is mmap.mmap else item for item in contents]


def _contents(fd: int) -> Any:
    size = os.fstat(fd).st_size
    if size <= _PREAD_MAX and os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:" + _BYTES_NAME):
        data = os.pread(fd, size, 0)
        if len(data) == size:
            return data
    return mmap.mmap(fd, size, flags=_MAP_FLAGS)


class _Received:
    """A segment the running call's arguments came in (worker side)."""

    __slots__ = ("contents", "fd", "forwarded", "span")

    def __init__(self, contents: Any, fd: int) -> None:
        self.contents = contents  # the bytes read from it, or its mmap
        self.fd = fd
        self.forwarded = False
        self.span = None if type(contents) is bytes else _core.buffer_span(contents)


#: The segments of the call a worker is running; emptied by ``release_received``.
_received: list[_Received] = []


def _received_as(buf: memoryview) -> _Received | None:
    """The received segment that ``buf`` is exactly, if any.

    That is the same ``bytes`` object, or a view of a whole mapped segment.
    """
    span = None
    for received in _received:
        if received.span is None:
            if buf.obj is received.contents:
                return received
            continue
        if span is None:
            span = _core.buffer_span(buf)
        if span == received.span:
            return received
    return None


def release_received() -> None:
    """Forgets the segments of the call that just finished, and closes their descriptors.

    A mapped segment that went back as a result is unmapped here if nothing refers to it any
    more; if the call's code kept an object on it, that mapping becomes a private copy in place,
    so the worker and the parent never share memory after the call.
    """
    while _received:
        received = _received.pop()
        contents, received.contents = received.contents, None
        if received.forwarded and received.span is not None:
            try:
                contents.close()
            except BufferError:  # still exported: kept by the task's code
                _core.detach_mapping(*received.span)
        del contents
        os.close(received.fd)


def close_all(fds: list[int]) -> None:
    """Closes descriptors that nobody will map (a result whose future is gone, say)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
