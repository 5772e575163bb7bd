"""``health="end"``: divergence judged once, from the final state (no per-step loss).

A sweep member equals ``jaxhp.train(..., health="end")`` of its setting, healthy or
diverged; a healthy member equals its ``health="step"`` run; the mode is recorded
per group, kept by save/load, refused where it cannot hold.
"""

import jax
import numpy as np
import pytest
from helpers import GrowHP, count_compiles, grow_model

import jaxhp
from jaxhp import models

KEY = jax.random.key(3)
RIDGE = models.linear_regression(10)
BASE = models.LinearHP(steps=40, batch_size=32)
# two healthy learning rates, two that overflow the ridge within its 40 steps
SPACE = jaxhp.grid(learning_rate=[0.01, 0.1, 3.0, 8.0])


@pytest.fixture(scope="module")
def diabetes():
    return jaxhp.datasets.load("diabetes")


@pytest.fixture(scope="module")
def ended(diabetes):
    return jaxhp.sweep(RIDGE, SPACE, diabetes, key=KEY, seeds=2, base=BASE, loss_every=0,
                       health="end", chunk_size=3, keep_params=True)


def test_members_equal_solo_end_runs_healthy_or_diverged(ended, diabetes):
    assert ended.groups[0].health == "end" and ended.groups[0].rechecked == 0
    np.testing.assert_array_equal(ended.diverged_at, [[-1, -1], [-1, -1], [39, 39], [39, 39]])
    for i in range(4):
        for s in range(2):
            run = jaxhp.train(RIDGE, ended.setting(i), diabetes, key=jax.random.fold_in(KEY, s),
                              loss_every=0, health="end")
            assert int(run.diverged_at) == ended.diverged_at[i, s]
            np.testing.assert_allclose(ended.val["mse"][i, s], float(run.val["mse"]),
                                       rtol=1e-5)
            for a, b in zip(jax.tree_util.tree_leaves(ended.params(i, s)),
                            jax.tree_util.tree_leaves(run.state.params)):
                np.testing.assert_allclose(a, b, rtol=1e-5)
    # a diverged member keeps the state its steps left (not frozen): non-finite
    assert not np.isfinite(ended.val["mse"][2:]).any()
    assert ended.best("mse").index in (0, 1)


def test_healthy_members_equal_step_health_and_selection_agrees(ended, diabetes):
    stepped = jaxhp.sweep(RIDGE, SPACE, diabetes, key=KEY, seeds=2, base=BASE, loss_every=0,
                          chunk_size=3)
    assert stepped.groups[0].health == "step"
    np.testing.assert_allclose(ended.val["mse"][:2], stepped.val["mse"][:2], rtol=1e-6)
    np.testing.assert_allclose(ended.train_loss[:2], stepped.train_loss[:2], rtol=1e-6)
    # step health froze the diverged members earlier, at the step their loss overflowed
    assert (stepped.diverged_at[2:] >= 0).all() and (stepped.diverged_at[2:] < 39).all()
    assert ended.best("mse").index == stepped.best("mse").index
    assert list(ended.setting_status()) == list(stepped.setting_status())


def test_chunking_invariance_and_one_program(diabetes):
    model = models.linear_regression(10)  # its own: the counts start from nothing
    with count_compiles() as c:
        a = jaxhp.sweep(model, SPACE, diabetes, key=KEY, seeds=2, base=BASE, loss_every=0,
                        health="end", chunk_size=1)
    assert c.count == 1  # no checked program: an end check leaves nothing to run again
    b = jaxhp.sweep(model, SPACE, diabetes, key=KEY, seeds=2, base=BASE, loss_every=0,
                    health="end", chunk_size="all")
    np.testing.assert_array_equal(a.diverged_at, b.diverged_at)
    np.testing.assert_allclose(a.val["mse"], b.val["mse"], rtol=1e-6)


def test_state_divergence_outside_the_loss_is_caught_at_the_end(diabetes):
    # `s` overflows while the loss stays finite: the end check reads the state
    model = grow_model()
    space = jaxhp.grid(growth=[0.0, 1e5], learning_rate=[0.05])
    r = jaxhp.sweep(model, space, diabetes, key=KEY, base=GrowHP(steps=40), loss_every=0,
                    health="end")
    np.testing.assert_array_equal(r.diverged_at[:, 0], [-1, 39])
    assert list(r.setting_status()) == ["ok", "diverged"]


