"""When the by-value pickle of a function can be reused (parent), and its rebuilt function (worker).

A function defined in ``__main__`` (every script's tasks), a lambda or a closure travels by value
(``cloudpickle``), which costs ~35 us a submit against ~1 us for a cached reference. The bytes
depend only on what cloudpickle reads: the function's code, defaults, name, module, docstring,
annotations and ``__dict__``, the contents of its closure cells, and the module globals its code
names. So a pickle is reused while each of those is still the very object it was when pickled,
compared by identity (``1``, ``1.0`` and ``True`` are equal but pickle differently).

Identity says nothing about an object changed in place, so a function is cached only if every
value it depends on cannot change in place: ``None``, numbers, strings, bytes, tuples and
frozensets of such, importable modules, functions and classes (pickled by reference), and other
functions shipped by value that pass the same test (checked the same way on every submit).
A function that names a list, a dict, an instance or a class defined in ``__main__``, or has a
mutable default, is pickled on every submit, as before: its pickle carries the value of that
moment, which a worker receiving the function for the first time sees.

A function used with a module (``os.path``, say) also depends on which submodules are imported
(cloudpickle ships them), so its entry also records how many modules ``sys.modules`` holds.

In a worker, ``Rebuilt`` keeps the function rebuilt from such a pickle while the tasks leave it
as it arrived (see there).
"""

from __future__ import annotations

import sys
import types
import weakref
from operator import attrgetter, is_, itemgetter

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: the function attributes a by-value pickle holds
_attributes = attrgetter(
    "__code__",
    "__defaults__",
    "__kwdefaults__",
    "__name__",
    "__qualname__",
    "__module__",
    "__doc__",
    "__closure__",
    "__annotations__",
    "__dict__",
    "__globals__",
)
_KWDEFAULTS, _CLOSURE, _ANNOTATIONS, _DICT, _GLOBALS = 2, 7, 8, 9, 10
#: what is compared by identity only: the code (immutable) and the containers checked apart
_NOT_CHECKED = frozenset({0, _CLOSURE, _ANNOTATIONS, _DICT, _GLOBALS})
_cell_contents = attrgetter("cell_contents")
#: module attributes cloudpickle ships with every function (relative imports need them)
_MODULE_KEYS = ("__package__", "__name__", "__path__", "__file__")
_SCALARS = frozenset({type(None), bool, int, float, complex, str, bytes, type(Ellipsis), range})
_MAX_DEPTH = 8  # nested tuples and helper functions looked into before giving up
#: the call flags of a reusable pickle of a function shipped alone (``serialize.py`` defines them)
KEEP_FLAGS = 1 | 64
#: a pickle this large is not kept (it would pin its function's values for the cache's life)
MAX_BYTES = 1 << 16


class Unsafe(Exception):
    """A value the function depends on could change without its identity changing."""


class Probe:
    """What one by-value function's pickle depends on, and the identities they had."""

    __slots__ = ("absent", "fn", "globals", "values")

    def __init__(self, fn: types.FunctionType, names: tuple[str, ...], absent: frozenset[str]) -> None:
        self.fn = fn
        # two names at least, so that the getter always returns a tuple
        self.globals = itemgetter(names[0], *names) if names else None
        self.absent = absent
        self.values = self.read()

    def read(self) -> tuple[Any, ...]:
        """The objects the pickle depends on now (``Unsafe``: they cannot be read)."""
        attrs = _attributes(self.fn)
        globals_ = attrs[_GLOBALS]
        # a dict's contents are not compared: an attribute dict or keyword defaults are not cached
        if (
            attrs[_DICT]
            or attrs[_KWDEFAULTS] is not None
            or (self.absent and not globals_.keys().isdisjoint(self.absent))
        ):
            raise Unsafe
        annotations = attrs[_ANNOTATIONS]
        try:
            return (
                *attrs,
                *(self.globals(globals_) if self.globals is not None else ()),
                *map(_cell_contents, attrs[_CLOSURE] or ()),
                *annotations,
                *annotations.values(),
            )
        except (KeyError, ValueError):  # a global deleted, a cell emptied
            raise Unsafe from None

    def same(self) -> bool:
        """Whether ``read()`` would give the very objects it gave when the probe was made.

        The common case (no closure, no annotations) is compared piece by piece, without
        building ``read()``'s tuple: this runs on every submit.
        """
        attrs = _attributes(self.fn)
        old = self.values
        if attrs[_CLOSURE] is not None or attrs[_ANNOTATIONS]:
            try:
                now = self.read()
            except Unsafe:
                return False
            return len(now) == len(old) and all(map(is_, now, old))
        if not all(map(is_, attrs, old)) or attrs[_DICT]:  # the attributes come first in ``old``
            return False
        globals_ = attrs[_GLOBALS]
        if self.absent and not globals_.keys().isdisjoint(self.absent):
            return False
        if self.globals is None:
            return len(old) == len(attrs)
        try:
            found = self.globals(globals_)
        except KeyError:
            return False
        return len(old) == len(attrs) + len(found) and all(map(is_, found, old[len(attrs) :]))


