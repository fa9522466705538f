"""BLAS/OpenMP thread limits in process workers (limit_blas_threads)."""

from __future__ import annotations

import os

import ferropool
import pytest
from ferropool._runtime.env import BLAS_VARS

from tests.conftest import WAIT


def blas_env(_: object = None) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in BLAS_VARS}


@pytest.fixture
def no_blas_vars(monkeypatch):
    for name in BLAS_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_workers_start_with_a_share_of_the_cpus(no_blas_vars, workers):
    expected = str(max(1, ferropool.cpu_count() // workers))
    with ferropool.ProcessPoolExecutor(workers) as ex:
        seen = ex.submit(blas_env).result(timeout=WAIT)
    assert seen == dict.fromkeys(BLAS_VARS, expected)


def test_a_cpu_count_below_the_pool_size_still_gives_one_thread(no_blas_vars, monkeypatch):
    monkeypatch.setenv("FERROPOOL_CPU_COUNT", "2")
    with ferropool.Pool(4) as pool:
        assert pool.apply(blas_env) == dict.fromkeys(BLAS_VARS, "1")


def test_values_the_user_set_are_kept(no_blas_vars, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    with ferropool.Pool(2) as pool:
        seen = pool.apply(blas_env)
    assert seen["OMP_NUM_THREADS"] == "7"
    assert seen["MKL_NUM_THREADS"] == "3"
    assert seen["OPENBLAS_NUM_THREADS"] == str(max(1, ferropool.cpu_count() // 2))


def test_limit_blas_threads_false_leaves_the_environment_alone(no_blas_vars):
    # a fresh interpreter has exactly the parent's environment, where none is set
    with ferropool.ProcessPoolExecutor(2, limit_blas_threads=False, mp_context="spawn") as ex:
        seen = ex.submit(blas_env).result(timeout=WAIT)
    assert seen == dict.fromkeys(BLAS_VARS)


def test_spawned_workers_get_the_limits_too(no_blas_vars):
    with ferropool.ProcessPoolExecutor(1, mp_context="spawn") as ex:
        seen = ex.submit(blas_env).result(timeout=WAIT)
    assert seen == dict.fromkeys(BLAS_VARS, str(ferropool.cpu_count()))


def test_the_parents_environment_is_not_changed(no_blas_vars):
    with ferropool.Pool(2) as pool:
        pool.apply(blas_env)
    assert blas_env() == dict.fromkeys(BLAS_VARS)