def test_stateful_model_and_folds(diabetes):
    iris = jaxhp.datasets.load("iris")
    bn = models.mlp_classifier(4, 3, batch_norm=True)
    space = jaxhp.grid(learning_rate=[0.01, 0.05])
    base = models.MLPHP(width=8, depth=1, steps=20, batch_size=30)
    a = jaxhp.sweep(bn, space, iris, key=KEY, base=base, loss_every=0, health="end")
    b = jaxhp.sweep(bn, space, iris, key=KEY, base=base, loss_every=0)
    np.testing.assert_allclose(a.val["ce"], b.val["ce"], rtol=1e-5)
    assert (a.diverged_at == -1).all()
    # folds of unequal size, full batch: the padded fold's masked step
    folds = jaxhp.kfold(diabetes, 3)
    base = models.LinearHP(steps=30)
    space = jaxhp.grid(learning_rate=[0.05, 0.2])
    a = jaxhp.sweep(RIDGE, space, folds, key=KEY, base=base, loss_every=0, health="end")
    b = jaxhp.sweep(RIDGE, space, folds, key=KEY, base=base, loss_every=0)
    np.testing.assert_allclose(a.val["mse"], b.val["mse"], rtol=1e-5)


def test_bad_health_refused_before_compiling(diabetes):
    with count_compiles() as c:
        with pytest.raises(ValueError, match=r"`health`='end' with `loss_every`=1"):
            jaxhp.sweep(RIDGE, SPACE, diabetes, key=KEY, base=BASE, health="end")
        with pytest.raises(ValueError, match=r"`health`='final': must be one of 'step', 'end'"):
            jaxhp.sweep(RIDGE, SPACE, diabetes, key=KEY, base=BASE, loss_every=0,
                        health="final")
        with pytest.raises(ValueError, match=r"`health`='end' with `loss_every`=5"):
            jaxhp.train(RIDGE, BASE, diabetes, key=KEY, loss_every=5, health="end")
    assert c.count == 0


def test_save_load_keeps_health_and_retrains_with_it(ended, diabetes, tmp_path):
    path = tmp_path / "ended"
    r = jaxhp.sweep(RIDGE, SPACE, diabetes, key=KEY, seeds=2, base=BASE, loss_every=0,
                    health="end", chunk_size=3)
    r.save(path)
    loaded = jaxhp.SweepResult.load(path, hparams=models.LinearHP)
    assert loaded.groups[0].health == "end"
    # not kept: a diverged member is retrained with the group's health (as the sweep had it)
    p = loaded.params(3, 1, model=RIDGE, split=diabetes)
    assert not np.isfinite(np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(p)])
                           ).any()
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params(1, 0, model=RIDGE, split=diabetes)),
                    jax.tree_util.tree_leaves(ended.params(1, 0))):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    settings = SPACE.settings(models.LinearHP, base=BASE)
    parts = [jaxhp.sweep(RIDGE, settings[sl], diabetes, key=KEY, seeds=2, loss_every=0, **kw)
             for sl, kw in ((slice(0, 2), {"health": "end"}), (slice(2, 4), {}),
                            (slice(2, 4), {"health": "end"}))]
    assert jaxhp.SweepResult.merge([parts[0], parts[2]]).groups[0].health == "end"
    with pytest.raises(ValueError, match=r"health='step' in results\[1\] and health='end'"):
        jaxhp.SweepResult.merge(parts[:2])


class _PaddedStepsHP(models.LinearHP):
    steps: int = jaxhp.static(40, low=1, integer=True, pad_to=40)


def test_padded_steps_end_check_at_each_members_own_last_step(diabetes):
    # one program for 20 and 40 steps; a diverging member is marked at its own last step,
    # and each member equals its solo end run of its own steps
    settings = [_PaddedStepsHP(steps=st, learning_rate=lr, batch_size=32)
                for st, lr in ((20, 0.1), (20, 8.0), (40, 0.1), (40, 8.0))]
    r = jaxhp.sweep(RIDGE, settings, diabetes, key=KEY, loss_every=0, health="end")
    assert len(r.groups) == 1
    np.testing.assert_array_equal(r.diverged_at[:, 0], [-1, 19, -1, 39])
    for i, hp in enumerate(settings):
        run = jaxhp.train(RIDGE, hp, diabetes, key=jax.random.fold_in(KEY, 0), loss_every=0,
                          health="end")
        assert int(run.diverged_at) == r.diverged_at[i, 0]
        np.testing.assert_allclose(r.val["mse"][i, 0], float(run.val["mse"]), rtol=1e-5)
