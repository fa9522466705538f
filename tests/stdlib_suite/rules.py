"""Why a test of CPython's multiprocessing suite is not expected to pass with ferropool.

Each rule is ``(glob over "Class.test_method", kind, reason)``; the first match wins. Kinds:

* ``not-applicable``: the test inspects CPython's private state or machinery that ferropool does
  not have by design (``Pool._pool``, ``multiprocessing.util``, the stdlib's fork server or
  resource tracker); it is not run.
* ``pending-manager``: the test needs ``Manager``, ``connection.Listener``/``Client`` or
  connection pickling, which the Manager work brings; it runs, and is reported when it passes.
* ``difference``: ferropool behaves differently on purpose; docs/migration.md says why.
* ``fail``: a known bug that shows only at times (a hang under load): listed as a failure whether
  it passed in the run that wrote the file or not, so the check does not flap.

A failing test no rule covers is listed in the expected file as ``fail: <cause>``.
"""

from __future__ import annotations

import fnmatch

# kinds whose tests are run; a rule may also say a test of another kind is not run (False last),
# because it would block for minutes by design
RUN = {"not-applicable": False, "pending-manager": True, "difference": True, "fail": True}

RULES: list[tuple[str, str, str] | tuple[str, str, str, bool]] = [
    # --- Manager, Listener/Client, connection pickling (issue 14)
    ("WithManager*", "pending-manager", "Manager() is not in ferropool yet"),
    ("TestSyncManagerTypes.*", "pending-manager", "Manager() is not in ferropool yet"),
    ("TestInitializers.*", "pending-manager", "Manager() is not in ferropool yet"),
    ("*TestManagerRestart.*", "pending-manager", "managers.BaseManager"),
    ("TestManagerExceptions.*", "pending-manager", "Manager() is not in ferropool yet"),
    ("*TestSharedMemory.test_shared_memory_SharedMemory*", "pending-manager", "managers.SharedMemoryManager"),
    ("*TestListener.*", "pending-manager", "connection.Listener/Client"),
    ("*TestListenerClient.*", "pending-manager", "connection.Listener/Client"),
    ("TestInvalidFamily.*", "pending-manager", "connection.Listener/Client"),
    ("TestTimeouts.*", "pending-manager", "connection.Listener/Client"),
    ("TestIgnoreEINTR.test_ignore_listener", "pending-manager", "connection.Listener/Client"),
    ("OtherTest.*", "pending-manager", "connection.deliver_challenge/answer_challenge"),
    ("*TestPicklingConnections.*", "pending-manager", "connection pickling and Listener/Client"),
    ("*TestConnection.test_*fd_transfer", "pending-manager", "reduction.send_handle/recv_handle"),
    # --- not applicable: CPython's private state and machinery
    ("*TestPool.test_make_pool", "not-applicable", "reads Pool._pool, the stdlib's list of worker processes"),
    ("*TestPoolWorkerLifetime.test_pool_worker_lifetime", "not-applicable", "reads and repopulates Pool._pool"),
    ("*TestPool.test_resource_warning", "not-applicable", "sets the private Pool._state to fake a running pool"),
    (
        "*TestProcess.test_forkserver_*",
        "not-applicable",
        "kills the stdlib's fork server (multiprocessing.forkserver), not ferropool's",
    ),
    ("*TestHeap.*", "not-applicable", "multiprocessing.heap, the stdlib's private arena allocator"),
    ("*TestFinalize.*", "not-applicable", "multiprocessing.util.Finalize, which ferropool does not replace"),
    ("TestForkAwareThreadLock.*", "not-applicable", "multiprocessing.util, which ferropool does not replace"),
    ("*TestLogging.test_enable_logging", "not-applicable", "multiprocessing.util.SUBWARNING: util is not replaced"),
    ("*TestLogging.test_filename", "not-applicable", "multiprocessing.util.info/DEBUG: util is not replaced"),
    ("TestResourceTracker.*", "not-applicable", "the stdlib's resource_tracker process"),
    (
        "*TestSharedMemory.test_shared_memory_*tracking",
        "not-applicable",
        "a fresh interpreter using the stdlib's shared_memory and resource tracker",
    ),
    (
        "*TestSharedMemory.test_shared_memory_name_with_embedded_null",
        "not-applicable",
        "reads the stdlib's private shared_memory._USE_POSIX",
    ),
    (
        "ChallengeResponseTest.*",
        "not-applicable",
        "calls the stdlib's private connection._create_response/_verify_challenge",
    ),
    (
        "*TestSharedMemory.test_shared_memory_cleaned_after_process_termination",
        "not-applicable",
        "a fresh interpreter using the stdlib's shared_memory and resource tracker",
    ),
    (
        "*TestSharedMemory.test_shared_memory_basics",
        "not-applicable",
        "mocks the stdlib's private shared_memory._make_filename",
    ),
    (
        "*TestSharedMemory.test_shared_memory_recreate",
        "not-applicable",
        "mocks the stdlib's private shared_memory._make_filename",
    ),
    (
        "*TestSharedMemory.test_shared_memory_ShareableList_basics",
        "not-applicable",
        "calls the stdlib's private ShareableList._get_packing_format",
    ),
    ("TestSimpleQueue.test_closed", "not-applicable", "reads SimpleQueue._reader/_writer, the stdlib's pipe ends"),
    (
        "TestPoolNotLeakOnFailure.*",
        "not-applicable",
        "a mock context whose Process the stdlib's Pool calls to make workers; ferropool's pool does not",
    ),
    ("_TestImportStar.*", "not-applicable", "imports every module of the stdlib's package by its path"),
    (
        "*TestQueue.test_no_import_lock_contention",
        "not-applicable",
        "imports a generated module that uses the stdlib's multiprocessing",
    ),
    (
        "*TestPoolWorkerLifetime.test_worker_finalization_via_atexit_handler_of_multiprocessing",
        "not-applicable",
        "a fresh interpreter using the stdlib's Pool",
    ),
    ("TestFlags.*", "not-applicable", "a fresh interpreter using the stdlib's multiprocessing"),
    ("TestNoForkBomb.*", "not-applicable", "a script (mp_fork_bomb.py) using the stdlib's multiprocessing"),
    ("TestNamedResource.*", "not-applicable", "a fresh interpreter using the stdlib's multiprocessing"),
    ("TestStartMethod.test_preload_resources", "not-applicable", "the stdlib's forkserver preload script"),
    (
        "MiscTestCase.test_spawn_sys_executable_none_allows_import",
        "not-applicable",
        "a fresh interpreter importing the stdlib's multiprocessing.spawn",
    ),
    ("SemLockTests.*", "not-applicable", "_multiprocessing.SemLock, the stdlib's C semaphore"),
    # --- intended differences (docs/migration.md, "CPython's own test suite")
    (
        "*TestQueue.test_queue_feeder_donot_stop_onexc",
        "difference",
        "an object that cannot be pickled fails at put(), not later in a feeder thread",
    ),
    (
        "TestInvalidHandle.test_invalid_handles",
        "difference",
        "Connection(fd) checks the descriptor at once: OSError from the constructor, not from poll()",
    ),
    (
        "*TestPoolWorkerErrors.test_unpickleable_result",
        "difference",
        "a result that is a lambda is returned (pickled by value), so there is no MaybeEncodingError",
    ),
    (
        "TestStartMethod.test_get_all",
        "difference",
        "get_all_start_methods() lists the default, 'forkserver', first",
    ),
    (
        "WithThreadsTestPool.test_terminate",
        "difference",
        "terminate() right after map_async(): ferropool's threads have already started 5-minute calls, "
        "which join() waits for as the stdlib's does for running calls (its task thread had started none)",
        False,
    ),
]


def _match(test_id: str) -> tuple[str, str, str] | tuple[str, str, str, bool] | None:
    return next((rule for rule in RULES if fnmatch.fnmatchcase(test_id, rule[0])), None)


def rule_for(test_id: str) -> tuple[str, str] | None:
    """``(kind, reason)`` of the first rule matching ``test_id``, or ``None``."""
    rule = _match(test_id)
    return None if rule is None else (rule[1], rule[2])


def runs(test_id: str) -> bool:
    """Whether the driver runs ``test_id``."""
    rule = _match(test_id)
    if rule is None:
        return True
    return rule[3] if len(rule) == 4 else RUN[rule[1]]
