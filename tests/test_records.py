"""Results are declared records: typed group info, declared extras that save/load keep.

Every search's result round-trips through ``save``/``load`` with its type and
its own fields (halving rungs, PBT schedule, lineage and final parameters,
the gradient-tuning trajectory); a loaded PBT result tests its final
parameters, never a retrained final setting.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
from jaxhp.models import LinearHP, linear_regression

MODEL = linear_regression(10)
KEY = jax.random.key(2)
BASE = LinearHP(batch_size=32, steps=18)


def _space(n, seed=0):
    return jaxhp.random(n, seed=seed, learning_rate=jaxhp.loguniform(1e-3, 0.5),
                        l2=jaxhp.loguniform(1e-5, 1.0))


def _assert_same(a, b):
    """Equal records: arrays equal, records field by field, containers element-wise."""
    if dataclasses.is_dataclass(a):
        assert type(a) is type(b)
        for f in dataclasses.fields(a):
            _assert_same(getattr(a, f.name), getattr(b, f.name))
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype
    else:
        assert a == b or (a != a and b != b)  # NaN equals NaN here


def _round_trip(result, tmp_path, name):
    result.save(tmp_path / name)
    back = jaxhp.SweepResult.load(tmp_path / name, hparams=LinearHP)
    assert type(back) is type(result)
    for extra in type(result).EXTRAS:
        _assert_same(getattr(result, extra), getattr(back, extra))
    _assert_same(result.groups, back.groups)
    np.testing.assert_array_equal(result.group_of, back.group_of)
    assert back.settings == result.settings
    return back


def test_group_info_is_a_typed_record(diabetes, tmp_path):
    result = jaxhp.sweep(MODEL, _space(4), diabetes, key=KEY, base=BASE)
    g = result.groups[0]
    assert isinstance(g, jaxhp.GroupInfo) and g.n_settings == 4 and g.error is None
    assert g.statics == BASE.statics() and g.compiled == result.compile_count
    back = _round_trip(result, tmp_path, "sweep")
    assert isinstance(back.groups[0], jaxhp.GroupInfo)


def test_halving_result_keeps_its_rungs(diabetes, tmp_path):
    r = jaxhp.successive_halving(MODEL, _space(9), diabetes, key=KEY, min_steps=2,
                                 metric="mse", base=BASE)
    assert isinstance(r, jaxhp.HalvingResult) and isinstance(r.rungs[0], jaxhp.Rung)
    back = _round_trip(r, tmp_path, "halving")
    assert [g.steps for g in back.rungs] == [2, 6, 18]
    assert back.best("mse").index == r.best("mse").index


def test_hyperband_result_keeps_its_brackets(diabetes, tmp_path):
    r = jaxhp.hyperband(MODEL, _space(17), diabetes, key=KEY, min_steps=2, metric="mse",
                        base=BASE)
    back = _round_trip(r, tmp_path, "hyperband")
    assert {g.bracket for g in back.rungs} == {0, 1, 2}


def test_loaded_pbt_result_tests_its_final_parameters(diabetes, tmp_path):
    r = jaxhp.pbt(MODEL, _space(6, seed=1), diabetes, key=KEY, seeds=2, ready_every=6,
                  metric="mse", base=BASE)
    fresh = r.evaluate_test("mse")
    back = _round_trip(r, tmp_path, "pbt")
    assert isinstance(back, jaxhp.PBTResult)
    np.testing.assert_array_equal(back.ancestry(1)["slot"], r.ancestry(1)["slot"])
    # the record of the test read came along: a second look needs allow_repeat
    with pytest.raises(RuntimeError, match="already evaluated"):
        back.evaluate_test("mse", model=MODEL, split=diabetes)
    again = back.evaluate_test("mse", model=MODEL, split=diabetes, allow_repeat=True)
    for k in fresh.metrics:  # the saved final parameters, not a retrained final setting
        np.testing.assert_array_equal(again.per_seed[k], fresh.per_seed[k])
    i = fresh.selection.index
    for s in range(2):
        saved = back.params(i, s, model=MODEL)
        jax.tree_util.tree_map(np.testing.assert_array_equal, saved, r.params(i, s))
    with pytest.raises(ValueError, match="pass `model=`"):
        back.params(i)


def test_a_pbt_file_is_not_a_halving_result(diabetes, tmp_path):
    r = jaxhp.pbt(MODEL, _space(4, seed=1), diabetes, key=KEY, ready_every=9, metric="mse",
                  base=BASE)
    r.save(tmp_path / "p")
    with pytest.raises(jaxhp.FormatError, match="holds a PBTResult, not a HalvingResult"):
        jaxhp.HalvingResult.load(tmp_path / "p")


def test_tune_gradient_rows_come_from_its_own_last_evaluation(diabetes, tmp_path):
    starts = _space(3, seed=3).settings(LinearHP, base=BASE)
    jaxhp.tune_gradient(MODEL, starts, diabetes, key=KEY, seeds=2, steps=3,  # eager ops
                        wrt=("learning_rate", "l2"), objective="mse")
    model = linear_regression(10)  # a new model: its programs are not cached
    with count_compiles() as c:
        r = jaxhp.tune_gradient(model, starts, diabetes, key=KEY, seeds=2, steps=3,
                                wrt=("learning_rate", "l2"), objective="mse")
    assert c.count == 1 == r.compile_count  # the descent only: no second sweep
    assert isinstance(r, jaxhp.TuneResult)
    # a row is its final setting trained alone with the member's key
    np.testing.assert_allclose(r.trajectory["objective"][:, -1],
                               r.val["mse"].mean(axis=1), rtol=1e-6)
    for i in range(3):
        for s in range(2):
            run = jaxhp.train(model, r.settings[i], diabetes, key=jax.random.fold_in(KEY, s))
            np.testing.assert_allclose(r.val["mse"][i, s], run.val["mse"], rtol=1e-5)
    back = _round_trip(r, tmp_path, "tune")
    assert back.trajectory["log_fields"] == ("learning_rate", "l2")


def test_tune_gradient_keep_best_rows_are_the_best_iterates(diabetes):
    starts = _space(2, seed=5).settings(LinearHP, base=BASE)
    r = jaxhp.tune_gradient(MODEL, starts, diabetes, key=KEY, steps=4, keep="best",
                            wrt=("learning_rate",), objective="mse")
    obj = r.trajectory["objective"]
    pick = r.trajectory["picked"]
    np.testing.assert_array_equal(pick, np.argmin(obj, axis=1))
    np.testing.assert_allclose(r.val["mse"][:, 0], obj[np.arange(2), pick], rtol=1e-6)


def test_builder_can_build_twice(diabetes):
    settings = _space(2).settings(LinearHP, base=BASE)
    builder = jaxhp.SweepResult.builder(settings, np.arange(1), model=MODEL, split=diabetes,
                                        key=KEY, devices=jax.local_devices())
    a, b = builder.build(), builder.build()
    assert a.n_settings == b.n_settings == 2 and a.meta["model"] == b.meta["model"]
