"""The parent's pool machinery.

Backends, futures, result delivery, batching, progress, asyncio, stats, worker set-up and output
collection. Loaded by the public front ends (``pool``, ``futures``); never by a worker
(``tests/test_layout.py``).
"""
