"""Streaming and exporting results: the ``on_chunk`` hook of every search, and
``SweepResult.to_optuna`` (Optuna studies in memory and in SQLite).

One sweep (two static groups, small chunks, one diverging setting), one
successive halving and one PBT run are trained once for the module: the tests
read what their callbacks received and what they export.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxhp
from jaxhp.models import LinearHP, linear_regression

optuna = pytest.importorskip("optuna")

SEEDS = 2
CHUNK = 3


def _model() -> jaxhp.Model:
    """Linear regression with three validation metrics: ``mse`` (declared min),
    ``r2`` (declared max) and ``neg_mse`` (no declared direction)."""
    base = linear_regression(10)

    def metrics(params, batch, hp):
        mse = base.metrics(params, batch, hp)["mse"]
        return {"mse": mse, "r2": 1.0 - mse / jnp.var(batch["y"]), "neg_mse": -mse}

    return jaxhp.Model(init=base.init, loss=base.loss, optimizer=base.optimizer,
                       metrics=metrics, hparams=LinearHP, name="ridge-r2",
                       directions={"mse": "min", "r2": "max"},
                       check_data=base.check_data)


MODEL = _model()
BASE = LinearHP(steps=30)


def _space():
    """7 settings of (sgd, adam) x random (lr, l2), and one sgd setting that diverges."""
    draws = jaxhp.random(4, seed=0, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    return (jaxhp.grid(optimizer=["sgd", "adam"]) * draws
            + jaxhp.grid(learning_rate=[60.0], optimizer=["sgd"]))


@pytest.fixture(scope="module")
def swept(diabetes):
    records = []
    result = jaxhp.sweep(MODEL, _space(), diabetes, key=jax.random.key(0), seeds=SEEDS,
                         base=BASE, chunk_size=CHUNK, on_chunk=records.append)
    return result, records


@pytest.fixture(scope="module")
def halved(diabetes):
    records = []
    space = jaxhp.random(9, seed=1, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    result = jaxhp.successive_halving(MODEL, space, diabetes, key=jax.random.key(1),
                                      seeds=SEEDS, base=BASE, min_steps=5, max_steps=45,
                                      eta=3, metric="r2", chunk_size=CHUNK,
                                      on_chunk=records.append)
    return result, records


@pytest.fixture(scope="module")
def pbt_run(diabetes):
    records = []
    space = jaxhp.random(4, seed=2, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    result = jaxhp.pbt(MODEL, space, diabetes, key=jax.random.key(2), seeds=SEEDS,
                       base=BASE, steps=20, ready_every=10, metric="mse",
                       on_chunk=records.append)
    return result, records


# ------------------------------------------------------------------ on_chunk


def test_sweep_reports_every_setting_once_with_the_results_values(swept):
    result, records = swept
    assert result.n_settings == 9 and len(result.groups) == 2
    assert all(isinstance(r, jaxhp.ChunkRecord) for r in records)
    rows = np.concatenate([r.rows for r in records])
    assert sorted(rows.tolist()) == list(range(result.n_settings))  # each exactly once
    # several chunks in each of the two static groups, numbered per group
    per_group = {g: [r.chunk for r in records if r.group == g] for g in (0, 1)}
    assert per_group == {g: list(range(result.groups[g].n_chunks)) for g in (0, 1)}
    assert all(n >= 2 for n in map(len, per_group.values()))
    for r in records:
        assert r.search == "sweep" and r.step == 30 and not r.loaded
        assert np.all(result.group_of[r.rows] == r.group)
        np.testing.assert_array_equal(r.seed_ids, result.seed_ids)
        assert sorted(r.val) == sorted(result.val) == ["loss", "mse", "neg_mse", "r2"]
        for k, v in r.val.items():
            assert v.shape == (len(r), SEEDS)
            np.testing.assert_array_equal(v, result.val[k][r.rows])
        np.testing.assert_array_equal(r.train_loss, result.train_loss[r.rows])
        np.testing.assert_array_equal(r.diverged_at, result.diverged_at[r.rows])
        np.testing.assert_array_equal(r.status, result.status[r.rows])
        for name, col in r.settings.items():
            np.testing.assert_array_equal(col, np.asarray(result.table.columns[name])[r.rows])


def test_sweep_records_flatten_to_the_results_means(swept):
    result, records = swept
    mean, _ = result.aggregate("mse")
    rows = {d["index"]: d for r in records for d in r.to_dicts()}
    assert sorted(rows) == list(range(result.n_settings))
    status = result.setting_status()
    diverged = [i for i in rows if status[i] == "diverged"]
    assert len(diverged) == 1 and rows[diverged[0]]["learning_rate"] == 60.0
    for i, d in rows.items():
        assert d["status"] == status[i]
        assert d["optimizer"] == result.setting(i).optimizer
        assert d["learning_rate"] == float(result.setting(i).learning_rate)
        if np.isnan(mean[i]):
            assert np.isnan(d["val_mse"]) and d["status"] == "diverged"
        else:
            assert d["val_mse"] == mean[i]


def test_a_failing_callback_stops_the_sweep_and_a_rerun_resumes(swept, diabetes, tmp_path):
    result, _ = swept
    seen = []

    def flaky(rec):
        if len(seen) == 2:
            raise ValueError("the logger is down")
        seen.append((rec.group, rec.chunk))

    kwargs = dict(key=jax.random.key(0), seeds=SEEDS, base=BASE, chunk_size=CHUNK,
                  checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(jaxhp.CallbackError, match=r"on_chunk raised ValueError: the logger "
                       r"is down \(chunk 0 of static group 1 of sweep") as info:
        jaxhp.sweep(MODEL, _space(), diabetes, on_chunk=flaky, **kwargs)
    assert isinstance(info.value.__cause__, ValueError)
    assert "stays valid" in str(info.value)
    # the chunks reported before the error were saved; the failing one was not
    records = []
    again = jaxhp.sweep(MODEL, _space(), diabetes, on_chunk=records.append, **kwargs)
    assert [(r.group, r.chunk, r.loaded) for r in records] == [
        (0, 0, True), (0, 1, True), (1, 0, False), (1, 1, False)]
    assert sorted(np.concatenate([r.rows for r in records]).tolist()) == list(range(9))
    assert [g.chunks_loaded for g in again.groups] == [2, 0]
    for k in result.val:
        np.testing.assert_array_equal(again.val[k], result.val[k])


def test_on_chunk_must_be_callable(diabetes):
    with pytest.raises(TypeError, match=r"`on_chunk`='log.txt': must be a callable"):
        jaxhp.sweep(MODEL, [BASE], diabetes, key=jax.random.key(0), on_chunk="log.txt")


def test_halving_reports_every_rung_and_ends_at_the_results_values(halved):
    result, records = halved
    assert {r.search for r in records} == {"successive_halving"}
    counts = np.bincount(np.concatenate([r.rows for r in records]),
                         minlength=result.n_settings)
    in_rungs = np.bincount(np.concatenate([rg.settings for rg in result.rungs]),
                           minlength=result.n_settings)
    np.testing.assert_array_equal(counts, in_rungs)  # once per rung it trained in
    assert sorted({r.step for r in records}) == [5, 15, 45]
    last = {}
    for r in records:
        for j, row in enumerate(r.rows.tolist()):
            last[row] = (r, j)
    for row, (r, j) in last.items():
        assert r.step == result.steps_trained[row]
        for k in result.val:
            np.testing.assert_array_equal(r.val[k][j], result.val[k][row])


def test_pbt_reports_every_slot_per_interval(pbt_run):
    result, records = pbt_run
    assert [r.step for r in records] == [10, 20]  # one chunk of 4 slots per interval
    for r in records:
        assert sorted(r.rows.tolist()) == [0, 1, 2, 3]
    first, final = records
    np.testing.assert_array_equal(first.settings["learning_rate"],
                                  result.schedule["learning_rate"][first.rows, 0])
    for k in result.val:
        np.testing.assert_array_equal(final.val[k], result.val[k][final.rows])


def test_halving_resume_reports_only_the_rungs_it_runs(halved, diabetes, tmp_path):
    result, _ = halved
    space = jaxhp.random(9, seed=1, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    kwargs = dict(key=jax.random.key(1), seeds=SEEDS, base=BASE, min_steps=5,
                  max_steps=45, eta=3, metric="r2", chunk_size=CHUNK,
                  checkpoint_dir=tmp_path / "ckpt")

    def stop_at_rung_1(rec):
        if rec.step > 5:
            raise KeyError("stop")

    with pytest.raises(jaxhp.CallbackError, match="on_chunk raised KeyError"):
        jaxhp.successive_halving(MODEL, space, diabetes, on_chunk=stop_at_rung_1, **kwargs)
    records = []
    again = jaxhp.successive_halving(MODEL, space, diabetes, on_chunk=records.append,
                                     **kwargs)
    assert sorted({r.step for r in records}) == [15, 45]  # rung 0 was restored
    np.testing.assert_array_equal(again.val["r2"], result.val["r2"])


# ----------------------------------------------------------------- to_optuna


def _check_study(study, result, metric):
    mean, std = result.aggregate(metric)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == result.n_settings
    status = result.setting_status()
    for t in trials:
        i = t.user_attrs["jaxhp_index"]
        assert t.number == i
        assert t.user_attrs["status"] == status[i]
        assert t.user_attrs["seeds"] == [int(s) for s in result.seed_ids]
        assert t.user_attrs["metric"] == metric
        if np.isfinite(mean[i]):
            assert t.state == optuna.trial.TrialState.COMPLETE
            assert t.value == mean[i]
            assert t.user_attrs["std"] == pytest.approx(std[i], rel=1e-12)
            assert t.user_attrs["per_seed"] == pytest.approx(
                result.val[metric][i].tolist(), rel=1e-7)
        else:
            assert t.state == optuna.trial.TrialState.FAIL and t.value is None
        setting = result.setting(i)
        for name in LinearHP.tunable_names():
            assert t.params[name] == float(getattr(setting, name))
        assert t.params["optimizer"] == setting.optimizer
        assert t.params["steps"] == setting.steps


def test_export_in_memory(swept):
    result, _ = swept
    study = result.to_optuna(metric="mse")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    _check_study(study, result, "mse")
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    assert failed[0].params["learning_rate"] == 60.0
    assert failed[0].user_attrs["status"] == "diverged"
    assert min(failed[0].user_attrs["diverged_at"]) >= 0
    assert study.best_trial.user_attrs["jaxhp_index"] == result.best("mse").index
    assert study.user_attrs["jaxhp"]["metric"] == "mse"
    dist = study.trials[0].distributions
    assert dist["learning_rate"].log and dist["l2"].log and not dist["momentum"].log
    assert isinstance(dist["optimizer"], optuna.distributions.CategoricalDistribution)


def test_export_to_sqlite_and_a_second_export_is_refused(swept, tmp_path):
    result, _ = swept
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    result.to_optuna(storage=url, study_name="ridge", metric="r2")
    study = optuna.load_study(study_name="ridge", storage=url)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    _check_study(study, result, "r2")
    assert study.best_trial.user_attrs["jaxhp_index"] == result.best("r2").index
    with pytest.raises(ValueError, match="a study named 'ridge' already exists .* never "
                                         "appends"):
        result.to_optuna(storage=url, study_name="ridge", metric="r2")
    assert len(optuna.load_study(study_name="ridge", storage=url).trials) == 9
    result.to_optuna(storage=url, study_name="ridge-2", metric="r2")  # a new name is fine


def test_direction_is_declared_never_guessed(swept):
    result, _ = swept
    assert result.to_optuna(metric="r2").direction == optuna.study.StudyDirection.MAXIMIZE
    assert result.to_optuna().direction == optuna.study.StudyDirection.MINIMIZE  # loss
    with pytest.raises(jaxhp.SelectionError) as export_error:
        result.to_optuna(metric="neg_mse")
    with pytest.raises(jaxhp.SelectionError) as select_error:
        result.best("neg_mse")
    assert str(export_error.value) == str(select_error.value)
    assert "not declared" in str(export_error.value)
    study = result.to_optuna(metric="neg_mse", mode="max")  # explicit, as for best()
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    with pytest.raises(jaxhp.SelectionError, match="unknown validation metric 'rr2'"):
        result.to_optuna(metric="rr2")


def test_param_importances_cover_every_tunable(swept):
    result, _ = swept
    importances = optuna.importance.get_param_importances(result.to_optuna(metric="mse"))
    assert set(LinearHP.tunable_names()) <= set(importances)
    assert set(importances) == set(LinearHP.fields())
    assert importances["momentum"] == 0.0  # constant in this sweep
    assert sum(importances.values()) == pytest.approx(1.0)


def test_export_halving_uses_the_rung_where_each_setting_stopped(halved):
    result, _ = halved
    study = result.to_optuna()  # the metric and direction the search ranked on
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    _check_study(study, result, "r2")
    for t in study.trials:
        i = t.user_attrs["jaxhp_index"]
        assert t.params["steps"] == t.user_attrs["steps_trained"] == result.steps_trained[i]
        rungs = [rg for rg in result.rungs if i in rg.settings.tolist()]
        assert sorted(t.intermediate_values) == [rg.steps for rg in rungs]
        last = rungs[-1]
        assert t.intermediate_values[last.steps] == pytest.approx(
            last.value[last.settings.tolist().index(i)], rel=1e-12)
    assert isinstance(study.trials[0].distributions["steps"],
                      optuna.distributions.CategoricalDistribution)


def test_export_pbt_final_population(pbt_run):
    result, _ = pbt_run
    study = result.to_optuna()
    assert study.user_attrs["jaxhp"]["search"] == "pbt"
    _check_study(study, result, "mse")


def test_missing_optuna_names_the_extra(swept, monkeypatch):
    result, _ = swept
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxhp\[search\]'"):
        result.to_optuna(metric="mse")
