"""Adaptive searches against a full sweep: training steps spent and what they find.

Two tasks, the demo's: ridge on standardised diabetes (minibatch SGD, batch 64,
500 steps; learning rate log-uniform in [1e-3, 0.4], L2 log-uniform in
[1e-5, 1]; metric: validation MSE) and an MLP on digits (64-64, AdamW, batch
128, 300 steps; learning rate log-uniform in [1e-4, 3e-2], weight decay
uniform in [0, 1e-2], dropout uniform in [0, 0.5]; metric: validation
cross-entropy). One quasi-random population (the same settings for every
method, prefixes of it where a method uses fewer), 3 seeds (2 for the MLP).

- sweep: every setting trained for the full steps.
- random (same budget): a sweep of the first settings, as many as successive
  halving's training steps pay for at full length.
- successive halving (eta 3; two first-rung lengths) and Hyperband (eta 3)
  from the same population.
- PBT: a population of 16, ready every 10% of the steps, fraction 0.25.

"train steps" counts member steps (settings x seeds x steps). Test metrics of
the selected setting: retrained by ``evaluate_test`` (PBT: its final params).

Each method runs ``--reps`` times (default 3), each compiling afresh (the engine's
cache and JAX's caches cleared): wall, compile and run seconds are the median, with
every repeat's kept in the JSON, and "min-max" the spread of the wall time.

Usage: python bench/bench_adaptive.py [--reps 3] [--out bench/results/adaptive.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax

import jaxhp
from jaxhp import hyperband, hyperband_brackets, pbt, successive_halving
from jaxhp.models import MLPHP, LinearHP, linear_regression, mlp_classifier


def _task(name):
    split = jaxhp.datasets.load(name, key=jax.random.key(0))
    if name == "diabetes":
        space = jaxhp.quasirandom(81, seed=0, learning_rate=jaxhp.loguniform(1e-3, 0.4),
                                  l2=jaxhp.loguniform(1e-5, 1.0))
        return (split, linear_regression(10), LinearHP(steps=500, batch_size=64), space,
                3, "mse", {"min_steps": 20}, 60)
    space = jaxhp.quasirandom(81, seed=0, learning_rate=jaxhp.loguniform(1e-4, 3e-2),
                              weight_decay=jaxhp.uniform(0.0, 1e-2),
                              dropout=jaxhp.uniform(0.0, 0.5))
    return (split, mlp_classifier(64, 10), MLPHP(width=64, depth=2, steps=300),
            space, 2, "ce", {"min_steps": 33}, 100)


def _row(method, r, metric, steps, t, extra_metric=None):
    """One method's row; ``t``: the repeats' ``(results, wall seconds)`` (the first's
    selection and test; times: the median, with every repeat's)."""
    runs, walls = t
    best = r.best(metric)
    test = r.evaluate_test(metric)
    med = statistics.median
    out = {"method": method, "settings": r.n_settings, "train_steps": int(steps),
           "best_val": best.value, "chosen": best.setting.to_dict(),
           "test": test.metrics,
           "compile_s": med([x.compile_seconds for x in runs]),
           "run_s": med([x.run_seconds for x in runs]), "wall_s": med(walls),
           "wall_s_all": walls, "compile_s_all": [x.compile_seconds for x in runs],
           "run_s_all": [x.run_seconds for x in runs]}
    if extra_metric:
        out["best_val_" + extra_metric] = float(r.aggregate(extra_metric)[0][best.index])
    return out


def bench(name, reps: int = 1):
    split, model, base, space, seeds, metric, sh, min_alt = _task(name)
    settings = space.settings(type(base), base=base)
    key = jax.random.key(1)
    steps = base.steps
    extra = "accuracy" if name == "digits" else None
    rows = []

    def timed(fn):
        # every method compiles its own programs: the engine's cache and JAX's caches
        # start empty, so wall time includes compilation as a user's first call would;
        # ``reps`` times (the spread of compile times on a shared CPU is wide)
        runs, walls = [], []
        for _ in range(reps):
            jaxhp._engine.CACHE.clear()
            jax.clear_caches()
            t0 = time.perf_counter()
            runs.append(fn())
            walls.append(time.perf_counter() - t0)
        return runs[0], (runs, walls)

    r, t = timed(lambda: jaxhp.sweep(model, settings, split, key=key, seeds=seeds,
                                     progress=False))
    rows.append(_row("sweep", r, metric, len(settings) * seeds * steps, t, extra))
    h, t = timed(lambda: successive_halving(model, settings, split, key=key, seeds=seeds,
                                            metric=metric, **sh))
    rows.append(_row("successive halving", h, metric, h.meta["search"]["train_steps"], t,
                     extra))
    h2, t = timed(lambda: successive_halving(model, settings, split, key=key, seeds=seeds,
                                             metric=metric, min_steps=min_alt))
    rows.append(_row(f"successive halving, min {min_alt}", h2, metric,
                     h2.meta["search"]["train_steps"], t, extra))
    n_same = max(1, h.meta["search"]["train_steps"] // (seeds * steps))
    r, t = timed(lambda: jaxhp.sweep(model, settings[:n_same], split, key=key, seeds=seeds,
                                     progress=False))
    rows.append(_row(f"random, same budget ({n_same})", r, metric, n_same * seeds * steps,
                     t, extra))
    need = sum(b[0] for b in hyperband_brackets(sh["min_steps"], steps, 3))
    r, t = timed(lambda: hyperband(model, settings[:need], split, key=key, seeds=seeds,
                                   metric=metric, **sh))
    rows.append(_row("hyperband", r, metric, r.meta["search"]["train_steps"], t, extra))
    r, t = timed(lambda: pbt(model, settings[:16], split, key=key, seeds=seeds,
                             ready_every=steps // 10, metric=metric))
    rows.append(_row("pbt (16)", r, metric, r.meta["search"]["train_steps"], t, extra))
    r, t = timed(lambda: jaxhp.sweep(model, settings[:16], split, key=key, seeds=seeds,
                                     progress=False))
    rows.append(_row("sweep of PBT's 16", r, metric, 16 * seeds * steps, t, extra))
    rungs = [[(g.steps, len(g.settings)) for g in x.rungs] for x in (h, h2)]
    return {"task": name, "metric": metric, "seeds": seeds, "steps": steps,
            "halving_rungs": rungs, "rows": rows}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/results/adaptive.json")
    p.add_argument("--reps", type=int, default=3,
                   help="runs of each method, every one compiling afresh (median reported)")
    args = p.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import machine_info, write_json

    out = {"machine": machine_info(),
           "reps": args.reps,
           "tasks": [bench("diabetes", args.reps), bench("digits", args.reps)]}
    for task in out["tasks"]:
        print(f"\n{task['task']} ({task['metric']}, {task['seeds']} seeds, "
              f"{task['steps']} steps); halving rungs (steps, settings): "
              f"{task['halving_rungs']}")
        print(f"{'method':30s} {'train steps':>12s} {'val':>8s} {'test':>8s} "
              f"{'compile s':>9s} {'run s':>7s} {'wall s':>7s} {'min-max':>11s} "
              f"{'vs sweep':>8s}")
        sweep_wall = task["rows"][0]["wall_s"]
        for r in task["rows"]:
            lo, hi = min(r["wall_s_all"]), max(r["wall_s_all"])
            print(f"{r['method']:30s} {r['train_steps']:>12,d} {r['best_val']:8.4f} "
                  f"{r['test'][task['metric']]:8.4f} {r['compile_s']:9.2f} {r['run_s']:7.2f}"
                  f" {r['wall_s']:7.2f} {lo:5.2f}-{hi:<5.2f}"
                  f" {r['wall_s'] / sweep_wall:8.2f}"
                  + (f"  acc val {r['best_val_accuracy']:.4f} test "
                     f"{r['test']['accuracy']:.4f}" if 'best_val_accuracy' in r else ""))
    write_json(args.out, out)


if __name__ == "__main__":
    main()
