"""The sweep engine: members equal solo runs, one compile per static group, health."""

import jax
import numpy as np
import pytest
from helpers import GrowHP, count_compiles, grow_model

import jaxhp
from jaxhp import models

KEY = jax.random.key(0)
# One model for the module: programs are cached per model and static part, so tests
# that share a static group (steps, batch, seeds, chunk) share its compiled program.
# (Tests that count compilations build their own.)
RIDGE = models.linear_regression(10)


@pytest.fixture(scope="module")
def diabetes():
    return jaxhp.datasets.load("diabetes")


@pytest.fixture(scope="module")
def iris():
    return jaxhp.datasets.load("iris")


def ridge_settings(n, steps=200, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return [models.LinearHP(learning_rate=float(10 ** rng.uniform(-2.5, -0.5)),
                            l2=float(10 ** rng.uniform(-4, 0)), steps=steps, **kw)
            for _ in range(n)]


def assert_member_equals_solo(model, result, settings, split, i, s, rtol):
    run = jaxhp.train(model, settings[i], split,
                      key=jax.random.fold_in(KEY, int(result.seed_ids[s])))
    np.testing.assert_allclose(result.loss_curve[i, s], np.asarray(run.loss_curve),
                               rtol=rtol, atol=1e-7)
    for k, v in run.val.items():
        np.testing.assert_allclose(result.val[k][i, s], float(v), rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("kind", ["linear", "softmax"])
def test_every_member_equals_solo_run(kind, diabetes, iris):
    if kind == "linear":
        split, model = diabetes, RIDGE
        settings = ridge_settings(5, batch_size=32)
    else:
        split, model = iris, models.softmax_regression(4, 3)
        rng = np.random.default_rng(1)
        settings = [models.SoftmaxHP(learning_rate=float(10 ** rng.uniform(-2, 0)),
                                     l2=float(10 ** rng.uniform(-4, -1)), steps=150,
                                     batch_size=30) for _ in range(5)]
    result = jaxhp.sweep(model, settings, split, key=KEY, seeds=2, chunk_size=3)
    assert result.val[next(iter(result.val))].shape == (5, 2)
    for i in range(5):
        for s in range(2):
            assert_member_equals_solo(model, result, settings, split, i, s, rtol=1e-5)


def test_mlp_member_equals_solo_over_first_steps(iris):
    # dropout and minibatches: every member's randomness is its own solo run's
    model = models.mlp_classifier(4, 3)
    settings = [models.MLPHP(learning_rate=lr, dropout=d, steps=20, width=16, depth=1,
                             batch_size=30)
                for lr, d in [(1e-3, 0.0), (3e-3, 0.2), (1e-2, 0.1)]]
    result = jaxhp.sweep(model, settings, iris, key=KEY, seeds=2)
    for i in range(3):
        for s in range(2):
            assert_member_equals_solo(model, result, settings, iris, i, s, rtol=1e-4)


def test_seeds_change_minibatches_and_settings_share_them(diabetes):
    model = RIDGE
    a = models.LinearHP(learning_rate=0.05, steps=30, batch_size=16)
    result = jaxhp.sweep(model, [a, a.replace(l2=0.5)], diabetes, key=KEY, seeds=2)
    # different seeds draw different minibatches ...
    assert not np.allclose(result.loss_curve[0, 0], result.loss_curve[0, 1])
    # ... and the first step's loss (same init, same batch) is shared by settings
    # that differ only in l2's effect on the penalty (zero at w=0)
    np.testing.assert_array_equal(result.loss_curve[0, :, 0], result.loss_curve[1, :, 0])


def test_one_compile_per_static_group_whatever_the_size(diabetes):
    model = models.linear_regression(10)
    settings = ridge_settings(23, steps=40) + ridge_settings(9, steps=60, seed=1)
    with count_compiles() as c:
        result = jaxhp.sweep(model, settings, diabetes, key=KEY, chunk_size=4)
    assert c.count == 2 == result.compile_count == len(result.groups)
    assert [g.n_chunks for g in result.groups] == [6, 3]  # uneven last chunks
    # more settings, same groups and chunk size: the programs are reused
    with count_compiles() as c:
        jaxhp.sweep(model, settings * 2, diabetes, key=KEY, chunk_size=4)
    assert c.count == 0


def test_chunking_and_order_do_not_change_results(diabetes):
    model = RIDGE
    settings = ridge_settings(7, batch_size=32)
    ref = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, chunk_size=2)
    perm = np.random.default_rng(0).permutation(7)
    for chunk_size in (1, 3, "all"):
        res = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, chunk_size=chunk_size)
        np.testing.assert_allclose(res.val["mse"], ref.val["mse"], rtol=1e-5)
        shuf = jaxhp.sweep(model, [settings[i] for i in perm], diabetes, key=KEY, seeds=2,
                           chunk_size=chunk_size)
        np.testing.assert_allclose(shuf.val["mse"], ref.val["mse"][perm], rtol=1e-5)


