"""Queue, SimpleQueue and JoinableQueue across real processes, killed producers, Ctrl-C."""

from __future__ import annotations

import os
import queue
import signal
import threading
import warnings

import ferropool
import pytest

from tests.conftest import WAIT, script_output, start_child, start_spawned

pytestmark = pytest.mark.usefixtures("spawn_resource_tracker")


def produce(q, items):
    for item in items:
        q.put(item)


def consume_and_mark_done(q, n, out):
    for _ in range(n):
        out.put(q.get(timeout=WAIT) * 2)
        q.task_done()


def put_forever(q, started):
    started.set()
    i = 0
    while True:
        # every 50th message spans several frames of the ring
        q.put(("big", i, b"x" * 40_000) if i % 50 == 0 else ("small", i))
        i += 1


def pool_task_put(q, x):
    q.put(x * x)
    return x


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ferropool.Queue, ferropool.SimpleQueue, ferropool.JoinableQueue])
def test_items_cross_processes_in_order(cls):
    q = cls()
    items = [0, "text", None, (1, 2.5), {"k": [1, 2]}, b"\0" * 100_000, list(range(1000))]
    p = start_spawned(produce, q, items)
    assert [q.get() for _ in items] == items
    p.join(WAIT)
    assert p.exitcode == 0
    assert q.empty()


def test_messages_larger_than_the_ring_travel_in_parts():
    q = ferropool.Queue(capacity=64 * 1024)
    big = os.urandom(1_000_000)
    p = start_spawned(produce, q, [big, 1, big])
    assert q.get(timeout=WAIT) == big
    assert q.get(timeout=WAIT) == 1
    assert q.get(timeout=WAIT) == big
    p.join(WAIT)


def test_put_does_not_wait_for_a_reader():
    # more than the ring holds, with no reader yet: the stdlib buffers, so must we
    q = ferropool.Queue(capacity=64 * 1024)
    n = 20_000
    for i in range(n):
        q.put(i)
    q.put(b"y" * 500_000)
    assert q.qsize() == n + 1
    assert [q.get(timeout=WAIT) for _ in range(n)] == list(range(n))
    assert q.get(timeout=WAIT) == b"y" * 500_000
    q.close()
    q.join_thread()


def test_empty_full_and_timeouts():
    q = ferropool.Queue(maxsize=2)
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2 and not q.empty()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_nowait(3)
    assert q.get() == 1
    q.put(3)
    assert [q.get(), q.get()] == [2, 3]
    assert q.empty() and not q.full()


def test_close_refuses_put_and_get():
    q = ferropool.Queue()
    with pytest.raises(AssertionError, match="not closed"):
        q.join_thread()
    q.put(1)
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(2)
    with pytest.raises(ValueError, match="closed"):
        q.get()
    q.join_thread()
    q.cancel_join_thread()


def test_an_unpicklable_object_raises_at_put_and_loses_nothing():
    q = ferropool.Queue()
    q.put("before")
    with pytest.raises(Exception, match="pickle"):
        q.put(threading.Lock())
    q.put("after")
    assert [q.get(), q.get()] == ["before", "after"]
    assert q.empty()


FEEDER_HOOK_SCRIPT = """
import ferropool.queues

class NotPicklable:
    def __reduce__(self):
        raise AttributeError("no pickling")

class SafeQueue(ferropool.queues.Queue):
    @staticmethod
    def _on_queue_feeder_error(e, obj):
        print("hook", type(e).__name__, type(obj).__name__, flush=True)

q = SafeQueue(ctx=ferropool.get_context())
q.put(NotPicklable())
q.put(True)
print("got", q.get(timeout=30), q.empty())
try:
    ferropool.Queue().put(NotPicklable())
except AttributeError as e:
    print("plain queue raises:", e)
"""


def test_a_subclass_hook_receives_what_put_could_not_pickle(tmp_path):
    out, _, detail = script_output(tmp_path, FEEDER_HOOK_SCRIPT)
    assert out == [
        "hook AttributeError NotPicklable",
        "got True True",
        "plain queue raises: no pickling",
    ], detail


def test_lambdas_travel_by_value():
    q = ferropool.Queue()
    q.put(lambda x: x + 1)
    assert q.get()(1) == 2


def test_joinable_queue_join_waits_for_task_done():
    q, out = ferropool.JoinableQueue(), ferropool.Queue()
    for i in range(5):
        q.put(i)
    assert q.join(timeout=0.05) is False
    p = start_spawned(consume_and_mark_done, q, 5, out)
    assert q.join(timeout=WAIT) is True
    assert sorted(out.get(timeout=WAIT) for _ in range(5)) == [0, 2, 4, 6, 8]
    with pytest.raises(ValueError, match="too many times"):
        q.task_done()
    p.join(WAIT)


def test_simple_queue_interface():
    q = ferropool.SimpleQueue()
    assert q.empty()
    q.put("a")
    assert not q.empty()
    assert q.get() == "a"
    q.close()
    with pytest.raises(ValueError):
        q.put("b")


