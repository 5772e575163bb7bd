"""The reference models refuse data that does not fit them, before anything compiles.

Every model in ``jaxhp.models`` runs through the same battery of bad inputs
(``Model.check_data``, called by ``validate`` for train, val and test and by
``evaluate`` for its part). Broadcasting used to turn some of them into silent
wrong answers: ``y`` of shape ``(n, 1)`` made linear regression train on an
``(n, n)`` residual, a label equal to ``n_classes`` read as divergence at step 0,
and a label of ``-1`` trained silently as the last class.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp import DataError, models

KEY = jax.random.key(0)

# name: (model builder, a small setting, dataset, n_classes (0: regression))
MODELS = {
    "linear_regression": (lambda: models.linear_regression(10),
                          models.LinearHP(steps=3), "diabetes", 0),
    "softmax_regression": (lambda: models.softmax_regression(4, 3),
                           models.SoftmaxHP(steps=3), "iris", 3),
    "mlp_classifier": (lambda: models.mlp_classifier(4, 3),
                       models.MLPHP(steps=3, width=8, depth=1, batch_size=16), "iris", 3),
    "mlp_classifier_bn": (lambda: models.mlp_classifier(4, 3, batch_norm=True),
                          models.MLPHP(steps=3, width=8, depth=1, batch_size=16), "iris", 3),
}
CLASSIFIERS = [m for m, spec in MODELS.items() if spec[3]]
PARTS = ("train", "val", "test")


@pytest.fixture(scope="module")
def datasets():
    return {name: jaxhp.datasets.load(name, key=KEY) for name in ("diabetes", "iris")}


def _every_part(split, fn):
    return jaxhp.Split(*[fn(dict(p)) for p in split])


def _one_part(split, part, fn):
    return split._replace(**{part: fn(dict(getattr(split, part)))})


def _with(key, fn):
    return lambda p: {**p, key: fn(p[key])}


def _label(value):
    def change(y):
        y = np.array(y)
        y[1] = value
        return y
    return _with("y", change)


# name: (change applied to every part, models it applies to, message pattern)
SHAPE_CASES = {
    "y with a trailing axis": (_with("y", lambda y: y[:, None]), list(MODELS),
                               r'split\.train\["y"\] has shape \(\d+, 1\); .* takes one '
                               r'(target|label) per example, shape \(\d+,\); use y\.ravel\(\)'),
    "x with one feature too few": (_with("x", lambda x: x[:, :-1]), list(MODELS),
                                   r'split\.train\["x"\] has shape \(\d+, (9|3)\); .* takes '
                                   r'features of shape \(n, (10|4)\)'),
    "x of integers": (_with("x", lambda x: np.round(x).astype(np.int32)), list(MODELS),
                      r'split\.train\["x"\] has dtype int32; .* takes float features'),
    "float labels": (_with("y", lambda y: y.astype(np.float32)), CLASSIFIERS,
                     r'split\.train\["y"\] has dtype float32; .* takes integer class '
                     r'labels 0\.\.2: y\.astype\(np\.int32\)'),
    "integer targets": (_with("y", lambda y: np.round(y).astype(np.int32)),
                        ["linear_regression"],
                        r'split\.train\["y"\] has dtype int32; linear_regression\('
                        r'n_features=10\) takes float targets'),
}
# A label outside [0, n_classes) in one part: every part is checked.
LABEL_CASES = {"label == n_classes": 3, "label == -1": -1}


def _refused(model, hp, split, match):
    with count_compiles() as c, pytest.raises(DataError, match=match) as info:
        jaxhp.train(model, hp, split, key=KEY)
    assert c.count == 0, "the data must be refused before anything compiles"
    return str(info.value)


@pytest.mark.parametrize(("case", "name"), [(case, name) for case, spec in SHAPE_CASES.items()
                                             for name in spec[1]])
def test_bad_shapes_and_dtypes_are_refused(case, name, datasets):
    change, _, match = SHAPE_CASES[case]
    build, hp, data, _ = MODELS[name]
    _refused(build(), hp, _every_part(datasets[data], change), match)


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("case", list(LABEL_CASES))
@pytest.mark.parametrize("part", PARTS)
def test_labels_out_of_range_are_refused(name, case, part, datasets):
    build, hp, data, n_classes = MODELS[name]
    value = LABEL_CASES[case]
    split = _one_part(datasets[data], part, _label(value))
    msg = _refused(build(), hp, split,
                   rf'split\.{part}\["y"\] holds 1 label\(s\) outside 0\.\.{n_classes - 1} '
                   rf'for {name.removesuffix("_bn")}\(n_features=4, n_classes=3'
                   rf'(, batch_norm=True)?\): {value} \(1 example\); '
                   r'relabel to 0\.\.n_classes-1')
    assert "np.unique(y, return_inverse=True)" in msg


def test_every_offending_label_is_counted(datasets):
    build, hp, data, _ = MODELS["softmax_regression"]
    y = np.array(datasets[data].train["y"])
    y[:3], y[3] = 7, -2
    split = datasets[data]._replace(train={**datasets[data].train, "y": y})
    _refused(build(), hp, split, r'split\.train\["y"\] holds 4 label\(s\) outside 0\.\.2 '
             r'for softmax_regression\(n_features=4, n_classes=3\): -2 \(1 example\), '
             r'7 \(3 examples\)')


@pytest.mark.parametrize("name", list(MODELS))
def test_evaluate_checks_its_part(name, datasets):
    build, hp, data, n_classes = MODELS[name]
    model, split = build(), datasets[data]
    run = jaxhp.train(model, hp, split, key=KEY)
    kw = {"state": run.state.model_state} if model.has_state else {}
    bad = {**split.test, "y": np.asarray(split.test["y"])[:, None]}
    with count_compiles() as c, pytest.raises(DataError, match=r'part\["y"\] has shape'):
        jaxhp.evaluate(model, run.state.params, hp, bad, **kw)
    assert c.count == 0
    if n_classes:
        with pytest.raises(DataError, match=r'part\["y"\] holds 1 label\(s\) outside'):
            jaxhp.evaluate(model, run.state.params, hp, _label(n_classes)(dict(split.test)),
                           **kw)
    with pytest.raises(DataError, match=r'part\["x"\] is missing'):
        jaxhp.evaluate(model, run.state.params, hp, split.test["x"], **kw)
    good = jaxhp.evaluate(model, run.state.params, hp, split.test, **kw)
    assert np.isfinite(float(good["loss"]))


def test_the_same_checks_guard_a_sweep(datasets, compile_counter):
    split = _every_part(datasets["diabetes"], _with("y", lambda y: y[:, None]))
    with pytest.raises(DataError, match=r'split\.train\["y"\] has shape \(265, 1\)'):
        jaxhp.sweep(models.linear_regression(10), jaxhp.random(3, seed=0,
                    learning_rate=jaxhp.loguniform(1e-2, 0.3)), split, key=KEY,
                    base=models.LinearHP(steps=3), progress=False)
    assert compile_counter.count == 0


def test_linear_regression_with_y_of_shape_n_1_is_refused(datasets):
    # The defect: y of shape (n, 1) in every part broadcast x @ w + b - y to (n, n),
    # and the run reported a validation MSE of 1.01 where the right one is 0.45.
    model, hp = models.linear_regression(10), models.LinearHP()
    split = datasets["diabetes"]
    column = _every_part(split, _with("y", lambda y: y[:, None]))
    _refused(model, hp, column, r'split\.train\["y"\] has shape \(265, 1\)')
    broadcast = jaxhp.train(model._replace(check_data=None), hp, column, key=KEY)
    assert float(broadcast.val["mse"]) > 1.0  # what the old code reported, silently
    run = jaxhp.train(model, hp, split, key=KEY)
    assert run.status == "ok" and float(run.val["mse"]) == pytest.approx(0.454, abs=0.01)
    assert float(run.val["mse"]) < 0.5 * float(broadcast.val["mse"])


def test_what_unchecked_labels_did(datasets):
    # Without the check (check_data=None, the old behaviour): a label == n_classes made
    # the loss NaN at step 0 (reported as divergence), and -1 trained as class 2.
    model = models.softmax_regression(4, 3)
    unchecked, hp, split = model._replace(check_data=None), models.SoftmaxHP(steps=50), \
        datasets["iris"]
    runs = {}
    for v in (3, -1, 2):
        y = np.array(split.train["y"])
        y[:5] = v
        runs[v] = jaxhp.train(unchecked, hp, split._replace(train={**split.train, "y": y}),
                              key=KEY)
        if v != 2:
            with pytest.raises(DataError, match=rf"label\(s\) outside 0\.\.2 .*: {v} "
                               r"\(5 examples\)"):
                jaxhp.train(model, hp, split._replace(train={**split.train, "y": y}), key=KEY)
    assert runs[3].status == "diverged" and int(runs[3].diverged_at) == 0
    assert runs[-1].status == "ok"
    np.testing.assert_array_equal(runs[-1].state.params["w"], runs[2].state.params["w"])


@pytest.mark.parametrize("name", list(MODELS))
def test_correct_data_still_trains(name, datasets):
    build, hp, data, n_classes = MODELS[name]
    split = datasets[data]
    run = jaxhp.train(build(), hp.replace(steps=200), split, key=KEY)
    assert run.status == "ok"
    if n_classes:
        assert float(run.val["accuracy"]) > 0.8  # iris: chance is 1/3
    else:
        assert float(run.val["mse"]) < 0.6  # standardised target: predicting 0 gives ~1


@pytest.mark.parametrize("name", list(MODELS))
def test_wrong_hparams_class_is_refused_before_compiling(name, datasets, compile_counter):
    build, _, data, _ = MODELS[name]
    model = build()
    other = models.SoftmaxHP if model.hparams is not models.SoftmaxHP else models.LinearHP
    want, got = model.hparams.__name__, other.__name__
    match = rf"the setting is a {got}, but model '{name}' takes {want}"
    with pytest.raises(TypeError, match=match):
        jaxhp.train(model, other(steps=3), datasets[data], key=KEY)
    with pytest.raises(TypeError, match=match):
        jaxhp.sweep(model, [other(steps=3)], datasets[data], key=KEY, progress=False)
    with pytest.raises(TypeError, match=match):
        jaxhp.sweep(model, jaxhp.random(2, seed=0, learning_rate=jaxhp.loguniform(0.01, 0.1)),
                    datasets[data], key=KEY, base=other(steps=3), progress=False)
    assert compile_counter.count == 0
