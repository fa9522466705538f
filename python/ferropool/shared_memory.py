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
# It forks once and its first process exits at once, so it is nobody's child: its creator never
# has to reap it, which it could not do from SharedMemory.__del__ at interpreter exit (starting
# a thread there hangs on Python 3.11). It reports its pid, then reads one line per change:
# "+" or "-", the name as hex (a name may hold any character but NUL), and the inode; it
# answers each "+" with one byte once it knows the block, so that a creator can tell a watchdog
# that died (an end of file) from one that took note. A line it cannot read is skipped, never
# fatal: the watchdog must outlive whatever it is told.
_WATCHDOG = r"""
import fcntl, os, sys, threading
if os.fork():
    os._exit(0)
os.write(1, b"%d\n" % os.getpid())
names = {}
for line in sys.stdin.buffer:
    try:
        op, name, ino = line.split()
        name, ino = bytes.fromhex(name.decode()), int(ino)
    except ValueError:
        continue
    if op == b"+":
        names[name] = ino
        os.write(1, b"k")
    else:
        names.pop(name, None)
os.close(1)
def clean(name, ino):
    path = b"/dev/shm/" + name
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
    closed) when this process holds none of them any more. A watchdog that died is replaced,
    and told again about every block still open.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipe: Any = None  # the write end of the watchdog's stdin
        self._answers: Any = None  # the read end of its stdout
        self.pid: int | None = None
        self._open: dict[str, int] = {}
        self._owner = os.getpid()

    def _start(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _WATCHDOG],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            start_new_session=True,  # Ctrl-C in the terminal must not stop the cleanup
        )
        self._pipe, self._answers = proc.stdin, proc.stdout
        proc.wait()  # the first process, which exits as soon as it forked the watchdog
        line = b""
        while not line.endswith(b"\n"):
            chunk = self._answers.read(1)
            if not chunk:
                self._close_pipe()
                raise OSError("the shared memory watchdog did not start")
            line += chunk
        self.pid = int(line)
        for name, inode in self._open.items():
            self._tell(name, inode)

    def _tell(self, name: str, inode: int) -> None:
        """Tells the watchdog about a block; ``OSError`` if it is dead."""
        self._pipe.write(f"+ {name.encode().hex()} {inode}\n".encode())
        if self._answers.read(1) != b"k":
            raise BrokenPipeError("the shared memory watchdog died")

    def _close_pipe(self) -> None:
        pipe, answers = self._pipe, self._answers
        self._pipe = self._answers = self.pid = None
        for end in (pipe, answers):
            try:
                end.close()
            except OSError:
                pass

    def created(self, name: str, inode: int) -> None:
        with self._lock:
            if self._owner != os.getpid():  # a forked child: the parent's watchdog is not ours
                self._close_pipe()
                self._open, self._owner = {}, os.getpid()
            self._open[name] = inode
            try:
                if self._pipe is None:
                    self._start()
                else:
                    try:
                        self._tell(name, inode)
                    except OSError:  # it died (killed, say): a successor learns every open block
                        self._close_pipe()
                        self._start()
            except OSError:
                del self._open[name]
                raise

    def closed(self, name: str, unlinked: bool) -> None:
        """This process let go of ``name``; the watchdog keeps it unless it is already gone."""
        with self._lock:
            if self._pipe is None or name not in self._open or self._owner != os.getpid():
                return
            self._open.pop(name)
            if unlinked:
                try:
                    self._pipe.write(f"- {name.encode().hex()} 0\n".encode())
                except OSError:
                    pass  # a dead watchdog has nothing to forget; the next block starts another
            if not self._open:
                self._close_pipe()


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
            try:
                _watchdog.created(block_name, os.stat(f"/dev/shm/{block_name}").st_ino)
            except BaseException:
                # nothing would clean the block up after a crash: do not keep it
                if not self._seg.close():
                    self._seg.unlink()
                raise
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

        A no-op once every holder has closed it (the last ``close()`` removed the name).
        """
        if self._unlinked:
            return
        try:
            self._seg.unlink()
        except FileNotFoundError:
            if not self._seg.closed:
                raise
            # every holder has closed it, another handle last, and that close removed the name
        self._unlinked = True
        if self._created and self._seg.closed:
            _watchdog.closed(self.name, True)


# ShareableList layout: a header (item count), one record per item (kind, slot size, length of a
# str or bytes item), then one slot per item, each a multiple of 8 bytes. The length lives in the
# record so that a slot holds as many bytes as the stdlib's does (an int's 8 bytes take "shorter").
_HEADER = struct.Struct("<q")
_RECORD = struct.Struct("<B3xII")
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
        return value.encode() if kind == _STR else value  # type: ignore[no-any-return]
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
            records = [_RECORD.unpack_from(self.shm.buf, _HEADER.size + i * _RECORD.size) for i in range(count)]
            self._sizes = [size for _, size, _ in records]
        else:
            items = list(sequence)
            encoded = [_encode(_kind(v), v) for v in items]
            self._sizes = [_slot_size(e) for e in encoded]
            total = _HEADER.size + _RECORD.size * len(items) + sum(self._sizes)
            self.shm = SharedMemory(name, create=True, size=total)
            _HEADER.pack_into(self.shm.buf, 0, len(items))
        self._offsets = []
        offset = _HEADER.size + _RECORD.size * len(self._sizes)
        for size in self._sizes:
            self._offsets.append(offset)
            offset += size
        if sequence is not None:
            for i, value in enumerate(items):
                self._write(i, _kind(value), encoded[i])

    def _write(self, i: int, kind: int, encoded: bytes) -> None:
        if len(encoded) > self._sizes[i]:
            raise ValueError("bytes/str item exceeds available storage")
        _RECORD.pack_into(self.shm.buf, _HEADER.size + i * _RECORD.size, kind, self._sizes[i], len(encoded))
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
        kind, _, length = _RECORD.unpack_from(buf, _HEADER.size + i * _RECORD.size)
        offset = self._offsets[i]
        if kind == _NONE:
            return None
        if kind in (_STR, _BYTES):
            data = bytes(buf[offset : offset + length])
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
            kind, size, _ = _RECORD.unpack_from(self.shm.buf, _HEADER.size + i * _RECORD.size)
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
