"""Top-level targets and Process subclasses that ``ferropool.Process`` children import by reference.

Each reports through a Connection the test holds; waiting here (``wait_for``) happens inside the
child, to keep it running until the test releases it.
"""

from __future__ import annotations

import os
import sys

import ferropool


def send(conn, *values, **named):
    conn.send((values, named))
    conn.close()


def identity(conn):
    me = ferropool.current_process()
    parent = ferropool.parent_process()
    conn.send(
        {
            "name": me.name,
            "pid": me.pid,
            "ident": me.ident,
            "daemon": me.daemon,
            "alive": me.is_alive(),
            "authkey": me.authkey,
            "parent_pid": parent.pid,
            "parent_name": parent.name,
            "parent_alive": parent.is_alive(),
            "argv": sys.argv,
        }
    )
    conn.close()


def fail():
    raise ValueError("raised in the child")


def exit_with(code):
    sys.exit(code)


def wait_for(conn):
    """Blocks until the test sends something or closes its end."""
    try:
        conn.recv()
    except EOFError:
        pass


def start_grandchild(conn):
    """Reports what starting a child from here does (a daemon may not)."""
    child = ferropool.Process(target=exit_with, args=(5,))
    try:
        child.start()
    except AssertionError as exc:
        conn.send(("refused", str(exc)))
        return
    child.join(30)
    conn.send(("started", child.exitcode))


def echo_until_eof(conn):
    """Sends back every message until the other end closes."""
    while True:
        try:
            conn.send_bytes(conn.recv_bytes())
        except EOFError:
            return


def ignore_sigterm(conn):
    """Ignores SIGTERM, says so, and lingers."""
    import signal
    import time

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    conn.send("ignoring SIGTERM")
    time.sleep(60)


def print_and_exit(text):
    print(text, flush=True)


class Reporter(ferropool.Process):
    """A subclass that overrides run() and keeps its own state."""

    def __init__(self, conn, value):
        super().__init__()
        self.conn = conn
        self.value = value

    def run(self):
        self.conn.send(("run", self.value * 2, os.getpid()))
        self.conn.close()


def report_surroundings(conn):
    """Sends the child's cwd, one environment variable, a module found on a late sys.path
    entry, its process group and its parent's pid."""
    import late_module

    conn.send((os.getcwd(), os.environ.get("FERRO_LATE"), late_module.VALUE, os.getpgrp(), os.getppid()))


def send_parent_pid(conn):
    """Sends this process's parent's pid."""
    conn.send(os.getppid())
