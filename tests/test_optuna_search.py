"""``jaxhp.optuna_search``: Optuna's sampler proposes, each round trains as one sweep.

One search (ridge on diabetes, 3 rounds of 4 trials, 2 seeds, a diverging trial
enqueued first) runs once for the module; the tests check what it told the study
against solo ``jaxhp.train`` runs and a plain ``jaxhp.sweep``, its compiles, its
result, resuming a study in SQLite, and the errors raised before anything compiles.
"""

from __future__ import annotations

import sys
import warnings

import jax
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp.models import LinearHP, linear_regression

optuna = pytest.importorskip("optuna")
optuna.logging.set_verbosity(optuna.logging.WARNING)

KEY = jax.random.key(3)
SEEDS = 2
BATCH = 4
ROUNDS = 3
BASE = LinearHP(steps=20)
PARAMS = {"learning_rate": jaxhp.loguniform(1e-3, 0.5), "l2": jaxhp.loguniform(1e-5, 1.0)}
DIVERGING = {"learning_rate": 60.0, "l2": 1e-3}  # sgd at this step size blows up


def _study(storage=None, name=None, direction="minimize"):
    return optuna.create_study(storage=storage, study_name=name, direction=direction,
                               load_if_exists=True,
                               sampler=optuna.samplers.TPESampler(seed=0))


@pytest.fixture(scope="module")
def searched(diabetes):
    model = linear_regression(10)  # its own instance: nothing compiled for it yet
    study = _study()
    study.enqueue_trial(DIVERGING)
    with count_compiles() as c, warnings.catch_warnings():
        # Optuna warns that the enqueued step size lies outside the searched range
        warnings.filterwarnings("ignore", "Fixed parameter learning_rate", UserWarning)
        result = jaxhp.optuna_search(study, model, diabetes, params=PARAMS, rounds=ROUNDS,
                                     batch=BATCH, key=KEY, seeds=SEEDS, base=BASE,
                                     metric="mse")
    return model, study, result, c.count


def test_told_values_are_the_sweep_and_train_means(searched, diabetes):
    model, study, result, _ = searched
    assert len(study.trials) == ROUNDS * BATCH
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == ROUNDS * BATCH - 1
    plain = jaxhp.sweep(model, result.settings, diabetes, key=KEY, seeds=SEEDS)
    mean = plain.aggregate("mse")[0]
    for t in complete:
        i = t.user_attrs["jaxhp_index"]
        assert result.trial_numbers[i] == t.number
        assert result.settings[i].learning_rate == pytest.approx(t.params["learning_rate"],
                                                                 rel=1e-6)
        np.testing.assert_allclose(t.value, mean[i], rtol=1e-5)
    t = study.best_trial  # one trial against solo runs, seed by seed
    setting = result.settings[t.user_attrs["jaxhp_index"]]
    solo = [float(jaxhp.train(model, setting, diabetes,
                              key=jax.random.fold_in(KEY, s)).val["mse"])
            for s in range(SEEDS)]
    np.testing.assert_allclose(t.user_attrs["per_seed"], solo, rtol=1e-5)
    np.testing.assert_allclose(t.value, np.mean(solo), rtol=1e-5)


def test_one_compile_for_every_round_of_a_static_group(searched):
    _, _, result, compiles = searched
    assert compiles == 1
    assert len(result.groups) == 1
    g = result.groups[0]
    assert (g.compiled, g.n_chunks, g.n_settings) == (1, ROUNDS, ROUNDS * BATCH)


def test_diverged_setting_is_told_fail_with_its_reason(searched):
    _, study, result, _ = searched
    t = study.trials[0]
    assert t.params == DIVERGING
    assert t.state == optuna.trial.TrialState.FAIL and t.value is None
    assert t.user_attrs["reason"].startswith("diverged (non-finite loss) at step(s) [")
    assert result.setting_status()[t.user_attrs["jaxhp_index"]] == "diverged"
    assert all(np.isfinite(x.value) for x in study.trials[1:])


def test_rounds_and_best_agree_with_the_study(searched):
    _, study, result, _ = searched
    df = result.to_pandas()
    np.testing.assert_array_equal(df["round"], np.repeat(np.arange(ROUNDS), BATCH))
    np.testing.assert_array_equal(df["trial_number"], np.arange(ROUNDS * BATCH))
    assert [t.user_attrs["jaxhp_round"] for t in study.trials] == list(df["round"])
    best = result.best("mse")
    assert result.trial_numbers[best.index] == study.best_trial.number
    np.testing.assert_allclose(best.value, study.best_value, rtol=1e-6)
    assert result.meta["search"]["method"] == "optuna"
    assert type(result).__name__ == "OptunaResult" and result.study is study


def test_result_saves_and_loads_its_rounds(searched, tmp_path):
    _, _, result, _ = searched
    result.save(tmp_path / "r")
    back = jaxhp.SweepResult.load(tmp_path / "r")
    assert isinstance(back, jaxhp.OptunaResult)
    np.testing.assert_array_equal(back.rounds, result.rounds)
    np.testing.assert_array_equal(back.trial_numbers, result.trial_numbers)


