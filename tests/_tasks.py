"""Top-level task functions for the test suite.

Process-pool workers unpickle these by reference (``tests._tasks.<name>``), so they must stay
importable module-level functions. Waiting done here (``wait_gate``) runs inside a task, to
simulate work that lasts until the test releases it; the test process itself never sleeps.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time

GATE_TIMEOUT = 30.0

_LOCAL = threading.local()
_GLOBAL: object = None


def add(a, b):
    return a + b


def square(x):
    return x * x


def identity(x):
    return x


def echo(*args, **kwargs):
    return args, kwargs


def get_pid(_=None):
    return os.getpid()


def thread_name(_=None):
    return threading.current_thread().name


def fail(message="boom"):
    raise ValueError(message)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def raise_exc(exc):
    raise exc


class CustomBaseException(BaseException):
    """A BaseException that is not an Exception, raised by a task."""


def raise_base_exception():
    raise CustomBaseException("base")


def raise_system_exit():
    raise SystemExit(3)


class UnpicklableError(Exception):
    """An exception holding a lock: it cannot be pickled back to the parent."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error():
    raise UnpicklableError("holds a lock")


class UnloadableError(Exception):
    """Pickles fine but cannot be unpickled: ``__init__`` needs two arguments, ``args`` has one."""

    def __init__(self, a, b):
        super().__init__(f"{a}-{b}")


def raise_unloadable_error():
    raise UnloadableError("a", "b")


def return_unpicklable():
    return threading.Lock()


def sleep_then(seconds, value=None):
    time.sleep(seconds)
    return value