def test_a_state_gone_non_finite_before_the_loss_runs_again_checked(diabetes):
    # The sweep's steps check the loss only; here `s` overflows at step 13 while the
    # loss stays finite. Its final state is non-finite: the setting runs again with the
    # checked program, which freezes it at step 13 like its solo run.
    model = grow_model()
    settings = [GrowHP(learning_rate=lr, growth=g)
                for lr, g in [(0.05, 0.0), (0.05, 1e4), (0.1, 0.0), (0.02, 0.0),
                              (0.05, 2e4)]]
    with count_compiles() as c:
        res = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, keep_params=True)
    assert list(res.setting_status()) == ["ok", "diverged", "ok", "ok", "diverged"]
    assert res.groups[0].rechecked == 2  # settings 1 and 4, every seed
    assert c.count == 2 == res.compile_count  # loss-checked (5 settings), checked (2)
    for i in range(5):
        for s in range(2):
            run = jaxhp.train(model, settings[i], diabetes, key=jax.random.fold_in(KEY, s))
            assert int(res.diverged_at[i, s]) == int(run.diverged_at)
            np.testing.assert_allclose(res.loss_curve[i, s], run.loss_curve, rtol=1e-5,
                                       atol=1e-7)  # NaN from the divergence on
            kept = res.params(i, seed=s)
            for name in ("w", "s"):  # frozen at the last finite state
                np.testing.assert_allclose(kept[name], run.state.params[name], rtol=1e-5,
                                           atol=1e-7)
    assert int(res.diverged_at[1, 0]) == 13 and np.isfinite(res.params(1)["s"])
    # the same sweep again: both programs are reused
    with count_compiles() as c:
        again = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, keep_params=True)
    assert c.count == 0
    np.testing.assert_array_equal(again.val["mse"], res.val["mse"])


def test_a_loss_gone_non_finite_freezes_without_a_second_run(diabetes):
    # a diverging ridge: its loss overflows before its parameters do, so the
    # loss-checked program's outcome is the checked one (no second run, no compile)
    model = models.linear_regression(10)
    settings = ridge_settings(6, steps=60, batch_size=32)
    settings[1] = settings[1].replace(learning_rate=50.0)
    with count_compiles() as c:
        res = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, keep_params=True)
    assert c.count == 1 and res.groups[0].rechecked == 0
    assert list(res.setting_status()) == ["ok", "diverged", "ok", "ok", "ok", "ok"]
    for s in range(2):
        run = jaxhp.train(model, settings[1], diabetes, key=jax.random.fold_in(KEY, s))
        assert int(res.diverged_at[1, s]) == int(run.diverged_at) >= 0
        np.testing.assert_allclose(res.params(1, seed=s)["w"], run.state.params["w"],
                                   rtol=1e-5, atol=1e-7)


def test_diverging_member_is_flagged_and_others_untouched(diabetes):
    model = RIDGE
    settings = ridge_settings(4, steps=100)
    bad = settings[2].replace(learning_rate=50.0)
    healthy = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, chunk_size=4)
    mixed = jaxhp.sweep(model, settings[:2] + [bad] + settings[3:], diabetes, key=KEY,
                        seeds=2, chunk_size=4)
    assert list(mixed.setting_status()) == ["ok", "ok", "diverged", "ok"]
    assert np.all(mixed.diverged_at[2] >= 0) and np.all(mixed.diverged_at[[0, 1, 3]] == -1)
    assert np.all(np.isnan(mixed.loss_curve[2, :, -1]))
    for i in (0, 1, 3):  # bit-identical
        np.testing.assert_array_equal(mixed.val["mse"][i], healthy.val["mse"][i])
        np.testing.assert_array_equal(mixed.loss_curve[i], healthy.loss_curve[i])
    # removing it (one setting per chunk) leaves the others bit-identical too
    alone = jaxhp.sweep(model, settings[:2] + settings[3:], diabetes, key=KEY, seeds=2,
                        chunk_size=1)
    with_bad = jaxhp.sweep(model, settings[:2] + [bad] + settings[3:], diabetes, key=KEY,
                           seeds=2, chunk_size=1)
    np.testing.assert_array_equal(alone.val["mse"], with_bad.val["mse"][[0, 1, 3]])
    assert mixed.best("mse").index != 2


