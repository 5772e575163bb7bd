"""The measured chunk policy (jaxhp._engine.ChunkPolicy): decisions from given timings."""

import pytest

from jaxhp import _engine as engine


@pytest.fixture(autouse=True)
def _fresh_choices():
    engine.CHUNK_CHOICES.clear()
    yield
    engine.CHUNK_CHOICES.clear()


def _drive(policy, n, per_setting, compile_s=0.5):
    """Runs a group of ``n`` settings through ``policy``; ``per_setting(size)`` seconds."""
    sizes, done = [], 0
    while done < n:
        c = policy.next(n - done)
        sizes.append(c)
        policy.observe(c, compile_s if c not in sizes[:-1] else 0.0,
                       per_setting(c) * c, min(c, n - done))
        done += min(c, n - done)
    return sizes


def test_tries_half_and_double_then_keeps_the_fastest():
    p = engine.ChunkPolicy(512, 100_000, 1, cap=4096, key="k")
    sizes = _drive(p, 100_000, lambda c: {256: 1e-4, 512: 1.2e-4, 1024: 1.3e-4}[c])
    assert sizes[:3] == [512, 256, 1024] and set(sizes[3:]) == {256}
    assert p.chosen == 256 and p.record["trials"] == {256: 1e-4, 512: 1.2e-4, 1024: 1.3e-4}
    # reproducible: a later sweep of the same group reuses the choice, measuring nothing
    again = engine.ChunkPolicy(512, 100_000, 1, cap=4096, key="k")
    assert set(_drive(again, 10_000, lambda c: 1.0)) == {256} and again.trials == {}


def test_small_gains_and_small_groups_keep_the_plan():
    p = engine.ChunkPolicy(512, 100_000, 1, cap=4096)
    sizes = _drive(p, 100_000, lambda c: {256: 0.98e-4, 512: 1e-4, 1024: 1.01e-4}[c])
    assert p.chosen == 512 and set(sizes[3:]) == {512}  # 2% is within the noise margin
    q = engine.ChunkPolicy(512, 2048, 1, cap=4096)  # too little work to pay two compiles
    assert set(_drive(q, 2048, lambda c: 1e-4)) == {512} and q.chosen == 512


def test_sizes_are_device_multiples_within_the_cap_and_the_group():
    p = engine.ChunkPolicy(6, 10_000, 4, cap=8)
    assert p.candidates() == [4, 8]
    q = engine.ChunkPolicy(512, 700, 2, cap=4096)
    assert q.candidates() == [256]  # 1024 would be larger than the group
    r = engine.ChunkPolicy(512, 100_000, 1, cap=4096, tune=False)
    assert r.next(100_000) == 512 and r.chosen == 512


def test_a_sweep_measures_its_chunks_records_them_and_keeps_its_results(monkeypatch,
                                                                      diabetes):
    import jax
    import numpy as np

    import jaxhp
    from jaxhp import models

    split = diabetes
    model = models.linear_regression(10)
    space = jaxhp.random(64, learning_rate=jaxhp.loguniform(1e-3, 0.3), l2=jaxhp.loguniform(
        1e-5, 1e-1), steps=jaxhp.fixed(20), batch_size=jaxhp.fixed(32), seed=0)
    key = jax.random.key(0)
    fixed = jaxhp.sweep(model, space, split, key=key, seeds=2, chunk_size=16)
    assert fixed.groups[0].chunk_trials == [] and fixed.groups[0].n_chunks == 4
    monkeypatch.setattr(engine, "TUNE_GAIN", 1e9)  # any group is worth measuring
    measured = jaxhp.sweep(model, space, split, key=key, seeds=2, max_chunk=16)
    g = measured.groups[0]
    # the plan and its half; its double exceeds the caller's max_chunk
    assert [c for c, _ in g.chunk_trials] == [8, 16] and all(t > 0 for _, t in g.chunk_trials)
    assert g.chunk_size in (8, 16) and g.n_chunks >= 4
    np.testing.assert_allclose(measured.val["mse"], fixed.val["mse"], rtol=1e-5)
    # the same group again: the choice is reused, nothing is measured
    again = jaxhp.sweep(model, space, split, key=key, seeds=2, max_chunk=16)
    assert again.groups[0].chunk_trials == [] and again.groups[0].chunk_size == g.chunk_size
    # a checkpointed or explicitly chunked sweep keeps its plan
    explicit = jaxhp.sweep(model, space, split, key=key, seeds=2, chunk_size=16)
    assert explicit.groups[0].chunk_size == 16 and explicit.groups[0].chunk_trials == []
