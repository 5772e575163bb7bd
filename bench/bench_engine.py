"""The engine's own targets (issue 10) that ``bench_program.py`` does not measure.

- ``host``: host time per setting of a warm ``jaxhp.sweep`` over the bench's
  ridge space (``loss_every=0``): the whole call minus its compiled calls
  (``result.run_seconds``; nothing is compiled in a warm call), divided by N.
  Everything outside the compiled calls counts: the space's table, grouping,
  device batches, transfers, the result. N = 1,024 and 100,000 (and 1,000,000
  with ``--huge``); ``--reps`` calls each, min/median/max reported.
- ``memory`` (``--huge``): peak RSS of a fresh process sweeping 1,000,000 ridge
  settings with ``loss_every=0`` (cold: compile included).
- ``devices``: successive halving on the bench's MLP against the hand-written
  ``jit(vmap(scan))`` of the same settings, each in a fresh process with 1 and
  with 2 forced CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count``).
  Both are compiled (warmed) first, then timed round-robin; the speed-up is
  ``t(1 device) / t(2 devices)`` of the minima, and the target compares
  halving's speed-up with the hand-written program's.
- ``tune`` (``--only tune``): the same with ``jaxhp.tune_gradient`` on the MLP
  (16 starts, 2 outer steps in reverse mode, the learning rate tuned) in place of
  halving: the chunks of starts are sharded over the devices as a sweep's are.

Every figure comes from this run; the JSON records the machine, the commit (a
dirty tree is flagged) and every repetition.

Usage: python bench/bench_engine.py [--reps 5] [--huge] [--only host|devices|tune]
       [--out bench/results/engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/bench_engine.py``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
FORCE = "--xla_force_host_platform_device_count"


def spread(times: list[float]) -> dict:
    return {"min": min(times), "median": statistics.median(times), "max": max(times),
            "all": list(times)}


def host_per_setting(n: int, reps: int) -> dict:
    """Warm sweep calls of ``n`` ridge settings: host seconds per setting."""
    import jax

    import jaxhp
    from bench import tasks

    task = tasks.get("ridge")
    space = task.space(n)
    kw = dict(key=jax.random.key(0), base=task.base, progress=False, loss_every=0)
    first = jaxhp.sweep(task.model, space, task.split, **kw)
    walls, hosts = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        res = jaxhp.sweep(task.model, space, task.split, **kw)
        wall = time.perf_counter() - t0
        walls.append(wall)
        hosts.append((wall - res.run_seconds - res.compile_seconds) / n * 1e6)
    return {"n": n, "compile_s": first.compile_seconds, "wall_s": spread(walls),
            "host_us_per_setting": spread(hosts), "chunk_size": res.groups[0].chunk_size,
            "n_chunks": res.groups[0].n_chunks}


def memory_job(n: int) -> dict:
    """One cold sweep of ``n`` ridge settings (``loss_every=0``) and this process's peak RSS."""
    import jax

    import jaxhp
    from bench import tasks
    from bench.common import max_rss_bytes

    task = tasks.get("ridge")
    t0 = time.perf_counter()
    res = jaxhp.sweep(task.model, task.space(n), task.split, key=jax.random.key(0),
                      base=task.base, progress=False, loss_every=0)
    wall = time.perf_counter() - t0
    return {"n": n, "wall_s": wall, "run_s": res.run_seconds,
            "host_us_per_setting": (wall - res.run_seconds - res.compile_seconds) / n * 1e6,
            "peak_rss_gib": max_rss_bytes() / 2**30,
            "ok": int((res.setting_status() == "ok").sum())}


def devices_job(n: int, reps: int) -> dict:
    """Halving vs the hand-written program on the MLP, in this process's devices."""
    import jax

    import jaxhp
    from bench import jax_impls, tasks

    task = tasks.get("mlp")
    devices = jax.local_devices()
    hand = jax_impls.prepare_vmap(task, n, "curve", devices=devices)
    space = task.space(n)
    kw = dict(key=jax.random.key(0), base=task.base, min_steps=task.steps // 9, eta=3,
              metric="loss", progress=False, devices=devices)
    first = jaxhp.successive_halving(task.model, space, task.split, **kw)
    t_hand, t_halving = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        hand.time_once()
        t_hand.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jaxhp.successive_halving(task.model, space, task.split, **kw)
        t_halving.append(time.perf_counter() - t0)
    return {"n": n, "n_devices": len(devices), "hand_s": spread(t_hand),
            "halving_s": spread(t_halving), "halving_compile_s": first.compile_seconds,
            "halving_member_steps": first.meta["search"]["train_steps"]}


def tune_devices_job(n: int, reps: int) -> dict:
    """tune_gradient vs the hand-written program on the MLP, in this process's devices."""
    import jax

    import jaxhp
    from bench import jax_impls, tasks

    task = tasks.get("mlp")
    devices = jax.local_devices()
    hand = jax_impls.prepare_vmap(task, n, "curve", devices=devices)  # the same settings
    space = task.space(n)
    kw = dict(key=jax.random.key(0), base=task.base, steps=2, wrt=("learning_rate",),
              objective="loss", progress=False, devices=devices)
    first = jaxhp.tune_gradient(task.model, space, task.split, **kw)
    t_hand, t_tune = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        hand.time_once()
        t_hand.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        jaxhp.tune_gradient(task.model, space, task.split, **kw)
        t_tune.append(time.perf_counter() - t0)
    return {"n": n, "n_devices": len(devices), "hand_s": spread(t_hand),
            "tune_s": spread(t_tune), "tune_compile_s": first.trajectory["compile_s"],
            "tune_chunk": first.groups[0].chunk_size,
            "tune_train_steps": first.trajectory["train_steps"]}


