"""Selection is declared, never guessed; failures are reported, never swallowed.

Issue 9: metric directions come from the model; failed groups warn or raise;
a tunable used in Python control flow gets an error naming the field; bad
``key``/``memory_budget``/CLI numbers are refused before anything compiles;
``cv_results()`` is scikit-learn's ``cv_results_`` layout, key for key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhp
import jaxhp.cli
from jaxhp import models

KEY = jax.random.key(0)
LINEAR = models.linear_regression(10)


def _balanced(base: jaxhp.Model, directions) -> jaxhp.Model:
    """The linear model with one more metric, ``balanced_accuracy`` (higher is better):
    here simply ``1 - mse``, so its best setting is the one of lowest MSE."""

    def metrics(params, batch, hp):
        m = base.metrics(params, batch, hp)
        return {**m, "balanced_accuracy": 1.0 - m["mse"]}

    return jaxhp.Model(base.init, base.loss, base.optimizer, metrics, base.hparams,
                       "balanced", directions=directions)


BALANCED_DECLARED = _balanced(LINEAR, {"mse": "min", "balanced_accuracy": "max"})
BALANCED_UNDECLARED = _balanced(LINEAR, {"mse": "min"})


def _settings(n=4, steps=30):
    return [models.LinearHP(learning_rate=lr, steps=steps)
            for lr in np.geomspace(0.003, 0.3, n).tolist()]


@pytest.fixture(scope="module")
def balanced_result(diabetes):
    return jaxhp.sweep(BALANCED_DECLARED, _settings(), diabetes, key=KEY, seeds=2)


# ------------------------------------------------------------------ 1. directions
def test_declared_max_metric_selects_the_highest(balanced_result):
    mean, _ = balanced_result.aggregate("balanced_accuracy")
    best = balanced_result.best("balanced_accuracy")
    assert best.mode == "max" and best.index == int(np.nanargmax(mean))
    assert best.index == balanced_result.best("mse").index  # 1 - mse: the same setting
    assert best.index != int(np.nanargmin(mean))  # what the name-based guess picked


def test_undeclared_direction_is_an_error_that_says_how_to_declare(diabetes):
    result = jaxhp.sweep(BALANCED_UNDECLARED, _settings(2), diabetes, key=KEY)
    with pytest.raises(jaxhp.SelectionError,
                       match=r"direction of metric 'balanced_accuracy' is not declared.*"
                             r"directions=\{'balanced_accuracy': 'max'\}.*mode="):
        result.best("balanced_accuracy")
    with pytest.raises(jaxhp.SelectionError, match="not declared"):
        result.top_k(2, "balanced_accuracy")
    # an explicit mode still works, and `loss` defaults to min
    assert result.best("balanced_accuracy", mode="max").mode == "max"
    assert result.best("loss").mode == "min"


def test_reference_models_declare_their_directions():
    assert dict(models.linear_regression(3).directions) == {"mse": "min"}
    for m in (models.softmax_regression(3, 2), models.mlp_classifier(3, 2)):
        assert dict(m.directions) == {"accuracy": "max", "ce": "min"}
        assert m.direction("accuracy") == "max" and m.direction("loss") == "min"


def test_bad_directions_are_refused():
    with pytest.raises(ValueError, match=r"`mse`='up'.*'min'.*'max'"):
        jaxhp.Model(LINEAR.init, LINEAR.loss, LINEAR.optimizer, directions={"mse": "up"})
    with pytest.raises(ValueError, match="`loss` is the training objective"):
        jaxhp.Model(LINEAR.init, LINEAR.loss, LINEAR.optimizer, directions={"loss": "max"})
    m = LINEAR._replace(directions={"mse": "max"})  # _replace validates too
    assert m.direction("mse") == "max"
    with pytest.raises(ValueError, match="'min'"):
        LINEAR._replace(directions={"mse": "maximise"})


def test_a_direction_for_a_metric_the_model_lacks_is_refused_before_compiling(
        diabetes, compile_counter):
    typo = LINEAR._replace(directions={"mes": "min"})
    with pytest.raises(jaxhp.ModelError, match=r"declares `mes`.*did you mean `mse`"):
        jaxhp.sweep(typo, _settings(2), diabetes, key=KEY)
    assert compile_counter.count == 0


def test_directions_survive_save_and_load(balanced_result, tmp_path):
    balanced_result.save(tmp_path / "r")
    back = jaxhp.SweepResult.load(tmp_path / "r", hparams=models.LinearHP)
    assert back.directions == {"mse": "min", "balanced_accuracy": "max"}
    assert back.best("balanced_accuracy").index == balanced_result.best(
        "balanced_accuracy").index


def test_searches_refuse_an_undeclared_direction_before_compiling(diabetes, compile_counter):
    space = _settings(4, steps=27)
    with pytest.raises(jaxhp.SelectionError, match="not declared"):
        jaxhp.successive_halving(BALANCED_UNDECLARED, space, diabetes, key=KEY,
                                 min_steps=3, eta=3, metric="balanced_accuracy")
    with pytest.raises(jaxhp.SelectionError, match="not declared"):
        jaxhp.pbt(BALANCED_UNDECLARED, space, diabetes, key=KEY, ready_every=9,
                  metric="balanced_accuracy")
    with pytest.raises(jaxhp.SelectionError, match="not declared"):
        jaxhp.sweep(BALANCED_UNDECLARED, space, diabetes, key=KEY,
                    select=("balanced_accuracy", None))
    assert compile_counter.count == 0


def test_tune_gradient_refuses_to_minimise_a_max_metric(diabetes):
    with pytest.raises(ValueError, match=r"declares it 'max'.*minimises"):
        jaxhp.tune_gradient(BALANCED_DECLARED, _settings(2), diabetes, key=KEY,
                            objective="balanced_accuracy", steps=2)


# -------------------------------------------------------------------- 2. failures
def _with_loss(base: jaxhp.Model, loss) -> jaxhp.Model:
    return base._replace(loss=loss)


def test_tunable_in_python_control_flow_names_the_field_and_both_fixes(
        diabetes, compile_counter):
    def loss(params, batch, hp):
        value, aux = LINEAR.loss(params, batch, hp)
        if hp.l2 > 0.01:  # a traced value in an `if`
            value = value + 1.0
        return value, aux

    model = _with_loss(LINEAR, loss)
    for run in (lambda: jaxhp.sweep(model, _settings(2), diabetes, key=KEY),  # "record"
                lambda: jaxhp.train(model, models.LinearHP(steps=5), diabetes, key=KEY)):
        with pytest.raises(jaxhp.ModelError) as info:
            run()
        msg = str(info.value)
        assert "model.loss" in msg and "tunable field `l2`" in msg
        assert "static" in msg and "jnp.where" in msg and "lax.cond" in msg
        assert "momentum" not in msg and "learning_rate" not in msg
    assert compile_counter.count == 0


def test_dropout_rate_compared_in_python_is_named(diabetes):
    """Flax's ``nn.Dropout`` runs ``if self.rate == 0.0`` on the (traced) rate."""
    mlp = models.mlp_classifier(64, 10)
    split = jaxhp.datasets.load("digits", key=KEY)

    def loss(params, batch, hp, key=None):
        if hp.dropout == 0.0:
            key = None
        return mlp.loss(params, batch, hp, key)

    with pytest.raises(jaxhp.ModelError, match=r"tunable field `dropout`"):
        jaxhp.sweep(mlp._replace(loss=loss), [models.MLPHP(steps=2, batch_size=32)],
                    split, key=KEY)