def test_a_killed_producer_never_corrupts_the_queue():
    q, started = ferropool.Queue(capacity=64 * 1024), ferropool.Event()
    p = start_spawned(put_forever, q, started)
    assert started.wait(WAIT)
    seen = [q.get(timeout=WAIT) for _ in range(200)]
    os.kill(p.pid, signal.SIGKILL)
    p.join(WAIT)
    # drain what was published before the kill; every message is whole and in order
    while True:
        try:
            seen.append(q.get(timeout=0.2))
        except queue.Empty:
            break
    assert [m[1] for m in seen] == list(range(len(seen)))
    assert all(m[2] == b"x" * 40_000 for m in seen if m[0] == "big")
    # the next producer takes the dead one's lock over if it died holding it (with a warning
    # naming it), and the queue works as before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q.put(("after", 1))
        q.put(("after", 2))
    assert all(f"process {p.pid} died" in str(w.message) for w in caught)
    assert [q.get(timeout=WAIT), q.get(timeout=WAIT)] == [("after", 1), ("after", 2)]
    assert q.empty()


def test_queues_travel_to_pool_workers():
    q = ferropool.Queue()
    with ferropool.ProcessPoolExecutor(max_workers=2) as ex:
        assert sorted(ex.map(pool_task_put, [q] * 4, range(4), timeout=WAIT)) == [0, 1, 2, 3]
    assert sorted(q.get(timeout=WAIT) for _ in range(4)) == [0, 1, 4, 9]


def test_queues_travel_to_pool_tasks():
    q = ferropool.Queue()
    with ferropool.Pool(2) as pool:
        assert sorted(pool.starmap(pool_task_put, [(q, x) for x in range(4)])) == [0, 1, 2, 3]
    assert sorted(q.get(timeout=WAIT) for _ in range(4)) == [0, 1, 4, 9]


def test_a_bad_handle_is_refused():
    with pytest.raises(OSError):
        ferropool.Queue(handle=(os.getpid(), 9999, 1 << 20, 1, 0))


# --------------------------------------------------------------------------------------------
# Ctrl-C


BLOCKED = """
import ferropool
obj = ferropool.{make}
print("blocking", flush=True)
obj.{call}
"""


@pytest.mark.parametrize(
    "make,call",
    [
        ("Queue()", "get()"),
        ("Queue(maxsize=1); obj.put(1)", "put(2)"),
        ("Lock(); obj.acquire()", "acquire()"),
        ("Semaphore(0)", "acquire(timeout=60)"),
        ("Event()", "wait()"),
        ("Barrier(2)", "wait()"),
        ("JoinableQueue(); obj.put(1)", "join()"),
        ("Condition(); obj.acquire()", "wait()"),
        ("SimpleQueue()", "get()"),
    ],
)
def test_ctrl_c_interrupts_a_blocked_call(tmp_path, make, call):
    with start_child(tmp_path / "blocked.py", BLOCKED.format(make=make, call=call), "blocking\n") as child:
        child.proc.send_signal(signal.SIGINT)
        child.exit_within(WAIT)
        assert "KeyboardInterrupt" in child.stderr, child.report()
        assert child.proc.returncode != 0, child.report()


def test_threads_putting_at_once_while_the_ring_is_full():
    # the backlog and the direct path race between threads of one process: nothing deadlocks,
    # nothing is lost, and each thread's items keep their order
    q = ferropool.Queue(capacity=4096)

    def put_many(tag):
        for i in range(2000):
            q.put((tag, i))

    threads = [threading.Thread(target=put_many, args=(tag,)) for tag in range(4)]
    for t in threads:
        t.start()
    got = [q.get(timeout=WAIT) for _ in range(8000)]
    for t in threads:
        t.join(WAIT)
    for tag in range(4):
        assert [i for g, i in got if g == tag] == list(range(2000))
    assert q.empty()


def test_joinable_join_counts_items_still_waiting_in_the_backlog():
    q = ferropool.JoinableQueue(capacity=4096)
    for i in range(1000):
        q.put(i)
    assert q._unfinished() == 1000
    assert q.join(timeout=0.01) is False
    for _ in range(1000):
        q.get(timeout=WAIT)
        q.task_done()
    assert q.join(timeout=WAIT) is True


class _Celsius:
    def __init__(self, degrees):
        self.degrees = degrees


def test_a_queue_pickles_by_the_same_policy_as_a_pool_registered_reducers_included():
    # one pickling policy (_runtime/serialize.py): a reducer registered with
    # reduction.register applies to what a Queue ships, as to pool calls and Connections
    from ferropool import reduction

    reduction.ForkingPickler.register(_Celsius, lambda c: (float, (c.degrees,)))
    try:
        q = ferropool.Queue()
        q.put(_Celsius(21.5))
        assert q.get(timeout=WAIT) == 21.5
        q.close()
        q.join_thread()
    finally:
        del reduction.ForkingPickler._extra_reducers[_Celsius]