def test_all_diverged_selection_raises(diabetes):
    model = RIDGE
    settings = [models.LinearHP(learning_rate=lr, steps=100) for lr in (20.0, 40.0)]
    result = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, chunk_size=4)
    with pytest.raises(jaxhp.SelectionError, match="all 2 settings .* diverged"):
        result.best("mse")


def test_selection_ignores_the_test_labels(diabetes):
    model = RIDGE
    settings = ridge_settings(16, steps=100)
    y = np.random.default_rng(0).permutation(diabetes.test["y"])
    shuffled = diabetes._replace(test={"x": diabetes.test["x"], "y": y})
    kw = dict(key=KEY, seeds=2, chunk_size=4)
    a = jaxhp.sweep(model, settings, diabetes, **kw).best("mse")
    b = jaxhp.sweep(model, settings, shuffled, **kw).best("mse")
    assert a.index == b.index and a.value == b.value


def test_best_top_k_and_test_evaluation_once(diabetes):
    model = RIDGE
    settings = ridge_settings(12, steps=100)
    result = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, chunk_size=4)
    top = result.top_k(3, "val_mse")
    assert [t.value for t in top] == sorted(t.value for t in top)
    assert top[0].index == result.best("mse").index
    mean, _ = result.aggregate("mse")
    assert top[0].value == np.nanmin(mean)
    assert result.rank("mse")[top[0].index] == 1
    report = result.evaluate_test("mse")
    run = jaxhp.train(model, settings[top[0].index], diabetes, key=jax.random.fold_in(KEY, 0))
    test_mse = jaxhp.evaluate(model, run.state.params, settings[top[0].index],
                              diabetes.test)["mse"]
    np.testing.assert_allclose(report.per_seed["mse"][0], float(test_mse), rtol=1e-6)
    with pytest.raises(RuntimeError, match="already evaluated"):
        result.evaluate_test("mse")
    refit = result.evaluate_test("mse", refit=True, allow_repeat=True)
    assert refit.refit and refit.metrics["mse"] != report.metrics["mse"]
    with pytest.raises(jaxhp.SelectionError, match="did you mean `mse`"):
        result.best("mes")


def test_cv_results_layout_and_pandas(diabetes):
    model = RIDGE
    settings = ridge_settings(5, steps=50)
    result = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=3)
    cv = result.cv_results()
    for k in ("params", "param_learning_rate", "param_l2", "mean_test_mse", "std_test_mse",
              "split0_test_mse", "split2_test_mse", "rank_test_mse", "mean_fit_time",
              "mean_test_loss", "rank_test_loss"):
        assert k in cv
    assert len(cv["params"]) == 5 and cv["param_steps"].tolist() == [50] * 5
    assert sorted(cv["rank_test_mse"].tolist()) == [1, 2, 3, 4, 5]
    df = result.to_pandas()
    assert list(df["rank_test_mse"]) == list(cv["rank_test_mse"])
    assert list(df["params"]) == cv["params"] and list(df["status"]) == ["ok"] * 5


