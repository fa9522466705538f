"""Pool.imap and imap_unordered: order, laziness (buffersize), errors in place, timeouts."""

from __future__ import annotations

import functools
import itertools
import multiprocessing

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, cluster_pool

POOLS = {"process": ferropool.Pool, "thread": ferropool.ThreadPool, "cluster": cluster_pool}


@pytest.fixture(params=sorted(POOLS))
def pool_cls(request):
    if request.param == "cluster":
        return cluster_pool(request)
    return POOLS[request.param]


class Counting:
    """An endless input that counts the items pulled from it."""

    def __init__(self, stop=None):
        self.pulled = 0
        self.stop = stop

    def __iter__(self):
        for i in itertools.count():
            if self.stop is not None and i >= self.stop:
                return
            self.pulled += 1
            yield i


# --------------------------------------------------------------------------------------------
# results


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_imap_in_order(pool_cls, chunksize):
    with pool_cls(2) as p:
        assert list(p.imap(_tasks.square, range(50), chunksize)) == [i * i for i in range(50)]
        assert list(p.imap(_tasks.square, iter(range(50)), chunksize=chunksize)) == [i * i for i in range(50)]


@pytest.mark.parametrize("chunksize", [1, 3, 100])
def test_imap_unordered_gives_every_result(pool_cls, chunksize):
    with pool_cls(2) as p:
        got = list(p.imap_unordered(_tasks.square, range(50), chunksize))
        assert sorted(got) == [i * i for i in range(50)]
        assert len(got) == 50


def test_imap_order_with_uneven_work(pool_cls):
    durations = [0.02 if i % 5 == 0 else 0.0 for i in range(20)]
    with pool_cls(2) as p:
        ordered = list(p.imap(_tasks.sleep_then, durations))
        assert ordered == [None] * 20
        values = list(p.imap(functools.partial(_tasks.sleep_then, 0.0), range(20)))
        assert values == list(range(20))


def test_imap_empty(pool_cls):
    with pool_cls(2) as p:
        assert list(p.imap(_tasks.square, [])) == []
        assert list(p.imap_unordered(_tasks.square, iter(()))) == []
        it = p.imap(_tasks.square, [])
        with pytest.raises(StopIteration):
            it.next(timeout=WAIT)
        with pytest.raises(StopIteration):
            next(it)


def test_imap_iterator_protocol(pool_cls):
    with pool_cls(2) as p:
        it = p.imap(_tasks.square, range(3))
        assert iter(it) is it
        assert it.next() == 0
        assert next(it) == 1
        assert it.next(timeout=WAIT) == 4
        with pytest.raises(StopIteration):
            next(it)
        with pytest.raises(StopIteration):
            next(it)  # stays exhausted


def test_imap_lambda():
    with ferropool.Pool(2) as p:
        assert list(p.imap(lambda x: x * 3, range(10), chunksize=2)) == [3 * i for i in range(10)]


# --------------------------------------------------------------------------------------------
# laziness


def test_imap_endless_input(pool_cls):
    source = Counting()
    with pool_cls(2) as p:
        total = 0
        for n, value in enumerate(p.imap(_tasks.square, source), 1):
            assert value == (n - 1) ** 2
            total += 1
            if n == 10_000:
                break
    assert total == 10_000
    assert source.pulled < 20_000


def test_imap_unordered_endless_input(pool_cls):
    source = Counting()
    with pool_cls(2) as p:
        got = set(itertools.islice(p.imap_unordered(_tasks.identity, source, chunksize=10), 10_000))
    assert len(got) == 10_000
    assert source.pulled < 20_000


@pytest.mark.parametrize("chunksize,buffersize", [(1, 1), (1, 4), (3, 4), (5, 2)])
@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_imap_reads_at_most_buffersize_chunks_ahead(pool_cls, method, chunksize, buffersize):
    source = Counting()
    bound = buffersize * chunksize
    with pool_cls(2) as p:
        it = getattr(p, method)(_tasks.identity, source, chunksize, buffersize=buffersize)
        assert source.pulled <= bound, "read too far before the first result was taken"
        for n in range(1, 61):
            next(it)
            assert source.pulled <= n + bound, f"after {n} results, {source.pulled} items were pulled"
        assert source.pulled >= 60


