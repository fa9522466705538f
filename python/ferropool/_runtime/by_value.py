"""In a worker: every function shipped by value from one module shares one namespace.

cloudpickle rebuilds a function it ships by value (one defined in ``__main__``, a lambda, a
closure) on a fresh dict holding the globals that function names, one dict per pickle. Under
that rule an initializer's ``global g; g = "hi"`` writes to the initializer's private dict and
the tasks, each with its own dict, never see it, although the same program works with the
stdlib, whose workers share the real module. So in a worker, cloudpickle's two rebuild steps are
wrapped: every function rebuilt from module ``M`` gets the worker's one namespace for ``M`` (the
module itself when the worker has imported it, else a dict kept for the worker's life), and the
globals shipped with it are merged in:

- a name the namespace lacks takes the shipped value;
- a function or class that arrived shipped is replaced by a newer shipped definition (a
  function redefined in a notebook reaches its helpers too);
- any other name keeps the worker's value: what the initializer or an earlier task set, by
  ``global`` or in place (``cache[key] = ...``), as module globals live on in a stdlib worker.

Rebuilt code gets its file name back (cloudpickle 3.1+ ships ``<dynamic-code>``), so a
worker's traceback shows the source lines, as the stdlib's does.

The wrappers carry the names of the functions they wrap, so pickles made in the worker still
name cloudpickle's own functions.
"""

from __future__ import annotations

import functools
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name)

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: Whether ``install()`` has run (whatever it found).
installed = False
_namespaces: dict[str, dict[str, Any]] = {}
#: per module name: the function or class each name was last given by a shipped function
_shipped: dict[str, dict[str, Any]] = {}
_DEFINITIONS = (types.FunctionType, type)


def install() -> None:
    """Wraps cloudpickle's function rebuilding in this process (once; a worker only)."""
    global installed
    if installed:
        return
    installed = True
    try:
        from cloudpickle import cloudpickle  # type: ignore[import-untyped]
    except ImportError:  # nothing can arrive by value without it
        return
    make = getattr(cloudpickle, "_make_function", None)
    setstate = getattr(cloudpickle, "_function_setstate", None)
    if make is None or setstate is None:  # a cloudpickle built differently: left as it is
        return
    _replace(make, _make_function_in(make))
    _replace(setstate, _function_setstate_in(setstate))


def _replace(original: Callable[..., Any], wrapper: Callable[..., Any]) -> None:
    # where pickles look the function up: the module that defines it (cloudpickle_fast in 2.x)
    module = sys.modules.get(original.__module__)
    if module is not None and getattr(module, original.__name__, None) is original:
        setattr(module, original.__name__, functools.wraps(original)(wrapper))


def namespace(shipped: dict[str, Any]) -> dict[str, Any]:
    """The worker's namespace for the module ``shipped`` (a function's base globals) names."""
    name = shipped.get("__name__")
    if not isinstance(name, str):
        return shipped
    ns = _namespaces.get(name)
    if ns is None:
        module = sys.modules.get(name) if name != "__main__" else None
        found = getattr(module, "__dict__", None)
        ns = found if isinstance(found, dict) else shipped
        _namespaces[name] = ns
    for key, value in shipped.items():
        ns.setdefault(key, value)
    return ns


def merge(ns: dict[str, Any], shipped: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``shipped`` to write into ``ns``, by the rule in the module docstring."""
    name = ns.get("__name__")
    if not isinstance(name, str) or _namespaces.get(name) is not ns:
        return shipped
    last = _shipped.setdefault(name, {})
    missing = object()
    write = {}
    for key, value in shipped.items():
        current = ns.get(key, missing)
        definition = isinstance(value, _DEFINITIONS)
        if current is missing or (definition and current is last.get(key, missing)):
            write[key] = value
            if definition:
                last[key] = value
    return write


def _make_function_in(original: Callable[..., Any]) -> Callable[..., Any]:
    def make_function(code: Any, base_globals: Any, *rest: Any) -> Any:
        if isinstance(base_globals, dict):
            base_globals = namespace(base_globals)
            path = base_globals.get("__file__")
            if isinstance(path, str) and isinstance(code, types.CodeType):
                code = _with_filename(code, path)
        return original(code, base_globals, *rest)

    return make_function


#: the file name cloudpickle 3.1+ gives code it ships, which leaves tracebacks without source lines
_DYNAMIC = "<dynamic-code>"


def _with_filename(code: types.CodeType, path: str) -> types.CodeType:
    """``code`` (and the code nested in it) naming ``path`` again instead of ``<dynamic-code>``."""
    if code.co_filename != _DYNAMIC:
        return code
    consts = tuple(_with_filename(c, path) if isinstance(c, types.CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=path, co_consts=consts)


def _function_setstate_in(original: Callable[..., Any]) -> Callable[..., Any]:
    def function_setstate(obj: Any, state: Any) -> Any:
        try:
            attrs, slots = state
            shipped = slots["__globals__"]
            ns = obj.__globals__
        except (TypeError, ValueError, KeyError, AttributeError):
            return original(obj, state)
        if isinstance(shipped, dict):
            slots = {**slots, "__globals__": merge(ns, shipped)}
        return original(obj, (attrs, slots))

    return function_setstate
