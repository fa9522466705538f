"""A function shipped by value is pickled once while nothing it depends on changes.

Every case runs as a script, where the functions really live in ``__main__``. With
``max_tasks_per_child=1`` each task reaches a fresh worker, which takes every global from the
pickle it receives, so a stale pickle would show in the results; without it, one worker
keeps its own globals (see ``_runtime/by_value.py``) and reuses the function it rebuilt.
"""

from __future__ import annotations

from tests.conftest import script_output

FRESH_WORKER_CASES = """
from ferropool._runtime.serialize import dump_function

def run(fn, *args):
    return ex.submit(fn, *args).result(timeout=30)

K = 1
def get_k():
    return K, type(K).__name__
def helper():
    return "first helper"
def call_helper():
    return helper()
def with_default(x=1):
    return x
def with_kwdefault(*, x=1):
    return x
def late():
    try:
        return LATE
    except NameError:
        return "missing"
def tagged():
    return getattr(tagged, "tag", None)
ITEMS = [1]
def items():
    return list(ITEMS)
def nested_items():
    return [list(v) for v in NESTED]
NESTED = ([1],)
def counter_closure():
    n = 0
    def read():
        return n
    def bump():
        nonlocal n
        n += 1
    return read, bump
read, bump = counter_closure()
def code_a():
    return "a"
def annotated(x: int = 0) -> str:
    return f"{K}{x}"
def code_b():
    return "b"

with ferropool.ProcessPoolExecutor(1, max_tasks_per_child=1) as ex:
    print("rebind", run(get_k), run(get_k), end=" ")
    K = 2
    print(run(get_k), end=" ")
    K = True  # equal to 1 but not the same value
    print(run(get_k), end=" ")
    K = 1.0
    print(run(get_k))
    print("helper", run(call_helper), end=" | ")
    def helper():
        return "second helper"
    print(run(call_helper))
    print("default", run(with_default), end=" ")
    with_default.__defaults__ = (2,)
    print(run(with_default), end=" ")
    with_kwdefault.__kwdefaults__["x"] = 3
    print(run(with_kwdefault))
    print("late", run(late), end=" ")
    LATE = "defined"
    print(run(late), end=" ")
    del LATE
    print(run(late))
    print("attribute", run(tagged), end=" ")
    tagged.tag = "tagged"
    print(run(tagged))
    print("list", run(items), end=" ")
    ITEMS.append(2)
    print(run(items), end=" ")
    NESTED[0].append(2)
    print(run(nested_items))
    print("closure", run(read), end=" ")
    bump()
    print(run(read))
    print("annotated", run(annotated), run(annotated), end=" ")
    K = 5
    print(run(annotated), end=" ")
    annotated.__defaults__ = (1,)
    print(run(annotated))
    print("code", run(code_a), end=" ")
    code_a.__code__ = code_b.__code__
    print(run(code_a))

def fixed():
    return K
for _ in range(3):
    dump_function(fixed)
print("reused", dump_function(fixed)[0] is dump_function(fixed)[0], dump_function(fixed)[1])
"""


def test_a_changed_dependency_is_pickled_again(tmp_path):
    """A rebound global (also to an equal value of another type), a redefined helper, new
    defaults, a global defined or deleted later, a new attribute, a rebound closure cell, new
    code and a global of an annotated function each reach the next task; a list changed in
    place too, as it is never cached."""
    out, _, detail = script_output(tmp_path, FRESH_WORKER_CASES)
    assert out == [
        "rebind (1, 'int') (1, 'int') (2, 'int') (True, 'bool') (1.0, 'float')",
        "helper first helper | second helper",
        "default 1 2 3",
        "late missing defined missing",
        "attribute None tagged",
        "list [1] [1, 2] [[1, 2]]",
        "closure 0 1",
        "annotated 1.00 1.00 50 51",
        "code a b",
        "reused True 65",
    ], detail


ONE_WORKER_CASES = """
K = 1
def bump_k():
    global K
    K += 1
    return K
def append(x, acc=[]):
    acc.append(x)
    return len(acc)
def set_attribute():
    set_attribute.calls = getattr(set_attribute, "calls", 0) + 1
    return set_attribute.calls
def make_counter():
    n = 0
    def inc():
        nonlocal n
        n += 1
        return n
    return inc
inc = make_counter()
def helper():
    helper.calls = getattr(helper, "calls", 0) + 1
    return helper.calls
def call_helper():
    return helper()

with ferropool.ProcessPoolExecutor(1) as ex:
    print(*[ex.submit(bump_k).result(timeout=30) for _ in range(3)])
    K = 100  # the worker keeps the value its tasks set
    print(ex.submit(bump_k).result(timeout=30))
    print(*[ex.submit(append, i).result(timeout=30) for i in range(3)])
    print(*[ex.submit(set_attribute).result(timeout=30) for _ in range(3)])
    print(*[ex.submit(inc).result(timeout=30) for _ in range(3)])
    print(*[ex.submit(call_helper).result(timeout=30) for _ in range(3)])
"""


def test_a_worker_keeps_its_globals_and_gets_fresh_defaults(tmp_path):
    """In one worker, a ``global`` set by a task lives on (as in a stdlib worker); a mutable
    default, a function attribute (also a helper's) and a closure cell the task rebinds start
    from the parent's value on every task, as before pickles were reused."""
    out, _, detail = script_output(tmp_path, ONE_WORKER_CASES)
    assert out == ["2 3 4", "5", "1 1 1", "1 1 1", "1 1 1", "1 1 1"], detail
