"""ferropool futures and executors inside asyncio."""

from __future__ import annotations

import asyncio

import ferropool
import pytest

from tests import _tasks
from tests.conftest import WAIT


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


def test_gather_many_awaited_futures(make_executor):
    async def main(ex):
        return await asyncio.gather(*(ex.submit(_tasks.square, i) for i in range(20)))

    with make_executor() as ex:
        assert asyncio.run(main(ex)) == [i * i for i in range(20)]


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


def test_event_loop_runs_while_awaiting(make_executor, gate):
    async def main(ex, gate):
        ticks = 0
        fut = ex.submit(_tasks.wait_gate, gate.path, "released")

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                if ticks == 5:
                    gate.open()
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        value = await fut
        task.cancel()
        return value, ticks

    with make_executor() as ex, gate:
        value, ticks = asyncio.run(main(ex, gate))
    assert value == "released"
    assert ticks >= 5
