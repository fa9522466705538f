"""Fuzzing the output protocol, the one decoder of another process's bytes that is written in
Python: random and mutated messages go through a real socket into the pool's output reader.

Nothing may escape the reader, and every record it hands to logging must format under a
format string that names every standard attribute (a worker controls each field's value).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket

import pytest
from ferropool._pool import logs
from ferropool._worker.start import DROPPED, MESSAGE_MAX, RECORD, STDERR, STDOUT

CASES = 4000

EVERY_FIELD = (
    "%(asctime)s %(name)s %(levelname)s %(levelno)d %(pathname)s %(filename)s %(module)s "
    "%(lineno)d %(funcName)s %(created)f %(msecs)d %(relativeCreated)d %(thread)d "
    "%(threadName)s %(process)d %(processName)s %(message)s %(stack_info)s"
)


class Formatting(logging.Handler):
    """Formats every record it is given and keeps what formatting raised."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(EVERY_FIELD))
        self.count = 0
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        try:
            self.format(record)
        except Exception as exc:
            self.errors.append(f"{exc!r} for {record.__dict__!r}")


def _value(rng: random.Random, depth: int = 0) -> object:
    choices = [
        None,
        True,
        rng.randrange(-(2**70), 2**70),
        rng.choice([0, -1, 2**31, 2**63, -(2**63)]),
        rng.choice([0.5, -1e308, 1e308, math.inf, -math.inf, math.nan]),
        "".join(rng.choice("ab%(s)d\n\x1b\u2028\udcff") for _ in range(rng.randrange(8))),
    ]
    if depth < 3:
        choices += [[_value(rng, depth + 1)], {"k": _value(rng, depth + 1)}]
    return rng.choice(choices)


def _record_message(rng: random.Random) -> bytes:
    fields: dict[str, object] = {"name": "fuzz.worker", "levelno": logging.WARNING, "msg": "hello"}
    for key in rng.sample(sorted(logging.makeLogRecord({}).__dict__), rng.randrange(1, 6)):
        fields[key] = _value(rng)
    if rng.random() < 0.2:
        fields[rng.choice(["name", "levelno"])] = _value(rng)
    text = json.dumps(fields, allow_nan=True)
    if rng.random() < 0.2:  # a cut or a flipped byte somewhere
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + rng.choice(["", "}", '"', "\\", "\x00"]) + text[cut + 1 :]
    return RECORD + text.encode("utf-8", "surrogatepass")


def _message(rng: random.Random) -> bytes:
    shape = rng.randrange(5)
    if shape == 0:
        return _record_message(rng)
    if shape == 1:
        return DROPPED + rng.choice([b"3 40", b"x y", b"1", b"", b"-1 99999999999999999999", b"1 2 3"])
    if shape == 2:
        return rng.choice([STDOUT, STDERR]) + rng.randbytes(rng.randrange(64))
    if shape == 3:
        return rng.randbytes(rng.randrange(1, 16))
    return rng.choice([STDOUT, STDERR, RECORD, DROPPED]) + rng.randbytes(rng.randrange(MESSAGE_MAX - 64, MESSAGE_MAX))


@pytest.mark.timeout(120)
def test_random_messages_never_escape_the_reader_and_records_always_format(capsys):
    rng = random.Random(20261202)
    handler = Formatting()
    logger = logging.getLogger("fuzz")
    logger.addHandler(handler)
    logger.propagate = False
    collector = logs.Collector(None, lambda pid: None)
    os.close(collector.engine_end())
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    conn = logs._Conn(ours, 4242, "PoolWorker-fuzz")
    try:
        for _ in range(CASES):
            theirs.send(_message(rng))
            collector._read(conn, hang_up=False)
            capsys.readouterr()  # what it wrote to stdout/stderr, dropped as it goes
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        theirs.close()
        ours.close()
        collector.close()
    assert not handler.errors, f"{len(handler.errors)} records did not format; first: {handler.errors[0]}"
    assert handler.count > CASES // 20  # the fuzzing reached the logging path, not only the parser
