"""Programs written for ``multiprocessing.Pool`` and ``concurrent.futures``, run unchanged as
scripts: what the stdlib guarantees them about callbacks, initializers, lazy inputs, errors and
Ctrl-C (issue 11's user programs)."""

from __future__ import annotations

import pytest

from tests.test_process_exit import report, run_script

CALLBACKS_DONE_AT_JOIN = """
import threading
out = {out!r}
def append(line):
    with open(out, "a") as f:  # slow enough that callbacks queue up behind the results
        f.write(f"{{line}}\\n")
def fail(x):
    raise ValueError(x)
open(out, "w").close()
import ferropool.pool
p = ferropool.pool.{cls}(2)
for i in range(1000):
    p.apply_async(abs, (i,), callback=append)
for i in range(100):
    p.apply_async(fail, (i,), error_callback=lambda e: append(f"error {{e}}"))
p.map_async(abs, range(10), callback=lambda v: append(f"map {{len(v)}}"))
p.starmap_async(pow, [(2, 3)] * 5, callback=lambda v: append(f"starmap {{len(v)}}"))
p.map_async(fail, range(3), error_callback=lambda e: append("map error"))
p.close()
p.join()
with open(out) as f:
    lines = f.read().splitlines()
print(len(lines), sum(l.startswith("error") for l in lines), "map 10" in lines, "starmap 5" in lines,
      "map error" in lines)
"""


@pytest.mark.parametrize("cls", ["Pool", "ThreadPool"])
def test_join_returns_after_every_callback_ran(tmp_path, cls):
    """``close(); join()`` returns only once every callback and error callback has run, as the
    stdlib's join does: a program reading what its callbacks wrote right after join sees all."""
    result = run_script(tmp_path, CALLBACKS_DONE_AT_JOIN.format(out=str(tmp_path / "lines"), cls=cls))
    assert result.returncode == 0, report(result)
    assert result.stdout.split() == ["1103", "100", "True", "True", "True"], report(result)


def test_join_from_a_callback_does_not_wait_for_itself(tmp_path):
    """A callback that closes and joins its own pool returns instead of waiting on itself."""
    result = run_script(
        tmp_path,
        """
        import threading
        p = ferropool.Pool(1)
        done = threading.Event()
        def stop(_):
            p.close()
            p.join()
            done.set()
        p.apply_async(abs, (1,), callback=stop)
        print(done.wait(30))
        p.join()
        """,
    )
    assert result.returncode == 0, report(result)
    assert result.stdout.split() == ["True"], report(result)


def test_terminate_then_join_returns(tmp_path):
    """``terminate(); join()`` with calls queued and callbacks registered returns promptly."""
    result = run_script(
        tmp_path,
        """
        p = ferropool.Pool(2)
        seen = []
        for i in range(50):
            p.apply_async(time.sleep, (0.2,), callback=seen.append, error_callback=seen.append)
        p.terminate()
        started = time.monotonic()
        p.join()
        print(time.monotonic() - started < 10)
        """,
    )
    assert result.returncode == 0, report(result)
    assert result.stdout.split() == ["True"], report(result)
