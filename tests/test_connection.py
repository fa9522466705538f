"""ferropool.Pipe and Connection, in one process and across processes; connection.wait."""

from __future__ import annotations

import array
import os
import socket
import threading

import ferropool
import pytest
from ferropool.connection import Connection, wait

from tests import _process_tasks as tasks
from tests.conftest import WAIT


@pytest.fixture(params=[True, False], ids=["duplex", "simplex"])
def pipe(request):
    """``(reader, writer)``: the two ends of a duplex pipe, or of a one-way pipe."""
    r, w = ferropool.Pipe(duplex=request.param)
    yield r, w
    r.close()
    w.close()


# ----------------------------------------------------------------------------------------------
# sending and receiving


@pytest.mark.parametrize(
    "obj", [None, 0, -1, 2**100, "text", b"\x00bytes", [1, 2, 3], {"a": (1, 2)}, 1.5, set(), ValueError("x")]
)
def test_send_recv_round_trips_objects(pipe, obj):
    r, w = pipe
    w.send(obj)
    got = r.recv()
    assert type(got) is type(obj)
    assert repr(got) == repr(obj)


def test_lambdas_travel_by_value(pipe):
    r, w = pipe
    w.send(lambda x: x + 1)
    assert r.recv()(1) == 2


def test_messages_keep_their_order_and_boundaries(pipe):
    r, w = pipe
    for i in range(100):
        w.send_bytes(bytes([i]) * i)
    assert [r.recv_bytes() for _ in range(100)] == [bytes([i]) * i for i in range(100)]


def test_large_message_across_threads(pipe):
    r, w = pipe
    big = os.urandom(5 * 1024 * 1024 + 3)
    sender = threading.Thread(target=w.send_bytes, args=(big,))
    sender.start()
    assert r.recv_bytes() == big
    sender.join(WAIT)


def test_send_bytes_offset_and_size(pipe):
    r, w = pipe
    w.send_bytes(b"0123456789", 2)
    w.send_bytes(b"0123456789", 2, 3)
    w.send_bytes(bytearray(b"abc"), 3)
    w.send_bytes(memoryview(b"xyz")[1:])
    w.send_bytes(array.array("i", [1, 2]), 4)
    assert r.recv_bytes() == b"23456789"
    assert r.recv_bytes() == b"234"
    assert r.recv_bytes() == b""
    assert r.recv_bytes() == b"yz"
    assert r.recv_bytes() == array.array("i", [2]).tobytes()


@pytest.mark.parametrize(
    ("offset", "size", "message"),
    [
        (-1, None, "offset is negative"),
        (11, None, "buffer length < offset"),
        (0, -1, "size is negative"),
        (5, 6, "buffer length < offset \\+ size"),
    ],
)
def test_send_bytes_bad_offset_or_size_raises_valueerror(pipe, offset, size, message):
    r, w = pipe
    with pytest.raises(ValueError, match=message):
        w.send_bytes(b"0123456789", offset, size)
    assert not r.poll()


def test_recv_bytes_into_with_offset(pipe):
    r, w = pipe
    w.send_bytes(b"hello")
    buf = bytearray(10)
    assert r.recv_bytes_into(buf, 3) == 5
    assert buf == b"\x00\x00\x00hello\x00\x00"


def test_recv_bytes_into_too_small_raises_buffertooshort_with_the_message(pipe):
    r, w = pipe
    w.send_bytes(b"0123456789")
    w.send_bytes(b"next")
    with pytest.raises(ferropool.BufferTooShort) as info:
        r.recv_bytes_into(bytearray(4))
    assert info.value.args[0] == b"0123456789"
    assert r.recv_bytes() == b"next"  # the long message was consumed, the next is intact


def test_recv_bytes_into_bad_offset_raises_valueerror(pipe):
    r, w = pipe
    with pytest.raises(ValueError):
        r.recv_bytes_into(bytearray(4), -1)
    with pytest.raises(ValueError):
        r.recv_bytes_into(bytearray(4), 5)


def test_recv_bytes_longer_than_maxlength_raises_and_stays_readable(pipe):
    r, w = pipe
    w.send_bytes(b"0123456789")
    with pytest.raises(OSError, match="bad message length"):
        r.recv_bytes(maxlength=9)
    assert not r.closed
    assert r.recv_bytes(maxlength=10) == b"0123456789"