def test_sqlite_study_resumes_and_fails_trials_left_running(searched, diabetes, tmp_path):
    model = searched[0]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    args = dict(params=PARAMS, batch=BATCH, key=KEY, seeds=SEEDS, base=BASE, metric="mse")
    first = jaxhp.optuna_search(_study(url, "ridge"), model, diabetes, rounds=1, **args)
    np.testing.assert_array_equal(first.rounds, [0] * BATCH)
    # a process killed mid-round leaves its asked trial RUNNING
    killed = optuna.load_study(study_name="ridge", storage=url)
    running = killed.ask()
    running.set_user_attr("jaxhp_round", 1)
    with count_compiles() as c:  # the same program: compiled by the first call
        again = jaxhp.optuna_search(_study(url, "ridge"), model, diabetes, rounds=1, **args)
    assert c.count == 0
    study = optuna.load_study(study_name="ridge", storage=url)
    assert len(study.trials) == 2 * BATCH + 1
    stale = study.trials[BATCH]
    assert stale.state == optuna.trial.TrialState.FAIL
    assert "left RUNNING" in stale.user_attrs["reason"]
    np.testing.assert_array_equal(again.rounds, [2] * BATCH)  # numbered on
    np.testing.assert_array_equal(again.trial_numbers, np.arange(BATCH + 1, 2 * BATCH + 1))
    assert again.meta["search"]["stale_trials_failed"] == [BATCH]
    assert all(t.state == optuna.trial.TrialState.COMPLETE
               for t in study.trials[BATCH + 1:])


def _refused(diabetes, study, model=None, **kw):
    args = dict(params=PARAMS, rounds=1, batch=2, key=KEY, base=BASE, metric="mse") | kw
    with count_compiles() as c:
        with pytest.raises(Exception) as e:
            jaxhp.optuna_search(study, model or linear_regression(10), diabetes, **args)
    assert c.count == 0 and len(study.trials) == 0  # nothing asked, nothing compiled
    return e


def test_direction_mismatch_is_refused_naming_both(diabetes):
    e = _refused(diabetes, _study(direction="maximize"))
    assert e.type is ValueError
    assert "is to maximize, but the metric 'mse' is to minimize" in str(e.value)
    assert "direction='minimize'" in str(e.value)


def test_mode_contradicting_a_declaration_is_refused(diabetes):
    e = _refused(diabetes, _study(direction="maximize"), mode="max")
    assert e.type is ValueError
    assert "`mode`='max' contradicts the direction 'min'" in str(e.value)


def test_bad_params_are_refused(diabetes):
    e = _refused(diabetes, _study(), params={"learning_rat": jaxhp.loguniform(1e-3, 1)})
    assert e.type is jaxhp.SpaceError
    assert "`learning_rat`: unknown field of LinearHP" in str(e.value)
    assert "did you mean `learning_rate`" in str(e.value)
    e = _refused(diabetes, _study(), params={"learning_rate": [0.1, 0.2]})
    assert e.type is jaxhp.SpaceError and "not a jaxhp distribution" in str(e.value)
    e = _refused(diabetes, _study(), params={"momentum": jaxhp.uniform(0.5, 2.0)})
    assert e.type is jaxhp.SpaceError and "`momentum`" in str(e.value)


def test_multi_objective_and_other_bad_arguments_are_refused(diabetes):
    multi = optuna.create_study(directions=["minimize", "maximize"])
    e = _refused(diabetes, multi)
    assert e.type is ValueError and "has 2 objectives" in str(e.value)
    e = _refused(diabetes, _study(), metric="accuracy")
    assert e.type is jaxhp.SelectionError and "unknown validation metric" in str(e.value)
    e = _refused(diabetes, _study(), batch=0)
    assert e.type is ValueError and "`batch`=0: must be an integer >= 1" in str(e.value)
    e = _refused(diabetes, _study(), checkpoint_dir="x")
    assert e.type is TypeError and "unknown keyword(s) ['checkpoint_dir']" in str(e.value)


def test_missing_optuna_names_the_extra(diabetes, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"optuna_search\(\) needs optuna: pip install "
                                          r"'jaxhp\[search\]'"):
        jaxhp.optuna_search(None, linear_regression(10), diabetes, params=PARAMS,
                            rounds=1, batch=2, key=KEY)


def test_a_setting_asked_again_is_told_its_first_value(searched, diabetes):
    model = searched[0]
    study = _study()
    lrs = [0.01, 0.1]
    result = jaxhp.optuna_search(study, model, diabetes, params={
        "learning_rate": jaxhp.choice(lrs)}, rounds=2, batch=3, key=KEY, seeds=SEEDS,
        base=BASE, metric="mse")
    assert len(study.trials) == 6 and result.n_settings == 2  # 2 choices, trained once each
    mean = result.aggregate("mse")[0]
    for t in study.trials:
        i = t.user_attrs["jaxhp_index"]
        assert result.settings[i].learning_rate == pytest.approx(t.params["learning_rate"])
        assert t.value == mean[i]
    exported = result.to_optuna(metric="mse")
    assert [t.value for t in exported.trials] == list(mean)


def test_a_round_that_raises_tells_its_trials_fail(searched, diabetes):
    def stop(record):
        raise RuntimeError("disk full")

    study = _study()
    with pytest.raises(jaxhp.CallbackError):
        jaxhp.optuna_search(study, searched[0], diabetes, params=PARAMS, rounds=2,
                            batch=BATCH, key=KEY, seeds=SEEDS, base=BASE, metric="mse",
                            on_chunk=stop)
    assert len(study.trials) == BATCH  # the second round was never asked
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.FAIL
        assert t.user_attrs["reason"].startswith(
            "the round stopped before this trial was told: CallbackError: ")


@pytest.mark.slow  # a second program (folds): about 7 s on 2 cores
def test_kfold_folds_are_scored_as_a_cross_validated_sweep(searched, diabetes):
    model = searched[0]
    folds = jaxhp.kfold(diabetes, 3)
    study = _study()
    result = jaxhp.optuna_search(study, model, folds, params=PARAMS, rounds=1, batch=2,
                                 key=KEY, base=BASE, metric="mse")
    assert result.n_folds == 3
    plain = jaxhp.sweep(model, result.settings, folds, key=KEY)
    np.testing.assert_allclose([t.value for t in study.trials], plain.aggregate("mse")[0],
                               rtol=1e-5)
