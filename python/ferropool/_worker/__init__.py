"""The worker side.

A process worker's entry (``main``), the chunk interpreter shared with pool threads (``chunk``),
start-up (``start``), output forwarding and ``worker_state()``. Imports only ``_runtime`` and the
standard library it needs: every module loaded here is paid again by every spawned worker
(``tests/test_layout.py`` checks it).
"""
