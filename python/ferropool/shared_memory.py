"""Named shared memory, as ``multiprocessing.shared_memory``.

``SharedMemory`` blocks are real POSIX shared-memory objects (``/dev/shm/<name>``), so any
process can attach by name. Unlike the stdlib, nothing is left behind:

* every process that holds a block keeps a shared ``flock`` on it, and the one that closes last
  (only it can make its lock exclusive) unlinks the name;
* a process that dies loses its lock with its descriptors;
* each process that creates blocks has a small watchdog process, reading a pipe from it; when
  the creator exits or is killed, the watchdog waits until nobody holds each of its blocks any
  more (an exclusive ``flock``) and then unlinks it.

So a block is never unlinked while a ``SharedMemory`` still holds it, and is always unlinked once
nothing holds it, however its holders ended. ``unlink()`` still removes the name at once, as the
stdlib's does; holders keep their mappings.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading

from . import _core

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

__all__ = ["ShareableList", "SharedMemory"]

_PREFIX = "psm_"

# The watchdog runs in a fresh interpreter with no site packages: it needs only os and fcntl.
_WATCHDOG = r"""
import fcntl, os, sys, threading
names = {}
for line in sys.stdin.buffer:
    op, name, ino = line.decode().split()
    if op == "+":
        names[name] = int(ino)
    else:
        names.pop(name, None)
def clean(name, ino):
    path = "/dev/shm/" + name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits until no holder is left
        if os.fstat(fd).st_ino == ino and os.stat(path).st_ino == ino:
            os.unlink(path)
    except OSError:
        pass
    finally:
        os.close(fd)
threads = [threading.Thread(target=clean, args=item) for item in names.items()]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


class _Watchdog:
    """This process's watchdog, which unlinks its blocks once nobody holds them.

    Started with the first block this process creates, told about each, and let go (its pipe
    closed) when this process holds none of them any more.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._open: set[str] = set()
        self._pid = os.getpid()

    def _send(self, line: str) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def created(self, name: str, inode: int) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's watchdog is not ours
                self._proc, self._open, self._pid = None, set(), os.getpid()
            if self._proc is None:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _WATCHDOG],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C in the terminal must not stop the cleanup
                )
            self._send(f"+ {name} {inode}")
            self._open.add(name)

    def closed(self, name: str, unlinked: bool) -> None:
        """This process let go of ``name``; the watchdog keeps it unless it is already gone."""
        with self._lock:
            if self._proc is None or name not in self._open or self._pid != os.getpid():
                return
            self._open.discard(name)
            if unlinked:
                self._send(f"- {name} 0")
            if not self._open:
                proc, self._proc = self._proc, None
                assert proc.stdin is not None
                proc.stdin.close()
                # the watchdog may outlive this call while other processes hold blocks
                threading.Thread(target=proc.wait, name="ferropool-shm-reaper", daemon=True).start()


_watchdog = _Watchdog()


class SharedMemory:
    """A named block of shared memory, as ``multiprocessing.shared_memory.SharedMemory``.

    Args:
        name: the block's name; ``None`` with ``create=True`` makes up a unique one.
        create: create a new block (``FileExistsError`` if the name is taken) rather than
            attach to an existing one (``FileNotFoundError`` if there is none).
        size: the new block's size in bytes (ignored when attaching).

    The block disappears when the last process holding it closes it or exits (see the module
    docstring); ``unlink()`` removes its name sooner.
    """

    def __init__(self, name: str | None = None, create: bool = False, size: int = 0) -> None:
        if not size >= 0:
            raise ValueError("'size' must be a positive integer")
        if create:
            if size == 0:
                raise ValueError("'size' must be a positive number different from zero")
        elif name is None:
            raise ValueError("'name' can only be None if create=True")
        if name is not None:
            name = name.lstrip("/")
        while True:
            block_name = name if name is not None else _PREFIX + os.urandom(8).hex()
            try:
                self._seg = _core.NamedSegment(block_name, create, size)
                break
            except FileExistsError:
                if name is not None:
                    raise
        self._unlinked = False
        self._created = create
        if create:
            _watchdog.created(block_name, os.stat(f"/dev/shm/{block_name}").st_ino)
        self._buf: memoryview | None = memoryview(self._seg)  # type: ignore[arg-type, unused-ignore]  # a Buffer from 3.12 on

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.name, False, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size})"

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # an exported buffer outlives us: the descriptor closes with the object
            pass

    @property
    def name(self) -> str:
        """The block's name, as another process passes it to ``SharedMemory(name)``."""
        return self._seg.name

    @property
    def size(self) -> int:
        """The block's size in bytes."""
        return self._seg.size

    @property
    def buf(self) -> memoryview:
        """A writable memoryview of the block (``ValueError`` after ``close()``)."""
        if self._buf is None:
            raise ValueError("operation forbidden on released memoryview object")
        return self._buf

    def close(self) -> None:
        """Gives up this process's access to the block; the last holder to close it unlinks it.

        Raises:
            BufferError: a memoryview or array made from ``buf`` still exists.
        """
        if self._buf is not None:
            self._buf.release()
            self._buf = None
        if not self._seg.closed:
            last = self._seg.close()
            self._unlinked = self._unlinked or last
            if self._created:
                _watchdog.closed(self.name, self._unlinked)

    def unlink(self) -> None:
        """Removes the block's name now; processes that hold it keep their mapping.

        A no-op if this process already removed it by closing last.
        """
        if self._unlinked:
            return
        self._seg.unlink()
        self._unlinked = True
        if self._created and self._seg.closed:
            _watchdog.closed(self.name, True)


