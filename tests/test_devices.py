"""Searches sharded over 8 forced CPU devices equal the same searches on 1 device.

(``sweep``, ``hyperband``, the sweep's rechecked suspects and ``tune_gradient``.)

One process with 8 forced CPU devices runs each search twice: over all 8 devices and
over the first one only (``devices=``), so one interpreter start serves every check.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import jaxhp
    from jaxhp import models
    sys.path.insert(0, TESTS)
    from helpers import GrowHP, grow_model
    split = jaxhp.datasets.load("diabetes")
    grow = grow_model()  # its `s` overflows before the loss for growth > 0: suspects
    growth = [0.0, 1e4, 0.0, 0.0, 2e4, 0.0, 0.0, 0.0, 0.0, 0.0, 3e4]

    def settings(n, steps):
        rng = np.random.default_rng(0)
        return [models.LinearHP(learning_rate=float(10 ** rng.uniform(-2.5, -0.5)),
                                l2=float(10 ** rng.uniform(-4, 0)), steps=steps,
                                batch_size=32) for _ in range(n)]

    model, key, out = models.linear_regression(10), jax.random.key(0), {}
    # 8 devices first: their compile counts are not helped by a cached program
    for name, devices in (("eight", jax.devices()), ("one", jax.devices()[:1])):
        r = jaxhp.sweep(model, settings(13, 60), split, key=key, seeds=2, chunk_size=5,
                        devices=devices)
        h = jaxhp.hyperband(model, settings(17, 27), split, key=key, seeds=2, min_steps=3,
                            metric="mse", devices=devices)
        out[name] = {"n_devices": len(devices), "mse": r.val["mse"].tolist(),
                     "meta_devices": r.meta["n_devices"],
                     "chunk": r.groups[0].chunk_size, "compiled": r.compile_count,
                     "hb_mse": h.val["mse"].tolist(), "hb_chunk": h.groups[0].chunk_size,
                     "hb_compiled": h.compile_count,
                     "promoted": [g.promoted.tolist() for g in h.rungs]}
        g = jaxhp.sweep(grow, [GrowHP(growth=v) for v in growth], split, key=key, seeds=2,
                        devices=devices)
        out[name].update(grow_dead=g.diverged_at.tolist(), grow_mse=g.val["mse"].tolist(),
                         grow_rechecked=g.groups[0].rechecked,
                         grow_compiled=g.compile_count, grow_chunk=g.groups[0].chunk_size)
        t = jaxhp.tune_gradient(model, settings(5, 20), split, key=key, seeds=2, steps=2,
                                wrt=("learning_rate", "l2"), objective="mse",
                                devices=devices)
        out[name].update(tune_mse=t.val["mse"].tolist(),
                         tune_objective=t.trajectory["objective"].tolist(),
                         tune_lr=t.table.columns["learning_rate"].tolist(),
                         tune_chunk=t.groups[0].chunk_size, tune_compiled=t.compile_count,
                         tune_devices=t.meta["n_devices"])
    out["device_count"] = jax.device_count()
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def runs() -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    script = f"TESTS = {os.path.dirname(os.path.abspath(__file__))!r}\n" + SCRIPT
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_eight_devices_match_one_even_when_population_does_not_divide(runs):
    one, eight = runs["one"], runs["eight"]
    assert runs["device_count"] == 8
    assert one["meta_devices"] == 1 and eight["meta_devices"] == 8
    # 13 settings, chunks padded to a multiple of 8 devices
    assert eight["chunk"] % 8 == 0 and eight["compiled"] == 1
    np.testing.assert_allclose(np.array(eight["mse"]), np.array(one["mse"]), rtol=1e-5)


@pytest.mark.slow
def test_hyperband_on_eight_devices_matches_one(runs):
    """Every rung's chunks are sharded over 8 devices: the same numbers and choices."""
    one, eight = runs["one"], runs["eight"]
    assert eight["hb_chunk"] % 8 == 0 and eight["hb_compiled"] <= 2
    assert eight["promoted"] == one["promoted"]
    np.testing.assert_allclose(np.array(eight["hb_mse"]), np.array(one["hb_mse"]), rtol=1e-5)


@pytest.mark.slow
def test_suspects_run_again_on_eight_devices_as_on_one(runs):
    """Three settings whose parameters overflow before their loss: each run again with
    the checked program in a batch padded to a device multiple; the same outcome."""
    one, eight = runs["one"], runs["eight"]
    assert one["grow_rechecked"] == eight["grow_rechecked"] == 3
    assert eight["grow_chunk"] % 8 == 0 and eight["grow_compiled"] == 2
    assert eight["grow_dead"] == one["grow_dead"]
    assert [any(d >= 0 for d in row) for row in one["grow_dead"]] == \
        [v > 0 for v in (0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 3)]
    np.testing.assert_allclose(np.array(eight["grow_mse"]), np.array(one["grow_mse"]),
                               rtol=1e-5)


@pytest.mark.slow
def test_tune_gradient_on_eight_devices_matches_one(runs):
    """Five starts, padded to a chunk of 8 and sharded: the same descents."""
    one, eight = runs["one"], runs["eight"]
    assert eight["tune_devices"] == 8 and one["tune_devices"] == 1
    assert eight["tune_chunk"] % 8 == 0 and eight["tune_compiled"] == 1
    for k in ("tune_mse", "tune_objective", "tune_lr"):
        np.testing.assert_allclose(np.array(eight[k]), np.array(one[k]), rtol=1e-5)
