"""train() and evaluate(): correctness against closed forms and scikit-learn,
compilation behaviour, determinism, divergence, curves and early errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_trees_close, assert_trees_equal, count_compiles

import jaxhp
from jaxhp import HParams, ModelError, models, static, tunable

KEY = jax.random.key(0)  # also warms up key creation, so counters below see train() only
LINEAR = models.linear_regression(10)  # one model object: train() caches on it


def _ridge_closed_form(x, y, l2):
    """argmin 0.5 * mean((x w + b - y)^2) + 0.5 * l2 * |w|^2 (intercept unpenalised)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = len(x)
    xc, yc = x - x.mean(0), y - y.mean()
    w = np.linalg.solve(xc.T @ xc / n + l2 * np.eye(x.shape[1]), xc.T @ yc / n)
    return w, y.mean() - x.mean(0) @ w


def test_ridge_reaches_the_closed_form_solution(diabetes):
    l2, steps = 0.1, 100
    x = np.asarray(diabetes.train["x"], np.float64)
    n = len(x)
    w_star, b_star = _ridge_closed_form(x, diabetes.train["y"], l2)
    # The objective is quadratic with Hessian [[x'x/n + l2 I, mean x], [mean x', 1]].
    # Heavy-ball momentum with the optimal (lr, beta) contracts the error by
    # rho = (sqrt(L) - sqrt(mu)) / (sqrt(L) + sqrt(mu)) per step.
    z = np.c_[x, np.ones(n)]
    hessian = z.T @ z / n + np.diag([l2] * 10 + [0.0])
    eig = np.linalg.eigvalsh(hessian)
    big, small = np.sqrt(eig.max()), np.sqrt(eig.min())
    lr = 4.0 / (big + small) ** 2
    beta = ((big - small) / (big + small)) ** 2
    rho = np.sqrt(beta)
    assert eig.max() == pytest.approx(4.47, abs=0.05)
    assert eig.min() == pytest.approx(0.106, abs=0.01)
    assert rho**steps < 1e-12  # ~0.733**100: optimisation error far below float32 rounding
    hp = models.LinearHP(learning_rate=lr, momentum=beta, l2=l2, steps=steps)
    run = jaxhp.train(LINEAR, hp, diabetes, key=KEY)
    assert run.status == "ok"
    # What is left is float32 rounding: gradients carry relative errors ~1e-7 and
    # the fixed point moves by (gradient error) / mu ~ 1e-6; |w*| <= 0.36.
    np.testing.assert_allclose(run.state.params["w"], w_star, rtol=0, atol=1e-5)
    np.testing.assert_allclose(run.state.params["b"], b_star, rtol=0, atol=1e-5)
    resid = x @ w_star + b_star - np.asarray(diabetes.train["y"], np.float64)
    objective = 0.5 * np.mean(resid**2) + 0.5 * l2 * w_star @ w_star
    assert float(run.train_loss) == pytest.approx(objective, rel=1e-5)
    # The scaling matches scikit-learn's Ridge(alpha=l2 * n).
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=l2 * n, tol=1e-12).fit(x, np.asarray(diabetes.train["y"], np.float64))
    np.testing.assert_allclose(ridge.coef_, w_star, atol=1e-8)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cross_entropy(p, y):
    return float(-np.mean(np.log(p[np.arange(len(y)), y])))


# (dataset, l2, SoftmaxHP settings that converge, C * l2 * n in scikit-learn's terms)
SKLEARN_CASES = {
    # Two classes: W = [w0, w1] is a logistic model on w = w1 - w0 and the minimiser
    # has w0 = -w1, so 0.5 l2 |W|^2 = 0.25 l2 |w|^2: C = 2 / (l2 n), not 1 / (l2 n).
    "binary": ("breast_cancer", 1e-3, dict(learning_rate=1.0, momentum=0.9, steps=2000), 2),
    # Three classes: sklearn's multinomial model penalises every class column too.
    "multiclass": ("wine", 0.05, dict(learning_rate=1.0, momentum=0.5, steps=400), 1),
}


