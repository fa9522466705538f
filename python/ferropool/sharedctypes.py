"""ctypes objects in shared memory, as ``multiprocessing.sharedctypes``.

``RawValue`` and ``RawArray`` are ctypes objects built with ``from_buffer`` over an anonymous
shared segment; ``Value`` and ``Array`` wrap them with a lock (an ``RLock`` by default). They
pickle, so they can be passed to a ``Process`` or a pool task; the sending process must still
hold its object when the receiver unpickles it.
"""

from __future__ import annotations

import ctypes

from . import _core
from .synchronize import RLock

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["Array", "RawArray", "RawValue", "Value", "copy", "synchronized"]

typecode_to_type: dict[str, Any] = {
    "c": ctypes.c_char,
    "u": ctypes.c_wchar,
    "b": ctypes.c_byte,
    "B": ctypes.c_ubyte,
    "h": ctypes.c_short,
    "H": ctypes.c_ushort,
    "i": ctypes.c_int,
    "I": ctypes.c_uint,
    "l": ctypes.c_long,
    "L": ctypes.c_ulong,
    "q": ctypes.c_longlong,
    "Q": ctypes.c_ulonglong,
    "f": ctypes.c_float,
    "d": ctypes.c_double,
}

_shared_types: dict[Any, Any] = {}


def _ctype(typecode_or_type: Any) -> Any:
    if isinstance(typecode_or_type, str):
        try:
            return typecode_to_type[typecode_or_type]
        except KeyError:
            raise TypeError(
                f"unknown typecode {typecode_or_type!r}: use one of {''.join(typecode_to_type)} or a ctypes type"
            ) from None
    try:
        ctypes.sizeof(typecode_or_type)
    except TypeError:
        raise TypeError(f"{typecode_or_type!r} is neither an array typecode nor a ctypes type") from None
    return typecode_or_type


def _spec(ctype: Any) -> Any:
    """A picklable description of ``ctype``.

    Array types are made on the fly, so they travel as their element type and length.
    """
    if issubclass(ctype, ctypes.Array):
        return ("array", _spec(ctype._type_), ctype._length_)
    return ctype


def _unspec(spec: Any) -> Any:
    if isinstance(spec, tuple):
        return _unspec(spec[1]) * spec[2]
    return spec


def _reduce_shared(obj: Any) -> tuple[Any, ...]:
    return _rebuild_ctype, (_spec(type(obj).__mro__[1]), obj._ferro_segment.handle)


def _shared_type(base: Any) -> Any:
    """A subclass of ``base`` whose instances pickle as a reference to their shared segment."""
    try:
        return _shared_types[base]
    except KeyError:
        pass
    cls = type(getattr(base, "__name__", "shared"), (base,), {"__reduce__": _reduce_shared})
    cls.__module__ = base.__module__
    _shared_types[base] = cls
    return cls


def _new(base: Any, handle: tuple[int, int, int, int] | None = None) -> Any:
    size = ctypes.sizeof(base)
    segment = _core.Segment(size, handle)
    obj = _shared_type(base).from_buffer(segment)
    obj._ferro_segment = segment
    return obj


def _rebuild_ctype(spec: Any, handle: tuple[int, int, int, int]) -> Any:
    return _new(_unspec(spec), handle)


def RawValue(typecode_or_type: Any, *args: Any) -> Any:
    """A ctypes object in shared memory, without a lock.

    Args:
        typecode_or_type: an ``array`` module typecode (``"i"``, ``"d"``, ...) or a ctypes type.
        *args: passed to the type's constructor to give the initial value.

    Raises:
        TypeError: an unknown typecode, or a type that is not a ctypes type.
    """
    base = _ctype(typecode_or_type)
    obj = _new(base)
    if args:
        obj.__init__(*args)
    return obj


def RawArray(typecode_or_type: Any, size_or_initializer: int | Sequence[Any]) -> Any:
    """A ctypes array in shared memory, without a lock.

    Args:
        typecode_or_type: the element type, as a typecode or a ctypes type.
        size_or_initializer: the length (zero-filled), or a sequence of initial values.
    """
    base = _ctype(typecode_or_type)
    if isinstance(size_or_initializer, int):
        if size_or_initializer < 0:
            raise ValueError("array size must be >= 0")
        return _new(base * size_or_initializer)
    values = list(size_or_initializer)
    obj = _new(base * len(values))
    obj[:] = values
    return obj