def test_negative_maxlength_raises_valueerror(pipe):
    r, _ = pipe
    with pytest.raises(ValueError):
        r.recv_bytes(-1)


def test_unpicklable_object_raises_at_send_and_sends_nothing(pipe):
    r, w = pipe
    with pytest.raises(TypeError):
        w.send(threading.Lock())
    assert not r.poll()
    w.send("after")
    assert r.recv() == "after"


# ----------------------------------------------------------------------------------------------
# end of file, poll, close


def test_eof_after_the_other_end_closes_and_nothing_is_left(pipe):
    r, w = pipe
    w.send("last")
    w.close()
    assert r.poll()
    assert r.recv() == "last"
    with pytest.raises(EOFError):
        r.recv()
    with pytest.raises(EOFError):
        r.recv_bytes()


def test_send_after_the_other_end_closed_raises_brokenpipe(pipe):
    r, w = pipe
    r.close()
    with pytest.raises(BrokenPipeError):
        w.send("nobody")


def test_poll_timeouts(pipe):
    r, w = pipe
    assert r.poll() is False
    assert r.poll(0) is False
    assert r.poll(0.05) is False
    assert r.poll(-1) is False
    w.send(1)
    assert r.poll() is True
    assert r.poll(None) is True
    assert r.recv() == 1


def test_poll_none_blocks_until_a_message_arrives(duplex):
    a, b = duplex
    sender = threading.Timer(0.05, b.send, ("late",))
    sender.start()
    assert a.poll(None) is True
    assert a.recv() == "late"
    sender.join(WAIT)


def test_simplex_ends_go_one_way():
    r, w = ferropool.Pipe(duplex=False)
    with r, w:
        assert (r.readable, r.writable, w.readable, w.writable) == (True, False, False, True)
        with pytest.raises(OSError, match="connection is read-only"):
            r.send(1)
        with pytest.raises(OSError, match="connection is write-only"):
            w.recv()
        with pytest.raises(OSError, match="connection is write-only"):
            w.poll()


def test_duplex_ends_go_both_ways(duplex):
    a, b = duplex
    a.send("to b")
    b.send("to a")
    assert (b.recv(), a.recv()) == ("to b", "to a")
    assert a.readable and a.writable


@pytest.mark.parametrize(
    "use",
    [
        lambda c: c.send(1),
        lambda c: c.recv(),
        lambda c: c.send_bytes(b""),
        lambda c: c.recv_bytes(),
        lambda c: c.recv_bytes_into(bytearray(1)),
        lambda c: c.poll(),
        lambda c: c.fileno(),
    ],
)
def test_closed_connection_raises_oserror(duplex, use):
    a, _ = duplex
    a.close()
    assert a.closed
    with pytest.raises(OSError, match="handle is closed"):
        use(a)


def test_close_twice_and_context_manager():
    a, b = ferropool.Pipe()
    with a as entered:
        assert entered is a
        assert isinstance(a.fileno(), int)
    assert a.closed
    a.close()
    b.close()
    assert "closed" in repr(b)


def test_connection_pickled_outside_a_process_start_loads_once_elsewhere(tmp_path):
    # the sharer thread and its socket live for the rest of the process: a script of its own
    from tests.conftest import program_report, run_program

    result = run_program(
        tmp_path,
        """
        import pickle, ferropool

        def relay(q):
            conn = q.get()
            conn.send(("relayed", conn.recv()))

        if __name__ == "__main__":
            a, b = ferropool.Pipe()
            q = ferropool.Queue()
            p = ferropool.Process(target=relay, args=(q,))
            p.start()
            q.put(b)
            b.close()
            a.send("via a Queue")
            print(a.recv())
            p.join()
            data = pickle.dumps(a)
            twin = pickle.loads(data)
            twin.send_bytes(b"x")
            try:
                pickle.loads(data)
            except OSError as exc:
                print("second load:", "loads once" in str(exc))
        """,
    )
    assert result.returncode == 0, program_report(result)
    assert result.stdout.split("\n")[:2] == ["('relayed', 'via a Queue')", "second load: True"]


def test_connection_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        Connection(-1)
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(ValueError):
        Connection(r, readable=False, writable=False)
    os.close(r)


# ----------------------------------------------------------------------------------------------
# across processes


def test_round_trips_with_a_child(duplex):
    a, b = duplex
    p = ferropool.Process(target=tasks.echo_until_eof, args=(b,))
    p.start()
    b.close()
    for size in (0, 1, 100, 70_000, 3_000_000):
        payload = os.urandom(size)
        a.send_bytes(payload)
        assert a.recv_bytes() == payload
    a.close()
    p.join(WAIT)
    assert p.exitcode == 0


