"""Successive halving, Hyperband and PBT resume from ``checkpoint_dir``, bit-identical.

The whole search state (carries, tunables, curves, the policy's position and
records) is saved after every rung or ready point; the same call resumes
after the last one saved and gives the numbers of an uninterrupted run.
"""

from __future__ import annotations

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
from helpers import interrupt_after, on_progress

import jaxhp
from jaxhp.models import LinearHP, linear_regression

MODEL = linear_regression(10)
KEY = jax.random.key(5)
BASE = LinearHP(batch_size=32, steps=27)
SPACE = jaxhp.random(13, seed=7, learning_rate=jaxhp.loguniform(1e-3, 0.5),
                     l2=jaxhp.loguniform(1e-5, 1.0))
SEARCHES = {
    "halving": lambda **kw: jaxhp.successive_halving(
        MODEL, SPACE, kw.pop("split"), key=KEY, seeds=2, min_steps=3, metric="mse",
        base=BASE, chunk_size=4, **kw),
    "pbt": lambda **kw: jaxhp.pbt(MODEL, SPACE, kw.pop("split"), key=KEY, seeds=2,
                                  ready_every=5, metric="mse", base=BASE, chunk_size=4,
                                  **kw),
}


def assert_identical(a, b):
    assert type(a) is type(b)
    np.testing.assert_array_equal(a.status, b.status)
    np.testing.assert_array_equal(a.loss_curve, b.loss_curve)
    np.testing.assert_array_equal(a.train_loss, b.train_loss)
    for k in a.val:
        np.testing.assert_array_equal(a.val[k], b.val[k])
        np.testing.assert_array_equal(a.val_curve[k], b.val_curve[k])
    assert a.settings == b.settings
    if isinstance(a, jaxhp.HalvingResult):
        np.testing.assert_array_equal(a.steps_trained, b.steps_trained)
        assert [r.promoted.tolist() for r in a.rungs] == [r.promoted.tolist() for r in b.rungs]
    else:
        np.testing.assert_array_equal(a.lineage, b.lineage)
        for f in a.schedule:
            np.testing.assert_array_equal(a.schedule[f], b.schedule[f])
        for i in range(a.n_settings):
            jax.tree_util.tree_map(np.testing.assert_array_equal, a.params(i, 1),
                                   b.params(i, 1))


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_interrupted_search_resumes_bit_identical(name, diabetes, tmp_path):
    search = SEARCHES[name]
    whole = search(split=diabetes)
    # Ctrl-C once the progress bar shows two rungs (intervals) done, i.e. saved
    with on_progress(interrupt_after(2)) as updates, pytest.raises(KeyboardInterrupt):
        search(split=diabetes, checkpoint_dir=tmp_path, progress=True)
    assert len(updates) == 2
    resumed = search(split=diabetes, checkpoint_dir=tmp_path)
    assert_identical(resumed, whole)
    # the resumed call trained only what was left: fewer chunks than the whole search
    assert resumed.groups[0].chunks_computed < whole.groups[0].chunks_computed
    # a third call finds the final state and trains nothing
    again = search(split=diabetes, checkpoint_dir=tmp_path)
    assert again.groups[0].chunks_computed == 0
    assert_identical(again, whole)


def test_a_changed_search_is_refused(diabetes, tmp_path):
    SEARCHES["halving"](split=diabetes, checkpoint_dir=tmp_path)
    with pytest.raises(jaxhp.CheckpointMismatch, match="loop"):
        jaxhp.successive_halving(MODEL, SPACE, diabetes, key=KEY, seeds=2, min_steps=9,
                                 metric="mse", base=BASE, chunk_size=4,
                                 checkpoint_dir=tmp_path)


CHILD = textwrap.dedent("""
    import sys, time
    import jax
    import jaxhp
    sys.path.insert(0, sys.argv[3])
    import test_resume_adaptive as t
    from helpers import on_progress
    split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    # slow down after every saved rung (interval): the bar advances once it is saved
    with on_progress(lambda k: time.sleep(0.5)):
        t.SEARCHES[sys.argv[1]](split=split, checkpoint_dir=sys.argv[2], progress=True)
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_sigkill_then_resume_is_bit_identical(name, diabetes, tmp_path):
    here = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, name, str(tmp_path), here],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = tmp_path / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and any(k.startswith("state-")
                                     for k in json.loads(manifest.read_text())["chunks"]):
            break
        time.sleep(0.05)
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert alive, err.decode()
    assert proc.returncode == -signal.SIGKILL
    resumed = SEARCHES[name](split=diabetes, checkpoint_dir=tmp_path)
    assert_identical(resumed, SEARCHES[name](split=diabetes))
