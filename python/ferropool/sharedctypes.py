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

    Array types are made on the fly, so they travel as their element type and length. A
    structure or union the child cannot import (one defined in ``__main__``, which ferropool's
    children never run) travels as its fields, and its other attributes (methods) by value:
    cloudpickle cannot ship such a class itself, its field descriptors do not pickle.
    """
    if issubclass(ctype, ctypes.Array):
        return ("array", _spec(ctype._type_), ctype._length_)
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)) and not _importable(ctype):
        kind = "union" if issubclass(ctype, ctypes.Union) else "struct"
        fields = tuple((f[0], _spec(f[1]), *f[2:]) for f in ctype._fields_)
        attrs = {k: v for k, v in vars(ctype).items() if k not in _CTYPES_OWN and not _is_field(v)}
        return (kind, ctype.__qualname__, fields, attrs)
    return ctype


# what ctypes puts into a structure class's namespace itself
_CTYPES_OWN = frozenset({"_fields_", "__dict__", "__weakref__", "__module__", "_type_", "_length_"})
# the type of a structure's field descriptors (not a public name of ctypes)
_CField = type(vars(type("_Probe", (ctypes.Structure,), {"_fields_": [("x", ctypes.c_int)]}))["x"])


def _is_field(value: Any) -> bool:
    return isinstance(value, _CField)


def _importable(cls: Any) -> bool:
    import sys

    module = sys.modules.get(cls.__module__)
    if module is None or cls.__module__ == "__main__":
        return False
    found: Any = module
    for part in cls.__qualname__.split("."):
        found = getattr(found, part, None)
    return found is cls


# structures rebuilt from a description, so that every object of one type shares its class
_rebuilt: dict[Any, Any] = {}


def _shape(spec: Any) -> Any:
    """``spec`` without the attributes of its structures: a hashable key for ``_rebuilt``."""
    if not isinstance(spec, tuple):
        return spec
    if spec[0] == "array":
        return ("array", _shape(spec[1]), spec[2])
    return (spec[0], spec[1], tuple((f[0], _shape(f[1]), *f[2:]) for f in spec[2]))


def _unspec(spec: Any) -> Any:
    if not isinstance(spec, tuple):
        return spec
    if spec[0] == "array":
        return _unspec(spec[1]) * spec[2]
    kind, qualname, fields, attrs = spec
    key = _shape(spec)
    try:
        return _rebuilt[key]
    except KeyError:
        pass
    base = ctypes.Union if kind == "union" else ctypes.Structure
    namespace = dict(attrs)
    namespace["_fields_"] = [(f[0], _unspec(f[1]), *f[2:]) for f in fields]
    cls = type(qualname.rpartition(".")[2], (base,), namespace)
    cls.__qualname__ = qualname
    _rebuilt[key] = cls
    return cls


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
    # a byte copy: ``pointer(new_obj)[0] = obj`` refuses obj, whose class is new_obj's base
    ctypes.memmove(ctypes.addressof(new_obj), ctypes.addressof(obj), ctypes.sizeof(new_obj))
    return new_obj


def synchronized(obj: Any, lock: Any = None) -> Any:
    """``obj`` wrapped so that ``get_lock()`` returns ``lock`` (a new ``RLock`` if omitted)."""
    lock = RLock() if lock is None else lock
    if isinstance(obj, ctypes.Array):
        if obj._type_ is ctypes.c_char:
            return SynchronizedString(obj, lock)
        return SynchronizedArray(obj, lock)
    if isinstance(obj, (ctypes.Structure, ctypes.Union)):
        return _synchronized_struct(type(obj))(obj, lock)
    return Synchronized(obj, lock)


_struct_wrappers: dict[Any, type[SynchronizedBase]] = {}


def _synchronized_struct(ctype: Any) -> type[SynchronizedBase]:
    """A ``Synchronized`` subclass with one locked property per field of ``ctype``."""
    try:
        return _struct_wrappers[ctype]
    except KeyError:
        pass
    fields = {f[0]: _locked_field(f[0]) for f in ctype._fields_}
    cls = type(f"Synchronized{ctype.__name__}", (Synchronized,), fields)
    _struct_wrappers[ctype] = cls
    return cls


def _locked_field(name: str) -> property:
    def get(self: SynchronizedBase) -> Any:
        with self:
            return getattr(self._obj, name)

    def set(self: SynchronizedBase, value: Any) -> None:
        with self:
            setattr(self._obj, name, value)

    return property(get, set, doc=f"The field {name!r} (read and written under the lock).")


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
        # the wrapper class of a structure is made on the fly: the receiver makes its own
        return synchronized, (self._obj, self._lock)

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