def test_child_inherits_a_simplex_end():
    r, w = ferropool.Pipe(duplex=False)
    with r, w:
        p = ferropool.Process(target=tasks.send, args=(w,), kwargs={"k": "v"})
        p.start()
        w.close()
        assert r.recv() == ((), {"k": "v"})
        p.join(WAIT)
        with pytest.raises(EOFError):
            r.recv()  # the child's copy closed at exit and ours is closed: nothing is left


def test_messages_sent_before_start_are_there_for_the_child(duplex):
    a, b = duplex
    a.send("queued before start")
    p = ferropool.Process(target=tasks.echo_until_eof, args=(b,))
    p.start()
    b.close()
    assert a.recv() == "queued before start"
    a.close()
    p.join(WAIT)


# ----------------------------------------------------------------------------------------------
# wait


def test_wait_returns_ready_objects_in_order(duplex):
    a, b = duplex
    c, d = ferropool.Pipe()
    with c, d:
        assert wait([a, c], timeout=0) == []
        d.send(1)
        b.send(2)
        assert wait([a, c], timeout=WAIT) == [a, c]


def test_wait_accepts_sockets_and_raw_fds(duplex):
    s1, s2 = socket.socketpair()
    r, w = os.pipe()
    try:
        assert wait([s1, r], timeout=0.01) == []
        s2.send(b"x")
        os.write(w, b"y")
        assert wait([s1, r], timeout=WAIT) == [s1, r]
    finally:
        for s in (s1, s2):
            s.close()
        os.close(r)
        os.close(w)


def test_wait_timeout_and_empty_list():
    assert wait([], timeout=0.01) == []
    with pytest.raises(ValueError):
        wait([])


def test_wait_blocks_until_a_child_sends(duplex):
    a, b = duplex
    p = ferropool.Process(target=tasks.send, args=(b, "from child"))
    p.start()
    assert wait([a], timeout=None) == [a]
    assert a.recv() == (("from child",), {})
    p.join(WAIT)


def test_close_from_another_thread_ends_a_blocked_recv(duplex):
    a, _ = duplex
    outcome = []
    receiver = threading.Thread(target=lambda: outcome.append(pytest.raises(OSError, a.recv)))
    receiver.start()
    a.close()
    receiver.join(WAIT)
    assert not receiver.is_alive(), "recv() stayed blocked after its connection was closed"
    assert outcome


def test_a_send_interrupted_mid_message_leaves_the_connection_unable_to_send(duplex):
    """The peer holds part of a message, so sending more would corrupt the stream: further sends
    raise instead. The message is too big for the socket, so the interrupt always finds the send
    past its first packet, whenever it comes."""
    import signal

    a, b = duplex

    class Interrupted(Exception):
        pass

    def interrupt(*_):
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, interrupt)
    timer = threading.Timer(0.2, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
    try:
        timer.start()
        with pytest.raises(Interrupted):
            a.send_bytes(bytes(16 << 20))
    finally:
        timer.cancel()
        timer.join(WAIT)
        signal.signal(signal.SIGUSR1, previous)
    with pytest.raises(OSError, match="interrupted in the middle of a message"):
        a.send(1)
    b.send("the other direction still works")
    assert a.recv() == "the other direction still works"


def test_a_blocking_read_of_fileno_waits_as_on_a_stdlib_pipe(pipe):
    """Code that reads the descriptor itself (``reduction.recv_handle`` does) blocks until data
    comes, however long that takes: the socket has no timeout of its own."""
    r, w = pipe
    got = []
    done = threading.Event()

    def reader():
        with socket.socket(fileno=os.dup(r.fileno())) as raw:
            try:
                got.append(raw.recv(64))
            except OSError as exc:  # before the fix: EAGAIN after the engine's 50 ms slice
                got.append(exc)
        done.set()

    thread = threading.Thread(target=reader)
    thread.start()
    # several of the 50 ms slices a ferropool receive waits in before it looks at signals
    assert not done.wait(0.3), f"the read returned before anything was sent: {got}"
    w.send_bytes(b"x")
    assert done.wait(WAIT)
    thread.join(WAIT)
    assert isinstance(got[0], bytes) and got[0].endswith(b"x"), got
