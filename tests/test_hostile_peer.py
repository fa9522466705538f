"""Bytes from a peer that is not ferropool, and bad arguments at the native boundary: each gets
the stdlib's exception, never a panic, a hang or a message longer than was asked for."""

from __future__ import annotations

import os
import socket
import struct
import sys

import pytest
from ferropool import _core
from ferropool.connection import Connection


@pytest.fixture
def raw_peer():
    """``(conn, peer)``: a ferropool ``Connection`` and the raw socket at its other end."""
    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn = Connection(ours.detach())
    yield conn, peer
    conn.close()
    peer.close()


def header(length: int) -> bytes:
    return struct.pack("<Q", length)


def test_send_bytes_offset_and_size_overflow_raise_valueerror(raw_peer):
    conn, _ = raw_peer
    for offset, size in [(1, sys.maxsize), (sys.maxsize, 1), (sys.maxsize, sys.maxsize), (4, None), (0, 4)]:
        with pytest.raises(ValueError):
            conn.send_bytes(b"abc", offset, size)
    with pytest.raises(ValueError, match="offset is negative"):
        conn.send_bytes(b"abc", -1)
    with pytest.raises(ValueError, match="size is negative"):
        conn.send_bytes(b"abc", 0, -1)
    with pytest.raises(OverflowError):
        conn.send_bytes(b"abc", 1, sys.maxsize + 1)
    conn.send_bytes(bytearray(b"abc"), 1, 2)


def test_first_packet_longer_than_its_header_says(raw_peer):
    conn, peer = raw_peer
    peer.send(header(3) + b"0123456789")
    with pytest.raises(OSError, match="bad message length"):
        conn.recv_bytes(maxlength=3)


def test_continuation_packet_longer_than_the_rest_of_the_message(raw_peer):
    conn, peer = raw_peer
    peer.send(header(10) + b"01234")
    peer.send(b"56789" + b"x" * 100)
    with pytest.raises(OSError, match="bad message length"):
        conn.recv_bytes()


def test_packet_longer_than_any_ferropool_packet(raw_peer):
    conn, peer = raw_peer
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    peer.send(header(200_000) + b"y" * 200_000)
    with pytest.raises(OSError, match="bad message length"):
        conn.recv_bytes()


def test_a_huge_stated_length_costs_nothing_until_the_bytes_come(raw_peer):
    conn, peer = raw_peer
    peer.send(header(1 << 62) + b"abc")
    peer.close()
    with pytest.raises(EOFError):
        conn.recv_bytes()


def test_packet_without_a_header(raw_peer):
    conn, peer = raw_peer
    peer.send(b"abc")
    with pytest.raises(OSError, match="without a header"):
        conn.recv_bytes()


def test_well_formed_raw_messages_still_arrive(raw_peer):
    conn, peer = raw_peer
    peer.send(header(5) + b"hello")
    peer.send(header(7) + b"abc")
    peer.send(b"defg")
    assert conn.recv_bytes(maxlength=5) == b"hello"
    assert conn.recv_bytes() == b"abcdefg"


# --------------------------------------------------------------------------------------------
# the native boundary: descriptors and addresses from Python

BAD_FDS = [-1, 2**31 - 1, 1_000_000]


def closed_fd() -> int:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


@pytest.mark.parametrize("fd", [*BAD_FDS, "closed"])
def test_descriptor_arguments_are_checked(fd):
    fd = closed_fd() if fd == "closed" else fd
    expected = ValueError if fd < 0 else OSError
    with pytest.raises(expected):
        _core.Connection(fd)
    with pytest.raises(expected):
        _core.wait_readable([fd], 0.0)
    with pytest.raises(expected):
        _core.ChildProcess([sys.executable, "-c", "pass"], [fd])
    with pytest.raises(expected):
        _core.ChildProcess.adopt(os.getpid(), fd)
    with pytest.raises(expected):
        _core.ProcessEngine([sys.executable, "-c", "pass"], 1, print, forkserver_fd=fd)


def test_descriptor_numbers_beyond_c_int_are_refused():
    with pytest.raises(OverflowError):
        _core.Connection(2**40)
    with pytest.raises(OverflowError):
        _core.wait_readable([-(2**40)], 0.0)


def test_adopt_refuses_pids_that_name_a_process_group():
    r, w = os.pipe()
    os.close(w)
    try:
        for pid in (0, 2**31, 2**32 - 1):
            with pytest.raises((ValueError, OverflowError)):
                _core.ChildProcess.adopt(pid, r)
    finally:
        os.close(r)


@pytest.mark.parametrize(
    ("address", "length"),
    [(1, 4096), (4096, 4096), (2**64 - 4096, 8192), (2**63, 4096), (2**47, 2**20)],
)
def test_detach_mapping_refuses_ranges_that_are_not_mapped(address, length):
    with pytest.raises(ValueError, match="invalid mapping"):
        _core.detach_mapping(address, length)


def test_detach_mapping_refuses_negative_numbers():
    with pytest.raises(OverflowError):
        _core.detach_mapping(-1, 4096)
    with pytest.raises(OverflowError):
        _core.detach_mapping(4096, -1)
