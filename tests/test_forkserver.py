"""The fork server: workers forked from a single-threaded copy of the program.

The pytest process has extra threads (faulthandler's watchdog), so its pools spawn their workers;
every test here runs a small script, whose first pool is made while it has one thread.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap

from tests.conftest import live_processes, program_report, run_program, start_child, wait_gone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HEADER = f"""
import json, os, select, signal, sys, time, warnings
sys.path.insert(0, {ROOT!r})
import psutil
import ferropool
from ferropool._runtime import forkserver
from tests import _tasks

def report(**values):
    print("REPORT " + json.dumps(values), flush=True)

def parent_of(pid):
    return psutil.Process(pid).ppid()

def wait_line(path, timeout=30):
    '''Makes the FIFO ``path``; returns a function that waits for the next line written to it.'''
    os.mkfifo(path)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    keep = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    buffer = [b""]
    def wait():
        deadline = time.monotonic() + timeout
        while b"\\n" not in buffer[0]:
            left = deadline - time.monotonic()
            assert left > 0, "no line on the beacon"
            if select.select([rfd], [], [], left)[0]:
                buffer[0] += os.read(rfd, 4096)
        line, buffer[0] = buffer[0].split(b"\\n", 1)
        return line.decode()
    return wait
"""


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "script.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return str(path)


def _run(tmp_path, body: str, allow_stderr: bool = False) -> dict:
    proc = run_program(tmp_path, HEADER + textwrap.dedent(body), name="script.py")
    detail = program_report(proc)
    assert proc.returncode == 0, detail
    if not allow_stderr:
        assert proc.stderr == "", detail
    reports = [line[len("REPORT ") :] for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert reports, detail
    out = {}
    for r in reports:
        out.update(json.loads(r))
    out["_detail"] = detail
    return out


# --------------------------------------------------------------------------------------------


BASIC = """
def triple(x):
    return 3 * x

if __name__ == "__main__":
    assert forkserver.server_pid() is None
    threads_before = forkserver._thread_count()
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    server = forkserver.server_pid()
    k = 5
    results = {
        "lambda": ex.submit(lambda x: x + k, 1).result(timeout=30),
        "main_function": ex.submit(triple, 4).result(timeout=30),
        "module_function": ex.submit(_tasks.square, 6).result(timeout=30),
        "map": list(ex.map(triple, range(5))),
    }
    pids = sorted({f.result(timeout=30) for f in [ex.submit(_tasks.get_pid) for _ in range(40)]})
    parents = sorted({parent_of(pid) for pid in pids})
    ex.shutdown(wait=True)
    report(threads_before=threads_before, server=server, me=os.getpid(), results=results, workers=pids,
           parents=parents, server_after_shutdown=forkserver.server_pid())
"""


def test_first_pool_starts_a_fork_server(tmp_path):
    out = _run(tmp_path, BASIC)
    detail = out["_detail"]
    assert out["threads_before"] == 1, detail
    server = out["server"]
    assert server is not None, detail
    assert server != out["me"]
    assert out["results"] == {"lambda": 6, "main_function": 12, "module_function": 36, "map": [0, 3, 6, 9, 12]}
    assert out["workers"], detail
    assert server not in out["workers"]
    assert out["me"] not in out["workers"]
    assert out["parents"] == [server], detail
    # the script has ended: its server and workers are gone too
    leftover = wait_gone(live_processes([server, *out["workers"]]), 5)
    assert not leftover, f"{[p.pid for p in leftover]} outlived the script\n{detail}"


SPAWN = """
if __name__ == "__main__":
    ex = ferropool.ProcessPoolExecutor(max_workers=2, mp_context="spawn")
    server = forkserver.server_pid()
    value = ex.submit(_tasks.square, 7).result(timeout=30)
    mapped = list(ex.map(_tasks.square, range(4)))
    pids = sorted({f.result(timeout=30) for f in [ex.submit(_tasks.get_pid) for _ in range(10)]})
    parents = sorted({parent_of(pid) for pid in pids})
    ex.shutdown(wait=True)
    report(server=server, server_after=forkserver.server_pid(), value=value, mapped=mapped, workers=pids,
           parents=parents, me=os.getpid())
"""


def test_spawn_context_starts_no_server(tmp_path):
    out = _run(tmp_path, SPAWN)
    detail = out["_detail"]
    assert out["server"] is None, detail
    assert out["server_after"] is None, detail
    assert out["value"] == 49
    assert out["mapped"] == [0, 1, 4, 9]
    assert out["parents"] == [out["me"]], detail
    leftover = wait_gone(live_processes(out["workers"]), 5)
    assert not leftover


POOL = """
if __name__ == "__main__":
    with ferropool.Pool(2) as p:
        server = forkserver.server_pid()
        values = p.map(lambda x: x * 2, range(6))
        pids = sorted(set(p.map(_tasks.get_pid, range(20), chunksize=1)))
        parents = sorted({parent_of(pid) for pid in pids})
    p.join()
    report(server=server, values=values, workers=pids, parents=parents)
