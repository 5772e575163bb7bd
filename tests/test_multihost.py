"""Searches over two processes (JAX's distributed runtime, CPU, gloo) equal one process.

Two processes on 127.0.0.1, each with 2 forced CPU devices, call
``jax.distributed.initialize`` and run the same sweep (and successive halving, PBT
and gradient tuning) sharded over the 4 devices of both; one process with 4 forced CPU devices runs
the same calls. The gathered results of both processes must be identical, and equal
the single process's. An audit hook (``sys.addaudithook``) records every file each
process opens for writing, renames or removes under the shared folder: only process
0 may write there. A sweep stopped by its ``on_chunk`` callback resumes from the
checkpoint on both processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import jaxhp

SCRIPT = textwrap.dedent("""
    import json, os, sys
    pid, nproc, port, out, shared = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                                     sys.argv[4], os.path.realpath(sys.argv[5]))
    writes = []

    def audit(event, args):  # every write, rename or removal under the shared folder
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            paths = [path] if writing else []
        elif event in ("os.rename", "os.remove", "os.mkdir", "os.link", "os.rmdir"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
        else:
            return
        for p in paths:
            if isinstance(p, (str, bytes, os.PathLike)):
                p = os.path.realpath(os.fsdecode(p))
                if p.startswith(shared):
                    writes.append([event, os.path.relpath(p, shared)])

    import jax
    if nproc > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=nproc, process_id=pid,
                                   initialization_timeout=120)
    sys.addaudithook(audit)
    import numpy as np
    import jaxhp
    from jaxhp import models

    split = jaxhp.datasets.load("diabetes")
    model, key = models.linear_regression(10), jax.random.key(0)

    def settings(n, steps):
        rng = np.random.default_rng(0)
        return [models.LinearHP(learning_rate=float(10 ** rng.uniform(-2.5, -0.5)),
                                l2=float(10 ** rng.uniform(-4, 0)), steps=steps,
                                batch_size=32) for _ in range(n)]

    def record(r):
        return {"val": {k: v.tolist() for k, v in r.val.items()},
                "val_curve": {k: v.tolist() for k, v in r.val_curve.items()},
                "loss_curve": r.loss_curve.tolist(), "status": r.status.tolist(),
                "best": int(r.best("mse").index),
                "top": [int(s.index) for s in r.top_k(3, "mse")],
                "n_devices": r.meta["n_devices"], "n_processes": r.meta["n_processes"],
                "loaded": sum(g.chunks_loaded for g in r.groups),
                "computed": sum(g.chunks_computed for g in r.groups)}

    out_d = {"process_index": jax.process_index(), "process_count": jax.process_count(),
             "device_count": jax.device_count(),
             "local_device_count": jax.local_device_count()}
    # 6 settings in chunks of 4 (one per device), the last padded: 2 chunks
    out_d["sweep"] = record(jaxhp.sweep(model, settings(6, 40), split, key=key, seeds=2,
                                        chunk_size=4))

    if nproc > 1:  # the checkpoint over several processes (one process: tested elsewhere)
        # stopped after its first chunk (both processes), then resumed from the checkpoint
        ckpt = os.path.join(shared, "ckpt")

        def stop(chunk):
            if chunk.chunk == 1:
                raise RuntimeError("stop here")

        try:
            jaxhp.sweep(model, settings(6, 40), split, key=key, seeds=2, chunk_size=4,
                        checkpoint_dir=ckpt, on_chunk=stop)
            out_d["stopped"] = False
        except jaxhp.CallbackError:
            out_d["stopped"] = True
        out_d["files_after_stop"] = sorted(os.listdir(ckpt))
        resumed = jaxhp.sweep(model, settings(6, 40), split, key=key, seeds=2, chunk_size=4,
                              checkpoint_dir=ckpt)
        out_d["resumed"] = record(resumed)
        resumed.save(os.path.join(shared, "result"))

        def refused(**kw):  # refused before anything runs, on every process
            try:
                jaxhp.sweep(model, settings(6, 40), split, key=key, chunk_size=4, **kw)
            except (ValueError, RuntimeError) as e:
                return f"{type(e).__name__}: {e}"
        # a changed sweep: process 0 finds the mismatch, the others stop with it
        out_d["changed"] = refused(seeds=3, checkpoint_dir=ckpt)
        # a folder that is not shared: process 1 sees none of process 0's chunks
        out_d["unshared"] = refused(seeds=2, checkpoint_dir=ckpt if pid == 0 else
                                    os.path.join(shared, "elsewhere"))

    h = jaxhp.successive_halving(model, settings(9, 27), split, key=key, seeds=2,
                                 min_steps=3, eta=3, metric="mse")
    out_d["halving"] = {"mse": h.val["mse"].tolist(),
                        "promoted": [g.promoted.tolist() for g in h.rungs]}
    p = jaxhp.pbt(model, settings(8, 30), split, key=key, seeds=2, ready_every=10,
                  metric="mse")
    out_d["pbt"] = {"mse": p.val["mse"].tolist(), "lineage": p.lineage.tolist()}
    t = jaxhp.tune_gradient(model, settings(5, 20), split, key=key, seeds=2, steps=2,
                            wrt=("learning_rate", "l2"), objective="mse")
    out_d["tune"] = {"mse": t.val["mse"].tolist(),
                     "objective": t.trajectory["objective"].tolist(),
                     "chunk": t.groups[0].chunk_size, "n_devices": t.meta["n_devices"]}
    out_d["writes"] = writes
    with open(out, "w") as f:
        json.dump(out_d, f)
