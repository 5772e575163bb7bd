"""``jaxhp.bayesopt`` and its Gaussian process (``jaxhp.GPSurrogate``).

The GP is checked against scikit-learn's ``GaussianProcessRegressor`` (posterior and
log marginal likelihood at fixed hyperparameters in float64; the fit against its
optimised likelihood). One search (ridge on diabetes, 3 rounds of 8, 2 seeds, a
step-size range that reaches divergence) runs once for the module; the tests check its
values against plain sweeps, its compiles, its rounds, how it handles diverged
settings, and the errors raised before anything compiles.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp.models import LinearHP, linear_regression

sklearn_gp = pytest.importorskip("sklearn.gaussian_process")
kernels = pytest.importorskip("sklearn.gaussian_process.kernels")

KEY = jax.random.key(5)
SEEDS = 2
BATCH = 8
ROUNDS = 3
CANDIDATES = 128  # a small candidate set: a cheaper GP program
BASE = LinearHP(steps=200)
# full-batch sgd for 200 steps diverges above a step size of about 1
SPACE = {"learning_rate": jaxhp.loguniform(1e-3, 3.0), "l2": jaxhp.loguniform(1e-5, 1.0)}


def _toy(n=32, d=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, d))
    y = np.sin(5 * x[:, 0]) + 0.5 * x[:, 1] ** 2 + 0.05 * rng.standard_normal(n)
    return x, (y - y.mean()) / y.std()


def _sklearn(lengthscales, signal, noise, fixed=True):
    bounds = {} if fixed else dict(length_scale_bounds=(1e-2, 20.0))
    kernel = (kernels.ConstantKernel(signal, (5e-2, 20.0))
              * kernels.Matern(length_scale=lengthscales, nu=2.5, **bounds)
              + kernels.WhiteKernel(noise, (1e-4, 2.0)))
    return sklearn_gp.GaussianProcessRegressor(
        kernel, optimizer=None if fixed else "fmin_l_bfgs_b", alpha=0.0,
        n_restarts_optimizer=0 if fixed else 4, random_state=0)


def test_gp_posterior_and_likelihood_equal_sklearn_in_float64():
    x, y = _toy()
    xs = np.random.default_rng(1).random((9, 2))
    ls, signal, noise = np.array([0.3, 1.7]), 1.4, 0.02
    sk = _sklearn(ls, signal, noise).fit(x, y)
    sk_mean, sk_std = sk.predict(xs, return_std=True)
    with jax.enable_x64(True):
        gp = jaxhp.GPSurrogate(x, y, ls, signal, noise)
        mean, std = gp.predict(xs, include_noise=True)
        lml = gp.log_marginal_likelihood()
        latent = gp.predict(xs)[1]
    np.testing.assert_allclose(mean, sk_mean, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(std, sk_std, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(lml, sk.log_marginal_likelihood_value_, rtol=1e-6)
    np.testing.assert_allclose(latent ** 2 + noise, std ** 2, rtol=1e-9)


def test_gp_fit_reaches_sklearns_optimised_likelihood():
    x, y = _toy()
    sk = _sklearn(np.ones(2), 1.0, 0.1, fixed=False).fit(x, y)
    gp = jaxhp.GPSurrogate.fit(x, y, key=jax.random.key(0))
    best = sk.log_marginal_likelihood_value_
    assert gp.log_marginal_likelihood() >= best - 1e-3 * abs(best)
    assert gp.lengthscales[0] < gp.lengthscales[1]  # x0 matters more than x1


@pytest.fixture(scope="module")
def searched(diabetes):
    model = linear_regression(10)  # its own instance: nothing compiled for it yet
    with count_compiles() as c:
        result = jaxhp.bayesopt(model, SPACE, diabetes, key=KEY, rounds=ROUNDS,
                                batch=BATCH, seeds=SEEDS, base=BASE, metric="mse",
                                candidates=CANDIDATES)
    return model, result, c.count


def test_round_values_equal_sweeps_of_the_same_settings(searched, diabetes):
    model, result, _ = searched
    assert result.n_settings == ROUNDS * BATCH
    mean = result.aggregate("mse")[0]
    for r in range(ROUNDS):  # one round's batch: the search's program, nothing compiled
        rows = np.flatnonzero(result.rounds == r)
        plain = jaxhp.sweep(model, [result.settings[i] for i in rows], diabetes, key=KEY,
                            seeds=SEEDS)
        np.testing.assert_allclose(plain.aggregate("mse")[0], mean[rows], rtol=1e-5)


def test_one_training_compile_for_every_round(searched):
    _, result, compiles = searched
    assert len(result.groups) == 1
    g = result.groups[0]
    assert (g.compiled, g.n_chunks, g.n_settings) == (1, ROUNDS, ROUNDS * BATCH)
    assert compiles <= 2  # the training program and the GP's fit-and-draw program


def test_round_zero_is_quasirandom_and_rounds_are_recorded(searched):
    _, result, _ = searched
    np.testing.assert_array_equal(result.to_pandas()["round"], np.repeat(range(ROUNDS),
                                                                         BATCH))
    first = jaxhp.quasirandom(BATCH, SPACE).settings(LinearHP, BASE)
    assert result.settings[:BATCH] == first
    assert result.meta["search"]["method"] == "bayesopt"
    assert result.meta["search"]["quasirandom_rounds"] == [0]
    assert [d["field"] for d in result.meta["search"]["dims"]] == ["learning_rate", "l2"]


def test_diverged_settings_enter_the_model_at_the_worst_value_plus_a_margin(searched):
    _, result, _ = searched
    status = result.setting_status()
    assert (status == "diverged").any()  # the range reaches divergence
    gp = result.surrogate()
    assert np.isfinite(gp.y).all() and len(gp.y) == result.n_settings
    bad = status != "ok"
    assert gp.y[bad].min() > gp.y[~bad].max()  # worse than every healthy setting
    assert np.ptp(gp.y[bad]) == 0  # all at the same value: worst + margin
    order = np.argsort(result.aggregate("mse")[0][~bad])  # lower is better, kept in order
    assert (np.diff(gp.y[~bad][order]) >= 0).all()


def test_model_rounds_beat_quasirandom_at_equal_budget(searched, diabetes):
    """The fixture's problem over the search seeds 0 to 4 (the compiled programs reused):
    bayesopt's median best is below that of as many quasi-random settings (the
    criterion of bench/bench_bayesopt.py, whose ridge problem it won 9 times in 10)."""
    model, result, _ = searched
    bo, qr = [], []
    for seed in range(5):
        bo.append(result.best("mse").value if seed == 0 else jaxhp.bayesopt(
            model, SPACE, diabetes, key=KEY, rounds=ROUNDS, batch=BATCH, seeds=SEEDS,
            base=BASE, metric="mse", candidates=CANDIDATES, seed=seed).best("mse").value)
        qr.append(jaxhp.sweep(model, jaxhp.quasirandom(ROUNDS * BATCH, SPACE, seed=seed),
                              diabetes, key=KEY, seeds=SEEDS, base=BASE,
                              chunk_size=BATCH).best("mse").value)
    assert np.median(bo) < np.median(qr)


def test_result_saves_and_loads_its_rounds(searched, tmp_path):
    _, result, _ = searched
    result.save(tmp_path / "r")
    back = jaxhp.SweepResult.load(tmp_path / "r")
    assert isinstance(back, jaxhp.BayesOptResult)
    np.testing.assert_array_equal(back.rounds, result.rounds)
    assert back.best("mse").index == result.best("mse").index
    with pytest.raises(ValueError, match="observations .* are not saved"):
        back.surrogate()


def test_all_diverged_rounds_fall_back_to_quasirandom(searched, diabetes):
    model = searched[0]
    result = jaxhp.bayesopt(model, {"learning_rate": jaxhp.loguniform(40.0, 80.0)},
                            diabetes, key=KEY, rounds=2, batch=BATCH, seeds=SEEDS,
                            base=BASE, metric="mse")
    assert (result.setting_status() == "diverged").all()
    assert result.meta["search"]["quasirandom_rounds"] == [0, 1]
    assert len(set(float(h.learning_rate) for h in result.settings)) == 2 * BATCH


def test_static_groups_share_the_batch(searched, diabetes):
    space = {**SPACE, "optimizer": jaxhp.choice(["sgd", "adam"])}
    result = jaxhp.bayesopt(searched[0], space, diabetes, key=KEY, rounds=2, batch=BATCH,
                            base=BASE, metric="mse", chunk_size=1, candidates=CANDIDATES)
    assert result.meta["search"]["groups"] == [{"optimizer": "sgd"}, {"optimizer": "adam"}]
    opts = [h.optimizer for h in result.settings]
    assert opts[:BATCH] == ["sgd"] * (BATCH // 2) + ["adam"] * (BATCH // 2)  # shared out
    assert len(opts) == 2 * BATCH and list(result.rounds) == [0] * BATCH + [1] * BATCH
    assert {g.statics["optimizer"] for g in result.groups} == {"sgd", "adam"}
    assert all(g.compiled == 1 for g in result.groups)


def _refused(diabetes, **kw):
    args = dict(space=SPACE, rounds=1, batch=2, key=KEY, base=BASE, metric="mse") | kw
    space = args.pop("space")
    with count_compiles() as c:
        with pytest.raises(Exception) as e:
            jaxhp.bayesopt(linear_regression(10), space, diabetes, **args)
    assert c.count == 0
    return e


@pytest.mark.parametrize("kw, kind, message", [
    (dict(rounds=0), ValueError, "`rounds`=0: must be an integer >= 1"),
    (dict(batch=0), ValueError, "`batch`=0: must be an integer >= 1"),
    (dict(key=None), TypeError, "`key`"),
    (dict(metric="accuracy"), jaxhp.SelectionError, "unknown validation metric 'accuracy'"),
    (dict(mode="max"), ValueError, "`mode`='max' contradicts the direction 'min'"),
    (dict(checkpoint_dir="x"), TypeError, "unknown keyword(s) ['checkpoint_dir']"),
    (dict(space={"learning_rat": jaxhp.loguniform(1e-3, 1)}), jaxhp.SpaceError,
     "`learning_rat`: unknown field of LinearHP (did you mean `learning_rate`?)"),
    (dict(space={"learning_rate": jaxhp.fixed(0.1)}), jaxhp.SpaceError,
     "searches no tunable field"),
    (dict(space={**SPACE, "steps": jaxhp.uniform(10, 20)}), jaxhp.SpaceError,
     "`steps`"),
    (dict(space={**SPACE, "steps": jaxhp.intrange(10, 12)}), ValueError,
     "make 3 groups; round 0 trains every group at least once, so `batch` must be >= 3"),
])
def test_bad_arguments_are_refused_before_compiling(diabetes, kw, kind, message):
    e = _refused(diabetes, **kw)
    assert e.type is kind
    assert message in str(e.value)
