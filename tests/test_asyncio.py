"""ferropool inside asyncio: awaited futures, executors as the loop's executor, ``async for`` over imap,
``await executor.run(...)``, ``await pool.run(...)``, and cancellation from the asyncio side."""

from __future__ import annotations

import asyncio
import functools
import os

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT, live_processes, wait_gone


def test_await_future(make_executor):
    async def main(ex):
        return await ex.submit(_tasks.add, 20, 22)

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == 42


def test_await_failing_future_raises_original_exception(make_executor):
    async def main(ex):
        with pytest.raises(ValueError, match="async failure"):
            await ex.submit(_tasks.fail, "async failure")
        return "ok"

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == "ok"


def test_await_already_done_future(make_executor):
    async def main(fut):
        return await fut

    with make_executor() as ex:
        fut = ex.submit(_tasks.square, 6)
        assert fut.result(timeout=WAIT) == 36
        assert asyncio.run(main(fut)) == 36


@pytest.mark.parametrize("call, n", [("submit", 20), ("run", 30)])
def test_gather_many(make_executor, call, n):
    """Many awaited futures (``submit``) or coroutines (``run``) gathered at once."""

    async def main(ex):
        return await asyncio.gather(*(getattr(ex, call)(_tasks.square, i) for i in range(n)))

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == [i * i for i in range(n)]


def test_wrap_future(make_executor):
    async def main(ex):
        return await asyncio.wrap_future(ex.submit(_tasks.square, 9))

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == 81


def test_run_in_executor(make_executor):
    async def main(ex):
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex, _tasks.square, i) for i in range(5)))
        return results

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == [0, 1, 4, 9, 16]


def test_run_in_executor_lambda(make_executor):
    async def main(ex):
        return await asyncio.get_running_loop().run_in_executor(ex, lambda: "from lambda")

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == "from lambda"


def test_as_default_executor():
    async def main(ex):
        loop = asyncio.get_running_loop()
        loop.set_default_executor(ex)
        return await loop.run_in_executor(None, _tasks.square, 12)

    with ferropool.ThreadPoolExecutor(max_workers=2) as ex:
        assert asyncio.run(main(ex)) == 144


def test_wait_for_timeout_on_awaited_future(make_executor, gate):
    async def main(fut):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.wrap_future(fut), timeout=0.1)
        return "timed out"

    with make_executor() as ex, gate:
        fut = ex.submit(_tasks.wait_gate, gate.path, "late")
        assert asyncio.run(main(fut)) == "timed out"
        gate.open()
        # the task was running: cancelling the asyncio side could not stop it
        if not fut.cancelled():
            assert fut.result(timeout=WAIT) == "late"


async def await_while_ticking(awaitable, gate, pause):
    """Awaits ``awaitable`` while a task counts the event loop's turns (``pause`` s apart) and
    opens ``gate`` at the fifth; returns its value and the count."""
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            if ticks == 5:
                gate.open()
            await asyncio.sleep(pause)

    task = asyncio.create_task(ticker())
    value = await awaitable
    task.cancel()
    return value, ticks


def test_event_loop_runs_while_awaiting(make_executor, gate):
    async def main(ex, gate):
        fut = ex.submit(_tasks.wait_gate, gate.path, "released")
        return await await_while_ticking(fut, gate, 0.001)

    with make_executor() as ex, gate:
        value, ticks = asyncio.run(main(ex, gate))
    assert value == "released"
    assert ticks >= 5


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_async_for_over_imap(pool, method):
    async def main():
        return [x async for x in getattr(pool, method)(_tasks.square, range(50), chunksize=3)]

    out = asyncio.run(main())
    if method == "imap":
        assert out == [i * i for i in range(50)]
    else:
        assert sorted(out) == [i * i for i in range(50)]


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_async_for_keeps_the_loop_running_while_results_are_awaited(pool, method, gate):
    async def main():
        async def results():
            return [x async for x in getattr(pool, method)(_tasks.wait_gate, [gate.path] * 3)]

        return await await_while_ticking(results(), gate, 0)

    out, ticks = asyncio.run(main())
    assert out == [None] * 3
    assert ticks >= 5  # the loop ran while the first result was on its way


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_cancelling_an_async_for_loses_no_result(pool, method, gate):
    async def main(it):
        waiting = asyncio.create_task(it.__anext__())
        await asyncio.sleep(0)  # let it start waiting: the gate is closed
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        gate.open()
        return [x async for x in it]

    it = getattr(pool, method)(_tasks.wait_gate, [gate.path] * 4, progress=False)
    assert asyncio.run(main(it)) == [None] * 4


