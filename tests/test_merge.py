"""SweepResult.merge: sweeps split by hand equal one sweep; different experiments refused."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

import jaxhp
from jaxhp import models

KEY = jax.random.key(0)
MODEL = models.linear_regression(10)


def settings():
    """8 settings in 2 static groups (full batch, then minibatches of 32); 20 and 30 steps
    give curves of two lengths."""
    rng = np.random.default_rng(1)
    return [models.LinearHP(learning_rate=float(10 ** rng.uniform(-2, -0.3)),
                            l2=float(10 ** rng.uniform(-4, -1)), steps=20 if i < 4 else 30,
                            batch_size=None if i < 4 else 32) for i in range(8)]


def sweep(split, part, model=MODEL, **kw):
    """Chunks of 4 settings in every part, parameters kept: one compiled program per
    static group serves them all."""
    return jaxhp.sweep(model, part, split, key=kw.pop("key", KEY), seeds=kw.pop("seeds", 2),
                       chunk_size=4, keep_params=True, **kw)


@pytest.fixture(scope="module")
def runs(diabetes):
    s = settings()
    return {"one": sweep(diabetes, s),
            # a slice crossing the static groups' boundary, and one job per static group
            "slices": [sweep(diabetes, s[:3]),
                       sweep(diabetes, s[3:])],
            "groups": [sweep(diabetes, s[:4]),
                       sweep(diabetes, s[4:])]}


@pytest.mark.parametrize("how", ["slices", "groups"])
def test_merged_parts_equal_one_sweep(runs, how):
    one, merged = runs["one"], jaxhp.SweepResult.merge(runs[how])
    assert merged.n_settings == 8 and merged.table.to_dicts() == one.table.to_dicts()
    np.testing.assert_array_equal(merged.status, one.status)
    np.testing.assert_array_equal(merged.group_of, one.group_of)
    for k in one.val:
        np.testing.assert_allclose(merged.val[k], one.val[k], rtol=1e-5)
        np.testing.assert_allclose(merged.val_curve[k], one.val_curve[k], rtol=1e-5)
    assert merged.loss_curve.shape == one.loss_curve.shape == (8, 2, 30)
    np.testing.assert_allclose(merged.loss_curve, one.loss_curve, rtol=1e-5)
    assert np.isnan(merged.loss_curve[:4, :, 20:]).all()  # the 20-step group, padded
    assert merged.best("mse").index == one.best("mse").index
    assert [s.index for s in merged.top_k(8, "mse")] == [s.index for s in one.top_k(8, "mse")]
    np.testing.assert_array_equal(merged.rank("mse"), one.rank("mse"))
    # one record per static group, its settings, chunks and seconds summed over the parts
    assert [g.statics for g in merged.groups] == [g.statics for g in one.groups]
    assert [g.n_settings for g in merged.groups] == [4, 4]
    assert [g.eval_steps for g in merged.groups] == [g.eval_steps for g in one.groups]
    parts = runs[how]
    assert merged.run_seconds == pytest.approx(sum(p.run_seconds for p in parts))
    assert merged.compile_count == sum(p.compile_count for p in parts)
    assert [m["n_settings"] for m in merged.meta["merged"]] == [p.n_settings for p in parts]


def test_merged_result_keeps_parameters_and_survives_save(runs, tmp_path):
    one, merged = runs["one"], jaxhp.SweepResult.merge(runs["slices"])
    for i in (0, 2, 3, 7):  # rows from both parts, both groups
        for a, b in zip(jax.tree_util.tree_leaves(merged.params(i, 1)),
                        jax.tree_util.tree_leaves(one.params(i, 1))):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # intercept ~ 0
    merged.save(tmp_path / "m")
    loaded = jaxhp.SweepResult.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.val["mse"], merged.val["mse"])
    assert loaded.best("mse").index == one.best("mse").index
    # loaded parts merge too (they carry their data fingerprint)
    for k, part in enumerate(runs["groups"]):
        part.save(tmp_path / f"part{k}")
    again = jaxhp.SweepResult.merge([jaxhp.SweepResult.load(tmp_path / f"part{k}")
                                     for k in range(2)])
    np.testing.assert_array_equal(again.val["mse"], loaded.val["mse"])


def test_test_reads_are_kept_and_renumbered(diabetes, runs):
    a, b = sweep(diabetes, settings()[:3]), sweep(diabetes, settings()[3:])
    report = b.evaluate_test("mse")
    merged = jaxhp.SweepResult.merge([a, b])
    assert len(merged.test_reads) == 1
    assert merged.test_reads[0]["index"] == report.selection.index + 3
    assert merged.test_reads[0]["merged_from"] == 1
    with pytest.raises(RuntimeError, match="already evaluated"):
        merged.evaluate_test("mse")


def test_merge_refuses_other_data(diabetes, runs):
    other = jaxhp.datasets.load("diabetes", key=jax.random.key(1))  # another split
    b = sweep(other, settings()[4:])
    with pytest.raises(ValueError, match=r"results\[0\] and results\[1\] differ in the "
                                         r"contents of their data \(SHA-256"):
        jaxhp.SweepResult.merge([runs["groups"][0], b])
    fewer = jaxhp.Split(train=jax.tree_util.tree_map(lambda a: a[:200], diabetes.train),
                        val=diabetes.val, test=diabetes.test)
    with pytest.raises(ValueError, match=r"differ in the shapes of their train data: "
                                         r"\[\[\[265, 10\]"):
        jaxhp.SweepResult.merge([runs["groups"][0], sweep(fewer, settings()[4:])])


def test_merge_refuses_other_key_seeds_model_class_and_overlap(diabetes, runs):
    first = runs["groups"][0]
    part = settings()[4:]
    with pytest.raises(ValueError, match=r"differ in key: .*pass the same `key=`"):
        jaxhp.SweepResult.merge([first, sweep(diabetes, part, key=jax.random.key(1))])
    with pytest.raises(ValueError, match=r"differ in seeds: \[0, 1\] != \[0, 2\]"):
        jaxhp.SweepResult.merge([first, sweep(diabetes, part, seeds=[0, 2])])
    renamed = MODEL._replace(name="other_linear")
    with pytest.raises(ValueError, match=r"differ in model: .*other_linear.*different models"):
        jaxhp.SweepResult.merge([first, sweep(diabetes, part, renamed)])

    class WiderHP(models.LinearHP):
        """The same fields under another class."""

    wider = [WiderHP(**s.to_dict()) for s in part]
    with pytest.raises(ValueError, match=r"differ in hyperparameter class: .*WiderHP"):
        jaxhp.SweepResult.merge([first, sweep(diabetes, wider)])
    overlapping = sweep(diabetes, settings()[3:6])
    with pytest.raises(ValueError, match=r"the setting \{'learning_rate': .* is in "
                                         r"results\[0\] and results\[1\]; .* ambiguous"):
        jaxhp.SweepResult.merge([first, overlapping])
    with pytest.raises(ValueError, match=r"static group .* trained 20 steps, evaluated at "
                                         r"steps \[5, 10, 15, 20\] in results\[1\], .*"
                                         r"different `eval_every`"):
        jaxhp.SweepResult.merge([runs["slices"][1],
                                 sweep(diabetes, settings()[:3], eval_every=5)])
    with pytest.raises(TypeError, match=r"results\[0\] is a HalvingResult"):
        jaxhp.SweepResult.merge([jaxhp.successive_halving(MODEL, part, diabetes, key=KEY,
                                                          min_steps=10, metric="mse")])
    with pytest.raises(ValueError, match="no results to merge"):
        jaxhp.SweepResult.merge([])


def test_version_1_files_load_but_do_not_merge(runs, tmp_path):
    runs["groups"][0].save(tmp_path / "old")
    header = json.loads((tmp_path / "old.json").read_text())
    assert header["format_version"] == 2
    header["format_version"] = 1  # as an older jaxhp wrote it: no data fingerprint
    del header["meta"]["result"]["data"]
    (tmp_path / "old.json").write_text(json.dumps(header))
    old = jaxhp.SweepResult.load(tmp_path / "old")
    np.testing.assert_array_equal(old.val["mse"], runs["groups"][0].val["mse"])
    with pytest.raises(ValueError, match=r"results\[0\] records no fingerprint of its data "
                                         r".*before result format 2"):
        jaxhp.SweepResult.merge([old, runs["groups"][1]])
