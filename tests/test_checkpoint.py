"""Long sweeps: checkpoint, resume bit-identically, refuse a changed sweep, lose nothing."""

import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import interrupt_after, on_progress

import jaxhp
from jaxhp import models

KEY = jax.random.key(0)
MODEL = models.linear_regression(10)
LOCK = "jaxhp.lock"  # the lock file's name: CheckpointLocked tells users to delete it


def _tmp_name(pid: int) -> str:
    """A temporary file as a writer with ``pid`` on this host names it: files are written
    as ``.jaxhp-tmp-PID@HOST~...`` then renamed (the README: names carry pid and host)."""
    return f".jaxhp-tmp-{pid}@{re.sub(r'[^A-Za-z0-9._-]', '_', socket.gethostname())}~x"


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".jaxhp-tmp-"))


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
    assert first.groups[0].chunks_computed == 4 and first.groups[0].chunks_loaded == 0
    again = run(diabetes, tmp_path)
    assert again.groups[0].chunks_computed == 0 and again.groups[0].chunks_loaded == 4
    assert again.compile_count == 0
    assert_identical(full, first)
    assert_identical(full, again)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == [f"chunk-0-{i}" for i in range(4)]
    assert _leftovers(tmp_path) == []  # every write renamed its temporary file


def test_interrupted_sweep_keeps_finished_chunks(diabetes, tmp_path):
    # Ctrl-C once the progress bar shows two chunks done (a chunk counts once saved)
    with on_progress(interrupt_after(2)) as updates, pytest.raises(KeyboardInterrupt):
        run(diabetes, tmp_path, progress=True)
    assert updates == [3, 3]
    assert not (tmp_path / LOCK).exists()  # released on the way out
    assert _leftovers(tmp_path) == []
    resumed = run(diabetes, tmp_path)
    assert resumed.groups[0].chunks_loaded == 2
    assert resumed.groups[0].chunks_computed == 2
    assert_identical(resumed, run(diabetes))


def test_leftover_temporary_file_is_ignored_and_removed(diabetes, tmp_path):
    run(diabetes, tmp_path)
    tmp = tmp_path / ".jaxhp-tmp-deadbeef"
    tmp.write_bytes(b"half a chunk")
    again = run(diabetes, tmp_path)
    assert not tmp.exists() and again.groups[0].chunks_loaded == 4


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
    assert not (tmp_path / LOCK).exists()  # a refused sweep releases the lock
    fresh = run(diabetes, tmp_path, overwrite=True, **change)
    assert fresh.groups[0].chunks_loaded == 0


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
    assert again.groups[0].chunks_loaded == 4
    for i in (0, 9):
        a, b = first.params(i, 1), again.params(i, 1)
        np.testing.assert_array_equal(a["w"], b["w"])


