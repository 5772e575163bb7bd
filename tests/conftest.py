"""Shared fixtures: a compile counter and the bundled datasets, loaded once.

The test run shares one persistent JAX compilation cache (a fresh temporary folder,
removed at the end) between its pytest-xdist workers and every process they start
(README blocks, notebook kernels, resumed children): a program that another test or
process already compiled is read back instead of compiled again. It changes no
count: ``helpers.count_compiles`` and the engine count a compilation request either
way (a cache read is inside JAX's compile event), and nothing is kept between runs.

It also compiles with XLA's cheap backend settings (``helpers.FAST_COMPILE_FLAGS``,
added to ``XLA_FLAGS`` for the run and the processes it starts, unless
``JAXHP_TESTS_FULL_OPT=1``): most of the suite's time is compiling small programs
that then run a few steps.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import pytest
from helpers import (
    FAST_COMPILE_FLAGS,
    count_compiles,  # importing helpers registers the compile listener
)

import jaxhp

CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
MIN_COMPILE_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_own_cache: list[str] = []


def pytest_configure(config):
    """The run's compilation cache: made by the first process (the xdist controller, or
    the only process with ``-n 0``); workers and subprocesses inherit it by environment."""
    del config
    if os.environ.get("JAXHP_TESTS_FULL_OPT") != "1":
        flags = os.environ.get("XLA_FLAGS", "").split()
        os.environ["XLA_FLAGS"] = " ".join(
            flags + [f for f in FAST_COMPILE_FLAGS if f not in flags])
    if CACHE_ENV not in os.environ:
        folder = tempfile.mkdtemp(prefix="jaxhp-tests-jax-cache-")
        _own_cache.append(folder)
        os.environ[CACHE_ENV] = folder
        os.environ.setdefault(MIN_COMPILE_ENV, "0.2")
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get(MIN_COMPILE_ENV, "1.0")))


# Files whose tests share nothing (each test runs its own subprocess: README blocks,
# notebooks) are spread test by test over the xdist workers; every other file stays
# whole on one worker, as ``--dist loadfile`` does, so that its module-scoped fixtures
# compile once. (xdist's ``loadgroup`` marks do not work under pytest 9: xdist 3.8 renames
# ``item._nodeid``, which pytest 9 no longer reads.)
SPREAD = frozenset({"test_readme.py", "test_notebooks.py"})


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class FilesAndSpreadTests(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if path.rsplit("/", 1)[-1] in SPREAD else path

    return FilesAndSpreadTests(config, log)


def pytest_unconfigure(config):
    del config
    for folder in _own_cache:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def compile_counter():
    """Counts XLA compilations for the rest of the test (see ``helpers.count_compiles``)."""
    with count_compiles() as counter:
        yield counter


@pytest.fixture(scope="session")
def diabetes() -> jaxhp.Split:
    """Standardised diabetes (x and y), split (0.6, 0.2, 0.2) with key 0."""
    return jaxhp.datasets.load("diabetes", key=jax.random.key(0))


@pytest.fixture(scope="session")
def digits() -> jaxhp.Split:
    """Standardised digits (8x8 images, 10 classes), stratified split with key 0."""
    return jaxhp.datasets.load("digits", key=jax.random.key(0))
