"""Models with non-trained state (``Model(has_state=True)``; issue 11).

A toy model whose state has a closed form (a step counter, the running sum of
the minibatches' mean inputs, a product of a tunable ``growth`` per step), and
the reference MLP with BatchNorm (``mlp_classifier(..., batch_norm=True)``) on
a slice of digits. Models are built once per module; runs are tiny.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, count_compiles

import jaxhp
from jaxhp import models

KEY = jax.random.key(3)
D = 3
STEPS, BATCH = 12, 8


class ToyHP(jaxhp.HParams):
    """Hyperparameters of the toy stateful model."""

    learning_rate: float = jaxhp.tunable(0.05, low=0, low_open=True, log=True)
    growth: float = jaxhp.tunable(1.0, low=0, low_open=True,
                                  doc="the state's `g` is multiplied by it every step")
    steps: int = jaxhp.static(STEPS, low=1, integer=True)
    batch_size: int = jaxhp.static(BATCH, low=1, integer=True)


def toy_model(scale: float = 1.0, pad: int = 0) -> jaxhp.Model:
    """Linear regression on inputs centred by a state: ``n`` (steps taken), ``sum_x``
    (the sum over steps of ``scale`` x the minibatch's mean input), ``g`` (the product of
    ``hp.growth`` over steps) and ``pad`` zeros (a large state, for the memory plan)."""

    def init(key, hp):
        del key, hp
        return ({"w": jnp.zeros((D,)), "b": jnp.zeros(())},
                {"n": jnp.zeros((), jnp.int32), "sum_x": jnp.zeros((D,)),
                 "g": jnp.ones(()), "pad": jnp.zeros((pad,))})

    def predict(params, state, x):
        mean_x = state["sum_x"] / jnp.maximum(state["n"], 1)
        return (x - mean_x) @ params["w"] + params["b"]

    def loss(params, state, batch, hp, key=None):
        mse = jnp.mean((predict(params, state, batch["x"]) - batch["y"]) ** 2)
        # the state moves even at evaluation (key=None): jaxhp must ignore it there
        new = {"n": state["n"] + 1,
               "sum_x": state["sum_x"] + scale * jnp.mean(batch["x"], axis=0),
               "g": state["g"] * hp.growth, "pad": state["pad"]}
        return 0.5 * mse, ({"mse": mse}, new)

    def metrics(params, state, batch, hp):
        mse = jnp.mean((predict(params, state, batch["x"]) - batch["y"]) ** 2)
        return {"mse": mse, "seen": state["n"].astype(mse.dtype)}

    def optimizer(hp):
        return optax.sgd(hp.learning_rate)

    return jaxhp.Model(init, loss, optimizer, metrics, ToyHP, "toy_state",
                       directions={"mse": "min", "seen": "max"}, has_state=True)


@pytest.fixture(scope="module")
def toy():
    return toy_model()


@pytest.fixture(scope="module")
def data() -> jaxhp.Split:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, (96, D)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.1 * rng.normal(size=96)
         ).astype(np.float32)
    part = lambda a, b: {"x": x[a:b], "y": y[a:b]}
    return jaxhp.Split(part(0, 48), part(48, 72), part(72, 96))


def expected_state(split, key, hp):
    """The toy's state after ``hp.steps`` steps of a run with ``key``, from the public
    minibatch sampler (``fold_in(key, 1)`` draws a run's minibatches)."""
    sum_x = np.zeros(D, np.float32)
    for t in range(hp.steps):
        batch = jaxhp.sample_batch(split.train, jax.random.fold_in(key, 1), t,
                                   hp.batch_size)
        sum_x = sum_x + np.asarray(batch["x"]).mean(axis=0)
    return {"n": hp.steps, "sum_x": sum_x, "g": float(hp.growth) ** hp.steps}


def test_trained_state_is_the_closed_form(toy, data):
    hp = ToyHP(growth=1.1)
    run = jaxhp.train(toy, hp, data, key=KEY, eval_every=4)
    want = expected_state(data, KEY, hp)
    st = run.state.model_state
    assert isinstance(run.state, jaxhp.TrainState) and int(run.state.step) == STEPS
    # evaluations every 4 steps ran the loss with key=None, whose new state is ignored
    assert int(st["n"]) == STEPS and st["n"].dtype == jnp.int32
    np.testing.assert_allclose(st["sum_x"], want["sum_x"], rtol=1e-5)
    np.testing.assert_allclose(st["g"], want["g"], rtol=1e-5)
    # validation (end and curve) reads the state: `seen` is its step counter
    assert float(run.val["seen"]) == STEPS
    np.testing.assert_array_equal(run.val_curve["seen"], [4, 8, 12])
    out = jaxhp.evaluate(toy, run.state.params, hp, data.val, state=st)
    np.testing.assert_allclose(out["mse"], run.val["mse"], rtol=1e-6)
    fresh = jax.tree_util.tree_map(jnp.zeros_like, st)
    stale = jaxhp.evaluate(toy, run.state.params, hp, data.val, state=fresh)
    assert abs(float(stale["mse"]) - float(out["mse"])) > 1e-3  # the state is used


def test_stateless_models_keep_model_state_none(data):
    model = models.linear_regression(D)
    run = jaxhp.train(model, models.LinearHP(steps=3), data, key=KEY)
    assert run.state.model_state is None and not model.has_state
    with pytest.raises(ValueError, match="has no state"):
        jaxhp.evaluate(model, run.state.params, models.LinearHP(steps=3), data.val,
                       state={})


def test_sweep_members_equal_solo_runs_and_divergence_freezes_the_state(toy, data):
    settings = [ToyHP(learning_rate=0.05, growth=1.05),
                ToyHP(learning_rate=1e8),                  # parameters blow up
                ToyHP(learning_rate=0.05, growth=1e10),    # only the state overflows
                ToyHP(learning_rate=0.1, growth=0.9)]
    res = jaxhp.sweep(toy, settings, data, key=KEY, seeds=1, keep_params=True)
    assert list(res.status[:, 0]) == ["ok", "diverged", "diverged", "ok"]
    # g: 1, 1e10, 1e20, 1e30, then 1e40 overflows float32 at step 3: frozen at 1e30
    assert res.diverged_at[2, 0] == 3
    for i, hp in enumerate(settings):
        params, state = res.params(i)
        assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree_util.tree_leaves(
            (params, state)))
        solo = jaxhp.train(toy, hp, data, key=jax.random.fold_in(KEY, 0))
        assert_trees_close((params, state), (solo.state.params, solo.state.model_state),
                           rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res.val["mse"][i, 0], solo.val["mse"], rtol=1e-5)
        dead = int(res.diverged_at[i, 0])
        if dead >= 0:  # frozen after `dead` good steps: the state with the parameters
            assert int(state["n"]) == dead == int(solo.diverged_at)
        else:
            assert int(state["n"]) == STEPS
    np.testing.assert_allclose(res.params(2)[1]["g"], 1e30, rtol=1e-5)


