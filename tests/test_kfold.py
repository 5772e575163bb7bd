"""K-fold cross-validation: scikit-learn's folds, one program for settings x seeds x folds.

Small generated data: 53 rows cut into 5 folds of 11, 11, 11, 10, 10 (unequal, so the
folds are padded and masked), 60 rows for the equal-fold scikit-learn comparison.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import pytest
from helpers import count_compiles
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score

import jaxhp

KEY = jax.random.key(3)
MODEL = jaxhp.models.linear_regression(4)


def _regression(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 + 0.5 * rng.normal(size=n))
    return {"x": x, "y": y.astype(np.float32)}


DATA, TEST = _regression(53), _regression(20, seed=1)
FOLDS = jaxhp.kfold(DATA, 5, test=TEST, shuffle=True, random_state=0)
SPACE = jaxhp.grid(learning_rate=[0.3, 0.05])


def _member(result, index, fold, seed):
    """Column of (fold, seed) in a cross-validated result."""
    cols = np.flatnonzero((result.fold_ids == fold) & (result.seed_ids == seed))
    assert cols.size == 1
    return result.val["mse"][index, cols[0]], result.train_loss[index, cols[0]]


# ----------------------------------------------------------------- partitions
@pytest.mark.parametrize("n", [7, 10, 23, 53])
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("shuffle,random_state", [(False, None), (True, 0), (True, 1),
                                                  (True, 12345)])
def test_folds_are_sklearn_kfold(n, k, shuffle, random_state):
    data = _regression(n)
    folds = jaxhp.kfold(data, k, test=TEST, shuffle=shuffle, random_state=random_state)
    want = KFold(n_splits=k, shuffle=shuffle, random_state=random_state).split(data["x"])
    got = folds.indices()
    for (tr, va), (wtr, wva) in zip(got, want, strict=True):
        np.testing.assert_array_equal(tr, wtr)
        np.testing.assert_array_equal(va, wva)
    assert sorted(folds.sizes[1].tolist()) == sorted([n // k + 1] * (n % k)
                                                     + [n // k] * (k - n % k))


@pytest.mark.parametrize("n", [12, 31, 60])
@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("proportions", [(0.5, 0.5), (0.8, 0.2), (0.6, 0.3, 0.1)])
@pytest.mark.parametrize("shuffle,random_state", [(False, None), (True, 0), (True, 7)])
def test_folds_are_sklearn_stratified_kfold(n, k, proportions, shuffle, random_state):
    rng = np.random.default_rng(n * 10 + k)
    # classes named out of order (2, 0, 1): codes follow first appearance, as in sklearn
    y = np.array([2, 0, 1])[rng.choice(len(proportions), size=n, p=proportions)]
    counts = np.bincount(y)
    if np.all(counts[counts > 0] < k):
        pytest.skip("every class smaller than k: refused (tested below)")
    data = {"x": np.zeros((n, 2), np.float32), "y": y}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a class smaller than k warns in both libraries
        folds = jaxhp.kfold(data, k, test=data, shuffle=shuffle, random_state=random_state,
                            stratify="y")
        want = list(StratifiedKFold(n_splits=k, shuffle=shuffle,
                                    random_state=random_state).split(data["x"], y))
    for (tr, va), (wtr, wva) in zip(folds.indices(), want, strict=True):
        np.testing.assert_array_equal(tr, wtr)
        np.testing.assert_array_equal(va, wva)


def test_a_split_pools_train_and_val_and_keeps_test(diabetes):
    folds = jaxhp.kfold(diabetes, 4)
    n_train, n_val, _ = diabetes.sizes
    np.testing.assert_array_equal(folds.data["x"], np.concatenate([diabetes.train["x"],
                                                                   diabetes.val["x"]]))
    assert folds.test is diabetes.test
    assert len(folds.fold_of) == n_train + n_val
    one = folds.split(1)
    tr, va = folds.indices()[1]
    np.testing.assert_array_equal(one.val["y"], folds.data["y"][va])
    np.testing.assert_array_equal(one.train["y"], folds.data["y"][tr])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"k": 1}, ValueError, r"`k`=1: must be an integer >= 2"),
    ({"k": 2.0}, ValueError, r"`k`=2.0: must be an integer >= 2"),
    ({"k": 54}, ValueError, r"`k`=54 is greater than the number of rows n=53"),
    ({"k": 3, "random_state": 0}, ValueError,
     r"`random_state`=0 has no effect since `shuffle` is False"),
    ({"k": 3, "shuffle": True}, ValueError, r"shuffle=True needs an integer `random_state`"),
    ({"k": 3, "stratify": "y"}, ValueError, r"`stratify` labels are continuous"),
    ({"k": 3, "stratify": "label"}, KeyError, r"`stratify`='label' names no entry"),
])
def test_bad_arguments_are_refused_by_name(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxhp.kfold(DATA, test=TEST, **kwargs)


def test_test_part_is_required_and_not_twice(diabetes):
    with pytest.raises(ValueError, match=r"`test` is required when `data` is not a"):
        jaxhp.kfold(DATA, 3)
    with pytest.raises(ValueError, match=r"`test` is given, but `data` is a Split"):
        jaxhp.kfold(diabetes, 3, test=TEST)


def test_stratified_class_smaller_than_k_warns_or_is_refused():
    data = {"x": np.zeros((10, 2), np.float32), "y": np.array([0] * 8 + [1] * 2)}
    with pytest.warns(jaxhp.FoldWarning, match=r"least populated class has only 2 rows, "
                                                r"fewer than k=3"):
        jaxhp.kfold(data, 3, test=data, stratify="y")
    tiny = {"x": np.zeros((6, 2), np.float32), "y": np.array([0, 0, 1, 1, 2, 2])}
    with pytest.raises(ValueError, match=r"`k`=3 is greater than the number of rows of "
                                         r"every class \(largest class: 2 rows\)"):
        jaxhp.kfold(tiny, 3, test=tiny, stratify="y")


# ----------------------------------------------- sampling: the prefix property
@jax.jit
def _batch_ids(part, t):
    return jaxhp.sample_batch(part, KEY, t, 8)["id"]


def test_a_padded_fold_draws_the_minibatches_of_its_unpadded_rows():
    data = {"id": np.arange(53), "x": np.zeros((53, 1), np.float32)}
    folds = jaxhp.kfold(data, 5, test=data, shuffle=True, random_state=0)
    stacked, _ = folds.stacked()
    assert list(stacked.count) == [42, 42, 42, 43, 43]  # padded to 43 rows
    for f in (0, 3):  # a padded fold and a full one
        padded = type(stacked)(jax.tree_util.tree_map(lambda a, f=f: a[f], stacked.data),
                               stacked.count[f])
        alone = folds.split(f).train
        for t in range(0, 40, 3):  # several epochs (42 // 8 = 5 batches per epoch)
            got = _batch_ids(padded, t)
            np.testing.assert_array_equal(got, _batch_ids(alone, t))
            assert set(np.asarray(got)) <= set(alone["id"].tolist())  # never a padded row


# --------------------------------------------- one program, members = solo runs
@pytest.fixture(scope="module", params=[None, 8], ids=["full-batch", "minibatch"])
def swept(request):
    base = jaxhp.models.LinearHP(steps=40, batch_size=request.param, l2=1e-2)
    return base, jaxhp.sweep(MODEL, SPACE, FOLDS, key=KEY, seeds=2, base=base)


def test_settings_seeds_and_folds_compile_one_program(swept):
    base, result = swept
    assert result.compile_count == 1 and len(result.groups) == 1
    assert result.val["mse"].shape == (2, 10)  # settings x (folds x seeds)
    assert (result.n_seeds, result.n_folds) == (2, 5)
    assert list(FOLDS.sizes[0]) == [42, 42, 42, 43, 43]  # unequal, no second compile
    with count_compiles() as c:  # new tunable values, same folds: nothing compiles
        again = jaxhp.sweep(MODEL, jaxhp.grid(learning_rate=[0.2, 0.1]), FOLDS, key=KEY,
                            seeds=2, base=base)
    assert c.count == 0 and again.compile_count == 0


@pytest.mark.parametrize("fold", [0, 4])
def test_a_fold_member_equals_train_on_that_fold(swept, fold):
    base, result = swept
    for i, lr in enumerate([0.3, 0.05]):
        hp = base.replace(learning_rate=lr)
        for s in (0, 1):
            run = jaxhp.train(MODEL, hp, FOLDS.split(fold), key=jax.random.fold_in(KEY, s))
            val, train_loss = _member(result, i, fold, s)
            np.testing.assert_allclose(val, run.val["mse"], rtol=1e-5)
            np.testing.assert_allclose(train_loss, run.train_loss, rtol=1e-5)


def test_cv_results_has_one_split_per_fold(swept):
    _, result = swept
    cv = result.cv_results()
    mse = result.val["mse"].astype(np.float64)
    per_fold = np.stack([mse[:, result.fold_ids == f].mean(axis=1)
                         for f in range(5)], axis=1)
    assert [k for k in cv if k.endswith("_test_mse") and k.startswith("split")] == \
        [f"split{f}_test_mse" for f in range(5)]
    for f in range(5):
        np.testing.assert_allclose(cv[f"split{f}_test_mse"], per_fold[:, f], rtol=1e-12)
    np.testing.assert_allclose(cv["mean_test_mse"], per_fold.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(cv["std_test_mse"], per_fold.std(axis=1), rtol=1e-12)
    best = result.best("mse")
    assert best.index == int(np.argmin(per_fold.mean(axis=1)))
    assert cv["rank_test_mse"][best.index] == 1
    assert best.std == pytest.approx(per_fold.std(axis=1)[best.index])


def test_the_test_report_comes_from_a_refit_on_all_cv_data(swept):
    base, result = swept
    with pytest.raises(ValueError, match=r"`refit`=False: this result was cross-validated"):
        result.evaluate_test("mse", refit=False)
    report = result.evaluate_test("mse")
    assert report.refit and list(report.per_seed["mse"].shape) == [2]
    hp = result.setting(report.selection.index)
    pooled = jaxhp.Split(FOLDS.data, FOLDS.data, FOLDS.test)
    for s in (0, 1):
        run = jaxhp.train(MODEL, hp, pooled, key=jax.random.fold_in(KEY, s))
        test = jaxhp.evaluate(MODEL, run.state.params, hp, FOLDS.test)
        np.testing.assert_allclose(report.per_seed["mse"][s], test["mse"], rtol=1e-5)
    assert result.test_reads[0]["refit"] and result.test_reads[0]["seed_ids"] == [0, 1]
    with pytest.raises(RuntimeError, match="already evaluated"):
        result.evaluate_test("mse")


def test_params_of_a_column_are_its_fold_and_seed(swept):
    base, result = swept
    col = int(np.flatnonzero((result.fold_ids == 3) & (result.seed_ids == 1))[0])
    params = result.params(0, col)
    run = jaxhp.train(MODEL, result.setting(0), FOLDS.split(3),
                      key=jax.random.fold_in(KEY, 1))
    np.testing.assert_allclose(params["w"], run.state.params["w"], rtol=1e-5)


def test_save_and_load_keep_the_folds(swept, tmp_path):
    _, result = swept
    result.save(tmp_path / "cv")
    loaded = jaxhp.SweepResult.load(tmp_path / "cv")
    assert loaded.cv == result.cv and loaded.cv["k"] == 5 and loaded.cv["shuffle"]
    np.testing.assert_array_equal(loaded.fold_of, FOLDS.fold_of)
    np.testing.assert_array_equal(loaded.fold_ids, result.fold_ids)
    a, b = result.cv_results(), loaded.cv_results()
    for f in range(5):
        np.testing.assert_array_equal(a[f"split{f}_test_mse"], b[f"split{f}_test_mse"])
    other = jaxhp.kfold(DATA, 5, test=TEST, shuffle=True, random_state=1)
    with pytest.raises(ValueError, match=r"not the ones this result was cross-validated on"):
        loaded.params(0, 0, model=MODEL, split=other)
    with pytest.raises(TypeError, match=r"`split` must be those jaxhp.Folds"):
        loaded.params(0, 0, model=MODEL, split=FOLDS.split(0))


def test_a_diverged_member_never_wins():
    base = jaxhp.models.LinearHP(steps=40, l2=1e-2)
    result = jaxhp.sweep(MODEL, jaxhp.grid(learning_rate=[1e4, 0.05]), FOLDS, key=KEY,
                         seeds=1, base=base)
    assert result.setting_status()[0] == "diverged"
    assert result.best("mse").index == 1
    assert result.cv_results()["rank_test_mse"].tolist() == [2, 1]


# ------------------------------------------------------------ scikit-learn ridge
def test_mean_validation_mse_equals_cross_val_score_for_ridge():
    # Ridge trained to convergence: loss 0.5 mse + 0.5 l2 |w|^2 is sklearn's
    # |y - Xw - b|^2 + alpha |w|^2 divided by 2 n, so alpha = l2 * n_train (48 rows per
    # fold: 60 rows, 5 equal folds). Full-batch GD at lr 0.5 on standardised features
    # (Hessian near the identity) contracts the error by ~0.5 per step: 300 steps reach
    # float32 precision. rtol 1e-4: float32 sums over 12-48 rows against float64.
    data = _regression(60, seed=4)
    l2s = [1e-3, 0.1]
    folds = jaxhp.kfold(data, 5, test=TEST, shuffle=True, random_state=0)
    result = jaxhp.sweep(MODEL, jaxhp.grid(l2=l2s), folds, key=KEY,
                         base=jaxhp.models.LinearHP(steps=300, learning_rate=0.5))
    cv = result.cv_results()
    for i, l2 in enumerate(l2s):
        scores = -cross_val_score(Ridge(alpha=l2 * 48), data["x"], data["y"],
                                  cv=KFold(5, shuffle=True, random_state=0),
                                  scoring="neg_mean_squared_error")
        np.testing.assert_allclose([cv[f"split{f}_test_mse"][i] for f in range(5)], scores,
                                   rtol=1e-4)
        np.testing.assert_allclose(cv["mean_test_mse"][i], scores.mean(), rtol=1e-4)


def test_unequal_folds_match_sklearn_ridge_per_fold():
    # padded, masked full-batch training: fold f trains on n_f rows, alpha = l2 * n_f
    l2 = 0.05
    result = jaxhp.sweep(MODEL, [jaxhp.models.LinearHP(steps=300, learning_rate=0.5, l2=l2)],
                         FOLDS, key=KEY)
    for f, (tr, va) in enumerate(FOLDS.indices()):
        ridge = Ridge(alpha=l2 * len(tr)).fit(DATA["x"][tr], DATA["y"][tr])
        mse = np.mean((ridge.predict(DATA["x"][va]) - DATA["y"][va]) ** 2)
        np.testing.assert_allclose(result.val["mse"][0, f], mse, rtol=1e-4)


# ---------------------------------------------------------------- refusals
def test_other_searches_refuse_folds():
    hp = jaxhp.models.LinearHP(steps=10)
    msg = r"got jaxhp.Folds: K-fold cross-validation is supported by jaxhp.sweep only"
    calls = [
        lambda: jaxhp.train(MODEL, hp, FOLDS, key=KEY),
        lambda: jaxhp.successive_halving(MODEL, SPACE, FOLDS, key=KEY, min_steps=5,
                                         base=hp),
        lambda: jaxhp.hyperband(MODEL, jaxhp.random(4, seed=0, learning_rate=jaxhp.loguniform(
            1e-3, 0.1)), FOLDS, key=KEY, min_steps=5, base=hp),
        lambda: jaxhp.pbt(MODEL, SPACE, FOLDS, key=KEY, ready_every=5, base=hp),
        lambda: jaxhp.hypergradient(MODEL, hp, FOLDS, key=KEY),
        lambda: jaxhp.tune_gradient(MODEL, [hp], FOLDS, key=KEY),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=msg):
            call()


def test_batch_size_between_fold_sizes_is_refused():
    with pytest.raises(ValueError, match=r"`batch_size`=42: the k=5 folds of 53 rows "
                                         r"differ in size .* use batch_size < 42, or >= 43"):
        jaxhp.sweep(MODEL, SPACE, FOLDS, key=KEY,
                    base=jaxhp.models.LinearHP(steps=5, batch_size=42))


def test_unequal_folds_refuse_a_metric_that_is_not_a_mean_over_rows():
    def sse(params, batch, hp):
        return {"sse": ((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2).sum()}

    summed = jaxhp.Model(MODEL.init, MODEL.loss, MODEL.optimizer, sse, MODEL.hparams,
                         "ridge-sse", directions={"sse": "min"})
    with pytest.raises(ValueError, match=r"the validation metric 'sse' is not a mean over "
                                         r"rows"):
        jaxhp.sweep(summed, SPACE, FOLDS, key=KEY, base=jaxhp.models.LinearHP(steps=5))
    equal = jaxhp.kfold(_regression(50), 5, test=TEST)  # equal folds: no padding, accepted
    result = jaxhp.sweep(summed, [jaxhp.models.LinearHP(steps=5)], equal, key=KEY)
    assert result.val["sse"].shape == (1, 5)


def test_unequal_folds_refuse_a_stateful_model():
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(23, 4)).astype(np.float32),
            "y": rng.integers(0, 3, 23).astype(np.int32)}
    bn = jaxhp.models.mlp_classifier(4, 3, batch_norm=True)
    folds = jaxhp.kfold(data, 5, test=data)
    with pytest.raises(ValueError, match=r"model '.*' has state \(has_state=True"):
        jaxhp.sweep(bn, [jaxhp.models.MLPHP(steps=5, batch_size=4, width=4, depth=1)],
                    folds, key=KEY)


def _dropout_case():
    rng = np.random.default_rng(0)
    data = {"x": rng.normal(size=(23, 4)).astype(np.float32),
            "y": rng.integers(0, 3, 23).astype(np.int32)}
    mlp = jaxhp.models.mlp_classifier(4, 3)  # its loss reads the key (dropout)
    folds = jaxhp.kfold(data, 5, test=data)  # training folds of 18 or 19 rows
    return mlp, folds, jaxhp.models.MLPHP(steps=3, batch_size=19, width=4, depth=1,
                                          dropout=0.5)


def test_unequal_folds_refuse_full_batch_dropout():
    mlp, folds, hp = _dropout_case()
    with pytest.raises(ValueError, match=r"draws from its key \(dropout\?\), and full-batch"):
        jaxhp.sweep(mlp, [hp], folds, key=KEY)


@pytest.mark.slow
def test_unequal_folds_take_dropout_with_minibatches():
    mlp, folds, hp = _dropout_case()
    result = jaxhp.sweep(mlp, [hp.replace(batch_size=6)], folds, key=KEY)
    assert result.status.shape == (1, 5) and result.compile_count == 1


def test_a_checkpointed_cv_sweep_resumes_to_the_same_numbers(swept, tmp_path):
    base, result = swept
    first = jaxhp.sweep(MODEL, SPACE, FOLDS, key=KEY, seeds=2, base=base,
                        checkpoint_dir=tmp_path)
    again = jaxhp.sweep(MODEL, SPACE, FOLDS, key=KEY, seeds=2, base=base,
                        checkpoint_dir=tmp_path)
    assert again.groups[0].chunks_loaded == again.groups[0].n_chunks >= 1
    np.testing.assert_array_equal(again.val["mse"], first.val["mse"])
    np.testing.assert_allclose(first.val["mse"], result.val["mse"], rtol=1e-6)
    other = jaxhp.kfold(DATA, 5, test=TEST, shuffle=True, random_state=1)
    with pytest.raises(jaxhp.CheckpointMismatch):
        jaxhp.sweep(MODEL, SPACE, other, key=KEY, seeds=2, base=base, checkpoint_dir=tmp_path)
