"""Runs JAX measurements in a fresh process (``python -m bench.worker JOBS.json OUT.json``).

A fresh process gives each measurement its own device setup (the parent sets
``XLA_FLAGS=--xla_force_host_platform_device_count=K`` before JAX starts),
fresh compilation caches (so compile time is really measured at every N) and
its own peak resident memory (``getrusage``).
"""

from __future__ import annotations

import json
import sys
import time


def run_job(job: dict) -> dict:
    import jax
    import numpy as np

    from bench import jax_impls, tasks
    from bench.common import max_rss_bytes

    task = tasks.get(job["task"])
    kind, n, reps = job["kind"], job["n"], job.get("reps", 1)
    devices = jax.local_devices()
    t0 = time.perf_counter()
    if kind == "compare":
        # Several vmapped competitors, compiled first, then timed round-robin.
        prepared = {}
        for comp in job["competitors"]:
            if comp == "jaxhp":
                prepared[comp] = jax_impls.prepare_jaxhp(task, n, devices=devices,
                                                         **job.get("kwargs", {}))
            else:
                variant = "val_only" if comp == "vmap_val_only" else "curve"
                prepared[comp] = jax_impls.prepare_vmap(task, n, variant, devices=devices)
        out = {"by_competitor": jax_impls.interleaved(prepared, reps)}
    elif kind == "competitor":
        # A per-setting or PyTorch competitor, alone in this process (its memory too).
        from bench import run

        out = run.run_competitor(job)
    elif kind == "jaxhp_memory":
        # One cold call, curves off: the peak memory of a very large sweep.
        import jaxhp

        space = task.space(n)
        t1 = time.perf_counter()
        res = jaxhp.sweep(task.model, space, task.split, key=jax.random.key(0),
                          base=task.base, progress=False, devices=devices,
                          **job.get("kwargs", {}))
        wall = time.perf_counter() - t1
        vals = np.where(res.setting_status() == "ok", res.metric(task.metric)[:, 0], np.nan)
        out = {"n": n, "n_timed": n, "seconds": wall, "settings_per_s": n / wall,
               "compile_s": res.compile_seconds, "run_seconds": res.run_seconds,
               "engine_settings_per_s": n / res.run_seconds,
               "chunk_size": res.groups[0].chunk_size, "n_chunks": res.groups[0].n_chunks,
               "best_val": task.best(vals), "extrapolated": False,
               "n_devices": res.meta["n_devices"]}
    else:
        raise ValueError(f"unknown job kind {kind!r}")
    out.update(kind=kind, task=job["task"], job_seconds=time.perf_counter() - t0,
               process_max_rss=max_rss_bytes())
    return out


def run_jobs(jobs: list[dict]) -> list[dict]:
    """Every job's result, or its error (one failing job does not stop the others)."""
    results = []
    for job in jobs:
        try:
            results.append(run_job(job))
        except Exception as e:  # noqa: BLE001 - reported to the parent, not fatal
            results.append({"kind": job["kind"], "task": job["task"], "n": job["n"],
                            "error": f"{type(e).__name__}: {e}"})
    return results


def main(argv: list[str]) -> int:
    jobs_path, out_path = argv
    with open(jobs_path) as f:
        jobs = json.load(f)
    import jax

    results = run_jobs(jobs)
    with open(out_path, "w") as f:
        json.dump({"results": results, "devices": [str(d) for d in jax.local_devices()]}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
