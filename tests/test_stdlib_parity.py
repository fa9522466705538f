"""Documented stdlib behaviours that CPython's own suite checks, as a user's script meets them:
contexts, a child's start method, log level and atexit handlers, ShareableList slots, and
``empty()`` on closed queues."""

from __future__ import annotations

import pytest

from tests.conftest import program_output

pytestmark = pytest.mark.timeout(120)


def test_contexts_are_one_per_method_and_children_learn_theirs(tmp_path):
    out, _, detail = program_output(
        tmp_path,
        """
        import ferropool as mp

        def report(conn):
            conn.send(mp.get_start_method(allow_none=True))

        if __name__ == "__main__":
            for method in ("fork", "spawn", "forkserver"):
                ctx = mp.get_context(method)
                assert ctx is mp.get_context(method) and ctx.get_context() is ctx
                try:
                    ctx.set_start_method("spawn")
                except ValueError:
                    pass
                else:
                    raise AssertionError("a context's method was changed")
                reader, writer = ctx.Pipe(duplex=False)
                p = ctx.Process(target=report, args=(writer,))
                p.start()
                writer.close()
                print(type(ctx).__name__, ctx.Process.__name__, reader.recv())
                p.join()
        """,
    )
    assert out == [
        "ForkContext ForkProcess fork",
        "SpawnContext SpawnProcess spawn",
        "ForkServerContext ForkServerProcess forkserver",
    ], detail


def test_a_child_gets_the_loggers_level_and_runs_its_own_atexit_handlers(tmp_path):
    out, _, detail = program_output(
        tmp_path,
        """
        import atexit, logging, ferropool as mp

        atexit.register(print, "parent handler")

        def child(conn):
            atexit.register(print, "child handler", flush=True)
            conn.send(mp.get_logger().getEffectiveLevel())

        if __name__ == "__main__":
            mp.get_logger().setLevel(32)
            reader, writer = mp.Pipe(duplex=False)
            p = mp.Process(target=child, args=(writer,))
            p.start()
            level = reader.recv()
            p.join()  # the child's handler has written by now
            print("level", level, flush=True)
        """,
    )
    assert out == ["child handler", "level 32", "parent handler"], detail


def test_shareable_list_slots_hold_as_much_as_the_stdlibs(tmp_path):
    out, _, detail = program_output(
        tmp_path,
        """
        import pickle
        from ferropool import shared_memory

        sl = shared_memory.ShareableList(range(10))
        try:
            other = pickle.loads(pickle.dumps(sl))
            other[4] = "shorter"  # 7 bytes in an int's 8-byte slot, as the stdlib allows
            sl[3] = "newvalue"
            print(sl[4], other[3], other[9])
            try:
                sl[5] = "ninebytes"
            except ValueError as exc:
                print("ValueError", exc)
        finally:
            sl.shm.close()
            other.shm.close()
            sl.shm.unlink()
        """,
    )
    assert out == ["shorter newvalue 9", "ValueError bytes/str item exceeds available storage"], detail


def test_empty_on_a_closed_queue(tmp_path):
    out, _, detail = program_output(
        tmp_path,
        """
        import ferropool as mp

        for cls in (mp.Queue, mp.JoinableQueue):
            q = cls()
            q.close()
            print(cls.__name__, "unused", q.empty())
            q = cls()
            q.put("x")
            q.close()
            q.join_thread()
            try:
                q.empty()
            except OSError as exc:
                print(cls.__name__, "used", exc)
        q = mp.SimpleQueue()
        q.close()
        try:
            q.empty()
        except OSError as exc:
            print("SimpleQueue", exc)
        """,
    )
    assert out == [
        "Queue unused True",
        "Queue used handle is closed",
        "JoinableQueue unused True",
        "JoinableQueue used handle is closed",
        "SimpleQueue handle is closed",
    ], detail