def test_every_group_failed_raises_that_error(diabetes):
    def init(key, hp):
        raise RuntimeError(f"cannot build a model of {hp.steps} steps")

    model = LINEAR._replace(init=init)
    with pytest.raises(RuntimeError, match="cannot build a model of 30 steps"):
        jaxhp.sweep(model, _settings(2), diabetes, key=KEY, on_error="record")


@pytest.fixture(scope="module")
def partly_failed(diabetes):
    def init(key, hp):
        if hp.steps == 7:
            raise RuntimeError("no model of 7 steps")
        return LINEAR.init(key, hp)

    model = LINEAR._replace(init=init)
    with pytest.warns(jaxhp.SweepWarning, match="no model of 7 steps"):
        return jaxhp.sweep(model, _settings(2) + [models.LinearHP(steps=7)], diabetes,
                           key=KEY)


def test_selection_errors_quote_the_recorded_failures(partly_failed):
    with pytest.raises(jaxhp.SelectionError, match=r"unknown validation metric 'accuracy'"
                                                   r".*first: RuntimeError: no model of 7"):
        partly_failed.best("accuracy")
    assert partly_failed.setting_status().tolist() == ["ok", "ok", "failed"]


def test_all_nan_validation_metric_says_what_is_wrong(diabetes):
    def metrics(params, batch, hp):
        return {"mse": jnp.log(-jnp.ones(()))}  # NaN whatever the parameters

    result = jaxhp.sweep(LINEAR._replace(metrics=metrics), _settings(2), diabetes, key=KEY)
    with pytest.raises(jaxhp.SelectionError,
                       match=r"0 diverged.*0 failed.*2 trained without diverging but have "
                             r"a NaN/Inf validation 'mse'.*model.metrics"):
        result.best("mse")