def test_save_load_round_trip_and_pickle_refused(diabetes, tmp_path):
    model = RIDGE
    settings = ridge_settings(4, steps=40) + [models.LinearHP(learning_rate=30.0, steps=40)]
    result = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2, eval_every=10)
    result.save(tmp_path / "r")
    back = jaxhp.SweepResult.load(tmp_path / "r", hparams=models.LinearHP)
    assert back.settings == result.settings
    for name in ("status", "diverged_at", "train_loss", "loss_curve", "seed_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    for k in result.val:
        np.testing.assert_array_equal(back.val[k], result.val[k])
        np.testing.assert_array_equal(back.val_curve[k], result.val_curve[k])
    assert back.best("mse").index == result.best("mse").index
    # a test evaluation of a loaded result needs the model and data again
    report = back.evaluate_test("mse", model=model, split=diabetes)
    assert np.isfinite(report.metrics["mse"])
    # an .npz holding a pickled object is refused (checksum matched: still refused)
    import hashlib
    import io
    import json

    buf = io.BytesIO()
    np.savez(buf, status=np.array([{"evil": 1}], dtype=object))
    (tmp_path / "r.npz").write_bytes(buf.getvalue())
    header = json.loads((tmp_path / "r.json").read_text())
    header["npz_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (tmp_path / "r.json").write_text(json.dumps(header))
    with pytest.raises(jaxhp.FormatError, match="pickled"):
        jaxhp.SweepResult.load(tmp_path / "r")


def test_static_groups_can_vary_in_steps(diabetes):
    model = RIDGE
    settings = [models.LinearHP(learning_rate=0.1, steps=s) for s in (20, 50)]
    result = jaxhp.sweep(model, settings, diabetes, key=KEY, eval_every=10)
    assert result.loss_curve.shape == (2, 1, 50)
    assert np.all(np.isnan(result.loss_curve[0, 0, 20:]))
    assert result.val_curve["mse"].shape == (2, 1, 5)
    assert [g.eval_steps for g in result.groups] == [[10, 20], [10, 20, 30, 40, 50]]


def test_failing_group_is_recorded_and_others_run(diabetes):
    base = models.linear_regression(10)

    def init(key, hp):
        if hp.steps == 30:
            raise RuntimeError("no model of 30 steps")
        return base.init(key, hp)

    model = base._replace(init=init)
    settings = [models.LinearHP(steps=20), models.LinearHP(steps=30),
                models.LinearHP(steps=20, learning_rate=0.2)]
    with pytest.warns(jaxhp.SweepWarning, match=r"1 of 2 static group\(s\).*steps=30.*"
                      "no model of 30 steps"):
        result = jaxhp.sweep(model, settings, diabetes, key=KEY, seeds=2)
    assert list(result.setting_status()) == ["ok", "failed", "ok"]
    assert "no model of 30 steps" in result.errors[1] and result.errors[0] == ""
    assert "no model of 30 steps" in result.groups[1].error
    assert result.best("mse").index in (0, 2)
    with pytest.raises(RuntimeError, match="no model of 30 steps"):
        jaxhp.sweep(model, settings, diabetes, key=KEY, on_error="raise")


def test_progress_bar_reports_chunks_and_best_so_far(diabetes, capsys):
    pytest.importorskip("tqdm")
    model = RIDGE
    jaxhp.sweep(model, ridge_settings(6, steps=20), diabetes, key=KEY, chunk_size=2,
                progress=True, select=("mse", "min"))
    err = capsys.readouterr().err
    # counted in settings, a chunk (2 settings) at a time
    assert "jaxhp sweep" in err and "2/6" in err and "6/6" in err and "4/6" in err
    assert "setting/s" in err and "best mse=" in err
    jaxhp.sweep(model, ridge_settings(6, steps=20), diabetes, key=KEY, progress=False)
    assert capsys.readouterr().err == ""


def test_a_sweep_keeps_settings_as_columns(diabetes, monkeypatch):
    """From a space to the device and back, no HParams object is made per setting."""
    calls = []
    original = models.LinearHP.__init__

    def counted(self, **kw):
        calls.append(1)
        original(self, **kw)

    space = jaxhp.quasirandom(300, seed=1, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                              l2=jaxhp.loguniform(1e-5, 1.0))
    base = models.LinearHP(steps=10)
    monkeypatch.setattr(models.LinearHP, "__init__", counted)
    result = jaxhp.sweep(models.linear_regression(10), space, diabetes, key=KEY, base=base,
                         progress=False)
    best = result.best("mse")
    assert len(calls) <= 3  # one per static group (validation) and the selection
    assert result.table is not None and len(result.table) == 300
    monkeypatch.setattr(models.LinearHP, "__init__", original)
    assert best.setting == space.settings(models.LinearHP, base=base)[best.index]
    assert result.setting(7) == result.settings[7]  # the list is built on request
