"""Hypergradients: cost of gradient-based tuning, and memory of reverse mode.

Part 1 (cost to reach a target). Ridge on standardised diabetes, full-batch
SGD, 100 steps per run; learning rate in [1e-2, 1] and L2 in [1e-4, 10], both
log scale. The target is the best validation MSE of a dense 64 x 64 log grid
(4,096 settings) plus 1%. For each method: training steps run (forward steps;
a reverse-mode hypergradient also runs a backward pass, measured separately as
a wall-time ratio), wall time (compile separate), and the validation MSE
reached.
- grid: the 4,096-setting sweep itself.
- random search: settings drawn log-uniformly until one reaches the target
  (median over repetitions); wall time of a sweep of that many settings.
- gradient-based tuning (jaxhp tune_gradient): 4 or 16 log-uniform starts,
  Adam(0.1) in log space; the first outer step at which the best start reaches
  the target; wall time of a run with exactly that many outer steps.

Part 2 (memory). Peak temporary memory of the compiled reverse-mode
hypergradient (XLA's memory analysis) for ridge and for an MLP (digits,
64-64-10, Adam, minibatch 64) as training steps grow (100, 1,000, 10,000),
without and with rematerialisation (``remat="auto"``: a checkpoint every
ceil(sqrt(steps)) steps), forward mode for comparison, and the peak resident
memory of a fresh process that runs the MLP hypergradient once.

Usage: python bench/bench_hypergrad.py [--quick] [--out bench/results/hypergrad.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

import jax
import numpy as np
import optax

import jaxhp
from jaxhp import sweep, tune_gradient
from jaxhp._search.hypergrad import Solver, _hypergradient_jit, resolve_remat, to_coords
from jaxhp._train import _train_jit, resolve_loop
from jaxhp.models import MLPHP, LinearHP, linear_regression, mlp_classifier

KEY = jax.random.key(0)
STEPS = 100
LR, L2 = (1e-2, 1.0), (1e-4, 10.0)


def _loguniform(rng, lo_hi, n):
    return np.exp(rng.uniform(np.log(lo_hi[0]), np.log(lo_hi[1]), n))


def _timed_sweep(model, settings, split):
    t0 = time.perf_counter()
    res = sweep(model, settings, split, key=KEY, progress=False, loss_every=None)
    return res, time.perf_counter() - t0


TARGETS = (0.01, 0.001, 0.0001)  # relative to the grid's best validation MSE


def _first(mask) -> int | None:
    hit = np.flatnonzero(mask)
    return int(hit[0]) if hit.size else None


def cost(split, quick: bool) -> dict:
    model = linear_regression(10)
    out: dict = {"steps_per_run": STEPS, "lr_range": LR, "l2_range": L2,
                 "targets_rel": TARGETS}
    side = 32 if quick else 64
    grid = [LinearHP(learning_rate=a, l2=b, steps=STEPS)
            for a in np.logspace(*np.log10(LR), side) for b in np.logspace(*np.log10(L2), side)]
    sweep(model, grid[:8], split, key=KEY, progress=False, loss_every=None)  # warm caches
    res, wall = _timed_sweep(model, grid, split)
    best = res.best("mse").value
    mse = np.where(np.isfinite(res.val["mse"][:, 0]), res.val["mse"][:, 0], np.inf)
    targets = [best * (1 + t) for t in TARGETS]
    out["targets"] = targets
    out["grid"] = {"settings": len(grid), "train_steps": len(grid) * STEPS,
                   "compile_s": res.compile_seconds, "run_s": res.run_seconds,
                   "wall_s": wall, "best_mse": best,
                   "fraction_within": [float(np.mean(mse <= t)) for t in targets]}

    # Random search: how many log-uniform draws until one reaches each target?
    reps, n_pool = (10, 512) if quick else (40, 1024)
    rng = np.random.default_rng(1)
    pool = [LinearHP(learning_rate=a, l2=b, steps=STEPS) for a, b in
            zip(_loguniform(rng, LR, reps * n_pool), _loguniform(rng, L2, reps * n_pool))]
    pres = sweep(model, pool, split, key=KEY, progress=False, loss_every=None)
    pm = np.where(np.isfinite(pres.val["mse"][:, 0]), pres.val["mse"][:, 0], np.inf)
    out["random"] = []
    for t in targets:
        needed = []
        for r in range(reps):
            i = _first(pm[r * n_pool:(r + 1) * n_pool] <= t)
            needed.append(n_pool + 1 if i is None else i + 1)
        med = int(np.median(needed))
        row = {"settings_needed_median": med if med <= n_pool else None,
               "reached_in": int(np.sum(np.asarray(needed) <= n_pool)), "reps": reps,
               "pool": n_pool}
        if med <= n_pool:
            sres, wall = _timed_sweep(model, pool[:med], split)
            row.update({"train_steps": med * STEPS, "compile_s": sres.compile_seconds,
                        "run_s": sres.run_seconds, "wall_s": wall})
        out["random"].append(row)

    # Gradient-based tuning: the first outer step at which the best start is there.
    out["gradient"] = {}
    max_outer = 30
    for n_starts, mode in ((4, "reverse"), (16, "reverse"), (16, "forward")):
        rng = np.random.default_rng(2)
        starts = [LinearHP(learning_rate=a, l2=b, steps=STEPS) for a, b in
                  zip(_loguniform(rng, LR, n_starts), _loguniform(rng, L2, n_starts))]
        kw = dict(key=KEY, wrt=("learning_rate", "l2"), objective="mse", mode=mode,
                  optimizer=optax.adam(0.1), keep="best")
        full = tune_gradient(model, starts, split, steps=max_outer, **kw)
        traj = np.where(np.isfinite(full.trajectory["objective"]),
                        full.trajectory["objective"], np.inf)
        best_so_far = np.minimum.accumulate(traj.min(axis=0))
        rows = []
        for t in targets:
            t_star = _first(best_so_far <= t)
            row = {"outer_steps_needed": t_star}
            if t_star is not None:
                t0 = time.perf_counter()
                r = tune_gradient(model, starts, split, steps=max(t_star, 1), **kw)
                wall = time.perf_counter() - t0
                tr = r.trajectory
                row.update({"train_steps": n_starts * (t_star + 1) * STEPS,
                            "hypergradients": n_starts * t_star,
                            "compile_s": tr["compile_s"], "run_s": tr["run_s"],
                            "wall_s": wall, "best_mse": float(r.best("mse").value)})
            rows.append(row)
        out["gradient"][f"{mode}-{n_starts}"] = {
            "starts": n_starts, "mode": mode, "targets": rows,
            "best_mse_per_outer_step": best_so_far.tolist()}

    # What one hypergradient costs relative to one training run (compiled programs).
    hp = LinearHP(learning_rate=0.1, l2=1e-2, steps=STEPS)
    cfg = resolve_loop(hp, split.sizes[0], None, None)
    tc = _train_jit.lower(model, cfg, hp, split.train, split.val, KEY).compile()
    t_train = _best(lambda: jax.block_until_ready(tc(hp, split.train, split.val, KEY)), 20)
    ratios = {}
    for mode in ("reverse", "forward"):
        z = to_coords(hp, ("learning_rate", "l2"))
        args = (z, hp, split.train, split.val, KEY)
        hc = _hypergradient_jit.lower(model, cfg, "mse", mode, Solver(), *args).compile()
        ratios[mode] = _best(lambda hc=hc, args=args: jax.block_until_ready(hc(*args)),
                             20) / t_train
    out["hypergradient_over_training_time"] = ratios
    return out


def _best(fn, reps: int = 5) -> float:
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _problem(name: str, steps: int):
    if name == "ridge":
        split = jaxhp.datasets.load("diabetes", key=KEY)
        return (linear_regression(10), LinearHP(learning_rate=0.1, l2=1e-2, steps=steps),
                split, "mse")
    split = jaxhp.datasets.load("digits", key=KEY)
    return (mlp_classifier(64, 10), MLPHP(width=64, depth=1, steps=steps, batch_size=64,
                                           optimizer="adam"), split, "ce")


def _compiled(name: str, steps: int, remat, mode: str = "reverse"):
    model, hp, split, obj = _problem(name, steps)
    cfg = resolve_loop(hp, split.sizes[0], None, None)
    if mode == "reverse":
        cfg = cfg._replace(remat=resolve_remat(remat, steps))
    z = to_coords(hp, ("learning_rate",))
    args = (z, hp, split.train, split.val, KEY)
    t0 = time.perf_counter()
    c = _hypergradient_jit.lower(model, cfg, obj, mode, Solver(), *args).compile()
    return c, args, time.perf_counter() - t0, cfg.remat


def memory(quick: bool) -> list[dict]:
    rows = []
    step_counts = (100, 1000) if quick else (100, 1000, 10000)
    for name in ("ridge", "mlp"):
        for steps in step_counts:
            for mode, remat in (("reverse", None), ("reverse", "auto"), ("forward", None)):
                c, args, compile_s, k = _compiled(name, steps, remat, mode)
                ma = c.memory_analysis()
                jax.block_until_ready(c(*args))
                run_s = _best(lambda c=c, args=args: jax.block_until_ready(c(*args)), 2)
                row = {"model": name, "steps": steps, "mode": mode, "remat_every": k,
                       "temp_bytes": int(ma.temp_size_in_bytes),
                       "argument_bytes": int(ma.argument_size_in_bytes),
                       "compile_s": compile_s, "run_s": run_s}
                if name == "mlp" and mode == "reverse" and not quick:
                    row["peak_rss_bytes"] = _child_rss(name, steps, remat)
                rows.append(row)
    return rows


def _child_rss(name: str, steps: int, remat) -> dict:
    """Peak RSS of a fresh process: after compiling, and after one run."""
    cmd = [sys.executable, __file__, "--rss-child", name, str(steps), str(remat)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _rss_child(name: str, steps: int, remat: str) -> None:
    c, args, _, _ = _compiled(name, steps, None if remat == "None" else remat)
    after_compile = _maxrss()
    jax.block_until_ready(c(*args))
    print(json.dumps({"after_compile": after_compile, "after_run": _maxrss()}))


def _maxrss() -> int:
    """Peak RSS of this process: VmHWM (ru_maxrss is inherited across fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if platform.system() == "Darwin" else 1024)


