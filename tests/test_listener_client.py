"""ferropool.connection's Listener and Client: the stdlib's wire format and handshake, both ways.

Interop runs the stdlib's ``multiprocessing.connection`` in the same process (threads) and, for
the other Python versions found on the machine, in a subprocess of that interpreter.
"""

from __future__ import annotations

import glob
import multiprocessing
import multiprocessing.connection as std
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading

import pytest
from ferropool import connection

from tests.conftest import WAIT

FAMILY_ADDRESSES = ["AF_UNIX", "AF_INET", "abstract"]


def _address(kind: str, tmp_path) -> object:
    if kind == "AF_INET":
        return ("127.0.0.1", 0)
    if kind == "abstract":
        return f"\0ferropool-test-{os.getpid()}-{os.urandom(4).hex()}"
    return str(tmp_path / "sock")


class Peer(threading.Thread):
    """Runs ``fn`` in a thread; ``result()`` returns its value or raises its exception."""

    def __init__(self, fn) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.value = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.value = self.fn()
        except BaseException as exc:
            self.error = exc

    def result(self):
        self.join(WAIT)
        assert not self.is_alive(), "the peer thread did not finish"
        if self.error is not None:
            raise self.error
        return self.value


@pytest.fixture
def linked():
    """``(a, b, listener)``: an accepted connection, its Client end, and their ``Listener``."""
    with connection.Listener() as listener:
        a, b = connected(listener)
        with a, b:
            yield a, b, listener


def connected(listener):
    """``(accepted, client)``: both ends of a connection to ``listener``, its Client in a thread."""
    peer = Peer(lambda: connection.Client(listener.address))
    return listener.accept(), peer.result()


# ----------------------------------------------------------------------------------------------
# interop in both directions


@pytest.mark.parametrize("kind", FAMILY_ADDRESSES)
@pytest.mark.parametrize("authkey", [None, b"secret"], ids=["no-key", "key"])
def test_stdlib_client_talks_to_ferropool_listener(kind, authkey, tmp_path):
    with connection.Listener(_address(kind, tmp_path), authkey=authkey) as listener:

        def client():
            with std.Client(listener.address, authkey=authkey) as c:
                c.send({"n": 1, "data": b"x" * 70000})
                return c.recv()

        peer = Peer(client)
        with listener.accept() as conn:
            got = conn.recv()
            conn.send(("ok", got["n"] + 1, len(got["data"])))
        assert peer.result() == ("ok", 2, 70000)


@pytest.mark.parametrize("kind", FAMILY_ADDRESSES)
@pytest.mark.parametrize("authkey", [None, b"secret"], ids=["no-key", "key"])
def test_ferropool_client_talks_to_stdlib_listener(kind, authkey, tmp_path):
    with std.Listener(_address(kind, tmp_path), authkey=authkey) as listener:

        def server():
            with listener.accept() as c:
                c.send_bytes(c.recv_bytes() * 2)
                c.send(c.recv() + 1)

        peer = Peer(server)
        with connection.Client(listener.address, authkey=authkey) as conn:
            conn.send_bytes(b"ab")
            assert conn.recv_bytes() == b"abab"
            conn.send(41)
            assert conn.recv() == 42
        peer.result()