@pytest.mark.parametrize("case", list(SKLEARN_CASES))
def test_softmax_regression_matches_sklearn_logistic_regression(case):
    from sklearn.linear_model import LogisticRegression

    name, l2, hp_kw, c_factor = SKLEARN_CASES[case]
    split = jaxhp.datasets.load(name, key=KEY)
    x, y = np.asarray(split.train["x"], np.float64), np.asarray(split.train["y"])
    xv, yv = np.asarray(split.val["x"], np.float64), np.asarray(split.val["y"])
    n, n_classes = x.shape[0], int(y.max()) + 1
    assert n_classes == (2 if case == "binary" else 3)
    # sklearn minimises 0.5 |w|^2 + C * sum(CE) (intercept unpenalised); divided by
    # C n this is mean(CE) + 0.5 |w|^2 / (C n). Fitted to a tight tolerance (lbfgs
    # converges in < 100 iterations here).
    fit = lambda f: LogisticRegression(C=f / (l2 * n), tol=1e-12, max_iter=10_000).fit(x, y)
    ref, wrong = fit(c_factor), fit(3 - c_factor)
    model = models.softmax_regression(x.shape[1], n_classes)
    hp = models.SoftmaxHP(l2=l2, **hp_kw)
    # Full batch, heavy-ball momentum: the loss is strongly convex in the logit
    # differences; the probabilities stop moving (at float32 rounding, ~1e-6) after
    # ~1,000 steps (binary) and ~200 steps (multiclass): the steps give 2x margin.
    run = jaxhp.train(model, hp, split, key=KEY)
    w, b = (np.asarray(run.state.params[k], np.float64) for k in ("w", "b"))
    p = _softmax(xv @ w + b)
    # Tolerance: probabilities agree to 1e-5 absolute (observed <= 9e-7, float32
    # rounding of the trained parameters), the validation cross entropy to 1e-5
    # relative (observed 7e-7 binary, 4e-7 multiclass).
    np.testing.assert_allclose(p, ref.predict_proba(xv), rtol=0, atol=1e-5)
    ce_ref = _cross_entropy(ref.predict_proba(xv), yv)
    assert _cross_entropy(p, yv) == pytest.approx(ce_ref, rel=1e-5)
    assert float(run.val["ce"]) == pytest.approx(ce_ref, rel=1e-5)
    # The other scaling is a different model: >10% off in validation cross entropy
    # (observed 14.5% binary with C = 1 / (l2 n), 29% multiclass with C = 2 / (l2 n)).
    assert abs(_cross_entropy(wrong.predict_proba(xv), yv) / ce_ref - 1) > 0.1
    if case == "binary":  # sklearn's one vector is w1 - w0; the minimiser has w0 = -w1
        # |w1 - w0| <= 3.4: observed errors 1.5e-5 and 4e-6 (float32 over 2,000 steps).
        np.testing.assert_allclose(w[:, 1] - w[:, 0], ref.coef_[0], rtol=0, atol=1e-4)
        np.testing.assert_allclose(w[:, 0] + w[:, 1], 0.0, atol=1e-4)
    else:
        np.testing.assert_allclose(w, ref.coef_.T, rtol=0, atol=1e-4)
        # Intercepts are defined up to a common shift (softmax is shift invariant).
        np.testing.assert_allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(),
                                   rtol=0, atol=1e-4)
    acc = jaxhp.evaluate(model, run.state.params, hp, split.val)["accuracy"]
    assert float(acc) == pytest.approx(np.mean(ref.predict(xv) == yv))


def test_new_tunable_compiles_nothing_new_static_compiles_once(diabetes):
    model = models.linear_regression(10)  # fresh functions: nothing cached yet
    hp = models.LinearHP(learning_rate=0.1, l2=0.01, steps=30)
    with count_compiles() as c:
        first = jaxhp.train(model, hp, diabetes, key=KEY)
    assert c.count == 1
    with count_compiles() as c:
        other = jaxhp.train(model, hp.replace(learning_rate=0.2, l2=0.5, momentum=0.3),
                            diabetes, key=jax.random.key(7))
    assert c.count == 0
    assert not np.allclose(first.state.params["w"], other.state.params["w"])  # it took effect
    with count_compiles() as c:
        jaxhp.train(model, hp.replace(steps=31), diabetes, key=KEY)
    assert c.count == 1
    with count_compiles() as c:
        jaxhp.train(model, hp.replace(optimizer="adam"), diabetes, key=KEY)
    assert c.count == 1
    with count_compiles() as c:  # back to the first statics: cached
        again = jaxhp.train(model, hp, diabetes, key=KEY)
    assert c.count == 0
    assert_trees_equal(first, again)