def test_successive_halving_carries_the_state(toy, data):
    space = [ToyHP(learning_rate=lr) for lr in (0.01, 0.03, 0.1, 0.3)]
    res = jaxhp.successive_halving(toy, space, data, key=KEY, min_steps=4, eta=2,
                                   metric="mse")
    # `seen` reads the state's step counter: every setting continued its own state
    np.testing.assert_array_equal(res.val["seen"][:, 0], res.steps_trained)
    assert sorted(res.steps_trained.tolist()) == [4, 4, 8, 12]
    i = int(np.argmax(res.steps_trained))
    solo = jaxhp.train(toy, res.setting(i), data, key=jax.random.fold_in(KEY, 0))
    assert res.setting(i).steps == 12
    np.testing.assert_allclose(res.val["mse"][i, 0], solo.val["mse"], rtol=1e-5)
    np.testing.assert_allclose(res.train_loss[i, 0], solo.train_loss, rtol=1e-5)
    _, state = res.params(i)  # retrained alone: the pair, state included
    assert int(state["n"]) == 12


def test_pbt_copies_the_state_and_save_load_keeps_it(toy, data, tmp_path):
    growth = (1.0, 1.01, 1.02, 1.03)
    space = [ToyHP(learning_rate=lr, growth=g) for lr, g in zip((0.3, 0.01, 0.1, 0.003),
                                                                growth)]
    kw = dict(key=KEY, steps=STEPS, ready_every=4, fraction=0.25, fields=("learning_rate",),
              metric="mse", checkpoint_dir=tmp_path / "ckpt")
    res = jaxhp.pbt(toy, space, data, **kw)
    resumed = jaxhp.pbt(toy, space, data, **kw)  # every interval restored from its state
    assert resumed.groups[0].chunks_computed == 0
    assert res.lineage.shape == (4, 2) and (res.lineage != np.arange(4)[:, None]).any()
    for i in range(4):
        params, state = res.params(i)
        # exploit copied the source's state with its parameters: g is the product of
        # the growth of every slot along the lineage, 4 steps each
        anc = res.ancestry(i)
        np.testing.assert_allclose(state["g"], np.prod(anc["growth"] ** 4), rtol=1e-5)
        assert int(state["n"]) == STEPS
    before = res.evaluate_test("mse")
    res.save(tmp_path / "pbt")
    loaded = jaxhp.PBTResult.load(tmp_path / "pbt")
    for i in range(4):
        assert_trees_close(loaded.params(i, model=toy), res.params(i), rtol=0, atol=0)
        assert_trees_close(resumed.params(i), res.params(i), rtol=0, atol=0)
    after = loaded.evaluate_test("mse", model=toy, split=data, allow_repeat=True)
    assert after.selection.index == before.selection.index
    np.testing.assert_array_equal(after.per_seed["mse"], before.per_seed["mse"])
    p, s = before.params[0]  # the tested pairs; the state matters for the test metric
    stale = jaxhp.evaluate(toy, p, res.setting(before.selection.index), data.test,
                           state=jax.tree_util.tree_map(jnp.zeros_like, s))
    assert abs(float(stale["mse"]) - before.metrics["mse"]) > 1e-3


