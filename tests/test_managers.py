"""ferropool's managers as users meet them: the tutorials' programs, run as scripts.

Each test runs a whole program in a fresh interpreter (``run_program``), as a user would, and
checks what it prints; the dead-client and dead-server cases kill processes of their own.
"""

from __future__ import annotations

import pickle

import ferropool
import psutil
import pytest
from ferropool import managers

from tests.conftest import WAIT, program_report, run_program, start_child


def _ok(result) -> str:
    assert result.returncode == 0, program_report(result)
    return result.stdout


def _prints(tmp_path, source: str) -> list[str]:
    """The lines a script printed, run as a user would (``run_program``); it must exit 0."""
    return _ok(run_program(tmp_path, source)).split("\n")


# ----------------------------------------------------------------------------------------------
# the tutorials' patterns


def test_list_dict_value_array_lock_shared_by_20_processes(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool

        def work(i, shared_list, shared_dict, counter, arr, lock):
            shared_list.append(i)
            shared_dict[i] = i * i
            with lock:
                counter.value += 1
                arr[i % 4] += 1

        if __name__ == "__main__":
            with ferropool.Manager() as manager:
                shared_list = manager.list()
                shared_dict = manager.dict()
                counter = manager.Value("i", 0)
                arr = manager.Array("i", [0, 0, 0, 0])
                lock = manager.Lock()
                procs = [
                    ferropool.Process(target=work, args=(i, shared_list, shared_dict, counter, arr, lock))
                    for i in range(20)
                ]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                print(sorted(shared_list) == list(range(20)))
                print(shared_dict.copy() == {i: i * i for i in range(20)})
                print(counter.value, list(arr[:]))
                print([p.exitcode for p in procs] == [0] * 20)
        """,
    )
    assert out[:4] == ["True", "True", "20 [5, 5, 5, 5]", "True"]


def test_manager_dict_and_queue_in_pool_tasks_and_initializer(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool

        seen = None

        def init(shared):
            global seen
            seen = shared
            shared["init"] = shared.get("init", 0) + 1

        def task(i, d, q):
            d[i] = i + 1
            q.put(i)
            return seen is not None

        if __name__ == "__main__":
            with ferropool.Manager() as manager:
                d = manager.dict()
                q = manager.Queue()
                with ferropool.Pool(2, initializer=init, initargs=(d,)) as pool:
                    results = [pool.apply_async(task, (i, d, q)) for i in range(10)]
                    print(all(r.get(timeout=60) for r in results))
                print(sorted(q.get(timeout=10) for _ in range(10)) == list(range(10)))
                print({k: v for k, v in d.items() if k != "init"} == {i: i + 1 for i in range(10)})
                print(d["init"] >= 1)
        """,
    )
    assert out[:4] == ["True"] * 4


def test_spawned_pool_workers_share_the_parents_authkey_and_use_proxies(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool
        from ferropool import current_process

        def key_and_append(shared):
            shared.append(1)  # the proxy authenticates with the worker's key
            return bytes(current_process().authkey)

        if __name__ == "__main__":
            mine = bytes(current_process().authkey)
            with ferropool.Manager() as manager, ferropool.Pool(2, context="spawn") as pool:
                shared = manager.list()
                keys = pool.map(key_and_append, [shared] * 4)
                print(all(key == mine for key in keys), len(shared))
        """,
    )
    assert out[0] == "True 4"


def test_nested_proxies_are_seen_by_every_process(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool

        def add(d, i):
            d["inner"].append(i)
            d["ns"].hits += 0  # a read and a write through a nested Namespace

        if __name__ == "__main__":
            with ferropool.Manager() as manager:
                d = manager.dict()
                d["inner"] = manager.list()
                d["ns"] = manager.Namespace(hits=0)
                procs = [ferropool.Process(target=add, args=(d, i)) for i in range(5)]
                for p in procs:
                    p.start()
                for p in procs:
                    p.join()
                print(sorted(d["inner"]))
                print(type(d["inner"]).__name__, manager._number_of_objects())
        """,
    )
    assert out[:2] == ["[0, 1, 2, 3, 4]", "ListProxy 3"]


