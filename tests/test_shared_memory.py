"""SharedMemory and ShareableList: attach by name, and nothing left in /dev/shm."""

from __future__ import annotations

import ast
import os
import pickle
import signal

import ferropool
import psutil
import pytest
from ferropool import shared_memory
from ferropool.shared_memory import ShareableList, SharedMemory

from tests.conftest import WAIT, run_script, start_spawned, wait_gone

pytestmark = pytest.mark.usefixtures("spawn_resource_tracker")


def exists(name):
    return os.path.exists(f"/dev/shm/{name}")


def write_by_name(name, data):
    shm = SharedMemory(name)
    shm.buf[: len(data)] = data
    shm.close()


def create_and_hang(out, size):
    shm = SharedMemory(create=True, size=size)
    shm.buf[:5] = b"hello"
    out.put((shm.name, shared_memory._watchdog.pid))
    ferropool.Event().wait(WAIT)  # until the test kills this process


def edit_list(name):
    sl = ShareableList(name=name)
    sl[0] = sl[0] + 1
    sl[1] = "done"
    sl.shm.close()


def test_a_child_attaches_by_name_and_writes():
    shm = SharedMemory(create=True, size=64)
    assert shm.name.startswith("psm_") and shm.size == 64
    p = start_spawned(write_by_name, shm.name, b"from child")
    p.join(WAIT)
    assert p.exitcode == 0
    assert bytes(shm.buf[:10]) == b"from child"
    assert exists(shm.name)
    shm.close()
    assert not exists(shm.name)  # the last holder to close unlinks
    shm.unlink()  # the stdlib's close-then-unlink still works


def test_pickling_attaches_by_name():
    shm = SharedMemory(create=True, size=16)
    other = pickle.loads(pickle.dumps(shm))
    other.buf[0] = 42
    assert shm.buf[0] == 42 and repr(other) == f"SharedMemory({shm.name!r}, size=16)"
    shm.close()
    assert exists(shm.name)  # `other` still holds it
    other.close()
    assert not exists(shm.name)


def test_a_held_block_is_never_unlinked_under_its_holder():
    creator = SharedMemory(create=True, size=8)
    holder = SharedMemory(creator.name)
    creator.close()
    assert exists(creator.name)
    holder.buf[0] = 1
    holder.close()
    assert not exists(creator.name)


def test_explicit_unlink_removes_the_name_at_once():
    shm = SharedMemory(create=True, size=8)
    shm.unlink()
    assert not exists(shm.name)
    shm.buf[0] = 7  # the mapping stays usable
    with pytest.raises(FileNotFoundError):
        SharedMemory(shm.name)
    shm.close()


def test_a_killed_creators_block_is_cleaned_up():
    out = ferropool.Queue()
    p = start_spawned(create_and_hang, out, 4096)
    name, watchdog_pid = out.get(timeout=WAIT)
    assert exists(name)
    watchdog = psutil.Process(watchdog_pid)
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    assert wait_gone([watchdog], WAIT) == []
    assert not exists(name)


def test_a_killed_creators_block_waits_for_its_last_holder():
    out = ferropool.Queue()
    p = start_spawned(create_and_hang, out, 4096)
    name, watchdog_pid = out.get(timeout=WAIT)
    held = SharedMemory(name)
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    assert bytes(held.buf[:5]) == b"hello"
    assert exists(name)  # the watchdog waits for us
    held.close()  # the last holder: unlinks it, and the watchdog exits
    assert not exists(name)
    assert wait_gone([psutil.Process(watchdog_pid)], WAIT) == []


def test_bad_arguments():
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        SharedMemory(create=True, size=-1)
    with pytest.raises(ValueError):
        SharedMemory()
    with pytest.raises(FileNotFoundError):
        SharedMemory("psm_ferropool_no_such_block")
    shm = SharedMemory(create=True, size=8)
    with pytest.raises(FileExistsError):
        SharedMemory(shm.name, create=True, size=8)
    view = shm.buf[:4]
    with pytest.raises(BufferError):
        shm.close()
    view.release()
    shm.close()
    with pytest.raises(ValueError):
        shm.buf  # noqa: B018


ODD_NAMES_SCRIPT = """
import signal
from ferropool import shared_memory
from ferropool.shared_memory import SharedMemory

odd = SharedMemory(f"ferro test\\t{os.getpid()} \\n", create=True, size=64)
plain = SharedMemory(create=True, size=64)
first_watchdog = shared_memory._watchdog.pid
os.kill(first_watchdog, signal.SIGKILL)  # whatever killed it, the next block starts another
again = SharedMemory(create=True, size=64)
print(repr(odd.name), plain.name, again.name, first_watchdog, shared_memory._watchdog.pid, sep="\\n", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_names_with_whitespace_and_a_dead_watchdog_leave_nothing_behind(tmp_path):
    # a name with whitespace used to kill the watchdog (a line protocol split on whitespace),
    # the next block raised BrokenPipeError, and after a SIGKILL both stayed in /dev/shm
    result = run_script(tmp_path, ODD_NAMES_SCRIPT)
    assert result.returncode == -signal.SIGKILL, result.stderr
    odd, plain, again, first_watchdog, watchdog = result.stdout.splitlines()
    odd = ast.literal_eval(odd)  # a repr of the name
    assert odd.startswith("ferro test\t") and odd.endswith(" \n")
    assert first_watchdog != watchdog
    try:
        gone = wait_gone([psutil.Process(int(watchdog))], WAIT)
    except psutil.NoSuchProcess:
        gone = []
    assert gone == []
    assert [name for name in (odd, plain, again) if exists(name)] == []


def test_names_are_refused_as_the_stdlib_refuses_them():
    with pytest.raises(OSError, match=r"Invalid argument: '/a/b'") as info:
        SharedMemory("a/b", create=True, size=8)
    assert info.value.errno == 22 and info.value.filename == "/a/b"
    with pytest.raises(ValueError, match="NUL"):
        SharedMemory("a\0b", create=True, size=8)


EXIT_WITH_A_BLOCK_OPEN_SCRIPT = """
from ferropool.shared_memory import SharedMemory

shm = SharedMemory(create=True, size=100)
shm.buf[:2] = b"hi"
print(shm.name)
"""


def test_the_interpreter_exits_with_a_created_block_still_open(tmp_path):
    # closing it from SharedMemory.__del__ at exit used to start a thread, which hung forever
    # on Python 3.11
    result = run_script(tmp_path, EXIT_WITH_A_BLOCK_OPEN_SCRIPT)
    assert result.returncode == 0, result.stderr
    assert not exists(result.stdout.strip())


def test_shareable_list_round_trip_in_a_child():
    sl = ShareableList([1, "text", 2.5, True, b"raw", None])
    assert len(sl) == 6 and list(sl) == [1, "text", 2.5, True, b"raw", None]
    p = start_spawned(edit_list, sl.shm.name)
    p.join(WAIT)
    assert p.exitcode == 0
    assert sl[0] == 2 and sl[1] == "done"
    assert sl[-1] is None
    assert sl.count(2.5) == 1 and sl.index(True) == 3
    with pytest.raises(ValueError):
        sl.index("missing")
    with pytest.raises(IndexError):
        sl[6]
    with pytest.raises(ValueError, match="exceeds"):
        sl[4] = b"far too long for the room it had"
    with pytest.raises(TypeError):
        ShareableList([object()])
    again = pickle.loads(pickle.dumps(sl))
    assert list(again) == list(sl) and "ShareableList" in repr(again)
    assert sl.format.startswith("q")
    again.shm.close()
    sl.shm.close()
    assert not exists(sl.shm.name)