def _mib(b) -> str:
    return f"{b / 2**20:,.2f}"


def _table(headers, rows) -> None:
    widths = [max(len(h), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def report(res: dict) -> None:
    c = res["cost"]
    g = c["grid"]
    print(f"\nRidge on diabetes, {c['steps_per_run']} steps per run. Grid of "
          f"{g['settings']:,}: best val MSE {g['best_mse']:.5f}, {g['train_steps']:,} "
          f"training steps, compile {g['compile_s']:.2f} s, run {g['run_s']:.3f} s")
    for j, rel in enumerate(c["targets_rel"]):
        print(f"\nTarget: val MSE <= grid best + {rel:.2%} ({c['targets'][j]:.5f}); "
              f"{g['fraction_within'][j]:.1%} of the grid is there")
        rows = [["grid", g["settings"], f"{g['train_steps']:,}", f"{g['compile_s']:.2f}",
                 f"{g['run_s']:.3f}"]]
        r = c["random"][j]
        if r["settings_needed_median"] is None:
            rows.append(["random (median)", f"> {r['pool']}", "-", "-", "-"])
        else:
            rows.append(["random (median)", r["settings_needed_median"],
                         f"{r['train_steps']:,}", f"{r['compile_s']:.2f}",
                         f"{r['run_s']:.3f}"])
        for key, gr in c["gradient"].items():
            row = gr["targets"][j]
            if row["outer_steps_needed"] is None:
                rows.append([f"gradient {key}", f"{gr['starts']} starts", "not reached",
                             "-", "-"])
                continue
            rows.append([f"gradient {key}", f"{gr['starts']} x {row['outer_steps_needed']} "
                         "outer", f"{row['train_steps']:,}", f"{row['compile_s']:.2f}",
                         f"{row['run_s']:.3f}"])
        _table(["method", "settings", "train steps", "compile s", "run s"], rows)
    print("one hypergradient / one training run (wall time): " + ", ".join(
        f"{k} {v:.1f}x" for k, v in c["hypergradient_over_training_time"].items()))
    print("\nReverse-mode memory (XLA temp bytes, MiB) as training steps grow")
    rows = []
    for r in res["memory"]:
        rss = r.get("peak_rss_bytes")
        rows.append([r["model"], r["steps"], r["mode"], r["remat_every"] or "-",
                     _mib(r["temp_bytes"]), f"{r['compile_s']:.2f}", f"{r['run_s']:.3f}",
                     _mib(rss["after_compile"]) if rss else "-",
                     _mib(rss["after_run"]) if rss else "-"])
    _table(["model", "steps", "mode", "remat every", "temp MiB", "compile s", "run s",
            "RSS after compile MiB", "peak RSS MiB"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller grid, fewer steps")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "hypergrad.json"))
    ap.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        _rss_child(args.rss_child[0], int(args.rss_child[1]), args.rss_child[2])
        return
    split = jaxhp.datasets.load("diabetes", key=KEY)
    t0 = time.perf_counter()
    res = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                       "jax": jax.__version__, "optax": optax.__version__,
                       "backend": jax.default_backend(),
                       "load_average": list(os.getloadavg())},
           "quick": args.quick, "cost": cost(split, args.quick),
           "memory": memory(args.quick)}
    res["total_s"] = time.perf_counter() - t0
    report(res)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out} ({res['total_s']:.0f} s)")


if __name__ == "__main__":
    main()