def Value(typecode_or_type: Any, *args: Any, lock: Any = True) -> Any:
    """A shared ctypes object guarded by a lock, as ``multiprocessing.Value``.

    Args:
        typecode_or_type: as for ``RawValue``.
        *args: the initial value.
        lock: ``True`` (a new ``RLock``), ``False`` (no lock: the raw object is returned), or a
            lock object with ``acquire``/``release``.
    """
    obj = RawValue(typecode_or_type, *args)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock))


def Array(typecode_or_type: Any, size_or_initializer: int | Sequence[Any], *, lock: Any = True) -> Any:
    """A shared ctypes array guarded by a lock, as ``multiprocessing.Array``.

    The arguments are those of ``RawArray`` and ``Value``.
    """
    obj = RawArray(typecode_or_type, size_or_initializer)
    if lock is False:
        return obj
    return synchronized(obj, _lock_for(lock))


def _lock_for(lock: Any) -> Any:
    if lock is True or lock is None:
        return RLock()
    if not hasattr(lock, "acquire"):
        raise AttributeError(f"{lock!r} has no method 'acquire'")
    return lock


def copy(obj: Any) -> Any:
    """A new shared object with the same type and contents as ``obj``."""
    new_obj = _new(type(obj).__mro__[1] if type(obj) in _shared_types.values() else type(obj))
    ctypes.pointer(new_obj)[0] = obj
    return new_obj


def synchronized(obj: Any, lock: Any = None) -> Any:
    """``obj`` wrapped so that ``get_lock()`` returns ``lock`` (a new ``RLock`` if omitted)."""
    lock = RLock() if lock is None else lock
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    return Synchronized(obj, lock)


class SynchronizedBase:
    """A shared ctypes object and the lock that guards it."""

    def __init__(self, obj: Any, lock: Any = None) -> None:
        self._obj = obj
        self._lock = RLock() if lock is None else lock
        self.acquire = self._lock.acquire
        self.release = self._lock.release

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *args: object) -> None:
        self._lock.release()

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self._obj, self._lock)

    def get_obj(self) -> Any:
        """The wrapped ctypes object (access to it is not synchronised)."""
        return self._obj

    def get_lock(self) -> Any:
        """The lock that guards the object."""
        return self._lock

    def __repr__(self) -> str:
        return f"<{type(self).__name__} wrapper for {self._obj!r}>"


class Synchronized(SynchronizedBase):
    """A shared single value; ``.value`` reads and writes it under the lock."""

    @property
    def value(self) -> Any:
        """The value (read under the lock)."""
        self.acquire()
        try:
            return self._obj.value
        finally:
            self.release()

    @value.setter
    def value(self, value: Any) -> None:
        self.acquire()
        try:
            self._obj.value = value
        finally:
            self.release()


class SynchronizedArray(SynchronizedBase):
    """A shared array; indexing and slicing happen under the lock."""

    def __len__(self) -> int:
        return len(self._obj)

    def __getitem__(self, i: Any) -> Any:
        self.acquire()
        try:
            return self._obj[i]
        finally:
            self.release()

    def __setitem__(self, i: Any, value: Any) -> None:
        self.acquire()
        try:
            self._obj[i] = value
        finally:
            self.release()


class SynchronizedString(SynchronizedArray):
    """A shared ``c_char`` array, with ``.value`` (up to the first NUL) and ``.raw``."""

    @property
    def value(self) -> bytes:
        """The bytes up to the first NUL."""
        self.acquire()
        try:
            return self._obj.value  # type: ignore[no-any-return]
        finally:
            self.release()

    @value.setter
    def value(self, value: bytes) -> None:
        self.acquire()
        try:
            self._obj.value = value
        finally:
            self.release()

    @property
    def raw(self) -> bytes:
        """Every byte of the array."""
        self.acquire()
        try:
            return self._obj.raw  # type: ignore[no-any-return]
        finally:
            self.release()

    @raw.setter
    def raw(self, value: bytes) -> None:
        self.acquire()
        try:
            self._obj.raw = value
        finally:
            self.release()