def test_sync_types_through_the_manager(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool, threading

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                ev, cond, sem, bar = m.Event(), m.Condition(), m.BoundedSemaphore(2), m.Barrier(2)
                rl, jq = m.RLock(), m.JoinableQueue()
                t = threading.Thread(target=lambda: (bar.wait(10), ev.set()))
                t.start()
                print(bar.wait(10) in (0, 1), ev.wait(10))
                t.join()
                with cond:
                    print(cond.wait_for(lambda: True, 1))
                print(sem.acquire(), sem.acquire(), sem.acquire(timeout=0.01))
                sem.release(); sem.release()
                try:
                    sem.release()
                except ValueError as exc:
                    print("ValueError", exc)
                with rl:
                    with rl:
                        print("reentrant")
                jq.put(1); jq.get(); jq.task_done(); jq.join()
                print(bar.parties, bar.broken, m.Value("d", 1.5))
        """,
    )
    assert out[:6] == [
        "True True",
        "True",
        "True True False",
        "ValueError Semaphore released too many times",
        "reentrant",
        "2 False Value('d', 1.5)",
    ]


def test_manager_pool_proxy(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                with m.Pool(2) as pool:
                    print(pool.map(abs, [-1, -2, 3]), pool.apply_async(pow, (2, 5)).get(30))
                    print(sorted(pool.imap_unordered(abs, [-4, -5])))
        """,
    )
    assert out[:2] == ["[1, 2, 3] 32", "[4, 5]"]


# ----------------------------------------------------------------------------------------------
# remote managers, registration, the server in this process


def test_remote_manager_with_authkey_from_another_process(tmp_path):
    out = _prints(
        tmp_path,
        """
        import queue, subprocess, sys, threading
        from ferropool.managers import BaseManager

        jobs = queue.Queue()

        class QueueManager(BaseManager):
            pass

        QueueManager.register("get_jobs", callable=lambda: jobs)

        CLIENT = '''
        import sys
        from ferropool.managers import BaseManager
        class QueueManager(BaseManager):
            pass
        QueueManager.register("get_jobs")
        m = QueueManager(address=("127.0.0.1", int(sys.argv[1])), authkey=b"abracadabra")
        m.connect()
        m.get_jobs().put("from another process")
        try:
            QueueManager(address=("127.0.0.1", int(sys.argv[1])), authkey=b"wrong").connect()
        except Exception as exc:
            print(type(exc).__name__)
        '''

        if __name__ == "__main__":
            # the documentation's remote manager: served by this process, used from another
            server = QueueManager(address=("127.0.0.1", 0), authkey=b"abracadabra").get_server()
            threading.Thread(target=server.serve_forever, daemon=True).start()
            host, port = server.address
            print(host)
            client = subprocess.run([sys.executable, "-c", CLIENT, str(port)], capture_output=True, text=True)
            print(client.stdout.strip(), client.returncode)
            print(jobs.get(timeout=10))
            try:
                QueueManager().start()
            except TypeError as exc:
                print("start():", "picklable" in str(exc))
        """,
    )
    assert out[:4] == ["127.0.0.1", "AuthenticationError 0", "from another process", "start(): True"]


def test_registered_types_autoproxy_exposed_and_method_to_typeid(tmp_path):
    out = _prints(
        tmp_path,
        """
        from ferropool.managers import BaseManager, BaseProxy, RemoteError
        import multiprocessing.managers

        class Counter:
            def __init__(self, start=0):
                self.n = start
            def bump(self):
                self.n += 1
                return self.n
            def fail(self):
                raise KeyError("nope")
            def _private(self):
                return "hidden"
            def clone(self):
                return Counter(self.n)

        class CounterProxy(BaseProxy):
            _exposed_ = ("bump", "clone")
            def bump(self):
                return self._callmethod("bump")
            def clone(self):
                return self._callmethod("clone")

        class MyManager(BaseManager):
            pass

        MyManager.register("Counter", Counter)
        MyManager.register("Private", Counter, exposed=("bump", "_private"))
        MyManager.register("Cloning", Counter, CounterProxy, method_to_typeid={"clone": "Counter"})

        if __name__ == "__main__":
            with MyManager() as m:
                c = m.Counter(5)
                print(c.bump(), c.bump(), type(c).__name__)
                try:
                    c.fail()
                except KeyError as exc:
                    print("KeyError", exc)
                try:
                    c._callmethod("_private")
                except RemoteError as exc:
                    print("RemoteError", isinstance(exc, multiprocessing.managers.RemoteError))
                p = m.Private()
                print(p._private())
                k = m.Cloning(10)
                copy = k.clone()
                print(type(copy).__name__, copy.bump(), k.bump())
        """,
    )
    assert out[:5] == [
        "6 7 AutoProxy[Counter]",
        "KeyError 'nope'",
        "RemoteError True",
        "hidden",
        "AutoProxy[Counter] 11 11",
    ]


