"""Hypergradients, gradient-based tuning and online hypergradient descent.

Agreement with finite differences is checked in float64 (``jax.enable_x64``
inside a fixture, data and parameters cast to float64), where reverse and
forward mode are the same derivative up to rounding (~1e-15) and a central
difference with step 1e-5 is exact to ~1e-9 (truncation ~h^2, rounding
~1e-16/h). The public API reaches the same float64 figures when x64 is on
(tunables, parameters and hypergradients all float64; checked in a
subprocess so x64 does not leak into other tests). The public, float32 path is
checked against those and against the closed-form ridge derivative, with
tolerances stated where used.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxhp
from jaxhp import (
    HypergradientDescentState,
    Split,
    SweepResult,
    hypergradient,
    hypergradient_descent,
    sweep,
    tune_gradient,
)
from jaxhp.models import (
    MLPHP,
    LinearHP,
    SoftmaxHP,
    linear_regression,
    mlp_classifier,
    softmax_regression,
)

KEY = jax.random.key(1)
# One ridge model for the module: programs are cached per model (and static part), so
# tests on the same static group share their compiled programs.
RIDGE = linear_regression(10)


@pytest.fixture(scope="module")
def iris() -> Split:
    return jaxhp.datasets.load("iris", key=jax.random.key(0))


def _to64(tree):
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64)
        if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else jnp.asarray(a), tree)


def _model64(model):
    return model._replace(init=lambda k, hp, _init=model.init: _to64(_init(k, hp)))


_THREE_WAYS: dict = {}


def _case_three_ways(case, diabetes, iris):
    """:func:`_three_ways` of a case in float64, computed once per session."""
    if case not in _THREE_WAYS:
        build, hp, data, objective, wrt = CASES[case]
        with jax.enable_x64(True):
            split = Split(*[_to64(p) for p in (diabetes if data == "diabetes" else iris)])
            _THREE_WAYS[case] = _three_ways(_model64(build()), hp, split, objective, wrt)
    return _THREE_WAYS[case]


def _three_ways(model, hp, split, objective, wrt, h=1e-5):
    """Reverse, forward and central-difference hypergradients through the public API
    (x64 on: ``hp`` is rebuilt so that its tunables are float64). The differences are
    taken in the gradient's coordinates (log for ``log_fields``) on the objective of
    ``jaxhp.train``: the hypergradient's value is that run's validation metric."""
    hp = type(hp)(**{n: float(getattr(hp, n)) if n in hp.tunable_names() else getattr(hp, n)
                     for n in type(hp).fields()})
    kw = dict(key=KEY, objective=objective, wrt=wrt)
    rev = hypergradient(model, hp, split, mode="reverse", **kw)
    fwd = hypergradient(model, hp, split, mode="forward", **kw)
    fd = {}
    for n in rev.grad:
        v = float(getattr(hp, n))
        vals = [jaxhp.train(model, hp.replace(**{n: v * math.exp(s * h) if n in rev.log_fields
                                                 else v + s * h}), split, key=KEY).val
                for s in (1, -1)]
        fd[n] = (vals[0][objective] - vals[1][objective]) / (2 * h)
    return rev.value, rev.grad, fwd.grad, fd


CASES = {
    # (model builder, hp, dataset, objective, wrt)
    "linear-sgd-momentum": (lambda: linear_regression(10),
                            LinearHP(learning_rate=0.05, l2=1e-2, momentum=0.8, steps=30,
                                     batch_size=64), "diabetes", "mse", None),
    "softmax-sgd": (lambda: softmax_regression(4, 3),
                    SoftmaxHP(learning_rate=0.3, l2=1e-2, steps=30), "iris", "ce",
                    ("learning_rate", "l2")),
    "softmax-adam": (lambda: softmax_regression(4, 3),
                     SoftmaxHP(learning_rate=0.05, l2=1e-2, steps=30, batch_size=32,
                               optimizer="adam"), "iris", "ce", ("learning_rate", "l2")),
    # tanh, not relu: a central difference across a ReLU kink is not the derivative.
    "mlp-adamw": (lambda: mlp_classifier(4, 3),
                  MLPHP(learning_rate=0.01, weight_decay=1e-2, width=16, depth=1, steps=30,
                        batch_size=32, activation="tanh"), "iris", "ce",
                  ("learning_rate", "weight_decay")),
    "linear-adam": (lambda: linear_regression(10),
                    LinearHP(learning_rate=0.05, l2=1e-2, steps=30, optimizer="adam"),
                    "diabetes", "mse", ("learning_rate", "l2")),
}
# (an MLP with SGD was a case too: 15 s for what linear-sgd-momentum, softmax-sgd and
# mlp-adamw cover between them)
SLOW_CASES = ("linear-adam",)


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow)
                                  if c in SLOW_CASES else c for c in CASES])
def test_reverse_forward_and_finite_differences_agree(case, diabetes, iris):
    v, g_rev, g_fwd, fd = _case_three_ways(case, diabetes, iris)
    assert v.dtype == jnp.float64 and np.isfinite(v)
    for n in g_rev:
        scale = max(abs(float(fd[n])), 1e-3)
        assert abs(float(g_rev[n] - g_fwd[n])) <= 1e-10 * scale, n
        assert abs(float(g_rev[n] - fd[n])) <= 1e-6 * scale, (n, g_rev[n], fd[n])


X64_SCRIPT = textwrap.dedent("""
    import json, math
    import jax, jaxhp
    from jaxhp.models import LinearHP, linear_regression
    assert jax.config.jax_enable_x64
    hp = LinearHP(learning_rate=0.05, l2=1e-2, momentum=0.8, steps=30, batch_size=64)
    space = jaxhp.random(2, seed=0, l2=jaxhp.loguniform(1e-3, 1.0))
    out = {"tunable": str(hp.learning_rate.dtype),
           "stacked": str(jaxhp.stack([hp, hp.replace(l2=0.1)]).l2.dtype),
           "space": str(space.settings(LinearHP)[0].l2.dtype)}
    split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    model, key = linear_regression(10), jax.random.key(1)
    rev = jaxhp.hypergradient(model, hp, split, key=key, objective="mse")
    fwd = jaxhp.hypergradient(model, hp, split, key=key, objective="mse", mode="forward")
    run = jaxhp.train(model, hp, split, key=key)
    fd, h = {}, 1e-5
    for n in rev.grad:  # central differences in the gradient's coordinates
        v, log = float(getattr(hp, n)), LinearHP.fields()[n].log
        vals = [float(jaxhp.train(model, hp.replace(**{n: v * math.exp(s * h) if log
                                                       else v + s * h}),
                                  split, key=key).val["mse"]) for s in (1, -1)]
        fd[n] = (vals[0] - vals[1]) / (2 * h)
    out.update(value=str(rev.value.dtype), params=str(run.state.params["w"].dtype),
               grads=sorted({str(g.dtype) for g in (*rev.grad.values(),
                                                    *fwd.grad.values())}),
               rev={n: float(g) for n, g in rev.grad.items()},
               fwd={n: float(g) for n, g in fwd.grad.items()}, fd=fd,
               train_mse=float(run.val["mse"]), hg_mse=float(rev.value))
    print(json.dumps(out))
