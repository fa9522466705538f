"""Value, Array, RawValue and RawArray across real processes."""

from __future__ import annotations

import ctypes
import pickle

import ferropool
import pytest
from ferropool import sharedctypes

from tests.conftest import WAIT, run_script, script_output, start_spawned

pytestmark = pytest.mark.usefixtures("spawn_resource_tracker")


def increment(value, n):
    for _ in range(n):
        with value.get_lock():
            value.value += 1


def fill(raw_value, raw_array, array, text):
    raw_value.value = 2.5
    raw_array[:] = [7] * len(raw_array)
    array[0] = -1
    text.value = b"from child"


class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double)]


def test_increments_under_the_lock_from_two_processes_add_up():
    v = ferropool.Value("i", 0)
    procs = [start_spawned(increment, v, 500) for _ in range(2)]
    increment(v, 500)
    for p in procs:
        p.join(WAIT)
        assert p.exitcode == 0
    assert v.value == 1500


def test_writes_in_a_child_are_seen_by_the_parent():
    raw_value = ferropool.RawValue("d", 0.0)
    raw_array = ferropool.RawArray(ctypes.c_int, 4)
    array = ferropool.Array("q", [1, 2, 3])
    text = ferropool.Array("c", 16)
    p = start_spawned(fill, raw_value, raw_array, array, text)
    p.join(WAIT)
    assert p.exitcode == 0
    assert raw_value.value == 2.5
    assert list(raw_array) == [7, 7, 7, 7]
    assert array[:] == [-1, 2, 3]
    assert text.value == b"from child"
    assert text.raw.startswith(b"from child\0")


@pytest.mark.parametrize("typecode", list(sharedctypes.typecode_to_type))
def test_every_typecode(typecode):
    ctype = sharedctypes.typecode_to_type[typecode]
    initial = ctype(b"a" if typecode == "c" else "a" if typecode == "u" else 3).value
    v = ferropool.Value(typecode, initial)
    assert v.value == initial
    a = ferropool.Array(typecode, 3)
    assert len(a) == 3
    assert isinstance(a.get_obj()[0], type(initial))


def test_ctypes_types_and_structures():
    p = ferropool.RawValue(Point, 1, 2.0)
    assert (p.x, p.y) == (1, 2.0)
    q = pickle.loads(pickle.dumps(p))
    q.x = 5
    assert p.x == 5  # same shared memory
    assert isinstance(ferropool.RawValue(ctypes.c_ubyte), ctypes.c_ubyte)


def test_indexing_slicing_and_errors():
    a = ferropool.Array("i", range(5))
    assert a[1] == 1 and a[-1] == 4 and a[1:3] == [1, 2]
    a[1:3] = [9, 9]
    assert a[:] == [0, 9, 9, 3, 4]
    with pytest.raises(IndexError):
        a[5]
    with pytest.raises(IndexError):
        a[5] = 1
    with pytest.raises(TypeError, match="typecode"):
        ferropool.Value("z")
    with pytest.raises(TypeError):
        ferropool.RawArray(int, 3)
    with pytest.raises(ValueError):
        ferropool.RawArray("i", -1)


def test_lock_argument():
    raw = ferropool.Value("i", 1, lock=False)
    assert isinstance(raw, ctypes.c_int)
    lock = ferropool.Lock()
    v = ferropool.Value("i", 1, lock=lock)
    assert v.get_lock() is lock
    with v:
        assert lock._is_mine()
    assert isinstance(ferropool.Value("i").get_lock(), ferropool.RLock)
    with pytest.raises(AttributeError, match="acquire"):
        ferropool.Value("i", lock=object())
    assert v.acquire() and v.release() is None


def test_copy_and_synchronized():
    a = ferropool.RawArray("i", [1, 2])
    b = sharedctypes.copy(a)
    b[0] = 5
    assert a[0] == 1 and b[:] == [5, 2]
    s = sharedctypes.synchronized(a)
    assert s[:] == [1, 2] and s.get_obj() is a
    assert "wrapper" in repr(s)


MAIN_STRUCTURE_SCRIPT = """
import ctypes
from ferropool.sharedctypes import Array, RawValue, Value, copy

class Foo(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int), ("y", ctypes.c_double), ("z", ctypes.c_longlong)]

    def total(self):
        return self.x + int(self.y) + self.z

def double(x, y, foo, arr, string, copied):
    x.value *= 2
    y.value *= 2
    foo.x *= 2
    foo.y *= 2
    string.value *= 2
    for i in range(len(arr)):
        arr[i] *= 2
    copied.z = copied.total()

if __name__ == "__main__":
    for lock in (False, True):
        x, y = Value("i", 7, lock=lock), Value(ctypes.c_double, 1 / 3, lock=lock)
        foo = Value(Foo, 3, 2, lock=lock)
        arr, string = Array("d", range(4), lock=lock), Array("c", 20, lock=lock)
        string.value = b"hello"
        copied = copy(Foo(1, 2.0, 3))
        p = ferropool.Process(target=double, args=(x, y, foo, arr, string, copied))
        p.start()
        p.join(30)
        print(p.exitcode, x.value, round(y.value, 3), foo.x, foo.y, list(arr), string.value, copied.z)
"""


def test_shared_ctypes_and_a_main_structure_go_to_a_child_process(tmp_path):
    # a structure defined in __main__ reaches a child that never runs __main__; the locked
    # wrapper of a structure has its fields as properties, as the stdlib's has
    result = run_script(tmp_path, MAIN_STRUCTURE_SCRIPT)
    assert result.returncode == 0, result.stderr
    expected = "0 14 0.667 6 4.0 [0.0, 2.0, 4.0, 6.0] b'hellohello' 6"
    assert result.stdout.splitlines() == [expected, expected]


INITARGS_MODULE = """
shared = None

def init(*objects):
    global shared
    shared = objects

def task(i):
    counter, raw, arr, point = shared
    with counter.get_lock():
        counter.value += 1
    arr[i] = i * 10
    return raw.value + point.x
"""

INITARGS_SCRIPT = """
import ctypes
from ferropool.sharedctypes import RawArray, RawValue, Value, synchronized
import initargs_module

class Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int)]

if __name__ == "__main__":
    counter, raw, arr = Value("i", 0), RawValue("d", 1.5), RawArray("i", 4)
    point = synchronized(RawValue(Point, 2))
    with ferropool.Pool(2, initializer=initargs_module.init, initargs=(counter, raw, arr, point)) as pool:
        print(pool.map(initargs_module.task, range(4)))
    print(counter.value, list(arr))
"""


def test_shared_ctypes_as_pool_initargs(tmp_path):
    (tmp_path / "initargs_module.py").write_text(INITARGS_MODULE)
    out, _, detail = script_output(tmp_path, INITARGS_SCRIPT)
    assert out == ["[3.5, 3.5, 3.5, 3.5]", "4 [0, 10, 20, 30]"], detail