def test_get_server_serve_forever_in_a_child_and_connect(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool
        from ferropool.managers import SyncManager

        def serve(address, conn):
            manager = SyncManager(address=address, authkey=b"k")
            server = manager.get_server()
            conn.send(server.address)
            server.serve_forever()

        if __name__ == "__main__":
            a, b = ferropool.Pipe()
            p = ferropool.Process(target=serve, args=(("127.0.0.1", 0), b), daemon=True)
            p.start()
            address = a.recv()
            m = SyncManager(address=address, authkey=b"k")
            m.connect()
            d = m.dict(x=1)
            print(d["x"], dict(d))
            p.terminate()
            p.join()
        """,
    )
    assert out[0] == "1 {'x': 1}"


def test_shared_memory_manager_releases_its_blocks(tmp_path):
    out = _prints(
        tmp_path,
        """
        from ferropool.managers import SharedMemoryManager
        from ferropool import shared_memory

        if __name__ == "__main__":
            with SharedMemoryManager() as smm:
                block = smm.SharedMemory(64)
                block.buf[0] = 42
                sl = smm.ShareableList([1, "two", 3.0])
                names = [block.name, sl.shm.name]
                other = shared_memory.SharedMemory(names[0])
                print(other.buf[0], sl[1])
                other.close(); block.close(); sl.shm.close()
            for name in names:
                try:
                    shared_memory.SharedMemory(name)
                    print("left behind")
                except FileNotFoundError:
                    print("gone")
            try:
                SharedMemoryManager().SharedMemory(8)
            except ValueError:
                print("not started")
        """,
    )
    assert out[:4] == ["42 two", "gone", "gone", "not started"]


def test_dummy_manager(tmp_path):
    out = _prints(
        tmp_path,
        """
        from ferropool.dummy import Manager, Pool

        with Manager() as m:
            d = m.dict() if hasattr(m, "dict") else {}
            with Pool(2) as pool:
                pool.map(lambda i: d.__setitem__(i, i), range(4))
            print(sorted(d))
        """,
    )
    assert out[0] == "[0, 1, 2, 3]"


# ----------------------------------------------------------------------------------------------
# dead clients, dead servers, hostile clients


def test_dead_client_holding_a_lock_is_released_with_a_warning(tmp_path):
    result = run_program(
        tmp_path,
        """
        import os, signal, sys, time
        import ferropool

        def hold(lock, held):
            lock.acquire()
            held.set()
            signal.pause()  # holds the lock until the test kills it

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                lock, held = m.Lock(), m.Event()
                p = ferropool.Process(target=hold, args=(lock, held))
                p.start()
                print(held.wait(30))
                print(lock.acquire(timeout=0.05))
                os.kill(p.pid, signal.SIGKILL)
                p.join()
                print(lock.acquire(timeout=30), p.pid)
                lock.release()
        """,
    )
    lines = _ok(result).split("\n")
    assert lines[:2] == ["True", "False"]
    acquired, pid = lines[2].split()
    assert acquired == "True"
    assert f"process {pid} died holding a Lock" in result.stderr


def test_a_thread_ending_does_not_release_its_lock(tmp_path):
    # the stdlib's semantics stand while the process lives: a Lock is not owned by a thread
    out = _prints(
        tmp_path,
        """
        import threading, gc
        import ferropool

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                lock = m.Lock()
                t = threading.Thread(target=lock.acquire)
                t.start(); t.join()
                gc.collect()
                print(lock.acquire(timeout=3))
                lock.release()
                print(lock.acquire(timeout=3))
        """,
    )
    assert out[:2] == ["False", "True"]


def test_killed_server_gives_proxies_an_error_not_a_hang(tmp_path):
    out = _prints(
        tmp_path,
        """
        import os, signal
        import ferropool

        if __name__ == "__main__":
            m = ferropool.Manager()
            d = m.dict(a=1)
            q = m.Queue()
            print(d["a"])
            os.kill(m._process.pid, signal.SIGKILL)
            m._process.join()
            for call in (lambda: d["a"], lambda: q.get(), lambda: d["a"]):
                try:
                    call()
                except (EOFError, ConnectionError) as exc:
                    print(type(exc).__name__ in ("EOFError", "ConnectionRefusedError", "ConnectionResetError",
                                                 "BrokenPipeError"))
            m.shutdown()
        """,
    )
    assert out[:4] == ["1", "True", "True", "True"]


def test_server_dies_with_its_parent(tmp_path):
    child = start_child(
        tmp_path / "parent.py",
        """
        import ferropool, signal
        m = ferropool.Manager()
        print(m._process.pid, flush=True)
        print("waiting", flush=True)
        signal.pause()  # until the test kills it
        """,
        new_session=True,
    )
    with child:
        server = psutil.Process(int(child.stdout.split()[0]))
        child.proc.kill()
        child.proc.wait(WAIT)
        server.wait(WAIT)  # raises psutil.TimeoutExpired if the server outlived its parent
        child.assert_descendants_gone()


def test_hostile_clients_do_not_disturb_the_server(tmp_path):
    out = _prints(
        tmp_path,
        """
        import socket, struct
        import ferropool

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                d = m.dict()
                attackers = []
                for junk in (b"\\x00" * 64, struct.pack("!i", 0x7FFFFFFF), struct.pack("!iQ", -1, 1 << 62),
                             b"GET / HTTP/1.0\\r\\n\\r\\n", b""):
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(m.address)
                    s.recv(256)
                    if junk:
                        s.sendall(junk)
                    attackers.append(s)
                idle = []
                for _ in range(200):
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(m.address)
                    idle.append(s)
                for i in range(100):
                    d[i] = i
                print(len(d), sum(d.values()))
                for s in attackers + idle:
                    s.close()
                print(d.get(99))
        """,
    )
    assert out[:2] == ["100 4950", "99"]


def test_a_blocked_call_holds_up_no_other_client_and_bad_requests_end_only_their_sender(tmp_path):
    # the server's loop runs a dict's calls itself and a call that may block on the connection's
    # own thread: a client waiting in Queue.get, one holding an RLock across dict calls, and
    # authenticated clients sending what is not a request leave the others served
    out = _prints(
        tmp_path,
        """
        import threading
        import ferropool
        from ferropool.connection import Client

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                d, q, rlock = m.dict(), m.Queue(), m.RLock()
                got = []
                waiter = threading.Thread(target=lambda: got.append(q.get(timeout=60)))
                waiter.start()  # its own connection, blocked in the server until the put
                rlock.acquire()
                rlock.acquire()
                for i in range(100):
                    d[i] = i
                rlock.release()
                rlock.release()
                for bad in (b"not a pickle", ("junk",), (None, ["unhashable"], (), {}), (d._id, ["x"], (), {})):
                    c = Client(m.address, authkey=m._authkey)
                    c.send_bytes(bad) if isinstance(bad, bytes) else c.send(bad)
                    try:
                        c.recv()
                    except EOFError:
                        print("dropped")
                    c.close()
                q.put(sum(d.values()))
                waiter.join(timeout=60)
                print(got, len(d), rlock.acquire(timeout=5))
        """,
    )
    assert out[:5] == ["dropped"] * 4 + ["[4950] 100 True"]


def test_manager_start_and_shutdown_leave_no_process(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool, psutil, os
        if __name__ == "__main__":
            servers = []
            for _ in range(3):
                m = ferropool.Manager()
                m.dict()
                servers.append(m._process.pid)
                m.shutdown()
                m.shutdown()  # a second time does nothing
            print([pid for pid in servers if psutil.pid_exists(pid)], ferropool.active_children())
        """,
    )
    assert out[0] == "[] []"