""")


def test_public_api_is_float64_under_x64():
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    proc = subprocess.run([sys.executable, "-c", X64_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["tunable"] == out["stacked"] == out["space"] == "float64"
    assert out["value"] == out["params"] == "float64" and out["grads"] == ["float64"]
    assert out["hg_mse"] == pytest.approx(out["train_mse"], rel=1e-12)
    for n, g in out["rev"].items():
        scale = max(abs(out["fd"][n]), 1e-3)
        # float64: reverse and forward agree to ~1e-15 and a central difference with
        # h = 1e-5 to ~1e-9 (observed <= 4e-9). In float32 the same difference is off
        # by 1e-2 to 1 (rounding ~1e-7 / h), so the check needs the float64 path.
        assert abs(g - out["fwd"][n]) <= 1e-12 * scale, n
        assert abs(g - out["fd"][n]) <= 1e-6 * scale, (n, g, out["fd"][n])


def test_public_api_is_float32_without_x64(diabetes):
    assert not jax.config.jax_enable_x64
    hp = LinearHP(learning_rate=0.05, l2=1e-2, steps=5)
    assert hp.learning_rate.dtype == np.float32
    assert jaxhp.stack([hp, hp]).l2.dtype == np.float32
    space = jaxhp.random(2, seed=0, l2=jaxhp.loguniform(1e-3, 1.0))
    assert space.settings(LinearHP)[0].l2.dtype == np.float32
    hg = hypergradient(RIDGE, hp, diabetes, key=KEY, objective="mse")
    assert hg.value.dtype == jnp.float32
    assert {g.dtype for g in hg.grad.values()} == {jnp.dtype(jnp.float32)}


def test_public_float32_hypergradient(diabetes, iris):
    _, hp, _, _, _ = CASES["linear-sgd-momentum"]
    model = RIDGE
    run = jaxhp.train(model, hp, diabetes, key=KEY)
    rev = hypergradient(model, hp, diabetes, key=KEY, objective="mse", remat=None)
    fwd = hypergradient(model, hp, diabetes, key=KEY, objective="mse", mode="forward")
    # The objective is exactly the validation metric of jaxhp.train with the same key.
    np.testing.assert_allclose(rev.value, run.val["mse"], rtol=1e-6)
    assert rev.log_fields == ("learning_rate", "l2") and set(rev.grad) == set(fwd.grad)
    _, g64, _, _ = _case_three_ways("linear-sgd-momentum", diabetes, iris)
    for n in rev.grad:
        # float32 rounding over 30 steps: observed ~1e-6 relative; 1e-4 leaves margin.
        np.testing.assert_allclose(rev.grad[n], g64[n], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(fwd.grad[n], g64[n], rtol=1e-4, atol=1e-7)
    nat = rev.natural()
    np.testing.assert_allclose(nat["l2"], rev.grad["l2"] / 1e-2, rtol=1e-6)
    assert nat["momentum"] == rev.grad["momentum"]


def _ridge_closed_form(split, l2):
    """Validation MSE of the ridge solution and its derivative w.r.t. log(l2)."""
    x, y = (np.asarray(split.train[k], np.float64) for k in ("x", "y"))
    xv, yv = (np.asarray(split.val[k], np.float64) for k in ("x", "y"))
    n, xm, ym = len(y), x.mean(0), y.mean()
    xc, yc = x - xm, y - ym
    a = xc.T @ xc / n + l2 * np.eye(x.shape[1])
    w = np.linalg.solve(a, xc.T @ yc / n)
    b = ym - xm @ w  # the intercept is not penalised
    dw = -np.linalg.solve(a, w)
    db = -xm @ dw
    r = xv @ w + b - yv
    return np.mean(r**2), l2 * np.mean(2 * r * (xv @ dw + db))


@pytest.mark.parametrize("l2", [0.05, 0.5])
def test_ridge_implicit_and_long_reverse_match_closed_form(diabetes, l2):
    model = RIDGE
    hp = LinearHP(learning_rate=0.4, l2=l2, steps=1000)  # converged: |grad| < 1e-6
    value, grad = _ridge_closed_form(diabetes, l2)
    kw = dict(key=KEY, wrt="l2", objective="mse")
    implicit = hypergradient(model, hp, diabetes, mode="implicit", **kw)
    reverse = hypergradient(model, hp, diabetes, mode="reverse", remat="auto", **kw)
    assert float(implicit.info["stationarity"]) < 1e-5
    np.testing.assert_allclose(implicit.value, value, rtol=1e-5)
    # float32: observed relative errors 5e-7 (implicit) and 7e-6 (1000-step reverse).
    np.testing.assert_allclose(implicit.grad["l2"], grad, rtol=1e-4)
    np.testing.assert_allclose(reverse.grad["l2"], grad, rtol=1e-4)
    if l2 == 0.5:  # well conditioned: the Neumann series converges in 300 terms
        neumann = hypergradient(model, hp, diabetes, mode="implicit", solver="neumann",
                                solver_steps=300, **kw)
        np.testing.assert_allclose(neumann.grad["l2"], grad, rtol=1e-4)


def test_remat_gives_the_same_gradient_and_run(diabetes):
    model = RIDGE
    # the case of test_public_float32_hypergradient: ``plain`` is its program
    hp = CASES["linear-sgd-momentum"][1]  # 30 steps, minibatches of 64, momentum
    plain = hypergradient(model, hp, diabetes, key=KEY, objective="mse", remat=None)
    # The forward run is unchanged: the objective is bit for bit the same, in blocks
    # of 7 (4 blocks and a remainder of 2) or of 3 (10 blocks), and jaxhp.train's.
    for k in (7, 3):
        remat = hypergradient(model, hp, diabetes, key=KEY, objective="mse", remat=k)
        assert remat.value == plain.value, k
        for n in plain.grad:
            np.testing.assert_allclose(remat.grad[n], plain.grad[n], rtol=1e-6, atol=1e-9)
    run = jaxhp.train(model, hp, diabetes, key=KEY)
    np.testing.assert_allclose(plain.value, run.val["mse"], rtol=1e-6)


def test_diverged_run_gives_nan_healthy_run_finite(diabetes):
    model = RIDGE
    edge = hypergradient(model, LinearHP(learning_rate=0.44, l2=1e-3, steps=200),
                         diabetes, key=KEY, objective="mse")
    assert int(edge.info["diverged_at"]) == -1
    assert all(np.isfinite(g) for g in edge.grad.values())
    bad = hypergradient(model, LinearHP(learning_rate=50.0, l2=1e-3, steps=200), diabetes,
                        key=KEY, objective="mse")
    assert int(bad.info["diverged_at"]) >= 0
    assert np.isnan(bad.value) and all(np.isnan(g) for g in bad.grad.values())


def test_tune_gradient_from_16_starts_matches_dense_grid(diabetes):
    model = RIDGE
    lrs, l2s = np.logspace(-2, 0, 64), np.logspace(-4, 1, 64)
    grid = [LinearHP(learning_rate=a, l2=b, steps=100) for a in lrs for b in l2s]
    grid_best = sweep(model, grid, diabetes, key=KEY, progress=False).best("mse").value
    rng = np.random.default_rng(0)
    starts = [LinearHP(learning_rate=a, l2=b, steps=100) for a, b in zip(
        np.exp(rng.uniform(np.log(1e-2), 0.0, 16)),
        np.exp(rng.uniform(np.log(1e-4), np.log(10.0), 16)))]
    result = tune_gradient(model, starts, diabetes, key=KEY, wrt=("learning_rate", "l2"),
                           objective="mse", steps=20)
    assert isinstance(result, SweepResult) and result.n_settings == 16
    best = result.best("mse")
    assert best.value <= 1.01 * grid_best
    traj = result.trajectory
    assert traj["objective"].shape == (16, 21) and traj["values"]["l2"].shape == (16, 21)
    assert traj["grad"]["learning_rate"].shape == (16, 20)
    # Row i of the result is start i's last point, trained again by the sweep engine.
    i = best.index
    np.testing.assert_allclose(traj["objective"][i, -1], best.value, rtol=1e-5)
    np.testing.assert_allclose(traj["values"]["l2"][i, -1], best.setting.l2, rtol=1e-5)
    report = result.evaluate_test("mse")
    assert np.isfinite(report.metrics["mse"])


def test_tune_gradient_stays_in_range(diabetes):
    model = RIDGE
    starts = [LinearHP(learning_rate=0.05, l2=1e-2, momentum=m, steps=40) for m in
              (0.0, 0.5, 0.999)]
    result = tune_gradient(model, starts, diabetes, key=KEY, objective="mse", steps=5,
                           optimizer=optax.sgd(100.0), keep="best")
    mom = result.trajectory["values"]["momentum"]
    assert np.all((mom >= 0.0) & (mom < 1.0))
    assert np.all(np.isfinite(result.trajectory["values"]["l2"]))
    assert all(0.0 <= s.momentum < 1.0 for s in result.settings)
    assert result.trajectory["log_fields"] == ("learning_rate", "l2")


def test_errors_name_the_problem(diabetes):
    model = RIDGE
    hp = LinearHP(steps=5)
    with pytest.raises(ValueError, match="did you mean `learning_rate`"):
        hypergradient(model, hp, diabetes, key=KEY, wrt="learning_rat")
    with pytest.raises(ValueError, match="`steps` is a static field"):
        hypergradient(model, hp, diabetes, key=KEY, wrt=("l2", "steps"))
    with pytest.raises(ValueError, match="`mode`='backward'.*'reverse'"):
        hypergradient(model, hp, diabetes, key=KEY, mode="backward")
    with pytest.raises(ValueError, match="did you mean `mse`"):
        hypergradient(model, hp, diabetes, key=KEY, objective="mes")
    with pytest.raises(ValueError, match="`remat`"):
        hypergradient(model, hp, diabetes, key=KEY, remat=0)


def test_accuracy_objective_is_refused(iris):
    model = softmax_regression(4, 3)
    with pytest.raises(ValueError, match="piecewise constant"):
        hypergradient(model, SoftmaxHP(steps=5), iris, key=KEY, objective="accuracy")


def _hd_model(hyper_lr, base=None):
    model = RIDGE
    return model._replace(optimizer=lambda hp: hypergradient_descent(
        hp.learning_rate, hyper_lr, base=base), name="ridge_hd")


def test_online_hypergradient_descent_adapts_the_learning_rate(diabetes):
    fixed, hd = RIDGE, _hd_model(1e-2)
    small = LinearHP(learning_rate=1e-3, l2=1e-3, steps=100)
    a = jaxhp.train(fixed, small, diabetes, key=KEY)
    b = jaxhp.train(hd, small, diabetes, key=KEY)
    state = b.state.opt_state
    assert isinstance(state, HypergradientDescentState)
    assert float(state.learning_rate) > 10 * 1e-3  # too small a rate grows
    assert float(b.train_loss) < 0.9 * float(a.train_loss)
    # Just below the stability edge (2 / 4.4) steps overshoot: the rate shrinks.
    edge = jaxhp.train(hd, small.replace(learning_rate=0.45), diabetes, key=KEY)
    assert float(edge.state.opt_state.learning_rate) < 0.45
    adam_hd = _hd_model(1e-3, base=optax.scale_by_adam())
    c = jaxhp.train(adam_hd, small, diabetes, key=KEY)
    assert float(c.state.opt_state.learning_rate) > 1e-3
