"""Thread limits for BLAS and OpenMP in process workers, against oversubscription.

NumPy, SciPy, PyTorch and friends start one thread per CPU in every process that uses them; a
pool of ``n`` workers on ``n`` CPUs would then run ``n * n`` threads fighting over the CPUs. So
each worker starts with the usual variables set to ``max(1, cpu_count() // workers)``, unless
the parent already set them (then the worker gets the parent's value, also when it was forked
from a fork server made before the variable was set). ``limit_blas_threads=False`` turns it off.
The parent computes the values; each worker sets them first thing (``_worker/start.py``).

The libraries read the variables when they load, so the limit reaches those a task imports. A
library the parent had already loaded when the fork server was made keeps its own setting in
forked workers; ``mp_context="spawn"`` gives every worker a fresh start.
"""

from __future__ import annotations

import os

from .. import _core

#: The variables set in each worker (OpenMP, OpenBLAS, MKL, Apple Accelerate, numexpr).
BLAS_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def blas_env(workers: int) -> dict[str, str]:
    """The variables a worker of a pool of ``workers`` processes starts with."""
    default = str(max(1, _core.cpu_count() // max(1, workers)))
    return {name: os.environ.get(name, default) for name in BLAS_VARS}
