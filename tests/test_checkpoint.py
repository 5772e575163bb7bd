"""Long sweeps: checkpoint, resume bit-identically, refuse a changed sweep, lose nothing."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

import jaxhp
from jaxhp import models
from jaxhp._checkpoint import Checkpoint

KEY = jax.random.key(0)
MODEL = models.linear_regression(10)


@pytest.fixture(scope="module")
def diabetes():
    return jaxhp.datasets.load("diabetes")


def space(n=10, steps=40):
    return jaxhp.random(n, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                        l2=jaxhp.loguniform(1e-4, 1.0))


def base(steps=40):
    return models.LinearHP(steps=steps, batch_size=32)


def run(split, folder=None, **kw):
    sp = kw.pop("space", space())
    args = dict(key=KEY, seeds=2, base=base(), chunk_size=3, checkpoint_dir=folder)
    args.update(kw)
    return jaxhp.sweep(MODEL, sp, split, **args)


def assert_identical(a, b):
    for name in ("status", "diverged_at", "train_loss", "loss_curve"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for k in a.val:
        np.testing.assert_array_equal(a.val[k], b.val[k])


def test_resume_skips_finished_chunks_and_is_bit_identical(diabetes, tmp_path):
    full = run(diabetes)
    first = run(diabetes, tmp_path)
    assert first.groups[0]["chunks_computed"] == 4 and first.groups[0]["chunks_loaded"] == 0
    again = run(diabetes, tmp_path)
    assert again.groups[0]["chunks_computed"] == 0 and again.groups[0]["chunks_loaded"] == 4
    assert again.compile_count == 0
    assert_identical(full, first)
    assert_identical(full, again)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == [f"chunk-0-{i}" for i in range(4)]


def test_interrupted_sweep_keeps_finished_chunks(diabetes, tmp_path, monkeypatch):
    original = Checkpoint.save
    calls = []

    def save_then_interrupt(self, group, chunk, out):
        original(self, group, chunk, out)
        calls.append(chunk)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(diabetes, tmp_path)
    monkeypatch.setattr(Checkpoint, "save", original)
    resumed = run(diabetes, tmp_path)
    assert resumed.groups[0]["chunks_loaded"] == 2
    assert resumed.groups[0]["chunks_computed"] == 2
    assert_identical(resumed, run(diabetes))


def test_leftover_temporary_file_is_ignored_and_removed(diabetes, tmp_path):
    run(diabetes, tmp_path)
    tmp = tmp_path / ".jaxhp-tmp-deadbeef"
    tmp.write_bytes(b"half a chunk")
    again = run(diabetes, tmp_path)
    assert not tmp.exists() and again.groups[0]["chunks_loaded"] == 4


@pytest.mark.parametrize("change, field", [
    (dict(seeds=3), "`seeds`"),
    (dict(space=space(n=11)), "`space`"),
    (dict(base=base(steps=50)), "`static_values`"),
    (dict(key=jax.random.key(1)), "`key`"),
])
def test_resume_with_a_changed_sweep_is_refused(diabetes, tmp_path, change, field):
    run(diabetes, tmp_path)
    with pytest.raises(jaxhp.CheckpointMismatch, match=field) as e:
        run(diabetes, tmp_path, **change)
    assert "overwrite=True" in str(e.value)
    fresh = run(diabetes, tmp_path, overwrite=True, **change)
    assert fresh.groups[0]["chunks_loaded"] == 0


def test_resume_with_changed_data_is_refused(diabetes, tmp_path):
    run(diabetes, tmp_path)
    x = diabetes.train["x"].copy()
    x[0, 0] += 1.0
    changed = diabetes._replace(train={"x": x, "y": diabetes.train["y"]})
    with pytest.raises(jaxhp.CheckpointMismatch, match="`data_sha256`"):
        run(changed, tmp_path)


def test_truncated_chunk_and_old_format_are_refused(diabetes, tmp_path):
    run(diabetes, tmp_path)
    chunk = tmp_path / "chunk-0-1.npz"
    chunk.write_bytes(chunk.read_bytes()[:100])
    with pytest.raises(jaxhp.FormatError, match="chunk-0-1.npz: checksum mismatch"):
        run(diabetes, tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["format_version"] = 0
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(jaxhp.FormatError, match="format version 0 is not supported"):
        run(diabetes, tmp_path)


def test_kept_parameters_are_checkpointed_too(diabetes, tmp_path):
    first = run(diabetes, tmp_path, keep_params=True)
    again = run(diabetes, tmp_path, keep_params=True)
    assert again.groups[0]["chunks_loaded"] == 4
    for i in (0, 9):
        a, b = first.params(i, 1), again.params(i, 1)
        np.testing.assert_array_equal(a["w"], b["w"])


CHILD = textwrap.dedent("""
    import sys, time
    import jax
    import jaxhp
    from jaxhp import models
    from jaxhp._checkpoint import Checkpoint
    original = Checkpoint.save
    def slow_save(self, *args):
        original(self, *args)
        time.sleep(0.4)
    Checkpoint.save = slow_save
    split = jaxhp.datasets.load("diabetes")
    space = jaxhp.random(24, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-4, 1.0))
    jaxhp.sweep(models.linear_regression(10), space, split, key=jax.random.key(0),
                seeds=2, base=models.LinearHP(steps=40, batch_size=32), chunk_size=2,
                checkpoint_dir=sys.argv[1])