# ----------------------------------------------------------------------------------------------
# in-process API


def test_manager_state_errors():
    manager = managers.SyncManager()
    with pytest.raises(ferropool.ProcessError):
        manager.dict()
    with manager:
        with pytest.raises(ferropool.ProcessError, match="Already started"):
            manager.start()
        with pytest.raises(TypeError, match="cannot be pickled"):
            pickle.dumps(manager)
    with pytest.raises(ferropool.ProcessError, match="shut down"):
        manager.start()


def test_token_and_namespace_reprs_and_pickling():
    token = managers.Token("dict", ("127.0.0.1", 1), "1f")
    assert repr(token) == "Token(typeid='dict', address=('127.0.0.1', 1), id='1f')"
    again = pickle.loads(pickle.dumps(token))
    assert (again.typeid, again.address, again.id) == ("dict", ("127.0.0.1", 1), "1f")
    assert repr(managers.Namespace(b=2, a=1, _c=3)) == "Namespace(a=1, b=2)"


def test_unknown_serializer_and_bad_initializer():
    with pytest.raises(ValueError, match="serializer"):
        managers.BaseManager(serializer="json")
    with pytest.raises(TypeError, match="initializer"):
        managers.SyncManager().start(initializer=3)


def test_proxy_str_repr_deepcopy_and_getvalue():
    import copy

    with ferropool.Manager() as m:
        lst = m.list([1, [2]])
        assert str(lst) == "[1, [2]]"
        assert repr(lst).startswith("<ListProxy object, typeid 'list' at 0x")
        assert copy.deepcopy(lst) == [1, [2]]
        assert lst._getvalue() == [1, [2]]
        lst += [3]
        lst *= 2
        assert len(lst) == 6
        d = m.dict(a=1)
        assert d.keys() == ["a"] and d.items() == [("a", 1)] and list(d) == ["a"]