def in_subprocess(job: dict, n_devices: int | None = None) -> dict:
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FORCE)]
    if n_devices:
        flags.append(f"{FORCE}={n_devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--job",
                           json.dumps(job)], env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_job(job: dict) -> dict:
    if job["kind"] == "memory":
        return memory_job(job["n"])
    if job["kind"] == "devices":
        return devices_job(job["n"], job["reps"])
    if job["kind"] == "tune":
        return tune_devices_job(job["n"], job["reps"])
    raise ValueError(job["kind"])


def _tune_section(args, out: dict) -> int:
    """``--only tune``: tune_gradient's 2-device speed-up against the hand-written one."""
    from bench.common import write_json

    dev = {nd: in_subprocess({"kind": "tune", "n": 16, "reps": args.reps}, nd)
           for nd in (1, 2)}
    out["tune_devices"] = dev
    if all("hand_s" in d for d in dev.values()):
        s_hand = dev[1]["hand_s"]["min"] / dev[2]["hand_s"]["min"]
        s_tune = dev[1]["tune_s"]["min"] / dev[2]["tune_s"]["min"]
        med = dev[1]["tune_s"]["median"] / dev[2]["tune_s"]["median"]
        print(f"tune devices (MLP, 16 starts): hand-written speed-up {s_hand:.2f}x, "
              f"tune_gradient {s_tune:.2f}x (median {med:.2f}x; {s_tune / s_hand:.2f} of "
              "the hand-written one)", flush=True)
        out["targets"]["tune_2dev_speedup_vs_hand"] = {
            "value": s_tune / s_hand, "hand_speedup": s_hand, "tune_speedup": s_tune,
            "tune_speedup_median": med}
    else:
        print(f"tune devices: failed {dev}", flush=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--huge", action="store_true", help="also N=1,000,000 (minutes)")
    ap.add_argument("--mlp-n", type=int, default=81)
    ap.add_argument("--out", default=str(ROOT / "bench/results/engine.json"))
    ap.add_argument("--only", choices=("host", "devices", "tune"),
                    help="run one section (default: both)")
    ap.add_argument("--job", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(json.loads(args.job))))
        return 0

    from bench.common import machine_info, write_json

    machine = machine_info()
    print(f"commit {machine['git_commit']}, {machine['cpu_model']}, {machine['cores']} cores, "
          f"load {machine['load_average']}", flush=True)
    out: dict = {"machine": machine, "host": [], "targets": {}}
    if args.only == "tune":
        return _tune_section(args, out)
    sizes = () if args.only == "devices" else (1024, 100_000) + ((1_000_000,) if args.huge
                                                                   else ())
    for n in sizes:
        r = host_per_setting(n, args.reps if n < 1_000_000 else 2)
        out["host"].append(r)
        h = r["host_us_per_setting"]
        print(f"host N={n:>9,}: {h['min']:.2f} / {h['median']:.2f} / {h['max']:.2f} us per "
              f"setting (min/median/max), wall median {r['wall_s']['median']:.3f} s, "
              f"chunks {r['n_chunks']} x {r['chunk_size']}", flush=True)
    if out["host"]:
        big = out["host"][-1]
        out["targets"]["host_us_per_setting"] = {
            "value": big["host_us_per_setting"]["median"], "target": "<= 1",
            "note": f"median at N={big['n']:,}"}
    if args.huge:
        m = in_subprocess({"kind": "memory", "n": 1_000_000})
        out["memory"] = m
        print(f"memory N=1,000,000: {m}", flush=True)
        if "peak_rss_gib" in m:
            out["targets"]["peak_rss_gib_1m"] = {"value": m["peak_rss_gib"],
                                                 "target": "< 2"}
    if args.only == "host":
        write_json(args.out, out)
        print(f"wrote {args.out}")
        return 0
    dev = {nd: in_subprocess({"kind": "devices", "n": args.mlp_n, "reps": args.reps}, nd)
           for nd in (1, 2)}
    out["devices"] = dev
    if all("hand_s" in d for d in dev.values()):
        s_hand = dev[1]["hand_s"]["min"] / dev[2]["hand_s"]["min"]
        s_halv = dev[1]["halving_s"]["min"] / dev[2]["halving_s"]["min"]
        print(f"devices (MLP N={args.mlp_n}): hand-written speed-up {s_hand:.2f}x, halving "
              f"{s_halv:.2f}x ({s_halv / s_hand:.2f} of the hand-written one)", flush=True)
        out["targets"]["halving_2dev_speedup_vs_hand"] = {
            "value": s_halv / s_hand, "target": ">= 0.9",
            "hand_speedup": s_hand, "halving_speedup": s_halv}
    else:
        print(f"devices: failed {dev}", flush=True)
    write_json(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