def test_async_for_raises_an_items_exception_at_its_place(pool):
    async def main():
        seen = []
        it = pool.imap(functools.partial(_tasks.fail_on, bad=3), range(5))
        while True:
            try:
                seen.append(await it.__anext__())
            except StopAsyncIteration:
                return seen
            except ValueError as exc:
                seen.append(str(exc))

    assert asyncio.run(main()) == [0, 1, 2, "bad item 3", 4]


def test_async_for_over_empty_input(pool):
    async def main():
        return [x async for x in pool.imap_unordered(_tasks.square, [])]

    assert asyncio.run(main()) == []


def test_executor_run(make_executor):
    async def main(ex):
        a = await ex.run(_tasks.add, 40, 2)
        b = await ex.run(_tasks.echo, 1, key="v")
        with pytest.raises(ValueError, match="async run"):
            await ex.run(_tasks.fail, "async run")
        return a, b

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == (42, ((1,), {"key": "v"}))


def test_pool_run(pool):
    async def main():
        return await pool.run(_tasks.add, 1, b=2)

    assert asyncio.run(main()) == 3


def test_pool_run_on_a_closed_pool_raises(pool):
    pool.close()

    async def main():
        await pool.run(_tasks.add, 1, 2)

    with pytest.raises(ValueError, match="Pool not running"):
        asyncio.run(main())


def test_cancelling_a_run_cancels_the_queued_call(make_executor, gate, tmp_path):
    marker = tmp_path / "ran"

    async def main(ex):
        # a fresh process worker may hold two tasks (a task it holds has started, for cancel()):
        # two blockers keep the call under test in the pool's queue
        blockers = [ex.submit(_tasks.wait_gate, gate.path, i) for i in range(2)]
        queued = asyncio.create_task(ex.run(_tasks.touch, str(marker)))
        await asyncio.sleep(0)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        return blockers

    with make_executor(max_workers=1) as ex:
        blockers = asyncio.run(main(ex))
        gate.open()
        assert [b.result(timeout=WAIT) for b in blockers] == [0, 1]
        ex.shutdown(wait=True)
    assert not marker.exists()


def test_cancelling_a_run_stops_a_running_call_with_cancel_running(beacon):
    async def main(ex):
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(ex.run(_tasks.beacon_then_sleep, beacon.path, 30))
        pid = int(await loop.run_in_executor(None, beacon.wait))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gone = await loop.run_in_executor(None, wait_gone, live_processes([pid]), 5)
        assert not gone, "the cancelled call still runs"
        return await ex.run(_tasks.square, 12)

    with ferropool.ProcessPoolExecutor(max_workers=1, cancel_running=True) as ex:
        assert asyncio.run(main(ex)) == 144


def test_loop_run_in_executor_with_a_ferropool_executor(make_executor):
    async def main(ex):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(ex, os.getpid)

    with make_executor() as ex:
        assert isinstance(asyncio.run(main(ex)), int)


@pytest.mark.parametrize("method", ["imap", "imap_unordered"])
def test_async_for_raises_a_tasks_timeout_error(pool, method):
    """A task's own ``TimeoutError`` is its result, not the iterator's "nothing yet"."""

    async def main():
        return [x async for x in getattr(pool, method)(_tasks.raise_exc, [TimeoutError("mine")])]

    with pytest.raises(TimeoutError, match="mine"):
        asyncio.run(main())