CHILD = textwrap.dedent("""
    import sys, time
    import jax
    import jaxhp
    from jaxhp import models
    from tqdm.auto import tqdm
    original = tqdm.update
    def slow_update(self, n=1):  # the bar advances once a chunk is saved
        original(self, n)
        time.sleep(0.4)
    tqdm.update = slow_update
    split = jaxhp.datasets.load("diabetes")
    space = jaxhp.random(24, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-4, 1.0))
    jaxhp.sweep(models.linear_regression(10), space, split, key=jax.random.key(0),
                seeds=2, base=models.LinearHP(steps=40, batch_size=32), chunk_size=2,
                checkpoint_dir=sys.argv[1], progress=True)
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
    assert resumed.groups[0].chunks_loaded == killed_at
    assert resumed.groups[0].chunks_computed == 12 - killed_at
    assert_identical(resumed, jaxhp.sweep(MODEL, sp, diabetes, **kw))


def test_memory_budget_sets_the_chunk_count(diabetes):
    """``memory_budget`` (bytes per device) plans the fewest chunks whose members fit it:
    for one per-member cost ``per``, every budget ``b`` plans chunks of at most
    ``b // per`` settings, ``ceil(n / (b // per))`` of them. (The measured policy may then
    run a smaller size: never a larger one.)"""
    hp = models.LinearHP(steps=10)
    n = 4096
    sp = jaxhp.random(n, seed=0, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    budgets, plans, val = (2**14, 2**15, 2**16), [], None
    for b in budgets:
        result = jaxhp.sweep(MODEL, sp, diabetes, key=KEY, base=hp, loss_every=0,
                             memory_budget=b)
        g = result.groups[0]
        # the planned size runs first: the largest size tried (half of it may be tried)
        plan = max(dict(g.chunk_trials), default=g.chunk_size)
        assert g.chunk_size <= plan
        plans.append(plan)
        assert result.loss_curve.shape == (n, 1, 0)
        if val is not None:  # chunking changes no result
            np.testing.assert_allclose(result.val["mse"], val, rtol=1e-6)
        val = result.val["mse"]
    assert plans[0] >= 8  # a member costs well under 2 KiB
    fits = [per for per in range(1, budgets[0] + 1) if all(
        p <= b // per and math.ceil(n / p) == math.ceil(n / (b // per))
        for b, p in zip(budgets, plans))]
    assert fits, plans
    four = jaxhp.random(4, seed=0, learning_rate=jaxhp.loguniform(1e-3, 0.3))
    one = jaxhp.sweep(MODEL, four, diabetes, key=KEY, base=hp, loss_every=0, memory_budget=1)
    assert one.groups[0].chunk_size == 1 and one.groups[0].n_chunks == 4  # at least one


class _Trap:
    """Unpickling this would create a file: proof that loading executed code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _tamper(stem, arrays):
    """Replaces stem.npz by ``arrays`` and fixes the checksum in stem.json."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    stem.with_suffix(".npz").write_bytes(buf.getvalue())
    header = json.loads(stem.with_suffix(".json").read_text())
    header["npz_sha256"] = hashlib.sha256(buf.getvalue()).hexdigest()
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


# ---------------------------------------------------------------- fingerprint (issue 9.3)
def ridge(penalty="l2", scale=None):
    """A ridge model whose function names never change; what ``loss`` computes does."""
    scale = np.ones(10, np.float32) if scale is None else scale

    def init(key, hp):
        return {"w": jnp.zeros(10, jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def predict(params, x):
        return x @ (params["w"] * scale) + params["b"]  # `scale`: a captured constant

    def loss(params, batch, hp):
        mse = jnp.mean((predict(params, batch["x"]) - batch["y"]) ** 2)
        w = params["w"]
        penalty_value = jnp.sum(w ** 2) if penalty == "l2" else jnp.sum(jnp.abs(w))
        return 0.5 * mse + 0.5 * hp.l2 * penalty_value, {"mse": mse}

    def metrics(params, batch, hp):
        return {"mse": jnp.mean((predict(params, batch["x"]) - batch["y"]) ** 2)}

    def optimizer(hp):
        return optax.sgd(hp.learning_rate)

    return jaxhp.Model(init, loss, optimizer, metrics, models.LinearHP, "ridge")


RIDGE = ridge()
SMALL = dict(key=KEY, seeds=1, base=models.LinearHP(steps=20), chunk_size=2)
SMALL_SPACE = jaxhp.random(4, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3))


def test_edited_loss_or_captured_constant_is_refused_naming_the_function(diabetes, tmp_path):
    first = jaxhp.sweep(RIDGE, SMALL_SPACE, diabetes, checkpoint_dir=tmp_path, **SMALL)
    edited = ridge(penalty="l1")  # the same qualified names, another loss
    with pytest.raises(jaxhp.CheckpointMismatch, match="`model.loss`") as e:
        jaxhp.sweep(edited, SMALL_SPACE, diabetes, checkpoint_dir=tmp_path, **SMALL)
    for unchanged in ("`model.init`", "`model.metrics`", "`model.optimizer`", "`model`:"):
        assert unchanged not in str(e.value)
    scale = np.ones(10, np.float32)
    scale[3] = 2.0  # a closed-over array: a jaxpr constant, hashed by value
    with pytest.raises(jaxhp.CheckpointMismatch, match="`model.loss`") as e:
        jaxhp.sweep(ridge(scale=scale), SMALL_SPACE, diabetes, checkpoint_dir=tmp_path,
                    **SMALL)
    assert "`model.metrics`" in str(e.value)
    rebuilt = jaxhp.sweep(ridge(), SMALL_SPACE, diabetes, checkpoint_dir=tmp_path, **SMALL)
    assert rebuilt.groups[0].chunks_loaded == 2 and rebuilt.groups[0].chunks_computed == 0
    assert_identical(first, rebuilt)


FRESH = textwrap.dedent("""
    import sys
    import jax, jaxhp
    from jaxhp import models
    sys.path.insert(0, sys.argv[2])
    import test_checkpoint as t
    t.fingerprinted_sweeps(sys.argv[1])
