"""Large buffers travel through shared memory (memfd segments), not through the worker socket.

Checked here: values come back equal and of their own type at every size around the threshold,
in both directions; results are ordinary writable objects; many buffers in one call; a worker
that dies holding segments leaks nothing (the autouse fixture checks descriptors and /dev/shm).
"""

from __future__ import annotations

import signal

import ferropool
import numpy as np
import pytest
from ferropool._runtime import buffers, serialize

from . import _tasks
from .conftest import WAIT

LIMIT = serialize.OUT_OF_BAND_MIN
SIZES = [LIMIT - 1, LIMIT, LIMIT + 1, 8 * LIMIT + 3]


def _pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def mutate_and_sum(a):
    """Writes into the array a worker received; returns its sum before the write."""
    before = float(a.sum())
    a[:] = -1.0
    return before


def make_array(n):
    return np.arange(n, dtype=np.float64)


def many_buffers(count, size):
    return [bytearray(_pattern(size)) for _ in range(count)]


@pytest.fixture
def ex():
    with ferropool.ProcessPoolExecutor(2) as executor:
        yield executor


@pytest.mark.parametrize("size", SIZES)
def test_bytes_echo(ex, size):
    data = _pattern(size)
    back = ex.submit(_tasks.identity, data).result(WAIT)
    assert type(back) is bytes and back == data


@pytest.mark.parametrize("size", SIZES)
def test_bytearray_echo_is_writable(ex, size):
    data = bytearray(_pattern(size))
    back = ex.submit(_tasks.identity, data).result(WAIT)
    assert type(back) is bytearray and back == data
    back[0] ^= 0xFF  # an ordinary, writable object
    assert back[0] != data[0]


@pytest.mark.parametrize("size", SIZES)
def test_ndarray_echo_is_an_ordinary_writable_array(ex, size):
    a = np.frombuffer(_pattern(size - size % 8), dtype=np.float64).copy()
    back = ex.submit(_tasks.identity, a).result(WAIT)
    assert isinstance(back, np.ndarray) and back.dtype == a.dtype
    assert np.array_equal(back, a, equal_nan=True)
    assert back.flags.writeable
    back[:] = 0.0
    assert np.count_nonzero(a) > 0  # the parent's own array is not shared with the result


def test_worker_writing_its_argument_does_not_touch_the_parent(ex):
    a = np.arange(LIMIT // 8 * 4, dtype=np.float64)
    expected = float(a.sum())
    assert ex.submit(mutate_and_sum, a).result(WAIT) == expected
    assert float(a.sum()) == expected


def test_large_result_made_in_the_worker(ex):
    n = 3 * LIMIT // 8
    assert np.array_equal(ex.submit(make_array, n).result(WAIT), np.arange(n, dtype=np.float64))
    assert ex.submit(_tasks.make_bytes, 5 * LIMIT).result(WAIT) == b"x" * (5 * LIMIT)


def test_large_keyword_argument_and_several_arguments(ex):
    data = _pattern(2 * LIMIT)
    assert ex.submit(_tasks.echo, data, bytearray(data), key=np.zeros(LIMIT)).result(WAIT) == (
        (data, bytearray(data)),
        {"key": pytest.approx(np.zeros(LIMIT))},
    )


@pytest.mark.parametrize("count", [3, 40])
def test_many_buffers_in_one_call_and_one_result(ex, count):
    """40 segments are more than one socket message carries (32)."""
    bufs = many_buffers(count, LIMIT)
    assert ex.submit(_tasks.identity, bufs).result(WAIT) == bufs
    assert ex.submit(many_buffers, count, LIMIT).result(WAIT) == bufs


def test_more_buffers_than_a_frame_counts_go_in_band(ex):
    bufs = [bytearray(LIMIT) for _ in range(buffers.MAX_SEGMENTS + 1)]
    assert ex.submit(len, bufs).result(WAIT) == len(bufs)


def test_pool_map_and_imap_with_large_items():
    items = [bytearray(_pattern(LIMIT + i)) for i in range(6)]
    with ferropool.Pool(2) as p:
        assert p.map(_tasks.length, items) == [len(b) for b in items]
        assert list(p.imap(_tasks.identity, items)) == items
        assert p.apply(_tasks.identity, (items[0],)) == items[0]


def test_worker_killed_while_holding_segments_leaks_nothing():
    data = _pattern(4 * LIMIT)
    with ferropool.ProcessPoolExecutor(1) as ex:
        fut = ex.submit(_tasks.kill_self, signal.SIGKILL)
        with pytest.raises(ferropool.WorkerDiedError):
            fut.result(WAIT)
        # a call whose arguments are in shared memory, on a worker that dies running it
        dying = ex.submit(_tasks.exit_if, data, data)
        with pytest.raises(ferropool.WorkerDiedError):
            dying.result(WAIT)
        assert ex.submit(_tasks.identity, data).result(WAIT) == data


def test_cancelled_task_releases_its_segments(gate):
    data = _pattern(2 * LIMIT)
    with ferropool.ProcessPoolExecutor(1) as ex, gate:
        blocker = ex.submit(_tasks.wait_gate, gate.path)
        queued = [ex.submit(_tasks.identity, data) for _ in range(20)]
        cancelled = [f.cancel() for f in queued]
        assert any(cancelled)  # those not already sent ahead to the worker
        gate.open()
        blocker.result(WAIT)
        for f, was_cancelled in zip(queued, cancelled, strict=True):
            assert f.cancelled() if was_cancelled else f.result(WAIT) == data


def test_argument_returned_as_it_is_goes_back_without_a_copy(ex):
    """The worker sends the segment it received back as the result: values and types hold."""
    a = np.arange(2 * LIMIT // 8, dtype=np.float64)
    back = ex.submit(_tasks.identity, a).result(WAIT)
    assert np.array_equal(back, a) and back.flags.writeable
    b = bytes(_pattern(2 * LIMIT))
    assert ex.submit(_tasks.identity, b).result(WAIT) == b


def test_returned_argument_kept_by_the_worker_is_not_shared():
    """A worker that keeps the array it returned must not see the parent's writes, nor the
    parent the worker's."""
    a = np.arange(2 * LIMIT // 8, dtype=np.float64)
    with ferropool.ProcessPoolExecutor(1) as ex:
        back = ex.submit(_tasks.keep_and_return, a).result(WAIT)
        back[:] = 0.0  # the parent writes into its result
        ex.submit(_tasks.write_kept, -1.0).result(WAIT)  # the worker writes into what it kept
        assert np.count_nonzero(back) == 0
        assert ex.submit(_tasks.kept_sum).result(WAIT) == -1.0 * a.size
    assert np.array_equal(a, np.arange(2 * LIMIT // 8, dtype=np.float64))