def test_jit_and_eager_agree(diabetes):
    calls = []

    def counted_loss(params, batch, hp):
        calls.append(None)  # runs once per trace under jit, once per call when eager
        return LINEAR.loss(params, batch, hp)

    model = LINEAR._replace(loss=counted_loss)
    hp = models.LinearHP(learning_rate=0.1, momentum=0.5, steps=10, batch_size=32)
    jitted = jaxhp.train(model, hp, diabetes, key=KEY, eval_every=5)
    traced = len(calls)
    with jax.disable_jit():
        eager = jaxhp.train(model, hp, diabetes, key=KEY, eval_every=5)
    assert len(calls) - traced >= 10  # really eager: the loss ran at every step
    # Same operations; XLA may fuse and reorder float32 sums: a few ulps.
    assert_trees_close(jitted, eager, rtol=1e-5, atol=1e-6)
    assert int(eager.state.step) == 10


def test_same_key_is_bit_identical_and_keys_matter(diabetes):
    hp = models.LinearHP(learning_rate=0.1, momentum=0.5, steps=10, batch_size=32)
    a = jaxhp.train(LINEAR, hp, diabetes, key=KEY, eval_every=5)
    b = jaxhp.train(LINEAR, hp, diabetes, key=jax.random.key(0), eval_every=5)
    assert_trees_equal(a, b)
    c = jaxhp.train(LINEAR, hp, diabetes, key=jax.random.key(1), eval_every=5)
    assert not np.array_equal(a.state.params["w"], c.state.params["w"])  # minibatch order


def test_diverging_run_is_reported_not_raised(diabetes):
    steps = 20
    run = jaxhp.train(LINEAR, models.LinearHP(learning_rate=100.0, steps=steps), diabetes,
                      key=KEY)
    assert run.status == "diverged"
    at = int(run.diverged_at)
    assert 0 <= at < steps
    assert int(run.state.step) == at  # frozen at the last finite state
    for leaf in jax.tree_util.tree_leaves(run.state):
        assert np.all(np.isfinite(leaf))
    curve = np.asarray(run.loss_curve)
    assert curve.shape == (steps,)
    assert np.all(np.isfinite(curve[:at])) and np.all(np.isnan(curve[at:]))
    healthy = jaxhp.train(LINEAR, models.LinearHP(learning_rate=0.1, steps=steps), diabetes,
                          key=KEY)
    assert healthy.status == "ok" and int(healthy.diverged_at) == -1


def test_diverged_steps_stay_nan_in_a_partial_loss_window(diabetes):
    hp = models.LinearHP(learning_rate=100.0, steps=11)
    full = jaxhp.train(LINEAR, hp, diabetes, key=KEY, loss_every=1)
    windows = jaxhp.train(LINEAR, hp, diabetes, key=KEY, loss_every=4)
    assert int(full.diverged_at) < 8  # the last window [8, 11) is all after divergence
    assert windows.loss_curve.shape == (3,) and np.isnan(windows.loss_curve[-1])


def test_curves(diabetes):
    hp = models.LinearHP(learning_rate=0.1, steps=12)
    run = jaxhp.train(LINEAR, hp, diabetes, key=KEY, eval_every=4)
    assert run.loss_curve.shape == (12,) and run.loss_curve.dtype == np.float32
    # Step 0 sees the zero initialisation: 0.5 * mean(y^2) on the training part.
    assert float(run.loss_curve[0]) == pytest.approx(
        0.5 * np.mean(np.asarray(diabetes.train["y"], np.float64) ** 2), rel=1e-6)
    assert np.all(np.diff(run.loss_curve) < 0)  # small steps on a convex quadratic
    assert set(run.val_curve) == {"loss", "mse"}
    assert run.val_curve["mse"].shape == (3,)  # after steps 4, 8, 12
    assert float(run.val_curve["mse"][-1]) == pytest.approx(float(run.val["mse"]), rel=1e-6)
    first = jaxhp.train(LINEAR, hp.replace(steps=4), diabetes, key=KEY)
    assert float(run.val_curve["mse"][0]) == pytest.approx(float(first.val["mse"]), rel=1e-5)

    windowed = jaxhp.train(LINEAR, hp, diabetes, key=KEY, eval_every=5, loss_every=5)
    per_step = np.asarray(run.loss_curve)
    expected = [per_step[:5].mean(), per_step[5:10].mean(), per_step[10:].mean()]
    np.testing.assert_allclose(windowed.loss_curve, expected, rtol=1e-5)
    assert windowed.val_curve["mse"].shape == (2,)  # after steps 5 and 10

    bare = jaxhp.train(LINEAR, hp, diabetes, key=KEY, eval_every=None, loss_every=0)
    assert bare.loss_curve.shape == (0,) and bare.val_curve["mse"].shape == (0,)
    np.testing.assert_allclose(bare.state.params["w"], run.state.params["w"], rtol=1e-5)