class Entry:
    """A reusable pickle of one function: its bytes and the probes that guard them."""

    __slots__ = ("data", "flags", "level", "modules", "probes", "used")

    def __init__(self, data: bytes, probes: list[Probe], modules: int) -> None:
        self.data = data
        # a worker may keep the function it rebuilds only if no other function came with it:
        # one shipped along (a helper) is a fresh copy on every task, to which a task may have
        # done something (set an attribute) the next one must not see
        self.flags = KEEP_FLAGS if len(probes) == 1 else 0
        self.probes = probes
        self.modules = modules
        self.used = False  # whether it saved a pickle
        self.level = 0  # see Sightings

    def valid(self) -> bool:
        """Whether ``data`` is still what pickling the function would give.

        The probes compare with what they read when they were made, before the pickle was.
        """
        probes = self.probes
        same = probes[0].same() if len(probes) == 1 else all([probe.same() for probe in probes])
        if same and (self.modules < 0 or self.modules == len(sys.modules)):
            self.used = True
            return True
        return False


class Rebuilt:
    """In a worker: a function rebuilt by value, reused while it is as it arrived.

    Before pickles were reused, every task got a fresh copy, so what a task did to its own
    function (set an attribute, rebind a default or a closure cell of its own) was gone for the
    next one; it still is: a changed function is rebuilt again.
    """

    __slots__ = ("fn", "state")

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.state = _state(fn)

    def unchanged(self) -> bool:
        attrs = _attributes(self.fn)
        old = self.state
        if attrs[_CLOSURE] is None and not attrs[_ANNOTATIONS]:  # the common case, without a new tuple
            return len(old) == len(attrs) and not attrs[_DICT] and all(map(is_, attrs, old))
        try:
            now = _state(self.fn)
        except ValueError:
            return False
        return len(now) == len(old) and all(map(is_, now, old))


def _state(fn: Any) -> tuple[Any, ...]:
    attrs = _attributes(fn)
    if attrs[_DICT]:
        raise ValueError("the function has attributes")
    annotations = attrs[_ANNOTATIONS]
    return (*attrs, *map(_cell_contents, attrs[_CLOSURE] or ()), *annotations, *annotations.values())


class Sighting:
    """A function pickled without an entry: how many more times before one is tried again.

    Making an entry costs about as much as the pickle itself, so one is made only for a function
    submitted twice (not for each lambda of a loop), and one that keeps going stale before it
    saved anything (a global rebound between submits), or cannot be cached at all, is tried
    again after 1, 3, 7 ... 63 more pickles.
    """

    __slots__ = ("level", "wait")

    def __init__(self, level: int, wait: int) -> None:
        self.level = level
        self.wait = wait

    def back_off(self) -> None:
        self.level = min(self.level + 1, _LEVEL_MAX)
        self.wait = (1 << self.level) - 1


