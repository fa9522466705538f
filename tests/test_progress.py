"""progress=True on the map methods and as_completed: the bar counts items as results arrive."""

from __future__ import annotations

import io
import sys

import ferropool
import pytest
from ferropool._pool import progress

from tests import _tasks
from tests.conftest import WAIT

tqdm = pytest.importorskip("tqdm").tqdm


class RecordingBar:
    """A bar that records every update, and whether it was closed."""

    def __init__(self) -> None:
        self.updates: list[int] = []
        self.total = None
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.updates.append(n)

    def close(self) -> None:
        self.closed = True


def _tqdm_output(buf: io.StringIO) -> str:
    return buf.getvalue().replace("\r", "\n")


@pytest.mark.parametrize("method", ["map", "starmap", "map_async", "imap", "imap_unordered"])
def test_pool_methods_draw_a_tqdm_bar_to_the_end(pool, method):
    buf = io.StringIO()
    options = {"file": buf, "mininterval": 0, "desc": "work"}
    if method == "starmap":
        result = pool.starmap(_tasks.add, [(i, 1) for i in range(30)], progress=options)
    elif method == "map_async":
        result = pool.map_async(_tasks.square, range(30), progress=options).get(WAIT)
    else:
        result = list(getattr(pool, method)(_tasks.square, range(30), progress=options))
    assert len(result) == 30
    assert "work: 100%" in _tqdm_output(buf)
    assert "30/30" in _tqdm_output(buf)


def test_bar_advances_once_per_chunk_counting_items(pool):
    bar = RecordingBar()
    assert pool.map(_tasks.square, range(20), chunksize=5, progress=bar) == [i * i for i in range(20)]
    assert sorted(bar.updates) == [5, 5, 5, 5]
    assert bar.total == 20


def test_uneven_last_chunk_is_counted_exactly(pool):
    bar = RecordingBar()
    pool.map(_tasks.square, range(23), chunksize=5, progress=bar)
    assert sum(bar.updates) == 23
    assert len(bar.updates) == 5


def test_a_bar_of_the_caller_is_advanced_not_closed(pool):
    buf = io.StringIO()
    bar = tqdm(file=buf, mininterval=0)
    pool.map(_tasks.square, range(12), progress=bar)
    assert bar.n == 12
    assert bar.total == 12  # filled in: the bar had none
    assert not bar.disable
    bar.close()


def test_imap_of_a_generator_has_no_total_but_counts_everything(pool):
    bar = RecordingBar()
    out = list(pool.imap(_tasks.square, (i for i in range(40)), progress=bar))
    assert out == [i * i for i in range(40)]
    assert sum(bar.updates) == 40
    assert bar.total is None


def test_executor_map_draws_a_bar(make_executor):
    buf = io.StringIO()
    with make_executor() as ex:
        out = list(ex.map(_tasks.square, range(25), progress={"file": buf, "mininterval": 0}))
    assert out == [i * i for i in range(25)]
    assert "25/25" in _tqdm_output(buf)


def test_executor_map_chunked_and_buffered_counts_items(make_executor):
    bar = RecordingBar()
    with make_executor() as ex:
        out = list(ex.map(_tasks.add, range(30), range(40), chunksize=4, buffersize=2, progress=bar))
    assert out == [2 * i for i in range(30)]
    assert sum(bar.updates) == 30
    assert bar.total == 30
    assert bar.closed is False  # the caller's bar


def test_as_completed_progress(make_executor):
    buf = io.StringIO()
    with make_executor() as ex:
        fs = [ex.submit(_tasks.square, i) for i in range(8)]
        done = list(ferropool.as_completed(fs, timeout=WAIT, progress={"file": buf, "mininterval": 0}))
    assert len(done) == 8
    assert "8/8" in _tqdm_output(buf)


def test_progress_true_uses_tqdm_on_stderr(capsys):
    with ferropool.ThreadPool(2) as p:
        p.map(_tasks.square, range(10), progress=True)
    err = capsys.readouterr().err
    assert "10/10" in err
    assert "100%" in err