def test_state_types(diabetes):
    run = jaxhp.train(LINEAR, models.LinearHP(learning_rate=0.1, steps=12), diabetes, key=KEY)
    assert isinstance(run, jaxhp.Run) and isinstance(run.state, jaxhp.TrainState)
    assert run.state.step.dtype == jnp.int32 and int(run.state.step) == 12
    assert run.state.params["w"].dtype == jnp.float32 and run.state.params["w"].shape == (10,)
    assert run.train_loss.shape == () and set(run.val) == {"loss", "mse"}


def test_evaluate_on_the_test_part(diabetes):
    hp = models.LinearHP(learning_rate=0.1, l2=0.01, steps=12)
    run = jaxhp.train(LINEAR, hp, diabetes, key=KEY)
    out = jaxhp.evaluate(LINEAR, run.state.params, hp, diabetes.test)
    w = np.asarray(run.state.params["w"], np.float64)
    b = float(run.state.params["b"])
    err = np.asarray(diabetes.test["x"], np.float64) @ w + b - diabetes.test["y"]
    mse = np.mean(err**2)
    assert set(out) == {"loss", "mse"}
    assert float(out["mse"]) == pytest.approx(mse, rel=1e-5)
    assert float(out["loss"]) == pytest.approx(0.5 * mse + 0.5 * 0.01 * w @ w, rel=1e-5)
    val = jaxhp.evaluate(LINEAR, run.state.params, hp, diabetes.val)
    assert float(val["mse"]) == pytest.approx(float(run.val["mse"]), rel=1e-6)


# ------------------------------------------------------------------ MLP, digits
@pytest.fixture(scope="module")
def mlp_setup(digits):
    model = models.mlp_classifier(64, 10)
    hp = models.MLPHP(learning_rate=1e-2, width=64, depth=1, steps=150, batch_size=64,
                      dropout=0.1)
    return model, hp, jaxhp.train(model, hp, digits, key=KEY, eval_every=50)


def test_mlp_learns_digits(mlp_setup, digits):
    model, hp, run = mlp_setup
    assert run.status == "ok"
    assert run.val_curve["accuracy"].shape == (3,)
    assert float(run.val["accuracy"]) > 0.9  # chance is 0.1
    test = jaxhp.evaluate(model, run.state.params, hp, digits.test)
    assert float(test["accuracy"]) > 0.9
    assert float(run.loss_curve[-10:].mean()) < 0.5 * float(run.loss_curve[:10].mean())


def test_mlp_same_key_bit_identical_with_dropout_and_minibatches(mlp_setup, digits):
    model, hp, run = mlp_setup
    with count_compiles() as c:
        again = jaxhp.train(model, hp, digits, key=jax.random.key(0), eval_every=50)
    assert c.count == 0
    assert_trees_equal(run, again)
    other = jaxhp.train(model, hp, digits, key=jax.random.key(1), eval_every=50)
    assert not np.array_equal(run.state.params[0]["w"], other.state.params[0]["w"])


# ------------------------------------------------------ errors before compiling
def _check_rejected(model, hp, split, error, match):
    with count_compiles() as c:
        with pytest.raises(error, match=match):
            jaxhp.train(model, hp, split, key=KEY)
    assert c.count == 0


def test_batch_size_larger_than_the_training_part(diabetes, compile_counter):
    with pytest.raises(ValueError, match=r"`batch_size`=1000 is larger than the training set "
                       r"\(265 examples\); use at most 265, or None"):
        jaxhp.train(LINEAR, models.LinearHP(batch_size=1000), diabetes, key=KEY)
    assert compile_counter.count == 0
    jaxhp.train(LINEAR, models.LinearHP(batch_size=265, steps=2), diabetes, key=KEY)
    assert compile_counter.count == 1  # the counter fixture sees the compile


def test_loss_must_be_a_scalar(diabetes):
    def per_example_loss(params, batch, hp):
        return (batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2, {}

    _check_rejected(LINEAR._replace(loss=per_example_loss), models.LinearHP(), diabetes,
                    ModelError, r"model\.loss \(.*per_example_loss\) must return a scalar "
                    r"loss, got shape \(265,\)")


def test_loss_must_return_loss_and_aux(diabetes):
    def bare_loss(params, batch, hp):
        return jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)

    _check_rejected(LINEAR._replace(loss=bare_loss), models.LinearHP(), diabetes,
                    ModelError, r"model\.loss \(.*bare_loss\) must return \(loss, aux\)")


