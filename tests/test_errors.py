"""Bad input is refused with a clear message, before anything compiles."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp import models

KEY = jax.random.key(0)
MODEL = models.linear_regression(10)


@pytest.fixture(scope="module")
def diabetes():
    return jaxhp.datasets.load("diabetes")


def refused(exc, match, fn, *args, **kwargs):
    with count_compiles() as c, pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert c.count == 0, "an error must be raised before anything compiles"
    return info.value


@pytest.mark.parametrize("values, match", [
    (dict(learning_rate=0.0), r"`learning_rate`=0: must be > 0"),
    (dict(learning_rate=-0.1), r"`learning_rate`=-0.1: must be > 0"),
    (dict(l2=-1e-3), r"`l2`=-0.001: must be > 0"),
    (dict(learning_rate=float("nan")), r"`learning_rate`=nan: must be finite"),
    (dict(l2=float("inf")), r"`l2`=inf: must be finite"),
    (dict(momentum=1.0), r"`momentum`=1: must be < 1"),
    (dict(momentum=-0.5), r"`momentum`=-0.5: must be >= 0"),
    (dict(learnig_rate=0.1),
     r"`learnig_rate`: unknown field of LinearHP \(did you mean `learning_rate`\?\)"),
    (dict(learning_rate="fast"), r"`learning_rate`='fast': a tunable field takes a real"),
    (dict(steps=np.array(5)), r"`steps`=5: a static field takes a plain Python value"),
])
def test_invalid_hyperparameters(values, match):
    refused(jaxhp.HParamsError, match, models.LinearHP, **values)


def test_space_forbidden_by_a_rule(diabetes):
    space = jaxhp.random(4, momentum=jaxhp.uniform(0.0, 2.0))
    e = refused(jaxhp.SpaceError, r"momentum", jaxhp.sweep, MODEL, space, diabetes, key=KEY)
    assert "2" in str(e)


@pytest.mark.parametrize("kw, match", [
    (dict(seeds=0), r"`seeds`=0: must be a positive"),
    (dict(seeds=-2), r"`seeds`=-2: must be a positive"),
    (dict(chunk_size=0), r"`chunk_size`=0: must be a positive integer"),
    (dict(chunk_size=-3), r"`chunk_size`=-3: must be a positive integer"),
    (dict(memory_budget=0), r"`memory_budget`=0: must be a positive"),
    (dict(on_error="ignore"), r"`on_error`='ignore'"),
])
def test_bad_sweep_arguments(diabetes, kw, match):
    refused(ValueError, match, jaxhp.sweep, MODEL, [models.LinearHP()], diabetes,
            key=KEY, **kw)


def test_parts_disagree_in_shape(diabetes):
    val = {"x": diabetes.val["x"][:, :9], "y": diabetes.val["y"]}
    refused(jaxhp.DataError, r"feature shapes differ: train\['x'\] is \(265, 10\), "
            r"val\['x'\] is \(88, 9\)", jaxhp.sweep, MODEL, [models.LinearHP()],
            diabetes._replace(val=val), key=KEY)


def test_x_and_y_lengths_differ(diabetes):
    train = {"x": diabetes.train["x"], "y": diabetes.train["y"][:-1]}
    refused(jaxhp.DataError, r"`train`: arrays disagree on the number of examples",
            jaxhp.sweep, MODEL, [models.LinearHP()], diabetes._replace(train=train), key=KEY)


def test_nan_in_the_data(diabetes):
    x = diabetes.train["x"].copy()
    x[3, 4] = np.nan
    refused(jaxhp.DataError, r"`train\['x'\]` \(shape \(265, 10\)\) holds 1 NaN/Inf",
            jaxhp.sweep, MODEL, [models.LinearHP()],
            diabetes._replace(train={"x": x, "y": diabetes.train["y"]}), key=KEY)


def test_batch_size_larger_than_training_set(diabetes):
    refused(ValueError, r"`batch_size`=1000 is larger than the training set \(265",
            jaxhp.sweep, MODEL, [models.LinearHP(batch_size=1000)], diabetes, key=KEY)


def test_non_scalar_loss_names_the_function_and_shape(diabetes):
    def per_example_loss(params, batch, hp):
        r = batch["x"] @ params["w"] + params["b"] - batch["y"]
        return r ** 2, {}

    bad = MODEL._replace(loss=per_example_loss)
    refused(jaxhp.ModelError, r"model.loss \(.*per_example_loss\) must return a scalar "
            r"loss, got shape \(265,\)", jaxhp.sweep, bad, [models.LinearHP()], diabetes,
            key=KEY)


def test_optimizer_not_an_optax_transformation(diabetes):
    bad = MODEL._replace(optimizer=lambda hp: (lambda g: g))
    refused(jaxhp.ModelError, r"must return an optax.GradientTransformation", jaxhp.sweep,
            bad, [models.LinearHP()], diabetes, key=KEY)


def test_integer_parameters_are_refused(diabetes):
    bad = MODEL._replace(init=lambda key, hp: {"w": jnp.zeros(10, jnp.int32),
                                               "b": jnp.zeros(())})
    refused(jaxhp.ModelError, r"non-float parameter \['w'\]", jaxhp.sweep, bad,
            [models.LinearHP()], diabetes, key=KEY)


DETERMINISM = textwrap.dedent("""
    import sys, jax, jaxhp
    from jaxhp import models
    split = jaxhp.datasets.load("diabetes")
    space = jaxhp.random(9, seed=1, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    r = jaxhp.sweep(models.linear_regression(10), space, split, key=jax.random.key(0),
                    seeds=2, base=models.LinearHP(steps=30, batch_size=16), chunk_size=4)
    r.save(sys.argv[1])
""")


@pytest.mark.slow
def test_same_sweep_is_bit_identical_in_process_and_in_a_fresh_process(diabetes, tmp_path):
    space = jaxhp.random(9, seed=1, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    kw = dict(key=KEY, seeds=2, base=models.LinearHP(steps=30, batch_size=16), chunk_size=4)
    a = jaxhp.sweep(MODEL, space, diabetes, **kw)
    b = jaxhp.sweep(MODEL, space, diabetes, **kw)
    subprocess.run([sys.executable, "-c", DETERMINISM, str(tmp_path / "fresh")], check=True,
                   timeout=300)
    c = jaxhp.SweepResult.load(tmp_path / "fresh", hparams=models.LinearHP)
    for other in (b, c):
        np.testing.assert_array_equal(other.val["mse"], a.val["mse"])
        np.testing.assert_array_equal(other.loss_curve, a.loss_curve)
        np.testing.assert_array_equal(other.train_loss, a.train_loss)
    for k in ("device_kind", "jax_version", "jaxhp_version", "platform"):
        assert c.meta[k] == a.meta[k]
    assert c.groups[0].chunk_size == 4