def test_without_tqdm_a_text_line_goes_to_stderr(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import of tqdm.auto now fails
    with ferropool.Pool(2) as p:
        assert p.map(_tasks.square, range(50), chunksize=7, progress=True) == [i * i for i in range(50)]
        p.close()
        p.join()
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("ferropool: 50/50 items (100%) in ")


def test_text_fallback_honours_desc_and_file(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    buf = io.StringIO()
    with ferropool.ThreadPool(2) as p:
        list(p.imap_unordered(_tasks.square, range(5), progress={"desc": "squares", "file": buf, "unit": "x"}))
    assert buf.getvalue().splitlines()[-1].startswith("squares: 5/5 items (100%)")


def test_text_bar_writes_at_most_once_per_interval():
    buf = io.StringIO()
    bar = progress.TextBar(total=1000, file=buf, mininterval=3600)
    for _ in range(1000):
        bar.update(1)
    assert buf.getvalue() == ""  # an hour has not passed
    bar.close()
    bar.close()
    assert buf.getvalue().count("\n") == 1
    assert "1000/1000 items (100%)" in buf.getvalue()


@pytest.mark.parametrize("bad", [1, "yes", 0.5, object(), [True]])
def test_unknown_progress_value_is_a_type_error(bad):
    with ferropool.ThreadPool(1) as p:
        for call in (
            lambda: p.map(abs, [1], progress=bad),
            lambda: p.map_async(abs, [1], progress=bad),
            lambda: p.starmap(abs, [(1,)], progress=bad),
            lambda: p.imap(abs, [1], progress=bad),
            lambda: p.imap_unordered(abs, [1], progress=bad),
        ):
            with pytest.raises(TypeError, match="progress must be True/False, a dict of tqdm options"):
                call()
    with ferropool.ThreadPoolExecutor(1) as ex:
        with pytest.raises(TypeError, match="progress must be"):
            ex.map(abs, [1], progress=bad)
        with pytest.raises(TypeError, match="progress must be"):
            list(ferropool.as_completed([ex.submit(abs, 1)], progress=bad))


def test_progress_false_and_none_draw_nothing(capsys):
    with ferropool.ThreadPool(1) as p:
        assert p.map(abs, [-1], progress=False) == [1]
        assert p.map(abs, [-1], progress=None) == [1]
    assert capsys.readouterr().err == ""


def test_the_bar_comes_from_tqdm_auto(monkeypatch):
    made = []

    class FakeTqdm(RecordingBar):
        def __init__(self, total=None, **options):
            super().__init__()
            self.total = total
            self.options = options
            made.append(self)

    fake = type(sys)("tqdm.auto")
    fake.tqdm = FakeTqdm
    monkeypatch.setitem(sys.modules, "tqdm.auto", fake)
    with ferropool.ThreadPool(2) as p:
        p.map(_tasks.square, range(9), chunksize=3, progress={"desc": "d", "unit": "row"})
    (bar,) = made
    assert bar.total == 9 and bar.options == {"desc": "d", "unit": "row"}
    assert sum(bar.updates) == 9 and bar.closed  # ours: closed at the end


def test_a_total_in_the_options_wins(monkeypatch):
    buf = io.StringIO()
    with ferropool.ThreadPool(1) as p:
        list(p.imap(_tasks.square, iter(range(4)), progress={"total": 4, "file": buf, "mininterval": 0}))
    assert "4/4" in _tqdm_output(buf)


def test_an_abandoned_executor_map_cancels_what_it_submitted(gate):
    bar = RecordingBar()
    with ferropool.ProcessPoolExecutor(1) as ex:
        results = ex.map(_tasks.wait_gate, [gate.path] * 6, timeout=0.3, progress=bar)
        with pytest.raises(TimeoutError):
            next(results)  # the map gives up: its unfinished tasks are cancelled
        gate.open()
        ex.shutdown(wait=True)
    assert 1 <= sum(bar.updates) < 6  # the running one (and any sent with it) finished, the rest never ran
