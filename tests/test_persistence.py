"""Saved results: distinct files per name, no silent overwrite, the test-once guard kept."""

import hashlib
import io
import json

import jax
import numpy as np
import pytest

import jaxhp
from jaxhp import models

KEY = jax.random.key(0)
MODEL = models.linear_regression(10)
BASE = models.LinearHP(steps=20)


def small_sweep(split, n=3, seed=0):
    space = jaxhp.random(n, seed=seed, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    return jaxhp.sweep(MODEL, space, split, key=KEY, base=BASE)


@pytest.fixture(scope="module")
def two_results(diabetes):
    return small_sweep(diabetes, n=3, seed=0), small_sweep(diabetes, n=4, seed=1)


def assert_same(a, b):
    assert len(a.settings) == len(b.settings)
    for name in ("status", "diverged_at", "train_loss", "loss_curve", "seed_ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert sorted(a.val) == sorted(b.val)
    for k in a.val:
        np.testing.assert_array_equal(a.val[k], b.val[k])


def test_dotted_names_save_distinct_results(two_results, tmp_path):
    r1, r2 = two_results
    r1.save(tmp_path / "runs" / "sweep_lr0.1")
    r2.save(tmp_path / "runs" / "sweep_lr0.3")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "sweep_lr0.1.json", "sweep_lr0.1.npz", "sweep_lr0.3.json", "sweep_lr0.3.npz"]
    back1 = jaxhp.SweepResult.load(tmp_path / "runs" / "sweep_lr0.1", hparams=models.LinearHP)
    back2 = jaxhp.SweepResult.load(tmp_path / "runs" / "sweep_lr0.3", hparams=models.LinearHP)
    assert_same(back1, r1)
    assert_same(back2, r2)
    assert back1.settings == r1.settings and back2.settings == r2.settings


def test_a_path_ending_in_npz_or_json_names_the_same_pair(two_results, tmp_path):
    r1, _ = two_results
    r1.save(str(tmp_path / "r.npz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.npz"]
    for name in ("r", "r.npz", "r.json"):
        assert_same(jaxhp.SweepResult.load(tmp_path / name), r1)


def test_second_save_to_one_name_is_refused_unless_overwrite(two_results, tmp_path):
    r1, r2 = two_results
    r1.save(tmp_path / "r")
    with pytest.raises(FileExistsError, match=r"r.npz already exists; pass overwrite=True"):
        r2.save(tmp_path / "r")
    assert_same(jaxhp.SweepResult.load(tmp_path / "r"), r1)  # untouched
    r2.save(tmp_path / "r", overwrite=True)
    assert_same(jaxhp.SweepResult.load(tmp_path / "r"), r2)


def test_test_reads_survive_save_and_load(diabetes, tmp_path):
    result = small_sweep(diabetes)
    report = result.evaluate_test("mse")
    result.save(tmp_path / "r")  # saved after the test read: the record goes with it
    back = jaxhp.SweepResult.load(tmp_path / "r", hparams=models.LinearHP)
    with pytest.raises(RuntimeError, match="already evaluated"):
        back.evaluate_test("mse", model=MODEL, split=diabetes)
    [read] = back.test_reads
    assert read["metric"] == "mse" and read["mode"] == "min" and read["refit"] is False
    assert read["index"] == report.selection.index
    assert read["setting"] == result.settings[report.selection.index].to_dict()
    assert read["metrics"] == report.metrics
    assert read["per_seed"] == {k: v.tolist() for k, v in report.per_seed.items()}
    assert read["seed_ids"] == [0] and read["time"]
    again = back.evaluate_test("mse", model=MODEL, split=diabetes, allow_repeat=True)
    assert again.metrics == report.metrics and len(back.test_reads) == 2
    back.save(tmp_path / "r", overwrite=True)
    assert len(jaxhp.SweepResult.load(tmp_path / "r").test_reads) == 2


def test_pbt_test_read_is_recorded_and_survives_save(diabetes, tmp_path):
    settings = [models.LinearHP(learning_rate=lr, steps=20) for lr in (0.01, 0.03, 0.1, 0.3)]
    result = jaxhp.pbt(MODEL, settings, diabetes, key=KEY, steps=20, ready_every=10)
    report = result.evaluate_test("mse")
    assert result.test_reads[0]["metrics"] == report.metrics
    with pytest.raises(RuntimeError, match="already evaluated"):
        result.evaluate_test("mse")
    result.save(tmp_path / "pbt")
    back = jaxhp.PBTResult.load(tmp_path / "pbt", hparams=models.LinearHP)
    assert back.test_reads == result.test_reads
    with pytest.raises(RuntimeError, match="already evaluated"):
        back.evaluate_test("mse", model=MODEL, split=diabetes)


def _rewrite(stem, out, change_arrays=None, change_meta=None):
    """Copies a saved result pair (``stem.npz`` + ``stem.json``) to ``out``, changed, with
    plain numpy and json: the header's checksum is updated, as a valid file would have."""
    with np.load(stem.with_name(stem.name + ".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(stem.with_name(stem.name + ".json").read_text())
    if change_arrays:
        change_arrays(arrays)
    if change_meta:
        change_meta(header["meta"])
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    header["npz_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
    out.with_name(out.name + ".npz").write_bytes(buf.getvalue())
    out.with_name(out.name + ".json").write_text(json.dumps(header))


def test_load_of_a_file_lacking_a_field_names_the_file_and_the_field(two_results, tmp_path):
    r1, _ = two_results
    r1.save(tmp_path / "r")
    _rewrite(tmp_path / "r", tmp_path / "no_status", lambda a: a.pop("status"))
    with pytest.raises(jaxhp.FormatError, match=r"no_status.npz: lacks the field `status`"):
        jaxhp.SweepResult.load(tmp_path / "no_status")
    _rewrite(tmp_path / "r", tmp_path / "renamed",
             change_meta=lambda m: m.update(setting=m.pop("settings")))
    with pytest.raises(jaxhp.FormatError, match=r"renamed.json: lacks the field `settings`"):
        jaxhp.SweepResult.load(tmp_path / "renamed")

    def rename_field(meta):
        for d in meta["settings"]:
            d["lr"] = d.pop("learning_rate")

    _rewrite(tmp_path / "r", tmp_path / "old_class", change_meta=rename_field)
    for hparams in (None, models.LinearHP):  # the recorded declaration, or the class given
        with pytest.raises(jaxhp.FormatError, match=r"(?s)old_class.json: a setting does not "
                           r"fit LinearHP.*`lr`"):
            jaxhp.SweepResult.load(tmp_path / "old_class", hparams=hparams)
    header = json.loads((tmp_path / "r.json").read_text())
    assert header["meta"]["test_reads"] == []


def test_settings_are_one_type_fresh_or_loaded(two_results, tmp_path):
    r1, _ = two_results
    r1.save(tmp_path / "r")
    back = jaxhp.SweepResult.load(tmp_path / "r")  # LinearHP's module is imported: itself
    assert all(type(s) is models.LinearHP for s in back.settings)
    assert back.settings == r1.settings and back.table == r1.table

    def moved(meta):  # the class's module is not imported in this process
        meta["hparams_declaration"]["module"] = "my_project.not_imported"

    _rewrite(tmp_path / "r", tmp_path / "moved", change_meta=moved)
    other = jaxhp.SweepResult.load(tmp_path / "moved")
    cls = type(other.setting(0))
    assert issubclass(cls, jaxhp.HParams) and cls is not models.LinearHP
    assert cls.__qualname__ == "LinearHP" and all(type(s) is cls for s in other.settings)
    assert cls.declaration()["fields"] == models.LinearHP.declaration()["fields"]
    assert [s.to_dict() for s in other.settings] == [s.to_dict() for s in r1.settings]
    assert other.best("mse").index == r1.best("mse").index
    with pytest.raises(jaxhp.HParamsError, match="learning_rate"):  # the rules came along
        cls(learning_rate=-1.0)
    assert cls.static_names() == models.LinearHP.static_names()


def test_adaptive_results_keep_their_settings_as_columns(diabetes):
    space = jaxhp.random(4, seed=0, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    sh = jaxhp.successive_halving(MODEL, space, diabetes, key=KEY, base=BASE, min_steps=5,
                                  max_steps=20, eta=2, metric="mse")
    cols = space.table(models.LinearHP, base=BASE).columns
    np.testing.assert_array_equal(sh.table.columns["learning_rate"], cols["learning_rate"])
    assert sorted(set(sh.table.columns["steps"].tolist())) == [5, 10, 20]  # steps trained
    assert all(type(s) is models.LinearHP for s in sh.settings)
