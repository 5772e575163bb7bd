"""``tune_gradient`` on the engine: chunks, static groups, failures, checkpoints, on_chunk.

The starts of a gradient tuning are independent, so they run as a sweep's settings do:
in chunks of one compiled program per static group (the result does not depend on the
chunking), sharded over the devices (tests/test_devices.py), a failing group recorded
while the others run, and every finished chunk checkpointed so that the same call
resumes bit-identically.
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from helpers import count_compiles, interrupt_after, on_progress

import jaxhp
from jaxhp.models import LinearHP, linear_regression

MODEL = linear_regression(10)
KEY = jax.random.key(4)
BASE = LinearHP(steps=12, batch_size=32)
WRT = ("learning_rate", "l2")
OPT = optax.adam(0.2)  # one object: programs are cached across the calls of this module


def _starts(n, seed=0):
    return jaxhp.random(n, seed=seed, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                        l2=jaxhp.loguniform(1e-4, 1.0))


def _tune(starts, split, **kw):
    kw = {"key": KEY, "wrt": WRT, "objective": "mse", "steps": 3, "seeds": 2,
          "base": BASE, "optimizer": OPT, **kw}
    return jaxhp.tune_gradient(kw.pop("model", MODEL), starts, split, **kw)


def _assert_same_tuning(a, b, rtol=0.0):
    """Equal rows and trajectories (``rtol=0``: bit for bit)."""
    check = (np.testing.assert_array_equal if rtol == 0 else
             lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol))
    check(a.val["mse"], b.val["mse"])
    check(a.trajectory["objective"], b.trajectory["objective"])
    for f in WRT:
        check(a.trajectory["values"][f], b.trajectory["values"][f])
        check(a.trajectory["grad"][f], b.trajectory["grad"][f])
        check(a.table.columns[f], b.table.columns[f])
    np.testing.assert_array_equal(a.trajectory["picked"], b.trajectory["picked"])


@pytest.fixture(scope="module")
def whole(diabetes):
    """Five starts in one chunk."""
    return _tune(_starts(5), diabetes, chunk_size="all")


def test_chunks_give_the_one_call_result_and_compile_once(diabetes, whole):
    with count_compiles() as c:
        r = _tune(_starts(5), diabetes, chunk_size=2)
    g = r.groups[0]
    assert (g.chunk_size, g.n_chunks, g.chunks_computed) == (2, 3, 3)
    assert c.count == 1 == r.compile_count  # the last chunk is padded: same program
    assert whole.groups[0].n_chunks == 1
    _assert_same_tuning(r, whole, rtol=1e-6)
    # the rows are still the descent's own last evaluation of each start
    np.testing.assert_allclose(r.trajectory["objective"][:, -1], r.val["mse"].mean(axis=1),
                               rtol=1e-6)


def test_static_groups_are_tuned_apart_and_selected_across(diabetes):
    space = _starts(3, seed=1) * jaxhp.grid(batch_size=[16, 32])
    r = _tune(space, diabetes, base=LinearHP(steps=12))
    assert r.n_settings == 6 and len(r.groups) == 2
    assert sorted(g.statics["batch_size"] for g in r.groups) == [16, 32]
    starts = space.settings(LinearHP, base=LinearHP(steps=12))
    for b in (16, 32):  # each group's rows are that group's starts tuned alone
        rows = [i for i, s in enumerate(starts) if s.batch_size == b]
        alone = _tune([starts[i] for i in rows], diabetes)
        np.testing.assert_allclose(r.val["mse"][rows], alone.val["mse"], rtol=1e-6)
        np.testing.assert_allclose(r.trajectory["objective"][rows],
                                   alone.trajectory["objective"], rtol=1e-6)
    best = r.best("mse")
    assert best.value == np.nanmin(r.val["mse"].mean(axis=1))


def test_a_failing_group_is_recorded_and_the_others_are_tuned(diabetes):
    def init(key, hp):
        if hp.batch_size == 16:
            raise RuntimeError("no model with batches of 16")
        return MODEL.init(key, hp)

    model = MODEL._replace(init=init)
    space = _starts(2, seed=2) * jaxhp.grid(batch_size=[16, 32])
    with pytest.warns(jaxhp.SweepWarning, match="no model with batches of 16"):
        r = _tune(space, diabetes, model=model, base=LinearHP(steps=12))
    bad = r.table.columns["batch_size"] == 16
    assert (r.setting_status()[bad] == "failed").all()
    assert (r.setting_status()[~bad] == "ok").all()
    assert (r.trajectory["picked"][bad] == -1).all()
    assert np.isnan(r.trajectory["objective"][bad]).all()
    # a failed row keeps its starting setting; the others moved
    starts = space.table(LinearHP, base=LinearHP(steps=12))
    np.testing.assert_array_equal(r.table.columns["l2"][bad], starts.columns["l2"][bad])
    assert r.best("mse").setting.batch_size == 32
    with pytest.raises(RuntimeError, match="batches of 16"):
        _tune(space, diabetes, model=model, base=LinearHP(steps=12), on_error="raise")


def test_interrupted_tuning_resumes_bit_identical(diabetes, whole, tmp_path):
    folder = tmp_path / "ckpt"
    seen = []

    def stop_after_two(record):
        seen.append(record)
        if len(seen) == 2:
            raise RuntimeError("stopped after two chunks")

    with pytest.raises(jaxhp.CallbackError, match="stopped after two chunks"):
        _tune(_starts(5), diabetes, chunk_size=2, checkpoint_dir=folder,
              on_chunk=stop_after_two)
    first = _tune(_starts(5), diabetes, chunk_size=2, checkpoint_dir=folder)
    g = first.groups[0]
    assert (g.chunks_loaded, g.chunks_computed) == (1, 2)  # chunk 1 was left unsaved
    fresh = _tune(_starts(5), diabetes, chunk_size=2)
    _assert_same_tuning(first, fresh)  # bit for bit
    _assert_same_tuning(first, whole, rtol=1e-6)
    again = _tune(_starts(5), diabetes, chunk_size=2, checkpoint_dir=folder)
    assert again.groups[0].chunks_loaded == 3 and again.compile_count == 0
    _assert_same_tuning(again, fresh)
    # the chunks were computed with adam(0.2): another optimizer is another tuning
    with pytest.raises(jaxhp.CheckpointMismatch, match="tune_gradient.program_sha256"):
        _tune(_starts(5), diabetes, chunk_size=2, checkpoint_dir=folder,
              optimizer=optax.adam(0.3))


def test_on_chunk_reports_each_chunk_s_final_settings(diabetes, whole):
    records = []
    r = _tune(_starts(5), diabetes, chunk_size=2, on_chunk=records.append)
    assert [rec.chunk for rec in records] == [0, 1, 2]
    assert all(rec.search == "tune_gradient" for rec in records)
    rows = np.concatenate([rec.rows for rec in records])
    np.testing.assert_array_equal(rows, np.arange(5))
    for rec in records:
        np.testing.assert_array_equal(rec.settings["l2"], r.table.columns["l2"][rec.rows])
        np.testing.assert_array_equal(rec.val["mse"], r.val["mse"][rec.rows])
        assert rec.step == BASE.steps


def test_bad_engine_options_are_refused_before_compiling(diabetes):
    with count_compiles() as c:
        with pytest.raises(ValueError, match="`chunk_size`=0"):
            _tune(_starts(2), diabetes, chunk_size=0)
        with pytest.raises(ValueError, match="`on_error`='skip'"):
            _tune(_starts(2), diabetes, on_error="skip")
        with pytest.raises(ValueError, match="`memory_budget`=-1"):
            _tune(_starts(2), diabetes, memory_budget=-1)
    assert c.count == 0


def test_the_chunk_is_planned_from_a_start_s_memory(diabetes):
    r = _tune(_starts(6), diabetes, memory_budget=1)  # room for one start per call
    assert (r.groups[0].chunk_size, r.groups[0].n_chunks) == (1, 6)
    r = _tune(_starts(6), diabetes, max_chunk=4)  # a sweep's cap, evened out: 2 x 3
    assert (r.groups[0].chunk_size, r.groups[0].n_chunks) == (3, 2)
    r = _tune(_starts(6), diabetes)  # the ridge is small: one call
    assert (r.groups[0].chunk_size, r.groups[0].n_chunks) == (6, 1)


def test_ctrl_c_keeps_the_finished_chunks(diabetes, tmp_path):
    """The bar advances once a chunk of starts is saved; Ctrl-C after the second chunk
    leaves two chunks to load."""
    folder = tmp_path / "ckpt"
    with on_progress(interrupt_after(2)) as updates, pytest.raises(KeyboardInterrupt):
        _tune(_starts(5), diabetes, chunk_size=2, checkpoint_dir=folder, progress=True)
    assert updates == [2, 2]
    r = _tune(_starts(5), diabetes, chunk_size=2, checkpoint_dir=folder)
    assert (r.groups[0].chunks_loaded, r.groups[0].chunks_computed) == (2, 1)
    _assert_same_tuning(r, _tune(_starts(5), diabetes, chunk_size=2))


class _PaddedMLP(jaxhp.models.MLPHP):
    width: int = jaxhp.static(16, low=1, integer=True, pad_to=16)


def test_a_padded_group_is_tuned_by_one_program_each_row_its_own_width(digits):
    """Widths 3 and 12 allocated at 16 share one program; each row equals its final
    setting trained alone at its own width."""
    small = jaxhp.Split(*({k: np.asarray(v)[:n] for k, v in part.items()}
                          for part, n in ((digits.train, 96), (digits.val, 48),
                                          (digits.test, 48))))
    model = jaxhp.models.mlp_classifier(64, 10)
    base = _PaddedMLP(steps=4, batch_size=16, depth=1, learning_rate=1e-2)
    starts = jaxhp.grid(width=[3, 12])
    r = jaxhp.tune_gradient(model, starts, small, key=KEY, base=base, wrt="learning_rate",
                            objective="ce", steps=2, optimizer=OPT)
    g, = r.groups
    assert g.statics["width"] == "padded to 16" and r.compile_count == 1
    assert [r.setting(i).width for i in range(2)] == [3, 12]
    for i in range(2):
        solo = jaxhp.train(model, r.setting(i), small, key=jax.random.fold_in(KEY, 0))
        np.testing.assert_allclose(r.val["ce"][i, 0], solo.val["ce"], rtol=1e-5)