def test_hypergradients_differentiate_through_the_state(toy, data):
    hp = ToyHP(learning_rate=0.05, steps=6)
    rev = jaxhp.hypergradient(toy, hp, data, key=KEY, wrt="learning_rate",
                              objective="mse", mode="reverse")
    fwd = jaxhp.hypergradient(toy, hp, data, key=KEY, wrt="learning_rate",
                              objective="mse", mode="forward")
    assert np.isfinite(rev.grad["learning_rate"]) and rev.grad["learning_rate"] != 0
    np.testing.assert_allclose(rev.grad["learning_rate"], fwd.grad["learning_rate"],
                               rtol=1e-4)
    run = jaxhp.train(toy, hp, data, key=KEY)
    np.testing.assert_allclose(rev.value, run.val["mse"], rtol=1e-5)
    with pytest.raises(ValueError, match="implicit.*has_state=True"):
        jaxhp.hypergradient(toy, hp, data, key=KEY, mode="implicit", objective="mse")
    with pytest.raises(ValueError, match="implicit.*has_state=True"):
        jaxhp.tune_gradient(toy, [hp], data, key=KEY, mode="implicit", objective="mse")
    res = jaxhp.tune_gradient(toy, [hp], data, key=KEY, wrt="learning_rate", steps=2,
                              objective="mse")
    assert res.val["seen"][0, 0] == 6  # its last evaluation reads the trained state


def test_checkpoints_keep_the_state_and_the_fingerprint_covers_its_update(data, tmp_path):
    kw = dict(key=KEY, seeds=1, checkpoint_dir=tmp_path, keep_params=True)
    first = jaxhp.sweep(toy_model(), [ToyHP(steps=2)], data, **kw)
    again = jaxhp.sweep(toy_model(), [ToyHP(steps=2)], data, **kw)
    assert again.groups[0].chunks_loaded == 1 and again.groups[0].chunks_computed == 0
    assert_trees_close(again.params(0), first.params(0), rtol=0, atol=0)
    assert int(again.params(0)[1]["n"]) == 2
    with pytest.raises(jaxhp.CheckpointMismatch, match="`model.loss`"):
        jaxhp.sweep(toy_model(scale=0.5), [ToyHP(steps=2)], data, **kw)


def test_memory_plan_counts_the_state(data):
    big = toy_model(pad=250_000)  # a 1 MB state per member, 3 copies in a step
    res = jaxhp.sweep(big, [ToyHP(steps=2, learning_rate=lr) for lr in
                            np.geomspace(0.01, 0.1, 6)], data, key=KEY,
                      memory_budget=8 * 2**20, devices=jax.devices()[:1])
    assert res.groups[0].chunk_size <= 2 and res.groups[0].n_chunks >= 3


# ---------------------------------------------------------------- bad models
def _bad(**changes):
    good = toy_model()
    fields = {"init": good.init, "loss": good.loss, "optimizer": good.optimizer,
              "metrics": good.metrics, "hparams": ToyHP, "has_state": True}
    return jaxhp.Model(**{**fields, **changes})


_LOSS = toy_model().loss