""")


def fingerprinted_sweeps(folder, **kw):
    """An MLP (relu: a custom_jvp function; two static groups) on digits and ridge on
    diabetes, checkpointed in ``folder``/mlp and ``folder``/ridge."""
    import pathlib

    key = jax.random.key(0)
    digits = jaxhp.datasets.load("digits", key=key)
    diabetes = jaxhp.datasets.load("diabetes")
    mlp = jaxhp.sweep(models.mlp_classifier(64, 10),
                      jaxhp.grid(depth=[1, 2], learning_rate=[0.1, 0.01]), digits, key=key,
                      base=models.MLPHP(width=8, steps=3), chunk_size=2,
                      checkpoint_dir=pathlib.Path(folder) / "mlp", **kw)
    ridge = jaxhp.sweep(models.linear_regression(10), SMALL_SPACE, diabetes,
                        checkpoint_dir=pathlib.Path(folder) / "ridge", **SMALL, **kw)
    return mlp, ridge


def test_model_fingerprint_is_the_same_in_a_fresh_process(tmp_path):
    """A checkpoint written by another process resumes here: the model functions'
    fingerprints (jaxprs, with no memory address in them) are the same in both."""
    subprocess.run([sys.executable, "-c", FRESH, str(tmp_path), os.path.dirname(__file__)],
                   capture_output=True, text=True, timeout=300, check=True)
    mlp, ridge = fingerprinted_sweeps(tmp_path)  # a CheckpointMismatch if they differed
    assert [(g.chunks_loaded, g.chunks_computed) for g in mlp.groups] == [(1, 0), (1, 0)]
    assert [(g.chunks_loaded, g.chunks_computed) for g in ridge.groups] == [(2, 0)]


# ------------------------------------------------------------ chunk identity (issue 9.4)
def test_chunk_copied_into_another_slot_is_refused(diabetes, tmp_path):
    run(diabetes, tmp_path)
    for suffix in (".npz", ".json"):  # a consistent pair: the checksum matches
        shutil.copy(tmp_path / f"chunk-0-1{suffix}", tmp_path / f"chunk-0-0{suffix}")
    with pytest.raises(jaxhp.FormatError,
                       match=r"chunk-0-0.json: holds chunk 1 of group 0, not chunk 0"):
        run(diabetes, tmp_path)


def test_chunk_of_another_sweep_is_refused(diabetes, tmp_path):
    run(diabetes, tmp_path / "a")
    run(diabetes, tmp_path / "b", key=jax.random.key(1))
    for suffix in (".npz", ".json"):
        name = f"chunk-0-2{suffix}"
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    with pytest.raises(jaxhp.FormatError, match=r"chunk-0-2.json: written by another sweep"):
        run(diabetes, tmp_path / "a")


def test_chunk_with_wrong_shapes_and_a_valid_checksum_is_refused(diabetes, tmp_path):
    run(diabetes, tmp_path)
    with np.load(tmp_path / "chunk-0-0.npz", allow_pickle=False) as z:
        arrays = {k: z[k][:, :2] for k in z.files}  # 2 settings instead of 3
    _tamper(tmp_path / "chunk-0-0", arrays)
    with pytest.raises(jaxhp.FormatError, match=r"chunk-0-0.npz: array `.*` has shape "
                       r"\(2, 2"):
        run(diabetes, tmp_path)


# ---------------------------------------------------------- one process per folder (9.8)
LOCKED_CHILD = textwrap.dedent("""
    import sys, time
    import jax
    import jaxhp
    from jaxhp import models
    from tqdm.auto import tqdm
    original = tqdm.update
    def slow_update(self, n=1):  # the bar advances once a chunk is saved
        original(self, n)
        time.sleep(0.3)
    tqdm.update = slow_update
    split = jaxhp.datasets.load("diabetes")
    space = jaxhp.random(10, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-4, 1.0))
    r = jaxhp.sweep(models.linear_regression(10), space, split, key=jax.random.key(0),
                    seeds=2, base=models.LinearHP(steps=40, batch_size=32), chunk_size=1,
                    checkpoint_dir=sys.argv[1], progress=True)
    r.save(sys.argv[2])