def test_imap_default_buffer_is_bounded(pool_cls):
    source = Counting()
    with pool_cls(2) as p:
        it = p.imap(_tasks.identity, source)
        assert next(it) == 0
        pulled_at_start = source.pulled
        for _ in range(500):
            next(it)
        assert source.pulled <= 501 + pulled_at_start
    assert pulled_at_start < 1000


def test_imap_finite_input_is_read_to_its_end(pool_cls):
    source = Counting(stop=37)
    with pool_cls(2) as p:
        assert list(p.imap(_tasks.identity, source, 4, buffersize=2)) == list(range(37))
    assert source.pulled == 37


def test_imap_abandoned_iterator(pool_cls):
    """Stopping early leaves no work that blocks close() and join()."""
    p = pool_cls(2)
    it = p.imap(_tasks.square, Counting(), chunksize=2, buffersize=3)
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    del it
    assert p.apply(_tasks.square, (3,)) == 9
    p.close()
    p.join()


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_error_raises_in_place_and_iteration_goes_on(pool_cls, chunksize):
    with pool_cls(2) as p:
        it = p.imap(functools.partial(_tasks.fail_on, bad=4), range(10), chunksize)
        got = []
        while True:
            try:
                got.append(next(it))
            except StopIteration:
                break
            except ValueError as exc:
                got.append(f"error: {exc}")
        assert got == [0, 1, 2, 3, "error: bad item 4", 5, 6, 7, 8, 9]


def test_imap_several_errors(pool_cls):
    with pool_cls(2) as p:
        it = p.imap(functools.partial(_tasks.fail_on, bad=0), [0, 1, 0, 2, 0])
        out = []
        for _ in range(5):
            try:
                out.append(next(it))
            except ValueError:
                out.append("E")
        assert out == ["E", 1, "E", 2, "E"]
        with pytest.raises(StopIteration):
            next(it)


@pytest.mark.parametrize("chunksize", [1, 3])
def test_imap_unordered_error_then_the_rest(pool_cls, chunksize):
    with pool_cls(2) as p:
        it = p.imap_unordered(functools.partial(_tasks.fail_on, bad=6), range(12), chunksize)
        values, errors = [], []
        while True:
            try:
                values.append(next(it))
            except StopIteration:
                break
            except ValueError as exc:
                errors.append(str(exc))
        assert errors == ["bad item 6"]
        assert sorted(values) == [i for i in range(12) if i != 6]


def test_imap_worker_death_fails_in_place():
    with ferropool.Pool(2) as p:
        it = p.imap(functools.partial(_tasks.exit_if, bad=3, code=6), range(8))
        got = []
        for _ in range(8):
            try:
                got.append(next(it))
            except ferropool.WorkerDiedError as exc:
                assert exc.exitcode == 6
                got.append("died")
        assert got == [0, 1, 2, "died", 4, 5, 6, 7]
        with pytest.raises(StopIteration):
            next(it)
        assert p.apply(_tasks.square, (2,)) == 4


# --------------------------------------------------------------------------------------------
# timeouts


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_next_timeout_then_value(pool_cls, method, gate):
    with pool_cls(2) as p, gate:
        it = getattr(p, method)(functools.partial(_tasks.wait_gate, gate.path), ["a"])
        with pytest.raises(ferropool.TimeoutError):
            it.next(timeout=0.01)
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(timeout=0)
        with pytest.raises(TimeoutError):
            it.next(timeout=0.01)
        gate.open()
        assert it.next(timeout=WAIT) == "a"
        with pytest.raises(StopIteration):
            it.next(timeout=WAIT)


def test_imap_timeout_keeps_order(pool_cls, gate, beacon):
    """The first item waits for the gate; later items finish, but imap still returns item 0 first."""
    with pool_cls(2) as p, gate:
        it = p.imap(
            functools.partial(_tasks.wait_gate, gate.path, beacon=beacon.path),
            [0, 1, 2],
        )
        beacon.wait()
        with pytest.raises(ferropool.TimeoutError):
            it.next(timeout=0.01)
        gate.open()
        assert [it.next(timeout=WAIT) for _ in range(3)] == [0, 1, 2]
