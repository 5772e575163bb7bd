"""Step counts per member: `steps` declared padded shares one program across step counts.

A member stops updating after its own last step (parameters, optimizer state, model
state, health frozen); its curves after that step are NaN; everything else equals its solo
``jaxhp.train`` run. Tiny generated data (48 training rows, 4 features), at most 8 steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp.models import LinearHP, linear_regression

KEY = jax.random.key(1)
MODEL = linear_regression(4)
STEPS = [3, 5, 8]


def _counting_model() -> jaxhp.Model:
    """MODEL with a model state that counts the steps it trained (metric `seen`)."""

    def init(key, hp):
        return MODEL.init(key, hp), {"n": jnp.zeros((), jnp.int32)}

    def loss(params, state, batch, hp, key=None):
        return MODEL.loss(params, batch, hp)[0], ({}, {"n": state["n"] + 1})

    def metrics(params, state, batch, hp):
        mse = MODEL.metrics(params, batch, hp)["mse"]
        return {"mse": mse, "seen": state["n"].astype(mse.dtype)}

    return jaxhp.Model(init, loss, MODEL.optimizer, metrics, LinearHP, "counting",
                       directions={"mse": "min", "seen": "max"}, has_state=True)


COUNTING = _counting_model()


class StepsHP(LinearHP):
    """LinearHP whose `steps` are padded: every step count up to 8 shares one program."""

    steps: int = jaxhp.static(8, low=1, integer=True, pad_to=8)


def _part(rng, n):
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 + 0.5 * rng.normal(size=n)
    return {"x": x, "y": y.astype(np.float32)}


_rng = np.random.default_rng(0)
SPLIT = jaxhp.Split(_part(_rng, 48), _part(_rng, 16), _part(_rng, 16))
# the main sweep: a model with state, minibatches of 16 and Adam; windows of 2 steps
# straddle the last steps of 3 and 5, and eval_every=2 divides neither
MINI = dict(batch_size=16, optimizer="adam")
LOOP = dict(eval_every=2, loss_every=2)
SWEEP = dict(key=KEY, seeds=2, base=StepsHP(**MINI), chunk_size=2, keep_params=True,
             **LOOP)
SPACE = jaxhp.grid(steps=STEPS, learning_rate=[0.01, 0.1])


@pytest.fixture(scope="module")
def mixed():
    with count_compiles() as c:
        result = jaxhp.sweep(COUNTING, SPACE, SPLIT, **SWEEP)
    return result, c.count


def _solo(i, result, seed, split=SPLIT, model=MODEL):
    col = result.table.columns
    hp = LinearHP(steps=int(col["steps"][i]), learning_rate=float(col["learning_rate"][i]),
                  batch_size=col["batch_size"][i], optimizer=str(col["optimizer"][i]))
    return jaxhp.train(model, hp, split, key=jax.random.fold_in(KEY, seed), **LOOP)


def _assert_member_is_solo(result, i, s, run, own):
    close = dict(rtol=1e-5, atol=1e-7)
    for k, v in run.val.items():
        np.testing.assert_allclose(result.val[k][i, s], v, **close)
    np.testing.assert_allclose(result.train_loss[i, s], run.train_loss, **close)
    assert result.diverged_at[i, s] == int(run.diverged_at)
    n = run.loss_curve.shape[0]  # ceil(own / 2) windows, the last one straddling `own`
    np.testing.assert_allclose(result.loss_curve[i, s, :n], run.loss_curve, **close)
    assert np.isnan(result.loss_curve[i, s, n:]).all()
    for k, v in run.val_curve.items():  # evaluations after steps 2, 4, ... <= own
        n = v.shape[0]
        assert n == own // 2
        np.testing.assert_allclose(result.val_curve[k][i, s, :n], v, **close)
        assert np.isnan(result.val_curve[k][i, s, n:]).all()


def test_mixed_steps_compile_once_and_each_member_equals_its_solo_run(mixed):
    result, compiles = mixed
    assert compiles == 1 == result.compile_count
    (group,) = result.groups
    assert group.statics["steps"] == "padded to 8" and group.steps == 8
    assert group.n_chunks == 3
    assert result.loss_curve.shape == (6, 2, 4)  # 8 steps in windows of 2
    assert result.table.columns["steps"].tolist() == [3, 3, 5, 5, 8, 8]
    for i in range(6):
        own = int(result.table.columns["steps"][i])
        for s in range(2):
            run = _solo(i, result, s, model=COUNTING)
            _assert_member_is_solo(result, i, s, run, own)
            params, state = result.params(i, s)
            for a, b in zip(jax.tree_util.tree_leaves(params),
                            jax.tree_util.tree_leaves(run.state.params)):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
            # the model state stopped with the member: it counted its own steps
            assert int(state["n"]) == own == int(run.state.model_state["n"])
            assert result.val["seen"][i, s] == own
    # the curves stop at each member's own steps: 2, 3 and 4 windows
    n_windows = np.isfinite(result.loss_curve).all(axis=1).sum(axis=1)
    assert n_windows.tolist() == [2, 2, 3, 3, 4, 4]


def test_diverging_members_in_a_mixed_steps_group():
    # plain SGD on the full batch: alone, lr 1e4 diverges at step 5 and lr 1e8 at step 3;
    # a member whose own steps end before that step stays healthy, as its solo run does
    # (steps=5, lr=1e4: the step that would diverge is the member's first masked one)
    space = jaxhp.grid(steps=[5, 8], learning_rate=[0.05, 1e4, 1e8])
    result = jaxhp.sweep(MODEL, space, SPLIT, key=KEY, base=StepsHP(), **LOOP)
    assert len(result.groups) == 1
    dead = []
    for i in range(6):
        own = int(result.table.columns["steps"][i])
        run = _solo(i, result, 0)
        _assert_member_is_solo(result, i, 0, run, own)
        dead.append(int(run.diverged_at))
    # (steps, lr) in grid order: (5, 0.05), (5, 1e4), (5, 1e8), (8, 0.05), ...
    assert dead == [-1, -1, 3, -1, 5, 3]
    assert result.status[:, 0].tolist() == ["ok", "ok", "diverged", "ok", "diverged",
                                            "diverged"]
    assert result.best("mse").setting.learning_rate == pytest.approx(0.05)


def test_resume_from_checkpoint_is_bit_identical(mixed, tmp_path):
    result, _ = mixed

    reported = []

    def stop_after_first(record):
        reported.append((record.step, record.settings["steps"].tolist()))
        if record.chunk == 1:
            raise RuntimeError("stopped after the first chunk")

    with count_compiles() as c, pytest.raises(jaxhp.CallbackError):
        jaxhp.sweep(COUNTING, SPACE, SPLIT, checkpoint_dir=tmp_path,
                    on_chunk=stop_after_first, **SWEEP)
    resumed = jaxhp.sweep(COUNTING, SPACE, SPLIT, checkpoint_dir=tmp_path, **SWEEP)
    assert c.count == 0  # the fixture's program
    assert reported == [(8, [3, 3]), (8, [5, 5])]  # the steps the program ran; own counts
    assert resumed.groups[0].chunks_loaded == 1
    for name in ("train_loss", "loss_curve", "diverged_at"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(result, name))
    for k in result.val:
        np.testing.assert_array_equal(resumed.val[k], result.val[k])
        np.testing.assert_array_equal(resumed.val_curve[k], result.val_curve[k])
    for i in range(6):
        for a, b in zip(jax.tree_util.tree_leaves(resumed.params(i, 1)),
                        jax.tree_util.tree_leaves(result.params(i, 1))):
            np.testing.assert_array_equal(a, b)


def test_kfold_member_equals_its_solo_run_on_the_fold():
    folds = jaxhp.kfold({k: np.concatenate([SPLIT.train[k], SPLIT.val[k]]) for k in "xy"},
                        4, test=SPLIT.test)
    space = jaxhp.grid(steps=[3, 8], learning_rate=[0.1])
    result = jaxhp.sweep(COUNTING, space, folds, key=KEY, base=StepsHP(**MINI), **LOOP)
    assert len(result.groups) == 1
    col = int(np.flatnonzero(result.fold_ids == 2)[0])
    run = _solo(0, result, 0, split=folds.split(2), model=COUNTING)  # the main test's program
    _assert_member_is_solo(result, 0, col, run, 3)


def test_refused_before_compiling():
    with count_compiles() as c:
        with pytest.raises(ValueError, match=r"`eval_every`=4 exceeds `steps`=3 of setting "
                                             r"0 \(steps padded to 8"):
            # pad_to=8 allocates 8 steps even though every count here is smaller
            jaxhp.sweep(MODEL, jaxhp.grid(steps=[3, 5]), SPLIT, key=KEY, base=StepsHP(),
                        eval_every=4)
        for search in (jaxhp.successive_halving, jaxhp.hyperband):
            with pytest.raises(ValueError, match=rf"{search.__name__}\(\): `steps` is "
                                                 r"padded .*'steps': 'padded to 8'"):
                search(MODEL, SPACE, SPLIT, key=KEY, base=StepsHP(), min_steps=1,
                       max_steps=8)
        with pytest.raises(ValueError, match=r"pbt\(\): `steps` is padded .*unpadded"):
            jaxhp.pbt(MODEL, SPACE, SPLIT, key=KEY, base=StepsHP(), steps=8, ready_every=4)
    assert c.count == 0


class AutoHP(LinearHP):
    steps: int = jaxhp.static(8, low=1, integer=True, pad_to="auto")


def test_adaptive_searches_accept_auto_padded_steps_made_equal():
    # max_steps= (pbt: steps=) gives every setting one count: the "auto" group is
    # unpadded, so the padding check passes and the next check (the metric's) speaks
    with count_compiles() as c:
        for search, args in ((jaxhp.successive_halving, dict(min_steps=2, max_steps=4)),
                             (jaxhp.hyperband, dict(min_steps=2, max_steps=4)),
                             (jaxhp.pbt, dict(steps=8, ready_every=4))):
            with pytest.raises(jaxhp.SelectionError, match="unknown validation metric"):
                search(MODEL, SPACE, SPLIT, key=KEY, base=AutoHP(), metric="nope", **args)
    assert c.count == 0