""")


@pytest.mark.slow
def test_second_process_on_a_checkpoint_folder_is_refused_and_the_first_completes(
        diabetes, tmp_path):
    folder = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", LOCKED_CHILD, str(folder),
                             str(tmp_path / "child")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = folder / LOCK
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not lock.exists():
        time.sleep(0.02)
    assert lock.exists(), proc.communicate()[1].decode()
    with pytest.raises(jaxhp.CheckpointLocked) as e:
        run(diabetes, folder, chunk_size=1)
    assert proc.poll() is None, "the child finished before the second sweep was refused"
    msg = str(e.value)
    assert str(folder) in msg and f"pid {proc.pid}" in msg and socket.gethostname() in msg
    assert e.value.holder["pid"] == proc.pid and isinstance(e.value, RuntimeError)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert not lock.exists()  # released at the end of the sweep
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["chunks"]) == sorted(f"chunk-0-{i}" for i in range(10))
    child = jaxhp.SweepResult.load(tmp_path / "child")
    assert_identical(child, run(diabetes, chunk_size=1))


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_stale_lock_of_a_dead_process_is_taken_over(diabetes, tmp_path):
    dead = _dead_pid()
    (tmp_path / LOCK).write_text(json.dumps({"pid": dead, "host": socket.gethostname(),
                                             "started": "2020-01-01T00:00:00+0000"}))
    theirs = tmp_path / _tmp_name(dead)
    live = tmp_path / _tmp_name(os.getppid())
    theirs.write_bytes(b"half a chunk of a killed writer")
    live.write_bytes(b"a live writer's file")
    result = run(diabetes, tmp_path)
    assert result.groups[0].chunks_computed == 4
    assert not (tmp_path / LOCK).exists()
    assert not theirs.exists() and live.exists()  # only the dead writer's file is removed


def test_lock_of_another_host_is_refused_with_how_to_remove_it(diabetes, tmp_path):
    (tmp_path / LOCK).write_text(json.dumps({"pid": 1, "host": "elsewhere.example",
                                             "started": "2020-01-01T00:00:00+0000"}))
    with pytest.raises(jaxhp.CheckpointLocked,
                       match=r"pid 1 on host 'elsewhere.example'.*delete .*jaxhp.lock"):
        run(diabetes, tmp_path)
    assert (tmp_path / LOCK).exists()  # not ours to remove


def test_mismatch_is_refused_before_anything_is_deleted(diabetes, tmp_path):
    run(diabetes, tmp_path)
    dead = _dead_pid()
    leftover = tmp_path / _tmp_name(dead)
    leftover.write_bytes(b"half a chunk")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(jaxhp.CheckpointMismatch):
        run(diabetes, tmp_path, seeds=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert run(diabetes, tmp_path).groups[0].chunks_loaded == 4
    assert not leftover.exists()  # removed once the folder is locked and matches