def test_connections_travel_through_pool_tasks_and_manager_queues(tmp_path):
    out = _prints(
        tmp_path,
        """
        import ferropool

        def answer(conn):
            conn.send(("task", conn.recv()))
            return True

        def relay(q):
            conn = q.get()
            conn.send(("process", conn.recv()))

        if __name__ == "__main__":
            a, b = ferropool.Pipe()
            with ferropool.Pool(1) as pool:
                # a worker first: pickling a connection starts a thread here (the sharer), and
                # a worker spawned from a threaded parent does not get its authkey yet
                pool.apply(abs, (1,))
                result = pool.apply_async(answer, (b,))
                a.send(1)
                print(a.recv(), result.get(30))
            with ferropool.Manager() as m:
                q = m.Queue()
                c, d = ferropool.Pipe()
                q.put(d)
                p = ferropool.Process(target=relay, args=(q,))
                p.start()
                c.send(2)
                print(c.recv())
                p.join()
        """,
    )
    assert out[:2] == ["('task', 1) True", "('process', 2)"]


def test_raised_exceptions_are_not_in_reference_cycles():
    import gc
    import queue
    import weakref

    class FakeConnection:
        def send(self, payload):
            pass

        def recv(self):
            return "#ERROR", queue.Empty()

    with ferropool.Manager() as m:
        q = m.Queue()
        gc.disable()
        try:
            try:
                q.get_nowait()
            except queue.Empty as exc:
                ref = weakref.ref(exc)
            assert ref() is None
            try:
                managers.dispatch(FakeConnection(), None, "get")
            except queue.Empty as exc:
                ref = weakref.ref(exc)
            assert ref() is None
        finally:
            gc.enable()


def test_references_of_ended_client_processes_are_released(tmp_path):
    out = _prints(
        tmp_path,
        """
        import os, signal, time
        import ferropool

        def use(d, l, done):
            d["seen"] = len(l)
            done.set()
            if os.environ.get("KILL_SELF"):
                os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            with ferropool.Manager() as m:
                d = m.dict()
                for kill in ("", "1"):
                    os.environ["KILL_SELF"] = kill
                    l, done = m.list([1, 2]), m.Event()
                    p = ferropool.Process(target=use, args=(d, l, done))
                    p.start()
                    done.wait(30)
                    p.join()
                    del l, done
                    # the child's references go when the server sees it dead; ours at our next call
                    deadline = time.monotonic() + 30
                    while m._number_of_objects() != 1 and time.monotonic() < deadline:
                        d.get("seen")  # a call: sends our pending releases
                    print(m._number_of_objects(), d["seen"])
        """,
    )
    assert out[:2] == ["1 2", "1 2"]
