"""CPython's own multiprocessing tests, pointed at ferropool.

Importing this module imports the interpreter's installed ``test._test_multiprocessing`` and
builds, in this module's namespace, the concrete test classes CPython builds for a start method
(``WithProcessesTestQueue``, ``WithThreadsTestLock``, ``TestWait`` ...), with every object the
tests create taken from ferropool instead of ``multiprocessing``:

* the mixins' attributes (``self.Process``, ``self.Queue``, ``self.Pool``, ``self.connection``
  ...) are ferropool's (``ferropool.dummy``'s for the thread classes), by the names the
  installed version's own mixins list;
* the test module's global ``multiprocessing`` and the names it imported from the package at
  import time (``wait``, ``util``, ``reduction``, ``Value``, ``copy``, ``shared_memory``) are
  rebound to ferropool's, so a test that says ``multiprocessing.Queue()`` gets a ferropool queue;
* two names tests import by module path inside their bodies (``from multiprocessing.connection
  import wait``, ``from multiprocessing.process import parent_process``) are ferropool's in the
  suite's processes; the suite's counter helper built on the stdlib's private heap is replaced
  (``SharedCounter``), and a Condition helper reading the stdlib's private counters does nothing
  (``ConditionProbes``).

A name ferropool lacks raises ``AttributeError("ferropool has no ...")`` where the test reads
it: nothing falls back to the stdlib silently. No test code is copied; the test classes are the
installed module's, combined with mixins made here.

Child processes import this module to find their test class (the targets are classmethods of
the classes made here), so the rebinding holds in them too.
"""

from __future__ import annotations

import gc
import importlib
import types
import unittest
from typing import Any

import ferropool
import ferropool.connection
import ferropool.dummy
import ferropool.reduction
import ferropool.shared_memory
import ferropool.sharedctypes
import test._test_multiprocessing as std  # CPython's test package, installed with the interpreter

TYPES = ("processes", "threads", "manager")


class Lacks:
    """Stands for a name ferropool does not have: reading it as a class attribute, calling it or
    reading its attributes raises ``AttributeError`` naming it."""

    def __init__(self, label: str) -> None:
        self.label = label

    def _raise(self) -> Any:
        raise AttributeError(f"ferropool has no {self.label} (the stdlib suite does not fall back to the stdlib)")

    def __get__(self, obj: object, owner: type | None = None) -> Any:
        return self._raise()

    def __call__(self, *args: object, **kwargs: object) -> Any:
        return self._raise()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._raise()