"""


def test_multiprocessing_pool_uses_the_server(tmp_path):
    out = _run(tmp_path, POOL)
    detail = out["_detail"]
    assert out["server"] is not None, detail
    assert out["values"] == [0, 2, 4, 6, 8, 10]
    assert out["parents"] == [out["server"]], detail
    leftover = wait_gone(live_processes([out["server"], *out["workers"]]), 5)
    assert not leftover


KILL_WORKER = """
if __name__ == "__main__":
    beacon = os.path.abspath("beacon")
    gate = os.path.abspath("gate")
    wait = wait_line(beacon)
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    server = forkserver.server_pid()
    assert ex.submit(_tasks.square, 2).result(timeout=30) == 4
    fut = ex.submit(_tasks.wait_gate, gate, "never", beacon)
    worker = int(wait())
    parent = parent_of(worker)
    os.kill(worker, signal.SIGKILL)
    err = fut.exception(timeout=30)
    after = ex.submit(_tasks.square, 9).result(timeout=30)
    replacement = ex.submit(_tasks.get_pid).result(timeout=30)
    ex.shutdown(wait=True)
    report(server=server, worker=worker, parent=parent, error_type=type(err).__name__,
           is_died=isinstance(err, ferropool.WorkerDiedError), signal=getattr(err, "signal", None),
           exitcode=getattr(err, "exitcode", "missing"), pid=getattr(err, "pid", None), message=str(err),
           after=after, replacement=replacement)
"""


def test_worker_killed_by_sigkill(tmp_path):
    out = _run(tmp_path, KILL_WORKER)
    detail = out["_detail"]
    assert out["server"] is not None and out["parent"] == out["server"], detail
    assert out["is_died"], detail
    assert out["signal"] == signal.SIGKILL, detail
    assert out["exitcode"] is None, detail
    assert out["pid"] == out["worker"], detail
    assert "SIGKILL" in out["message"], detail
    assert out["after"] == 81
    assert out["replacement"] != out["worker"]


EXIT_WORKER = """
if __name__ == "__main__":
    ex = ferropool.ProcessPoolExecutor(max_workers=1)
    server = forkserver.server_pid()
    err = ex.submit(_tasks.exit_now, 7).exception(timeout=30)
    err2 = ex.submit(_tasks.kill_self, signal.SIGTERM).exception(timeout=30)
    after = ex.submit(_tasks.square, 3).result(timeout=30)
    ex.shutdown(wait=True)
    report(server=server, error=type(err).__name__, exitcode=err.exitcode, signal=err.signal,
           error2=type(err2).__name__, exitcode2=err2.exitcode, signal2=err2.signal, after=after)
"""


def test_worker_exit_status_comes_from_the_server(tmp_path):
    out = _run(tmp_path, EXIT_WORKER)
    detail = out["_detail"]
    assert out["server"] is not None, detail
    assert (out["error"], out["exitcode"], out["signal"]) == ("WorkerDiedError", 7, None), detail
    assert (out["error2"], out["exitcode2"], out["signal2"]) == ("WorkerDiedError", None, signal.SIGTERM), detail
    assert out["after"] == 9


PARENT_KILLED = """
if __name__ == "__main__":
    beacon = os.path.abspath("beacon")
    wait = wait_line(beacon)
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    server = forkserver.server_pid()
    busy = ex.submit(_tasks.wait_gate, os.path.abspath("never-opened"), None, beacon)
    idle = ex.submit(_tasks.square, 3).result(timeout=30)
    busy_worker = int(wait())
    workers = [p.pid for p in psutil.Process(server).children()]
    report(server=server, workers=workers, busy=busy_worker)
    time.sleep(60)  # the test kills this process