# ----------------------------------------------------------------- clear errors
def _calls(bad_key, diabetes):
    settings = _settings(2, steps=9)
    return {
        "sweep": lambda: jaxhp.sweep(LINEAR, settings, diabetes, key=bad_key),
        "train": lambda: jaxhp.train(LINEAR, settings[0], diabetes, key=bad_key),
        "successive_halving": lambda: jaxhp.successive_halving(
            LINEAR, settings, diabetes, key=bad_key, min_steps=3, eta=3),
        "pbt": lambda: jaxhp.pbt(LINEAR, settings, diabetes, key=bad_key, ready_every=3),
        "hypergradient": lambda: jaxhp.hypergradient(LINEAR, settings[0], diabetes,
                                                     key=bad_key),
        "tune_gradient": lambda: jaxhp.tune_gradient(LINEAR, settings, diabetes,
                                                     key=bad_key, steps=1),
    }


@pytest.mark.parametrize("name", ["sweep", "train", "successive_halving", "pbt",
                                  "hypergradient", "tune_gradient"])
@pytest.mark.parametrize("bad_key", [0, 1.5, "0", np.zeros(2, np.float32)],
                         ids=["int", "float", "str", "float-array"])
def test_a_non_key_is_refused_naming_key(name, bad_key, diabetes, compile_counter):
    with pytest.raises(TypeError, match=r"`key`=.*expected a JAX PRNG key"):
        _calls(bad_key, diabetes)[name]()
    assert compile_counter.count == 0


def test_int_key_error_suggests_the_fix(diabetes):
    with pytest.raises(TypeError, match=r"use key=jax\.random\.key\(0\)"):
        jaxhp.train(LINEAR, models.LinearHP(steps=5), diabetes, key=0)
    with pytest.raises(TypeError, match="a batch of keys"):
        jaxhp.train(LINEAR, models.LinearHP(steps=5), diabetes,
                    key=jax.random.split(KEY, 2))


def test_a_legacy_raw_key_draws_the_same_numbers(diabetes):
    hp = models.LinearHP(steps=20, batch_size=32)
    typed = jaxhp.train(LINEAR, hp, diabetes, key=jax.random.key(3))
    raw = jaxhp.train(LINEAR, hp, diabetes, key=jax.random.PRNGKey(3))
    np.testing.assert_array_equal(np.asarray(typed.val["mse"]), np.asarray(raw.val["mse"]))


@pytest.mark.parametrize("budget", ["1GB", 1.5e9, True, 0, -5])
def test_bad_memory_budget_is_refused(budget, diabetes, compile_counter):
    with pytest.raises(ValueError, match=r"`memory_budget`=.*positive integer number of "
                                         "bytes"):
        jaxhp.sweep(LINEAR, _settings(2), diabetes, key=KEY, memory_budget=budget)
    assert compile_counter.count == 0


