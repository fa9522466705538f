"""The fork server's messages: every format on its connections, defined here and nowhere else.

Each engine (and each ``Process`` start) has its own ``AF_UNIX`` stream connection to the server
(``forkserver.py``). A request is one ``sendmsg`` with descriptors attached (``SCM_RIGHTS``);
all integers are little-endian.

* **Worker request** (sent by the Rust engine, ``src/forkserver.rs`` ``request_worker``):
  ``WORKER`` then the worker's number in its pool (u32), carrying the worker's end of its link,
  the write end of a status socket and, when the pool forwards output, the worker's output
  socket. Answer: the worker's pid (u32, ``PID``), with a pidfd of it attached when the kernel
  has ``pidfd_open``.
* **Process request** (``forkserver.start_process``): ``PROCESS_HEADER`` (``PROCESS``, the
  parent's process group, how many descriptors the child inherits) and the parent's numbers of
  the first inherited descriptors (i32 each), carrying the payload pipe, the status socket and
  those descriptors; then ``MORE_FDS`` messages with the rest, each ``MORE_FDS`` and the
  numbers of the descriptors it carries. At most ``FDS_PER_MESSAGE`` inherited descriptors per
  message. Answer: the child's pid (u32, ``PID``).
* **Exit status**, written by the server to the status socket once it reaped the child: two
  i32 (``STATUS``), the exit code or -1, and the signal or 0 (decoded by
  ``src/forkserver.rs`` ``decode_status`` for workers and ``Process`` children alike).

The Rust side writes the worker request and reads the answers and the status; its unit tests
pin the same byte layouts.
"""

from __future__ import annotations

import os
import struct

#: First byte of a worker request.
WORKER = b"\x01"
#: A worker request: the tag and the worker's number.
WORKER_REQUEST = struct.Struct("<cI")
#: First byte of a process request, and of each continuation carrying more descriptors.
PROCESS, MORE_FDS = b"p", b"f"
#: A process request's fixed part: tag, the parent's process group, descriptors inherited.
PROCESS_HEADER = struct.Struct("<ciI")
#: One recvmsg delivers the descriptors of one message; the kernel takes at most 253 in one.
FDS_PER_MESSAGE = 60
#: The server's answer to a request: the new child's pid.
PID = struct.Struct("<I")
#: What the server writes for a reaped child: exit code or -1, signal or 0.
STATUS = struct.Struct("<ii")


def process_request(pgrp: int, inherit: list[int]) -> list[bytes]:
    """The messages of a process request; message ``i`` carries ``inherit``'s ``i``-th slice."""
    first, rest = inherit[:FDS_PER_MESSAGE], inherit[FDS_PER_MESSAGE:]
    messages = [PROCESS_HEADER.pack(PROCESS, pgrp, len(inherit)) + _numbers(first)]
    for at in range(0, len(rest), FDS_PER_MESSAGE):
        messages.append(MORE_FDS + _numbers(rest[at : at + FDS_PER_MESSAGE]))
    return messages


def _numbers(fds: list[int]) -> bytes:
    return struct.pack(f"<{len(fds)}i", *fds)


def descriptor_numbers(data: bytes, fds: list[int]) -> list[int]:
    """The parent's numbers for the descriptors ``fds`` one message carried.

    Raises:
        ValueError: the numbers do not match the descriptors.
    """
    if len(data) != 4 * len(fds):
        raise ValueError("descriptor numbers do not match the descriptors")
    return list(struct.unpack(f"<{len(fds)}i", data))


def worker_number(msg: bytes) -> int:
    """The worker's number from a worker request (see ``WORKER_REQUEST``)."""
    return int.from_bytes(msg[1 : WORKER_REQUEST.size], "little")


def status(waitstatus: int) -> bytes:
    """``STATUS`` for a child's ``waitpid`` status."""
    code = os.waitstatus_to_exitcode(waitstatus)
    return STATUS.pack(code, 0) if code >= 0 else STATUS.pack(-1, -code)