"""


def test_server_and_workers_die_with_the_parent(tmp_path):
    with start_child(tmp_path / "script.py", HEADER + PARENT_KILLED, marker="REPORT ", cwd=tmp_path) as child:
        out = json.loads(child.line("REPORT "))
        procs = live_processes([out["server"], *out["workers"]])
        assert out["busy"] in out["workers"]
        assert len(procs) >= 2, out
        os.kill(child.proc.pid, signal.SIGKILL)
        child.proc.wait(timeout=30)
        leftover = wait_gone(procs, 5)
        assert not leftover, f"{[p.pid for p in leftover]} outlived their killed parent ({out})"


USER_FORK = """
if __name__ == "__main__":
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    server = forkserver.server_pid()
    before = list(ex.map(_tasks.square, range(4)))
    r, w = os.pipe()
    # this program forks while its pool's threads run, on purpose; Python 3.12+ warns about that
    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
    pid = os.fork()
    if pid == 0:
        os.close(r)
        status = 1
        try:
            inherited = forkserver.server_pid()
            child = ferropool.ProcessPoolExecutor(max_workers=2)
            values = list(child.map(_tasks.square, range(6)))
            lam = child.submit(lambda: "child lambda").result(timeout=30)
            child_server = forkserver.server_pid()
            child_workers = sorted({f.result(timeout=30) for f in [child.submit(_tasks.get_pid) for _ in range(8)]})
            child.shutdown(wait=True)
            os.write(w, json.dumps(dict(inherited=inherited, values=values, lam=lam, child_server=child_server,
                                        child_workers=child_workers)).encode())
            status = 0
        finally:
            os.close(w)
            os._exit(status)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = -1
            break
        time.sleep(0.01)
    child_exit = os.waitstatus_to_exitcode(status) if status != -1 else "hung"
    after = list(ex.map(_tasks.square, range(5)))
    after_submit = ex.submit(_tasks.add, 2, 3).result(timeout=30)
    ex.shutdown(wait=True)
    report(server=server, before=before, child_exit=child_exit, child=json.loads(data) if data else None,
           after=after, after_submit=after_submit)
"""


def test_user_fork_child_can_make_its_own_pool(tmp_path):
    out = _run(tmp_path, USER_FORK)
    detail = out["_detail"]
    assert out["server"] is not None, detail
    assert out["before"] == [0, 1, 4, 9]
    assert out["child_exit"] == 0, detail
    child = out["child"]
    assert child is not None, detail
    assert child["inherited"] is None, detail  # the parent's server is not the child's
    assert child["values"] == [0, 1, 4, 9, 16, 25]
    assert child["lam"] == "child lambda"
    assert child["child_server"] != out["server"], detail
    assert out["after"] == [0, 1, 4, 9, 16]
    assert out["after_submit"] == 5
    leftover = wait_gone(live_processes([out["server"], *child["child_workers"]]), 5)
    assert not leftover


USER_FORK_EXIT = """
if __name__ == "__main__":
    ex = ferropool.ProcessPoolExecutor(max_workers=2)
    assert ex.submit(_tasks.square, 2).result(timeout=30) == 4
    # this program forks while its pool's threads run, on purpose; Python 3.12+ warns about that
    warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
    pid = os.fork()
    if pid == 0:
        child = ferropool.ProcessPoolExecutor(max_workers=1)
        assert child.submit(_tasks.square, 3).result(timeout=30) == 9
        child.shutdown(wait=True)
        sys.exit(0)  # an ordinary interpreter exit, with the parent's pool object inherited
    deadline = time.monotonic() + 10  # the child's exit takes well under a second
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            child_exit = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            child_exit = "hung at exit"
            break
        time.sleep(0.01)
    after = ex.submit(_tasks.square, 5).result(timeout=30)
    ex.shutdown(wait=True)
    report(child_exit=child_exit, after=after)
"""


def test_user_fork_child_exits_normally(tmp_path):
    """A forked child that ends as programs do (sys.exit, not os._exit) exits: the parent's pool,
    whose threads the child does not have, must not make the child's exit wait forever."""
    out = _run(tmp_path, USER_FORK_EXIT)
    assert out["child_exit"] == 0, out["_detail"]
    assert out["after"] == 25


MODULES = """
import xml.dom.minidom  # ferropool itself never imports it
import colorsys

if __name__ == "__main__":
    ex = ferropool.ProcessPoolExecutor(max_workers=1, mp_context={context!r})
    server = forkserver.server_pid()
    import wave  # after the pool (and its server) was made
    names = ["json", "xml.dom.minidom", "colorsys", "wave"]
    loaded = ex.submit(_tasks.modules_loaded, names).result(timeout=30)
    ex.shutdown(wait=True)
    report(server=server, loaded=loaded)
"""


def test_forked_workers_have_the_parents_modules(tmp_path):
    out = _run(tmp_path, MODULES.format(context=None))
    detail = out["_detail"]
    assert out["server"] is not None, detail
    loaded = out["loaded"]
    assert loaded["json"] is True, detail
    assert loaded["xml.dom.minidom"] is True, detail
    assert loaded["colorsys"] is True, detail
    assert loaded["wave"] is False, detail  # imported after the server was forked