def _cli(capsys, *args) -> tuple[int, str, str]:
    """``jaxhp ARGS`` in-process (argparse exits): its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_:
        jaxhp.cli.main(list(args))
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


def test_cli_refuses_non_positive_counts(capsys):
    for flag in ("--settings", "--seeds", "--steps"):
        for value in ("0", "-3"):
            code, out, err = _cli(capsys, "demo", flag, value)
            assert code == 2, out
            assert f"argument {flag}" in err and "must be at least 1" in err, (flag, value)


def test_cli_help_speaks_of_the_users_workflow(capsys):
    for args in (["--help"], ["demo", "--help"]):
        code, out, _ = _cli(capsys, *args)
        assert code == 0
        assert "validation" in out and "test" in out
        assert "seed's" not in out.lower() and "the seed " not in out.lower()


# ------------------------------------------------------------------ cv_results
def _collapse_params(keys):
    """Key names with each run of ``param_*`` keys collapsed to one ``param_*``."""
    out = []
    for k in keys:
        k = "param_*" if k.startswith("param_") else k
        if not (out and out[-1] == k == "param_*"):
            out.append(k)
    return out


def test_cv_results_matches_scikit_learns_layout_key_for_key(balanced_result):
    sklearn = pytest.importorskip("sklearn")
    del sklearn
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV

    x, y = load_diabetes(return_X_y=True)
    metrics = sorted(balanced_result.val)  # balanced_accuracy, loss, mse
    search = GridSearchCV(Ridge(), {"alpha": [0.1, 1.0], "fit_intercept": [True]},
                          scoring={m: "r2" for m in metrics}, cv=2, refit=False).fit(x, y)
    ours = balanced_result.cv_results()
    assert _collapse_params(ours) == _collapse_params(search.cv_results_)
    for k, v in search.cv_results_.items():
        if k.startswith("param_"):
            assert all(isinstance(ours[p], np.ma.MaskedArray)
                       for p in ours if p.startswith("param_"))
        elif k == "params":
            assert isinstance(ours[k], list) and isinstance(ours[k][0], dict)
        else:
            assert ours[k].dtype == v.dtype and ours[k].shape == (4,), k
    assert ours["params"][0]["learning_rate"] == pytest.approx(0.003)
    assert ours["param_optimizer"].dtype == object  # strings: object, as in scikit-learn
    assert ours["param_steps"].dtype.kind == "i"
    np.testing.assert_array_equal(ours["split1_test_mse"], balanced_result.val["mse"][:, 1])


def test_cv_results_ranks_every_metric_with_ties_as_scikit_learn(diabetes):
    stats = pytest.importorskip("scipy.stats")
    a, b = models.LinearHP(learning_rate=0.05, steps=30), models.LinearHP(
        learning_rate=0.2, steps=30)
    diverged = models.LinearHP(learning_rate=50.0, steps=30)
    result = jaxhp.sweep(BALANCED_DECLARED, [a, b, a, diverged, b, diverged], diabetes,
                         key=KEY, seeds=2)
    cv = result.cv_results()
    for m, sign in (("mse", 1), ("balanced_accuracy", -1), ("loss", 1)):
        mean = cv[f"mean_test_{m}"]
        assert np.isnan(mean[3]) and np.isnan(mean[5])  # diverged: no mean
        # scikit-learn: NaN ties with the worst; rankdata(method="min") of -score
        filled = np.where(np.isnan(mean), np.inf, sign * mean)
        expected = stats.rankdata(filled, method="min").astype(np.int32)
        np.testing.assert_array_equal(cv[f"rank_test_{m}"], expected)
        assert cv[f"rank_test_{m}"].dtype == np.int32
        assert cv[f"rank_test_{m}"][0] == cv[f"rank_test_{m}"][2]  # a tie shares a rank
        assert sorted(cv[f"rank_test_{m}"][[3, 5]].tolist()) == [5, 5]
        std = np.std(result.val[m][:4:2].astype(np.float64), axis=1)
        np.testing.assert_allclose(cv[f"std_test_{m}"][[0, 2]], std, rtol=1e-12)
    assert cv["std_fit_time"].tolist() == [0.0] * 6
    np.testing.assert_allclose(cv["mean_fit_time"].sum() * 2, result.run_seconds)


def test_cv_results_needs_every_direction(diabetes):
    result = jaxhp.sweep(BALANCED_UNDECLARED, _settings(2), diabetes, key=KEY)
    with pytest.raises(jaxhp.SelectionError, match=r"\['balanced_accuracy'\] is not declared"):
        result.cv_results()
    cv = result.cv_results(directions={"balanced_accuracy": "max"})
    assert "rank_test_balanced_accuracy" in cv


def test_pandas_code_written_for_gridsearchcv_runs_unchanged(balanced_result):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(balanced_result.cv_results())
    top = df.sort_values("rank_test_mse")[["params", "mean_test_mse", "std_test_mse"]]
    assert top.iloc[0]["params"] == balanced_result.best("mse").setting.to_dict()
    frame = balanced_result.to_pandas()
    assert "params" in frame and frame["status"].tolist() == ["ok"] * 4