# ShareableList layout: a header (item count), one 8-byte record per item (kind, slot size),
# then one slot per item, each a multiple of 8 bytes. str and bytes slots start with the length.
_HEADER = struct.Struct("<q")
_RECORD = struct.Struct("<B3xI")
_LEN = struct.Struct("<I")
_NONE, _INT, _FLOAT, _BOOL, _STR, _BYTES = range(6)
_FIXED = {_INT: struct.Struct("<q"), _FLOAT: struct.Struct("<d"), _BOOL: struct.Struct("<?")}
_FORMAT = {_NONE: "x", _INT: "q", _FLOAT: "d", _BOOL: "?", _STR: "s", _BYTES: "s"}


def _kind(value: object) -> int:
    if value is None:
        return _NONE
    if isinstance(value, bool):
        return _BOOL
    if isinstance(value, int):
        return _INT
    if isinstance(value, float):
        return _FLOAT
    if isinstance(value, str):
        return _STR
    if isinstance(value, bytes):
        return _BYTES
    raise TypeError(f"ShareableList holds int, float, bool, str, bytes and None, not {type(value).__name__}")


def _encode(kind: int, value: Any) -> bytes:
    if kind in (_STR, _BYTES):
        data = value.encode() if kind == _STR else value
        return _LEN.pack(len(data)) + data  # type: ignore[no-any-return]
    if kind == _NONE:
        return b""
    return _FIXED[kind].pack(value)


def _slot_size(encoded: bytes) -> int:
    return max(8, (len(encoded) + 7) & ~7)


class ShareableList:
    """A fixed-length list stored in a ``SharedMemory`` block, as the stdlib's ``ShareableList``.

    Items are ``int``, ``float``, ``bool``, ``str``, ``bytes`` or ``None``.

    Args:
        sequence: the initial items (creates a new block).
        name: with no ``sequence``, the block of an existing list to attach to; with one, the
            name to give the new block.

    An item can be replaced by any value whose encoding fits the room its first value had
    (``ValueError`` otherwise).
    """

    def __init__(self, sequence: Iterable[Any] | None = None, *, name: str | None = None) -> None:
        if sequence is None:
            if name is None:
                raise ValueError("ShareableList needs a sequence or the name of an existing list")
            self.shm = SharedMemory(name)
            (count,) = _HEADER.unpack_from(self.shm.buf, 0)
            records = [_RECORD.unpack_from(self.shm.buf, _HEADER.size + i * 8) for i in range(count)]
            self._sizes = [size for _, size in records]
        else:
            items = list(sequence)
            encoded = [_encode(_kind(v), v) for v in items]
            self._sizes = [_slot_size(e) for e in encoded]
            total = _HEADER.size + 8 * len(items) + sum(self._sizes)
            self.shm = SharedMemory(name, create=True, size=total)
            _HEADER.pack_into(self.shm.buf, 0, len(items))
        self._offsets = []
        offset = _HEADER.size + 8 * len(self._sizes)
        for size in self._sizes:
            self._offsets.append(offset)
            offset += size
        if sequence is not None:
            for i, value in enumerate(items):
                self._write(i, _kind(value), encoded[i])

    def _write(self, i: int, kind: int, encoded: bytes) -> None:
        if len(encoded) > self._sizes[i]:
            raise ValueError("bytes/str item exceeds available storage")
        _RECORD.pack_into(self.shm.buf, _HEADER.size + i * 8, kind, self._sizes[i])
        offset = self._offsets[i]
        self.shm.buf[offset : offset + len(encoded)] = encoded

    def _index(self, i: int) -> int:
        n = len(self._sizes)
        if not isinstance(i, int):
            raise TypeError(f"list indices must be integers, not {type(i).__name__}")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("list index out of range")
        return i

    def __getitem__(self, i: int) -> Any:
        i = self._index(i)
        buf = self.shm.buf
        kind, _ = _RECORD.unpack_from(buf, _HEADER.size + i * 8)
        offset = self._offsets[i]
        if kind == _NONE:
            return None
        if kind in (_STR, _BYTES):
            (length,) = _LEN.unpack_from(buf, offset)
            data = bytes(buf[offset + 4 : offset + 4 + length])
            return data.decode() if kind == _STR else data
        return _FIXED[kind].unpack_from(buf, offset)[0]

    def __setitem__(self, i: int, value: Any) -> None:
        i = self._index(i)
        kind = _kind(value)
        self._write(i, kind, _encode(kind, value))

    def __len__(self) -> int:
        return len(self._sizes)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(len(self)))

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach_list, (self.shm.name,)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)}, name={self.shm.name!r})"

    @property
    def format(self) -> str:
        """The items' storage formats, in the ``struct`` module's letters."""
        out = []
        for i in range(len(self)):
            kind, size = _RECORD.unpack_from(self.shm.buf, _HEADER.size + i * 8)
            out.append(f"{size}s" if kind in (_STR, _BYTES) else _FORMAT[kind])
        return "".join(out)

    def count(self, value: Any) -> int:
        """How many items equal ``value``."""
        return sum(1 for item in self if item == value)

    def index(self, value: Any) -> int:
        """The position of the first item equal to ``value`` (``ValueError`` if none)."""
        for i, item in enumerate(self):
            if item == value:
                return i
        raise ValueError(f"{value!r} not in this container")


def _attach_list(name: str) -> ShareableList:
    return ShareableList(name=name)
