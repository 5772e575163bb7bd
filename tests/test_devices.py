"""A sweep sharded over 8 forced CPU devices equals the same sweep on 1 device."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import jaxhp
    from jaxhp import models
    split = jaxhp.datasets.load("diabetes")
    rng = np.random.default_rng(0)
    settings = [models.LinearHP(learning_rate=float(10 ** rng.uniform(-2.5, -0.5)),
                                l2=float(10 ** rng.uniform(-4, 0)), steps=60,
                                batch_size=32) for _ in range(13)]
    r = jaxhp.sweep(models.linear_regression(10), settings, split,
                    key=jax.random.key(0), seeds=2, chunk_size=int(sys.argv[1]))
    print(json.dumps({"n_devices": jax.device_count(), "mse": r.val["mse"].tolist(),
                      "chunk": r.groups[0].chunk_size, "compiled": r.compile_count}))
""")


def _run(devices: int, chunk: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(chunk)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_eight_devices_match_one_even_when_population_does_not_divide():
    one = _run(1, 5)
    eight = _run(8, 5)  # 13 settings, chunks padded to a multiple of 8 devices
    assert one["n_devices"] == 1 and eight["n_devices"] == 8
    assert eight["chunk"] % 8 == 0 and eight["compiled"] == 1
    import numpy as np

    np.testing.assert_allclose(np.array(eight["mse"]), np.array(one["mse"]), rtol=1e-5)


HALVING = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    import jaxhp
    from jaxhp import models
    split = jaxhp.datasets.load("diabetes")
    rng = np.random.default_rng(0)
    settings = [models.LinearHP(learning_rate=float(10 ** rng.uniform(-2.5, -0.5)),
                                l2=float(10 ** rng.uniform(-4, 0)), steps=27,
                                batch_size=32) for _ in range(17)]
    r = jaxhp.hyperband(models.linear_regression(10), settings, split,
                        key=jax.random.key(0), seeds=2, min_steps=3, metric="mse")
    print(json.dumps({"n_devices": jax.device_count(), "mse": r.val["mse"].tolist(),
                      "chunk": r.groups[0].chunk_size, "compiled": r.compile_count,
                      "promoted": [g.promoted.tolist() for g in r.rungs]}))
""")


@pytest.mark.slow
def test_hyperband_on_eight_devices_matches_one():
    """Every rung's chunks are sharded over 8 devices: the same numbers and choices."""
    import numpy as np

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    runs = [json.loads(subprocess.run([sys.executable, "-c", HALVING], capture_output=True,
                                      text=True, timeout=300, check=True,
                                      env=dict(env, XLA_FLAGS=flag)).stdout.splitlines()[-1])
            for flag in ("--xla_force_host_platform_device_count=1", env["XLA_FLAGS"])]
    one, eight = runs
    assert one["n_devices"] == 1 and eight["n_devices"] == 8
    assert eight["chunk"] % 8 == 0 and eight["compiled"] <= 2
    assert eight["promoted"] == one["promoted"]
    np.testing.assert_allclose(np.array(eight["mse"]), np.array(one["mse"]), rtol=1e-5)