def _loss_returning(new_state):
    def loss(params, state, batch, hp, key=None):
        out, (aux, _) = _LOSS(params, state, batch, hp, key)
        return out, (aux, new_state(state))
    return loss


BAD = {
    "init-not-a-pair": (dict(init=lambda key, hp: {"w": jnp.zeros(D)}),
                        r"model.init .*must return \(params, state\)"),
    "loss-without-state": (dict(loss=lambda p, s, b, hp, key=None: (jnp.zeros(()), {})),
                           r"model.loss .*must return \(loss, \(aux, new_state\)\)"),
    "new-state-structure": (dict(loss=_loss_returning(lambda s: {"n": s["n"]})),
                            r"model.loss .*another structure"),
    "new-state-shape": (dict(loss=_loss_returning(lambda s: {**s, "sum_x": s["sum_x"][:2]})),
                        r"model.loss .*new_state\['sum_x'\] of shape \(2,\)"),
    "new-state-dtype": (dict(loss=_loss_returning(lambda s: {**s, "n": s["n"] * 1.0})),
                        r"model.loss .*new_state\['n'\] .*dtype float32"),
    "stateless-metrics": (dict(metrics=lambda p, b, hp: {}),
                          r"model.metrics .*cannot be called as metrics\(params, state"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_stateful_models_are_refused_before_compiling(case, data):
    changes, match = BAD[case]
    with count_compiles() as c, pytest.raises(jaxhp.ModelError, match=match):
        jaxhp.train(_bad(**changes), ToyHP(), data, key=KEY)
    assert c.count == 0


def test_declared_state_is_checked(toy, data):
    with pytest.raises(TypeError, match="has_state"):
        jaxhp.Model(toy.init, toy.loss, toy.optimizer, has_state="yes")
    params, state = toy.init(KEY, ToyHP())
    with pytest.raises(ValueError, match="pass `state=`"):
        jaxhp.evaluate(toy, params, ToyHP(), data.val)
    with pytest.raises(ValueError, match="structure"):
        jaxhp.evaluate(toy, params, ToyHP(), data.val, state=(params, state))


# ------------------------------------------------------------- BatchNorm MLP
@pytest.fixture(scope="module")
def digits_slice(digits) -> jaxhp.Split:
    cut = lambda part, n: {k: np.asarray(v)[:n] for k, v in part.items()}
    return jaxhp.Split(cut(digits.train, 256), cut(digits.val, 128), cut(digits.test, 128))


@pytest.fixture(scope="module")
def bn():
    return models.mlp_classifier(64, 10, batch_norm=True)


BN_HP = models.MLPHP(width=16, depth=2, steps=20, batch_size=32, optimizer="sgd",
                     weight_decay=0.0)


def test_batchnorm_sweep_member_equals_its_solo_run(bn, digits_slice):
    assert bn.has_state and bn.name == "mlp_classifier_bn"
    res = jaxhp.sweep(bn, jaxhp.grid(learning_rate=[0.03, 0.3]), digits_slice, key=KEY,
                      base=BN_HP, keep_params=True)
    solo = jaxhp.train(bn, res.setting(1), digits_slice, key=jax.random.fold_in(KEY, 0))
    params, state = res.params(1)
    assert [sorted(s) for s in state] == [["mean", "var"]] * 2
    assert_trees_close((params, state), (solo.state.params, solo.state.model_state),
                       rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.val["ce"][1, 0], solo.val["ce"], rtol=1e-5)
    # evaluation uses the running statistics: not the initial ones (mean 0, var 1)
    hp = res.setting(1)
    used = jaxhp.evaluate(bn, params, hp, digits_slice.val, state=state)
    np.testing.assert_allclose(used["ce"], solo.val["ce"], rtol=1e-5)
    ignored = jaxhp.evaluate(bn, params, hp, digits_slice.val, state=bn.init(KEY, hp)[1])
    assert abs(float(ignored["ce"]) - float(used["ce"])) > 1e-2
    # the running mean is a moving average of the first layer's batch means: nonzero
    assert float(jnp.abs(state[0]["mean"]).max()) > 1e-3


def test_batchnorm_factory_declares_and_checks(bn):
    assert not models.mlp_classifier(64, 10).has_state
    with pytest.raises(ValueError, match="bn_momentum"):
        models.mlp_classifier(64, 10, batch_norm=True, bn_momentum=1.0)
    with pytest.raises(TypeError, match="batch_norm"):
        models.mlp_classifier(64, 10, batch_norm="yes")
