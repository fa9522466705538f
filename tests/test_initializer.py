"""initializer/initargs: run before tasks; one that fails breaks the pool without hanging."""

from __future__ import annotations

import logging
import os
import traceback

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, program_report, run_script

BROKEN = {
    "process": ferropool.BrokenProcessPool,
    "thread": ferropool.BrokenThreadPool,
    "cluster": ferropool.BrokenProcessPool,
}


def test_initializer_runs_before_tasks(make_executor):
    with make_executor(initializer=_tasks.init_record, initargs=("ready",)) as ex:
        states = [f.result(timeout=WAIT) for f in [ex.submit(_tasks.get_init_state) for _ in range(10)]]
    assert states == ["ready"] * 10


def test_initializer_initargs_list(make_executor):
    with make_executor(initializer=_tasks.init_record, initargs=["from a list"]) as ex:
        assert ex.submit(_tasks.get_init_state).result(timeout=WAIT) == "from a list"


def test_process_initializer_runs_in_each_replacement_worker():
    with ferropool.ProcessPoolExecutor(
        max_workers=1, initializer=_tasks.init_record, initargs=(7,), max_tasks_per_child=1
    ) as ex:
        results = [ex.submit(_tasks.pid_and_init_state).result(timeout=WAIT) for _ in range(3)]
    assert len({pid for pid, _ in results}) == 3, results
    assert [state for _, state in results] == [7, 7, 7]


def test_process_initializer_closure():
    value = os.urandom(4).hex()

    def init():
        _tasks.init_record(value)

    with ferropool.ProcessPoolExecutor(max_workers=2, initializer=init) as ex:
        assert ex.submit(_tasks.get_init_state).result(timeout=WAIT) == value


def test_process_initializer_lambda():
    with ferropool.ProcessPoolExecutor(
        max_workers=1, initializer=lambda v: _tasks.init_record(v), initargs=("lambda",)
    ) as ex:
        assert ex.submit(_tasks.get_init_state).result(timeout=WAIT) == "lambda"


def test_failing_initializer_breaks_pool(make_executor, kind, caplog):
    broken = BROKEN[kind]
    caplog.set_level(logging.CRITICAL)
    with make_executor(initializer=_tasks.init_fail) as ex:
        futures = [ex.submit(_tasks.square, i) for i in range(4)]
        for fut in futures:
            with pytest.raises(broken):
                fut.result(timeout=WAIT)
        # later work fails too: at submit, or through its future
        try:
            later = ex.submit(_tasks.square, 1)
        except broken:
            pass
        else:
            with pytest.raises(broken):
                later.result(timeout=WAIT)


def test_failing_initializer_breaks_map(make_executor, kind, caplog):
    caplog.set_level(logging.CRITICAL)
    with make_executor(initializer=_tasks.init_fail) as ex:
        with pytest.raises(BROKEN[kind]):
            list(ex.map(_tasks.square, range(5), timeout=WAIT))


def test_failing_process_initializer_error_names_the_cause():
    with ferropool.ProcessPoolExecutor(max_workers=1, initializer=_tasks.init_fail) as ex:
        err = ex.submit(_tasks.square, 1).exception(timeout=WAIT)
    assert isinstance(err, ferropool.BrokenProcessPool), repr(err)
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    assert "init_fail" in text, text
    assert "initializer failed on purpose" in text, text


def test_failing_thread_initializer_is_logged(caplog):
    with caplog.at_level(logging.CRITICAL, logger="concurrent.futures"):
        with ferropool.ThreadPoolExecutor(max_workers=1, initializer=_tasks.init_fail) as ex:
            err = ex.submit(_tasks.square, 1).exception(timeout=WAIT)
    assert isinstance(err, ferropool.BrokenThreadPool)
    assert any("initializer" in r.getMessage().lower() for r in caplog.records), caplog.records


def test_initializer_that_kills_the_worker_breaks_pool_without_hanging():
    with ferropool.ProcessPoolExecutor(max_workers=2, initializer=_tasks.exit_now, initargs=(9,)) as ex:
        futures = [ex.submit(_tasks.square, i) for i in range(3)]
        for fut in futures:
            with pytest.raises(ferropool.BrokenProcessPool):
                fut.result(timeout=WAIT)
        try:
            later = ex.submit(_tasks.square, 1)
        except ferropool.BrokenProcessPool:
            pass
        else:
            with pytest.raises(ferropool.BrokenProcessPool):
                later.result(timeout=WAIT)


def test_shutdown_of_broken_pool(make_executor, kind, caplog):
    caplog.set_level(logging.CRITICAL)
    ex = make_executor(initializer=_tasks.init_fail)
    with pytest.raises(BROKEN[kind]):
        ex.submit(_tasks.square, 1).result(timeout=WAIT)
    ex.shutdown(wait=True)
    ex.shutdown(wait=True)


@pytest.mark.parametrize("options", ["", "worker_output=False, worker_logs=False"])
def test_pool_initializer_runs_in_each_worker_of_a_pool_closed_before_any_task(tmp_path, options):
    # multiprocessing.Pool starts its workers when it is made, and each runs the initializer,
    # whether or not a task ever comes (the pool's own set-up around the initializer, on or off,
    # must not change that)
    result = run_script(
        tmp_path,
        f"""
        def init(folder):
            open(os.path.join(folder, str(os.getpid())), "w").close()

        if __name__ == "__main__":
            pool = ferropool.Pool(3, initializer=init, initargs=({str(tmp_path)!r},), {options})
            pool.close()
            pool.join()
            print(len([name for name in os.listdir({str(tmp_path)!r}) if name.isdigit()]))
        """,
    )
    assert result.returncode == 0, program_report(result)
    assert result.stdout.split() == ["3"], program_report(result)