class Strict(types.ModuleType):
    """A stand-in for a ``multiprocessing`` module that answers only with ferropool's objects.

    ``sources`` are searched in order; for the package itself, public submodules are imported
    on demand (``multiprocessing.queues`` -> ``ferropool.queues``). A name none of them has
    raises ``AttributeError`` naming what is missing.
    """

    def __init__(self, label: str, *sources: object, package: str | None = None) -> None:
        super().__init__(label)
        self._label = label
        self._sources = sources
        self._package = package

    def __getattr__(self, name: str) -> Any:
        for source in self._sources:
            try:
                return getattr(source, name)
            except AttributeError:
                pass
        if self._package is not None and not name.startswith("_"):
            try:
                return importlib.import_module(f"{self._package}.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"{self._package}.{name}":
                    raise
        raise AttributeError(
            f"ferropool has no {self._label}.{name} (the stdlib suite does not fall back to the stdlib)"
        )


def lookup(namespace: object, label: str, name: str) -> Any:
    """``getattr(namespace, name)``, or a ``Lacks`` descriptor when ferropool has no such name."""
    try:
        return getattr(namespace, name)
    except AttributeError:
        return Lacks(f"{label}.{name}")


MULTIPROCESSING = Strict("multiprocessing", ferropool, package="ferropool")
DUMMY = Strict("multiprocessing.dummy", ferropool.dummy)


class BaseMixin:
    """Replaces the stdlib's ``BaseMixin``, whose class fixtures read ``multiprocessing.process._dangling``."""

    @classmethod
    def setUpClass(cls) -> None:
        pass

    @classmethod
    def tearDownClass(cls) -> None:
        gc.collect()  # pools in reference cycles go now, not during the next class


class ManagerBase(BaseMixin):
    manager: Any = None

    @classmethod
    def setUpClass(cls) -> None:
        cls.manager = MULTIPROCESSING.Manager()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.manager is not None:
            cls.manager.shutdown()
            cls.manager = None
        super().tearDownClass()


def _mixin(std_mixin: type, namespace: object, label: str, base: type) -> type:
    """A mixin with the attributes ``std_mixin`` names, each taken from ``namespace``."""
    attrs: dict[str, Any] = {"__module__": __name__, "TYPE": std_mixin.TYPE}
    for name, value in vars(std_mixin).items():
        if name.startswith("__") or name in attrs or name in ("setUpClass", "tearDownClass"):
            continue
        if isinstance(value, staticmethod):
            found = lookup(namespace, label, name)
            attrs[name] = found if isinstance(found, Lacks) else staticmethod(found)
        elif isinstance(value, (property, classmethod)):
            attrs[name] = value  # the manager's: they read through ``self.manager``
        else:
            attrs[name] = lookup(namespace, label, name)
    return type(std_mixin.__name__, (base,), attrs)


MIXINS = {
    "processes": _mixin(std.ProcessesMixin, MULTIPROCESSING, "multiprocessing", BaseMixin),
    "threads": _mixin(std.ThreadsMixin, DUMMY, "multiprocessing.dummy", BaseMixin),
    "manager": _mixin(std.ManagerMixin, MULTIPROCESSING, "multiprocessing", ManagerBase),
}


class SharedCounter:
    """Stands in for the suite's ``_DummyList`` (a counter shared by processes, with ``append``
    and ``len``), which the suite builds on the stdlib's private ``multiprocessing.heap``."""

    def __init__(self) -> None:
        self._count = ferropool.RawValue("i", 0)
        self._lock = ferropool.Lock()

    def append(self, _: object) -> None:
        with self._lock:
            self._count.value += 1

    def __len__(self) -> int:
        with self._lock:
            return int(self._count.value)


class ConditionProbes:
    """Put before ``_TestCondition`` for processes: its ``check_invariant`` reads the stdlib
    Condition's private counters (``_sleeping_count``, ``_woken_count``), which ferropool's has
    not; the tests' own assertions on who woke up still run."""

    def check_invariant(self, cond: object) -> None:
        pass


# the suite's classes that read CPython's private state in a helper of otherwise applicable tests
PROBES = {("_TestCondition", "processes"): ConditionProbes}


def _rebind_module() -> None:
    """Points the test module's package-level names at ferropool's."""
    import multiprocessing
    import multiprocessing.connection
    import multiprocessing.process

    std.multiprocessing = MULTIPROCESSING
    std.wait = ferropool.connection.wait
    std.util = Strict("multiprocessing.util")
    std.reduction = Strict("multiprocessing.reduction", ferropool.reduction)
    std.shared_memory = ferropool.shared_memory
    std.Value = lookup(ferropool.sharedctypes, "multiprocessing.sharedctypes", "Value")
    std.copy = lookup(ferropool.sharedctypes, "multiprocessing.sharedctypes", "copy")
    std._DummyList = SharedCounter
    # names some tests import by the stdlib's module path inside their bodies; no code of the
    # stdlib's in these processes calls them in a way ferropool's would not serve
    multiprocessing.connection.wait = ferropool.connection.wait
    multiprocessing.process.parent_process = ferropool.parent_process
    # classes the module derived from the stdlib's at import time: derived again from ferropool's
    # (a Process subclass), or made unusable (the managers and proxies: ferropool has none yet)
    for name, value in list(vars(std).items()):
        if not isinstance(value, type) or value.__module__ != std.__name__:
            continue
        if issubclass(value, multiprocessing.Process):
            attrs = {k: v for k, v in vars(value).items() if k not in ("__dict__", "__weakref__")}
            attrs["__module__"] = __name__
            rebuilt = type(name, (ferropool.Process,), attrs)
            setattr(std, name, rebuilt)
            globals()[name] = rebuilt  # children unpickle it from here, which rebinds their module too
            continue
        stdlib_base = next((b for b in value.__mro__[1:] if _stdlib(b)), None)
        if stdlib_base is not None and stdlib_base.__module__ == "multiprocessing.managers":
            continue  # rebuilt below, once every proxy class is
        if stdlib_base is not None:
            label = f"{stdlib_base.__module__}.{stdlib_base.__qualname__}"
            setattr(std, name, Lacks(f"{label} (base of the suite's {name})"))
    _rebuild_managers()


def _rebuild_managers() -> None:
    """The suite's managers and proxies (``MyManager``, ``QueueManager``, its ``IteratorProxy``)
    derived again from ferropool's ``BaseManager``/``BaseProxy``, with their registrations."""
    import multiprocessing.managers

    import ferropool.managers

    std.BaseManager = ferropool.managers.BaseManager
    std.BaseProxy = ferropool.managers.BaseProxy
    std.RemoteError = ferropool.managers.RemoteError
    rebuilt: dict[type, type] = {}
    for base in (multiprocessing.managers.BaseProxy, multiprocessing.managers.BaseManager):
        for name, value in list(vars(std).items()):
            if not isinstance(value, type) or value.__module__ != std.__name__ or not issubclass(value, base):
                continue
            twin = getattr(ferropool.managers, value.__mro__[1].__name__)
            attrs = {k: v for k, v in vars(value).items() if k not in ("__dict__", "__weakref__", "_registry")}
            attrs["__module__"] = __name__
            new = type(name, (twin,), attrs)
            rebuilt[value] = new
            registry = vars(value).get("_registry", {})
            for typeid, (callable_, exposed, method_to_typeid, proxytype) in registry.items():
                proxytype = rebuilt.get(proxytype, proxytype)
                if proxytype is multiprocessing.managers.AutoProxy:
                    proxytype = None
                new.register(typeid, callable_, proxytype, exposed, method_to_typeid, create_method=typeid in attrs)  # type: ignore[attr-defined]
            setattr(std, name, new)
            globals()[name] = new


def _stdlib(obj: object) -> bool:
    """Whether ``obj`` is a class or function of the stdlib's multiprocessing package."""
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and (module == "multiprocessing" or module.startswith("multiprocessing."))


def _ferropool_twin(obj: Any) -> Any:
    """ferropool's object at the same place as the stdlib's ``obj``, or a ``Lacks`` naming it."""
    module = obj.__module__.replace("multiprocessing", "ferropool", 1)
    label = f"{obj.__module__}.{obj.__qualname__}"
    try:
        return getattr(importlib.import_module(module), obj.__qualname__)
    except (ImportError, AttributeError):
        return Lacks(label)


def _class_attrs(base: type) -> dict[str, Any]:
    """Class attributes of a suite class that hold the stdlib's objects (``manager_class =
    multiprocessing.managers.SyncManager``), pointed at ferropool's."""
    attrs: dict[str, Any] = {}
    for name, value in vars(base).items():
        if isinstance(value, type) and _stdlib(value):
            attrs[name] = _ferropool_twin(value)
    return attrs


def _install() -> dict[str, type]:
    """The concrete test classes, by name, as CPython's ``install_tests_in_module_dict`` makes them."""
    made: dict[str, type] = {}
    for name, base in list(vars(std).items()):
        if not isinstance(base, type) or base.__module__ != std.__name__:
            continue
        if issubclass(base, std.BaseTestCase) and base is not std.BaseTestCase:
            for kind in base.ALLOWED_TYPES:
                new = "With" + kind.capitalize() + name[1:]
                probes = PROBES.get((name, kind))
                bases = (probes,) if probes is not None else ()
                made[new] = type(new, (*bases, base, MIXINS[kind], unittest.TestCase), {"__module__": __name__})
        elif issubclass(base, unittest.TestCase):
            made[name] = type(name, (base,), {"__module__": __name__, **_class_attrs(base)})
    return made


_rebind_module()
CLASSES = _install()
globals().update(CLASSES)


def kind_of(class_name: str) -> str:
    """``processes``, ``threads`` or ``manager`` for a mixed class; ``misc`` for the others."""
    for kind in TYPES:
        if class_name.startswith("With" + kind.capitalize()):
            return kind
    return "misc"