""")

TIMEOUT = 420  # seconds for a whole run of processes (two JAX starts on 2 cores)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp, n_processes: int, devices_each: int) -> list[dict]:
    """Starts ``n_processes`` workers, waits for all (bounded), kills every one left
    running on any failure; returns each one's JSON (their shared folder: tmp/shared)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_each}")
    port, shared = _free_port(), tmp / "shared"
    shared.mkdir()
    outs = [tmp / f"process{i}.json" for i in range(n_processes)]
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), str(n_processes),
                               str(port), str(outs[i]), str(shared)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(n_processes)]
    logs = [""] * n_processes
    deadline = time.monotonic() + TIMEOUT
    try:
        for i, p in enumerate(procs):
            logs[i] = p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0]
    except subprocess.TimeoutExpired:
        pytest.fail(f"the processes did not finish in {TIMEOUT} s")
    finally:
        for p in procs:  # no orphans: kill whatever still runs, then reap it
            if p.poll() is None:
                p.kill()
            p.wait()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{logs[i][-4000:]}"
    return [json.loads(o.read_text()) for o in outs]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("two")
    two = _run(tmp, 2, 2)
    one = _run(tmp_path_factory.mktemp("one"), 1, 4)
    return {"two": two, "one": one[0], "shared": tmp / "shared"}


def _close(a, b, rtol=1e-5):
    np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=rtol,
                               atol=1e-7)


@pytest.mark.slow
def test_two_processes_shard_one_sweep_and_equal_one_process(runs):
    (p0, p1), one = runs["two"], runs["one"]
    assert [p0["process_index"], p1["process_index"]] == [0, 1]
    assert p0["process_count"] == 2 and one["process_count"] == 1
    assert p0["device_count"] == 4 and p0["local_device_count"] == 2
    assert one["device_count"] == 4
    for key in ("sweep", "resumed", "halving", "pbt", "tune"):  # every process holds it all
        assert p0[key] == p1[key], key
    two = p0["sweep"]
    assert two["n_devices"] == 4 and two["n_processes"] == 2
    assert one["sweep"]["n_processes"] == 1
    for part in ("val", "val_curve"):
        for metric in two[part]:
            _close(two[part][metric], one["sweep"][part][metric])
    _close(two["loss_curve"], one["sweep"]["loss_curve"])
    assert two["status"] == one["sweep"]["status"]
    assert two["best"] == one["sweep"]["best"] and two["top"] == one["sweep"]["top"]


@pytest.mark.slow
def test_halving_and_pbt_over_two_processes_equal_one_process(runs):
    p0, one = runs["two"][0], runs["one"]
    assert p0["halving"]["promoted"] == one["halving"]["promoted"]
    _close(p0["halving"]["mse"], one["halving"]["mse"])
    assert p0["pbt"]["lineage"] == one["pbt"]["lineage"]
    _close(p0["pbt"]["mse"], one["pbt"]["mse"])


@pytest.mark.slow
def test_tune_gradient_over_two_processes_equals_one_process(runs):
    """Five starts in a chunk padded to the 4 devices of both processes."""
    p0, one = runs["two"][0], runs["one"]
    assert p0["tune"]["n_devices"] == 4 and p0["tune"]["chunk"] % 4 == 0
    _close(p0["tune"]["objective"], one["tune"]["objective"])
    _close(p0["tune"]["mse"], one["tune"]["mse"])


@pytest.mark.slow
def test_only_process_zero_writes_and_both_resume(runs):
    p0, p1 = runs["two"]
    assert p1["writes"] == []
    written = {w[1] for w in p0["writes"]}
    assert "ckpt/manifest.json" in written and "result.json" in written
    assert any(w.startswith("ckpt/chunk-0-0") for w in written)
    for p in (p0, p1):  # the callback stopped both after the first chunk, saved once
        assert p["stopped"] is True
        assert [f for f in p["files_after_stop"] if f.startswith("chunk-")] == [
            "chunk-0-0.json", "chunk-0-0.npz"]
        assert p["resumed"]["loaded"] == 1 and p["resumed"]["computed"] == 1
    assert p0["sweep"]["computed"] == 2
    _close(p0["resumed"]["val"]["mse"], p0["sweep"]["val"]["mse"], rtol=0)
    assert not (runs["shared"] / "elsewhere").exists()
    loaded = jaxhp.SweepResult.load(runs["shared"] / "result")
    assert loaded.meta["n_processes"] == 2
    _close(loaded.val["mse"], p0["resumed"]["val"]["mse"], rtol=0)


@pytest.mark.slow
def test_every_process_stops_when_the_checkpoint_cannot_be_shared(runs):
    p0, p1 = runs["two"]
    assert p0["changed"].startswith("CheckpointMismatch: cannot resume from")
    assert "`seeds`" in p0["changed"]
    ckpt = os.path.realpath(runs["shared"] / "ckpt")
    assert p1["changed"] == (f"RuntimeError: checkpoint_dir {ckpt}"
                             + ": process 0 could not open it (its own error says why); "
                             "this process stops too")
    for p in (p0, p1):
        assert p["unshared"].startswith("RuntimeError: checkpoint_dir ")
        assert "the processes see different finished chunks (process 0: 2, process 1: 0)" \
            in p["unshared"]
        assert "must be on a filesystem all of them share" in p["unshared"]