def signal_beacon(path, message):
    """Writes one line to the test's beacon FIFO (the test holds its read end open)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, f"{message}\n".encode())
    finally:
        os.close(fd)


def wait_gate(gate, value=None, beacon=None, timeout=GATE_TIMEOUT):
    """Announces the start on ``beacon`` (with this process's pid), then works until the file
    ``gate`` exists; raises after ``timeout`` so a forgotten gate never hangs a pool."""
    if beacon is not None:
        signal_beacon(beacon, os.getpid())
    deadline = time.monotonic() + timeout
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.005)
    return value


def exit_now(code=3):
    os._exit(code)


def kill_self(signum):
    os.kill(os.getpid(), signum)
    time.sleep(30)  # the signal ends the process before this returns


def segfault():
    ctypes.string_at(0)


def cpu_bound(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def make_bytes(n):
    return b"x" * n


def length(data):
    return len(data)


def getenv(name):
    return os.environ.get(name)


def init_record(value):
    """An initializer: remembers ``value`` for this thread and this process."""
    global _GLOBAL
    _LOCAL.value = value
    _GLOBAL = value


def get_init_state(_=None):
    return getattr(_LOCAL, "value", _GLOBAL)


def pid_and_init_state(_=None):
    return os.getpid(), get_init_state()


def init_fail():
    raise RuntimeError("initializer failed on purpose")


class Multiplier:
    """A picklable callable object with a bound method."""

    def __init__(self, k):
        self.k = k

    def __call__(self, x):
        return self.k * x

    def times(self, x):
        return self.k * x


class UnpicklableCallable:
    """A callable that cannot be pickled (it holds a lock)."""

    def __init__(self):
        self.lock = threading.Lock()

    def __call__(self):
        return "called"


def touch(path):
    """Creates ``path``: a trace that the task ran."""
    with open(path, "a"):
        pass
    return path


def exit_if(x, bad, code=4):
    """Returns ``x``, except that the worker process exits when ``x == bad``."""
    if x == bad:
        os._exit(code)
    return x


def module_name(_=None):
    """The name this module was imported under (workers import it by reference)."""
    return __name__, sys.modules[__name__].__file__


def unpicklable_if(x, bad):
    """Returns ``x``, except a lock (which cannot be pickled back) when ``x == bad``."""
    if x == bad:
        return threading.Lock()
    return x


def modules_loaded(names):
    """Which of ``names`` this process has imported."""
    return {name: name in sys.modules for name in names}


# --------------------------------------------------------------------------------------------
# fault injection: time limits, kill, recycling, the crash matrix


def start_sleeper_then_wait(beacon, seconds=60, gate=None, timeout=GATE_TIMEOUT):
    """Starts ``sleep <seconds>`` (a child of this worker, in its process group), announces
    ``"<worker pid> <sleep pid>"`` on ``beacon``, then works until ``gate`` exists (or for
    ``timeout`` seconds without a gate)."""
    import subprocess

    child = subprocess.Popen(["sleep", str(seconds)])
    signal_beacon(beacon, f"{os.getpid()} {child.pid}")
    deadline = time.monotonic() + timeout
    while gate is None or not os.path.exists(gate):
        if time.monotonic() > deadline:
            child.kill()
            child.wait()
            raise TimeoutError(f"gate {gate} was never opened")
        time.sleep(0.005)
    child.kill()
    child.wait()
    return "finished"


def beacon_then_sleep(beacon, seconds, value=None):
    """Announces this worker's pid on ``beacon``, then sleeps ``seconds``."""
    signal_beacon(beacon, os.getpid())
    time.sleep(seconds)
    return value


def sleep_if(x, bad, seconds):
    """Returns ``x``, after sleeping ``seconds`` when ``x == bad``."""
    if x == bad:
        time.sleep(seconds)
    return x


_RETAINED: list[bytearray] = []


def rss_bytes():
    """This process's resident set size, in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def retain_memory(nbytes):
    """Allocates ``nbytes`` (touched, so resident) and keeps them alive in this worker for good:
    the list is a global of this importable module. Returns ``(pid, rss after)``."""
    block = bytearray(nbytes)
    block[::4096] = b"\x01" * len(range(0, nbytes, 4096))
    _RETAINED.append(block)
    return os.getpid(), rss_bytes()


def pid_and_rss(_=None):
    return os.getpid(), rss_bytes()


class InjectedError(Exception):
    """Raised on purpose while pickling or unpickling (the crash matrix)."""


def _crash():
    import faulthandler

    faulthandler._sigsegv()


def _raise_injected(message):
    raise InjectedError(message)


def _exit_one():
    os._exit(1)


class ErrorAtPickle:
    """Raises ``InjectedError`` when pickled."""

    def __reduce__(self):
        raise InjectedError("error at pickle")


class ExitAtPickle:
    """Exits the process (code 1) when pickled."""

    def __reduce__(self):
        os._exit(1)


class CrashAtPickle:
    """Segfaults the process when pickled."""

    def __reduce__(self):
        _crash()


class ErrorAtUnpickle:
    """Pickles fine; raises ``InjectedError`` when unpickled."""

    def __reduce__(self):
        return _raise_injected, ("error at unpickle",)


class ExitAtUnpickle:
    """Pickles fine; exits the process (code 1) when unpickled."""

    def __reduce__(self):
        return _exit_one, ()


class CrashAtUnpickle:
    """Pickles fine; segfaults the process when unpickled."""

    def __reduce__(self):
        return _crash, ()


def return_instance(cls):
    """Returns ``cls()``: a result that misbehaves when the worker pickles it or the parent
    unpickles it."""
    return cls()


def return_instance_item(x):
    """For map: ``x`` is a class; returns an instance."""
    return x()


def square_and_pid(x):
    return x * x, os.getpid()


_kept = []


def keep_and_return(obj):
    """Returns ``obj`` and keeps a reference to it in this worker."""
    _kept.append(obj)
    return obj


def kept_sum():
    """The sum of the array ``keep_and_return`` kept last, then forgets everything kept."""
    total = float(_kept[-1].sum())
    _kept.clear()
    return total


def write_kept(value):
    """Fills the array ``keep_and_return`` kept last with ``value``."""
    _kept[-1][:] = value