_LEVEL_MAX = 6
#: weak: a function pickled once is not kept alive by the cache
_sightings: weakref.WeakKeyDictionary[Any, Sighting] = weakref.WeakKeyDictionary()


def pickle(
    fn: types.FunctionType,
    stale: Entry | None,
    dumps: Callable[[Any], bytes],
    by_reference: Callable[[Any], bool],
) -> tuple[bytes, Entry | None]:
    """``fn`` pickled by ``dumps``, and the entry that may stand for it from now on (or ``None``).

    ``stale``: ``fn``'s entry that ``valid()`` refused. ``by_reference(obj)``: whether cloudpickle
    pickles a function, class or module by name.
    """
    if stale is not None:
        sighting = _sightings[fn] = Sighting(stale.level, 0)
        if not stale.used:
            sighting.back_off()
    else:
        found = _sightings.get(fn)
        if found is None:
            _sightings[fn] = Sighting(0, 0)
            return dumps(fn), None
        sighting = found
    if sighting.wait:
        sighting.wait -= 1
        return dumps(fn), None
    try:
        probes, names_module = probes_for(fn, by_reference)
    except Unsafe:
        sighting.back_off()
        return dumps(fn), None
    modules = len(sys.modules) if names_module else -1
    data = dumps(fn)
    entry = Entry(data, probes, modules)
    # a change while it was pickled (another thread) leaves the bytes uncached
    if len(data) > MAX_BYTES or not entry.valid():
        sighting.back_off()
        return data, None
    entry.used = False
    entry.level = sighting.level
    _sightings.pop(fn, None)
    return data, entry


def probes_for(fn: types.FunctionType, by_reference: Callable[[Any], bool]) -> tuple[list[Probe], bool]:
    """The probes guarding ``fn``'s by-value pickle, and whether it names a module.

    ``by_reference(obj)``: whether cloudpickle pickles a function, class or module by name.
    Raises ``Unsafe`` when ``fn`` depends on a value that could change in place.
    """
    walk = _Walk(by_reference)
    try:
        walk.add(fn, 0)
    except RecursionError:
        raise Unsafe from None
    return walk.probes, walk.modules


class _Walk:
    """Finds every function a by-value pickle holds, and checks the values they name."""

    def __init__(self, by_reference: Callable[[Any], bool]) -> None:
        self.by_reference = by_reference
        self.probes: list[Probe] = []
        self.seen: set[int] = set()
        self.modules = False

    def add(self, f: types.FunctionType, depth: int) -> None:
        if id(f) in self.seen:
            return
        self.seen.add(id(f))
        from cloudpickle.cloudpickle import _extract_code_globals  # type: ignore[import-untyped]

        g = f.__globals__
        wanted = (*_MODULE_KEYS, *_extract_code_globals(f.__code__))
        names = tuple(name for name in dict.fromkeys(wanted) if name in g)
        probe = Probe(f, names, frozenset(name for name in wanted if name not in g))
        self.probes.append(probe)
        for i, value in enumerate(probe.values):
            if i not in _NOT_CHECKED:
                self.check(value, depth)

    def check(self, value: Any, depth: int) -> None:
        kind = type(value)
        if kind in _SCALARS:
            return
        if depth > _MAX_DEPTH:
            raise Unsafe
        if kind is tuple or kind is frozenset:
            for item in value:
                self.check(item, depth + 1)
        elif kind is types.FunctionType:
            if not self.by_reference(value):
                self.add(value, depth + 1)
        elif not self._by_reference(value, kind):
            raise Unsafe

    def _by_reference(self, value: Any, kind: type) -> bool:
        """Whether ``value`` (not a function) pickles as a name that cannot change."""
        if kind is types.ModuleType:
            self.modules = True
            return self.by_reference(value)
        if kind is types.BuiltinFunctionType:
            # a builtin of a module or a class, not a bound method of an object (``items.append``)
            owner = value.__self__
            return owner is None or isinstance(owner, (types.ModuleType, type))
        # a class shipped by value could have its attributes changed
        return isinstance(value, type) and self.by_reference(value)