def test_optimizer_must_return_an_optax_transformation(diabetes):
    def init_and_update(hp):
        opt = optax.sgd(hp.learning_rate)
        return (opt.init, opt.update)

    _check_rejected(LINEAR._replace(optimizer=init_and_update), models.LinearHP(), diabetes,
                    ModelError, r"model\.optimizer \(.*init_and_update\) must return an "
                    r"optax\.GradientTransformation, got tuple")


def test_parameters_must_be_float(diabetes):
    def int_init(key, hp):
        return {"w": jnp.zeros((10,), jnp.int32), "b": jnp.zeros((), jnp.float32)}

    _check_rejected(LINEAR._replace(init=int_init), models.LinearHP(), diabetes, ModelError,
                    r"model\.init \(.*int_init\) returned a non-float parameter \['w'\] "
                    r"of dtype int32")


def test_metrics_must_be_scalars(diabetes):
    def residuals(params, batch, hp):
        return {"residual": batch["x"] @ params["w"] - batch["y"]}

    _check_rejected(LINEAR._replace(metrics=residuals), models.LinearHP(), diabetes,
                    ModelError, r"model\.metrics \(.*residuals\) returned `residual` of "
                    r"shape \(265,\)")


def test_model_error_is_a_type_error():
    assert issubclass(ModelError, TypeError)


class NoSteps(HParams):
    learning_rate: float = tunable(0.1)
    l2: float = tunable(0.01)
    momentum: float = tunable(0.0)
    optimizer: str = static("sgd")


class TunableSteps(NoSteps):
    steps: float = tunable(10.0)


@pytest.mark.parametrize("cls", [NoSteps, TunableSteps])
def test_hparams_need_a_static_steps_field(cls, diabetes):
    # a model without a declared class, so that only the missing `steps` rule applies
    _check_rejected(LINEAR._replace(hparams=None), cls(), diabetes, ValueError,
                    rf"{cls.__name__} needs a static `steps` field")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"eval_every": 50}, r"`eval_every`=50 exceeds `steps`=10"),
     ({"loss_every": -1}, r"`loss_every`=-1: must be a non-negative integer or None"),
     ({"eval_every": 2.5}, r"`eval_every`=2.5: must be a non-negative integer")],
)
def test_loop_arguments_are_checked(kwargs, match, diabetes):
    with pytest.raises(ValueError, match=match):
        jaxhp.train(LINEAR, models.LinearHP(steps=10), diabetes, key=KEY, **kwargs)


def test_train_takes_one_setting(diabetes):
    batch = jaxhp.stack([models.LinearHP(), models.LinearHP(learning_rate=0.2)])
    with pytest.raises(ValueError, match=r"train\(\) takes one setting, got a batch of shape "
                       r"\(2,\); use jaxhp.sweep"):
        jaxhp.train(LINEAR, batch, diabetes, key=KEY)
    with pytest.raises(TypeError, match="hp must be a jaxhp.HParams instance, got dict"):
        jaxhp.train(LINEAR, {"learning_rate": 0.1}, diabetes, key=KEY)
    with pytest.raises(TypeError, match="expected a jaxhp.Split"):
        jaxhp.train(LINEAR, models.LinearHP(), tuple(diabetes), key=KEY)


class SumHP(HParams):
    steps: int = static(10, low=1, integer=True)
    batch_size: int = static(6, low=1, integer=True)


def test_steps_draw_the_batches_of_sample_batch_across_epochs():
    # loss -mean(x @ w) with SGD(1): w after T steps is the sum of the batches' mean
    # rows, so it shows every batch the steps drew; 20 rows in batches of 6 = 3 steps
    # per epoch, 10 steps = 4 epochs (the loop sorts each epoch's order once)
    x = np.arange(20 * 3, dtype=np.float32).reshape(20, 3) ** 1.5
    split = jaxhp.Split({"x": x}, {"x": x[:4]}, {"x": x[:4]})
    model = jaxhp.Model(lambda k, hp: jnp.zeros(3),
                        lambda w, b, hp, key=None: (-jnp.mean(b["x"] @ w), {}),
                        lambda hp: optax.sgd(1.0), lambda w, b, hp: {"s": jnp.sum(w)},
                        hparams=SumHP, directions={"s": "max"})
    key = jax.random.key(5)
    run = jaxhp.train(model, SumHP(), split, key=key)
    data_key = jax.random.fold_in(key, 1)  # the run's data stream
    want = sum(np.asarray(jaxhp.sample_batch(split.train, data_key, t, 6)["x"]).mean(0)
               for t in range(10))
    np.testing.assert_allclose(np.asarray(run.state.params), want, rtol=1e-5)