def _other_pythons() -> list[str]:
    """Interpreters of the other supported versions: pyenv's, else ``python3.X`` on PATH."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = []
    for version in ("3.10", "3.11", "3.12", "3.13"):
        if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
            continue
        candidates = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python"), reverse=True)
        candidates.append(shutil.which(f"python{version}") or "")
        for exe in candidates:
            if exe and subprocess.run([exe, "-c", "pass"], capture_output=True).returncode == 0:
                found.append(exe)
                break
    return found


@pytest.mark.parametrize("python", _other_pythons() or [pytest.param(None, marks=pytest.mark.skip("none found"))])
def test_interop_with_other_python_versions(python):
    # 3.12 and later answer with {sha256}; 3.11 and older with a bare HMAC-MD5: both accepted
    with connection.Listener(("127.0.0.1", 0), authkey=b"k") as listener:
        code = (
            "import sys, multiprocessing.connection as mc\n"
            f"c = mc.Client(('127.0.0.1', {listener.address[1]}), authkey=b'k')\n"
            "c.send(c.recv() + 1)\n"
            "l = mc.Listener(('127.0.0.1', 0), authkey=b'k')\n"
            "c.send(l.address[1])\n"
            "d = l.accept(); d.send(d.recv() * 2); d.close(); l.close(); c.close()\n"
        )
        proc = subprocess.Popen([python, "-c", code])
        try:
            with listener.accept() as conn:
                conn.send(41)
                assert conn.recv() == 42
                port = conn.recv()
                with connection.Client(("127.0.0.1", port), authkey=b"k") as back:
                    back.send(21)
                    assert back.recv() == 42
            assert proc.wait(WAIT) == 0
        finally:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------------------
# authentication


def test_wrong_authkey_fails_on_both_sides_and_listener_goes_on():
    with connection.Listener(authkey=b"right") as listener:
        peer = Peer(lambda: std.Client(listener.address, authkey=b"wrong"))
        with pytest.raises(multiprocessing.AuthenticationError):
            listener.accept()
        with pytest.raises(multiprocessing.AuthenticationError):
            peer.result()
        # the listener still serves a client with the right key
        good = Peer(lambda: connection.Client(listener.address, authkey=b"right"))
        with listener.accept() as conn, good.result() as client:
            client.send("hi")
            assert conn.recv() == "hi"


def test_client_with_a_key_against_a_listener_without_one_fails():
    with std.Listener() as listener:
        peer = Peer(lambda: listener.accept().send("not a challenge"))
        with pytest.raises(multiprocessing.AuthenticationError, match="expected challenge"):
            connection.Client(listener.address, authkey=b"key")
        peer.result()


def test_authentication_error_is_the_stdlibs():
    assert connection.AuthenticationError is multiprocessing.AuthenticationError


def test_authkey_must_be_bytes():
    with pytest.raises(TypeError, match="authkey"):
        connection.Listener(authkey="text")
    with pytest.raises(TypeError, match="authkey"):
        connection.Client(("127.0.0.1", 1), authkey="text")


def _raw_client(address) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(address)
    return sock


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        struct.pack("!i", 0x7FFFFFFF),  # a 2 GiB message announced during the handshake
        struct.pack("!iQ", -1, 1 << 62),  # an 8-byte length of 4 EiB
        struct.pack("!i", -5),  # a negative length
    ],
    ids=["http", "2GiB", "4EiB", "negative"],
)
def test_junk_before_authentication_is_refused_without_unpickling_or_allocating(junk):
    with connection.Listener(authkey=b"key") as listener:
        accepting = Peer(listener.accept)
        sock = _raw_client(listener.address)
        try:
            assert sock.recv(256)[4:].startswith(b"#CHALLENGE#")
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            with pytest.raises((multiprocessing.AuthenticationError, OSError, EOFError)):
                accepting.result()
        finally:
            sock.close()


def test_half_open_client_does_not_block_other_accepts_forever():
    # a client that connects and says nothing holds accept() until it closes: the stdlib's
    # behaviour, bounded here by the client's close
    with connection.Listener(authkey=b"key") as listener:
        silent = _raw_client(listener.address)
        silent.close()
        with pytest.raises((EOFError, OSError)):
            listener.accept()


# ----------------------------------------------------------------------------------------------
# messages, addresses, lifecycle


def test_messages_bytes_into_and_buffer_too_short(linked):
    a, b, listener = linked
    b.send_bytes(b"0123456789", 2, 3)
    assert a.recv_bytes() == b"234"
    b.send_bytes(b"")
    assert a.recv_bytes() == b""
    buf = bytearray(8)
    b.send_bytes(b"abc")
    assert a.recv_bytes_into(buf, 2) == 3
    assert bytes(buf) == b"\0\0abc\0\0\0"
    b.send_bytes(b"x" * 20)
    with pytest.raises(multiprocessing.BufferTooShort) as info:
        a.recv_bytes_into(bytearray(4))
    assert info.value.args[0] == b"x" * 20
    with pytest.raises(ValueError):
        b.send_bytes(b"abc", 4)
    assert not a.poll(0)
    b.send(None)
    assert a.poll(WAIT)
    assert connection.wait([a, listener], WAIT) == [a]
    assert a.recv() is None
    b.close()
    with pytest.raises(EOFError):
        a.recv()


def test_recv_bytes_maxlength_closes_the_connection(linked):
    a, b, _ = linked
    b.send_bytes(b"y" * 100)
    with pytest.raises(OSError, match="bad message length"):
        a.recv_bytes(10)
    assert a.closed


def test_large_message_round_trips(linked):
    big = os.urandom(3 * 1024 * 1024 + 7)
    a, b, _ = linked
    sender = Peer(lambda: b.send_bytes(big))
    assert a.recv_bytes() == big
    sender.result()


def test_listener_address_family_and_last_accepted(tmp_path):
    path = str(tmp_path / "s")
    with connection.Listener(path) as listener:
        assert listener.address == path
        peer = Peer(lambda: connection.Client(path))
        with listener.accept(), peer.result():
            pass
        assert os.path.exists(path)
    assert not os.path.exists(path), "close() removes the socket file"
    with connection.Listener(("127.0.0.1", 0)) as listener:
        host, port = listener.address
        assert host == "127.0.0.1" and port > 0
        a, b = connected(listener)
        with a, b:
            assert listener.last_accepted[0] == "127.0.0.1"
    assert connection.families == ["AF_UNIX", "AF_INET"]


def test_bad_families_and_addresses():
    with pytest.raises(ValueError, match="AF_PIPE"):
        connection.Listener(r"\\.\pipe\x")
    with pytest.raises(ValueError, match="not recognized"):
        connection.Listener(family="AF_BOGUS")
    with pytest.raises(ValueError, match="unrecognized"):
        connection.Client(12)


def test_binding_a_used_address_fails():
    with connection.Listener() as listener, pytest.raises(OSError):
        connection.Listener(listener.address)


def test_accept_after_close_raises():
    listener = connection.Listener()
    listener.close()
    with pytest.raises(OSError):
        listener.accept()


def test_connection_passes_into_a_process(linked):
    import ferropool

    from tests import _process_tasks as tasks

    a, b, _ = linked
    p = ferropool.Process(target=tasks.echo_until_eof, args=(b,))
    p.start()
    b.close()
    a.send("ping")
    assert a.recv() == "ping"
    a.close()
    p.join(WAIT)
    assert p.exitcode == 0


def test_import_does_not_load_listener_until_used():
    code = "import ferropool.connection, sys; print('ferropool._runtime.listener' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------------------------
# reduction.send_handle / recv_handle


@pytest.mark.parametrize("make", ["pipe", "listener"])
def test_send_handle_and_recv_handle(make, tmp_path):
    from ferropool import reduction

    if make == "pipe":
        import ferropool

        a, b = ferropool.Pipe()
    else:
        with connection.Listener() as listener:
            a, b = connected(listener)
    path = tmp_path / "f"
    with a, b, open(path, "wb") as f:
        reduction.send_handle(a, f.fileno(), os.getpid())
        a.send("after the handle")  # messages after it are read as usual
        fd = reduction.recv_handle(b)
        assert fd != f.fileno()
        os.write(fd, b"via SCM_RIGHTS")
        os.close(fd)
        assert b.recv() == "after the handle"
        a.send_bytes(b"x")  # a message with no descriptor
        with pytest.raises(RuntimeError):
            reduction.recv_handle(b)
    assert path.read_bytes() == b"via SCM_RIGHTS"


class _Scripted:
    """A connection whose peer's messages are given; what is sent is kept."""

    def __init__(self, *incoming: bytes) -> None:
        self.incoming = list(incoming)
        self.sent: list[bytes] = []

    def recv_bytes(self, maxlength=None) -> bytes:
        return self.incoming.pop(0)

    def send_bytes(self, data) -> None:
        self.sent.append(bytes(data))


@pytest.mark.parametrize("first", [b"{", b"x"])
def test_legacy_challenge_is_told_by_its_length_not_its_first_byte(first):
    # Python 3.11's challenge is 20 random bytes, which may start with "{"
    import hmac

    challenge = first + b"}" + os.urandom(18)
    conn = _Scripted(connection.CHALLENGE + challenge, connection.WELCOME)
    connection.answer_challenge(conn, b"key")
    assert conn.sent == [hmac.new(b"key", challenge, "md5").digest()]


def test_legacy_answer_starting_with_a_brace_is_read_as_legacy():
    # a 16-byte HMAC-MD5 answer may start with "{"; the digest protocol's answers are longer
    from ferropool._runtime import listener as _listener

    answer = b"{sha256}" + os.urandom(8)
    assert _listener._digest_and_payload(answer) == ("md5", answer)
    assert _listener._digest_and_payload(b"{sha256}" + b"m" * 32) == ("sha256", b"m" * 32)
    with pytest.raises(multiprocessing.AuthenticationError):
        _listener._digest_and_payload(b"{md4}" + b"m" * 32)
