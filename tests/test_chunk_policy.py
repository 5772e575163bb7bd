"""The measured chunk policy, seen through ``jaxhp.sweep`` and the group record.

With ``chunk_size=None`` a sweep runs its planned chunk size first and, when the
group is big enough to pay for trying, half of it next; the rest of the group runs
at the size with the lowest measured seconds per setting. ``GroupInfo.chunk_trials``
records the sizes tried with their seconds per setting, ``chunk_size`` the choice and
``n_chunks`` the calls made. The run time of each chunk size is set here by the
model: its evaluation, in a host callback that sees the whole chunk, advances the
clock the sweep reads (``time.perf_counter``, patched for these tests to the real clock
plus a virtual offset) by a given time per setting for each chunk size. The virtual
delays are seconds per setting, far above any real chunk's run time on a loaded
machine, so the decisions do not depend on the machine, and nothing sleeps.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhp
from jaxhp import models

KEY = jax.random.key(0)
SEEDS = 2
SPACE = jaxhp.random(64, learning_rate=jaxhp.loguniform(1e-3, 0.3), l2=jaxhp.loguniform(
    1e-5, 1e-1), steps=jaxhp.fixed(20), batch_size=jaxhp.fixed(32), seed=0)


_REAL_CLOCK = time.perf_counter
_OFFSET = [0.0]  # virtual seconds added to the real clock


def _clock() -> float:
    return _REAL_CLOCK() + _OFFSET[0]


def timed_ridge(per_setting: dict[int, float]) -> jaxhp.Model:
    """Ridge whose evaluation of a chunk of ``c`` settings advances the clock by
    ``per_setting[c] * c`` virtual seconds (the callback receives the chunk's members:
    settings x seeds)."""
    ridge = models.linear_regression(10)

    def wait(b):
        c = b.size // SEEDS
        _OFFSET[0] += per_setting.get(c, 0.0) * c
        return np.zeros(b.shape, np.float32)

    def metrics(params, batch, hp):
        out = ridge.metrics(params, batch, hp)
        delay = jax.pure_callback(wait, jax.ShapeDtypeStruct((), jnp.float32),
                                  jnp.sum(params["b"]), vmap_method="expand_dims")
        return {**out, "mse": out["mse"] + delay}

    return ridge._replace(metrics=metrics, name="timed_ridge")


# One model per decision: each has its own compiled programs and measured choice.
# A 10x difference of virtual seconds per setting: a chunk's real run time (~30 ms,
# up to ~0.3 s on a loaded 2-core machine) cannot reverse the order.
HALF_FASTER = timed_ridge({16: 10.0, 8: 1.0})
HALF_SLOWER = timed_ridge({16: 1.0, 8: 10.0})
UNTIMED = models.linear_regression(10)


@pytest.fixture(scope="module")
def sweep(diabetes):
    def run(model, **kw):
        return jaxhp.sweep(model, SPACE, diabetes, key=KEY, seeds=SEEDS, progress=False, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(time, "perf_counter", _clock)
        yield run


def test_a_faster_half_size_is_measured_chosen_and_kept(sweep):
    # an explicit size is kept and measures nothing; it also compiles the program of the
    # size, so that trying another size is worth it and its timing has no first-run cost
    fixed = sweep(HALF_FASTER, chunk_size=16)
    assert fixed.groups[0].chunk_trials == [] and fixed.groups[0].n_chunks == 4
    sweep(HALF_FASTER, chunk_size=8)
    measured = sweep(HALF_FASTER, max_chunk=16)
    g = measured.groups[0]
    # the plan (16) first, its half (8) next; its double exceeds the caller's max_chunk
    assert [c for c, _ in g.chunk_trials] == [8, 16]
    times = dict(g.chunk_trials)
    assert 0 < times[8] < times[16] and g.chunk_size == 8
    assert g.n_chunks == 1 + 1 + 5  # 64 = 16 + 8 + 5 x 8
    assert all(c % jax.local_device_count() == 0 for c in times)
    np.testing.assert_allclose(measured.val["mse"], fixed.val["mse"], rtol=1e-5)
    # the same group again: the choice is reused, nothing is measured
    again = sweep(HALF_FASTER, max_chunk=16)
    assert again.groups[0].chunk_trials == [] and again.groups[0].chunk_size == 8
    assert again.groups[0].n_chunks == 8
    # an explicit size still replays its own plan
    explicit = sweep(HALF_FASTER, chunk_size=16)
    assert explicit.groups[0].chunk_size == 16 and explicit.groups[0].chunk_trials == []


def test_a_slower_half_size_keeps_the_plan(sweep):
    sweep(HALF_SLOWER, chunk_size=16)  # both sizes' programs, compiled
    sweep(HALF_SLOWER, chunk_size=8)
    g = sweep(HALF_SLOWER, max_chunk=16).groups[0]
    times = dict(g.chunk_trials)
    assert sorted(times) == [8, 16] and times[16] < times[8]
    assert g.chunk_size == 16 and g.n_chunks == 1 + 1 + 3  # 16 + 8 + 16 + 16 + 8 (padded)


def test_small_groups_and_checkpointed_sweeps_keep_the_plan(sweep, tmp_path):
    # compiling the half size would cost more than it could save on 48 settings: only
    # the plan is measured
    g = sweep(UNTIMED, max_chunk=16).groups[0]
    assert [c for c, _ in g.chunk_trials] == [16] and g.chunk_size == 16 and g.n_chunks == 4
    # a checkpoint fixes the plan (chunks are named by it), however worth measuring
    sweep(HALF_FASTER, chunk_size=16)
    g = sweep(HALF_FASTER, max_chunk=16, checkpoint_dir=tmp_path).groups[0]
    assert g.chunk_trials == [] and g.chunk_size == 16 and g.n_chunks == 4


def test_the_timed_model_trains_as_ridge(sweep):
    """The callback adds zero: the timed model's results are ridge's."""
    a = sweep(UNTIMED, chunk_size=16)
    b = sweep(HALF_FASTER, chunk_size=16)
    np.testing.assert_allclose(a.val["mse"], b.val["mse"], rtol=1e-6)
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)