def test_spawned_workers_start_clean(tmp_path):
    out = _run(tmp_path, MODULES.format(context="spawn"))
    detail = out["_detail"]
    assert out["server"] is None, detail
    loaded = out["loaded"]
    assert loaded["xml.dom.minidom"] is False, detail
    assert loaded["colorsys"] is False, detail
    assert loaded["wave"] is False, detail


THREADED = """
import threading

if __name__ == "__main__":
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        ex = ferropool.ProcessPoolExecutor(max_workers=1)
        server = forkserver.server_pid()
        value = ex.submit(_tasks.square, 4).result(timeout=30)
        worker = ex.submit(_tasks.get_pid).result(timeout=30)
        parent = parent_of(worker)
        ex.shutdown(wait=True)
    finally:
        stop.set()
        t.join()
    report(server=server, value=value, parent=parent, me=os.getpid())
"""


def test_threaded_program_spawns_instead(tmp_path):
    out = _run(tmp_path, THREADED)
    detail = out["_detail"]
    assert out["server"] is None, detail
    assert out["value"] == 16
    assert out["parent"] == out["me"], detail


SECOND_POOL = """
if __name__ == "__main__":
    first = ferropool.ProcessPoolExecutor(max_workers=1)
    server = forkserver.server_pid()
    assert first.submit(_tasks.square, 2).result(timeout=30) == 4
    # the process now has threads: a second pool still uses the server made before them
    second = ferropool.Pool(1)
    second_server = forkserver.server_pid()
    worker = second.apply(_tasks.get_pid)
    parent = parent_of(worker)
    second.close()
    second.join()
    first.shutdown(wait=True)
    report(server=server, second_server=second_server, parent=parent)
"""


def test_later_pools_share_the_server(tmp_path):
    out = _run(tmp_path, SECOND_POOL)
    detail = out["_detail"]
    assert out["server"] is not None, detail
    assert out["second_server"] == out["server"], detail
    assert out["parent"] == out["server"], detail


INHERITED_POOL = """
if __name__ == "__main__":
    pools = {"executor": ferropool.ProcessPoolExecutor(max_workers=1), "threads": ferropool.ThreadPoolExecutor(1)}
    for ex in pools.values():
        assert ex.submit(_tasks.square, 2).result(timeout=30) == 4
    pid = os.fork()
    if pid == 0:
        errors = {}
        for name, ex in pools.items():
            try:
                ex.submit(_tasks.square, 3)
                errors[name] = None
            except RuntimeError as exc:
                errors[name] = str(exc)
            ex.shutdown(wait=True)  # the parent's pool: a no-op here, never a hang
        print("CHILD " + json.dumps(errors), flush=True)
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    after = {name: ex.submit(_tasks.square, 5).result(timeout=30) for name, ex in pools.items()}
    for ex in pools.values():
        ex.shutdown(wait=True)
    report(child_exit=os.waitstatus_to_exitcode(status), after=after)
"""


def test_inherited_pool_gives_a_clear_error_in_a_forked_child(tmp_path):
    """Using the parent's pool in a forked child raises RuntimeError saying to make a new pool;
    shutting it down there is a no-op; the parent's pools keep working."""
    proc = run_program(tmp_path, HEADER + textwrap.dedent(INHERITED_POOL), name="script.py")
    detail = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    child_line = next(line for line in proc.stdout.splitlines() if line.startswith("CHILD "))
    errors = json.loads(child_line[len("CHILD ") :])
    for name in ("executor", "threads"):
        assert errors[name] is not None and "os.fork()" in errors[name], detail
    report_line = next(line for line in proc.stdout.splitlines() if line.startswith("REPORT "))
    out = json.loads(report_line[len("REPORT ") :])
    assert out["child_exit"] == 0, detail
    assert out["after"] == {"executor": 25, "threads": 25}, detail


def test_a_process_forked_from_the_server_can_start_a_process(tmp_path):
    # the server is forked while the parent holds the lock that guards it; its children must not
    # inherit that lock held (CPython's test_recursion and TestStdinBadfiledescriptor hung on it)
    out = _run(
        tmp_path,
        """
        def inner(q):
            q.put(("inner", os.getpid()))

        def outer(q):
            p = ferropool.Process(target=inner, args=(q,))
            p.start()
            p.join(30)
            q.put(("outer", p.exitcode))

        if __name__ == "__main__":
            q = ferropool.Queue()
            p = ferropool.Process(target=outer, args=(q,))
            p.start()
            got = dict(q.get(timeout=30) for _ in range(2))
            p.join(30)
            report(server=forkserver.server_pid() is not None, outer=got["outer"], exitcode=p.exitcode)
        """,
    )
    assert out["server"], out["_detail"]
    assert (out["outer"], out["exitcode"]) == (0, 0), out["_detail"]