""")


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(diabetes, tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = tmp_path / "manifest.json"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists():
            try:
                done = len(json.loads(manifest.read_text())["chunks"])
            except json.JSONDecodeError:  # never happens: writes are atomic
                raise
            if done >= 3:
                break
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert alive, err.decode()
    assert proc.returncode == -signal.SIGKILL
    killed_at = len(json.loads(manifest.read_text())["chunks"])
    assert 3 <= killed_at < 12
    sp = jaxhp.random(24, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                      l2=jaxhp.loguniform(1e-4, 1.0))
    kw = dict(key=KEY, seeds=2, base=base(), chunk_size=2)
    resumed = jaxhp.sweep(MODEL, sp, diabetes, checkpoint_dir=tmp_path, **kw)
    assert resumed.groups[0]["chunks_loaded"] == killed_at
    assert resumed.groups[0]["chunks_computed"] == 12 - killed_at
    assert_identical(resumed, jaxhp.sweep(MODEL, sp, diabetes, **kw))


def test_memory_budget_sets_the_chunk_count(diabetes):
    from jaxhp._sweep import member_bytes
    from jaxhp._train import resolve_loop

    hp = models.LinearHP(steps=10)
    cfg = resolve_loop(hp, 265, None, None)
    per = member_bytes(MODEL, hp, cfg, n_val_metrics=2, keep_params=False)
    sp = jaxhp.random(5000, seed=0, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    result = jaxhp.sweep(MODEL, sp, diabetes, key=KEY, base=hp, loss_every=0,
                         memory_budget=per * 250)
    assert result.groups[0]["chunk_size"] == 250
    assert result.groups[0]["n_chunks"] == 20
    assert result.loss_curve.shape == (5000, 1, 0)


class _Trap:
    """Unpickling this would create a file: proof that loading executed code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tamper(stem, arrays):
    """Replaces stem.npz by ``arrays`` and fixes the checksum in stem.json."""
    import io

    from jaxhp._io import sha256

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    stem.with_suffix(".npz").write_bytes(buf.getvalue())
    header = json.loads(stem.with_suffix(".json").read_text())
    header["npz_sha256"] = sha256(buf.getvalue())
    stem.with_suffix(".json").write_text(json.dumps(header))


def test_pickled_payload_is_refused_and_executes_nothing(diabetes, tmp_path):
    result = run(diabetes)
    result.save(tmp_path / "r")
    trap = tmp_path / "pwned"
    _tamper(tmp_path / "r", {"status": np.array([_Trap(trap)], dtype=object)})
    with pytest.raises(jaxhp.FormatError, match=r"r.npz: holds a pickled object"):
        jaxhp.SweepResult.load(tmp_path / "r")
    assert not trap.exists()
    # the same for a checkpoint chunk
    ck = tmp_path / "ck"
    run(diabetes, ck)
    _tamper(ck / "chunk-0-0", {"x": np.array([_Trap(trap)], dtype=object)})
    with pytest.raises(jaxhp.FormatError, match=r"chunk-0-0.npz: holds a pickled object"):
        run(diabetes, ck)
    assert not trap.exists()


def test_results_file_of_another_format_version_is_refused(diabetes, tmp_path):
    run(diabetes).save(tmp_path / "r")
    header = json.loads((tmp_path / "r.json").read_text())
    header["format_version"] = 99
    (tmp_path / "r.json").write_text(json.dumps(header))
    with pytest.raises(jaxhp.FormatError, match=r"r.json: format version 99 is not supported"):
        jaxhp.SweepResult.load(tmp_path / "r")
    (tmp_path / "r.json").write_text('{"format": "sweep-res')
    with pytest.raises(jaxhp.FormatError, match=r"r.json: not valid JSON"):
        jaxhp.SweepResult.load(tmp_path / "r")
