"""Optuna's TPE, batched through jaxhp against one trial at a time.

Ridge on diabetes (LinearHP, ``--steps`` full-batch steps, default 200, one seed),
learning rate and L2 log-uniform, the same number of trials on each side, TPE seeded the same:

- ``optuna_search``: ``jaxhp.optuna_search(study, ..., rounds=R, batch=B)``, each
  round's B trials trained as one sweep (one compiled program for every round);
- ``study.optimize``: Optuna's own loop, one trial at a time, the objective calling
  ``jaxhp.train`` (its program compiled by the first trial, reused after).

Compile time is reported apart: for ``optuna_search`` the result's
``compile_seconds``; for ``study.optimize`` one ``jaxhp.train`` of a fixed setting
before the loop (compile + one run), so the loop itself is steady state. Batching
changes what TPE sees (it proposes B trials from the same history), so the best
values differ: both are reported.

Usage: python bench/bench_optuna_search.py [--out bench/results/optuna_search.json]
       [--rounds 4] [--batch 16] [--steps 200]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import optuna

import jaxhp
from jaxhp.models import LinearHP, linear_regression

PARAMS = {"learning_rate": jaxhp.loguniform(1e-3, 0.4), "l2": jaxhp.loguniform(1e-5, 1.0)}
KEY = jax.random.key(1)


def _study():
    return optuna.create_study(direction="minimize",
                               sampler=optuna.samplers.TPESampler(seed=0))


def batched(split, rounds: int, batch: int, steps: int) -> dict:
    model = linear_regression(10)
    study = _study()
    t0 = time.perf_counter()
    r = jaxhp.optuna_search(study, model, split, params=PARAMS, rounds=rounds, batch=batch,
                            key=KEY, base=LinearHP(steps=steps), metric="mse")
    wall = time.perf_counter() - t0
    return {"method": f"optuna_search (batch {batch})", "trials": len(study.trials),
            "compile_s": r.compile_seconds, "wall_s": wall,
            "steady_s": wall - r.compile_seconds, "best_val": study.best_value}


def one_at_a_time(split, n: int, steps: int) -> dict:
    base = LinearHP(steps=steps)
    model = linear_regression(10)
    study = _study()
    t0 = time.perf_counter()
    jaxhp.train(model, base, split, key=jax.random.fold_in(KEY, 0))  # compile + one run
    first = time.perf_counter() - t0

    def objective(trial):
        hp = base.replace(
            learning_rate=trial.suggest_float("learning_rate", 1e-3, 0.4, log=True),
            l2=trial.suggest_float("l2", 1e-5, 1.0, log=True))
        return float(jaxhp.train(model, hp, split, key=jax.random.fold_in(KEY, 0)).val["mse"])

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=n)
    loop = time.perf_counter() - t0
    return {"method": "study.optimize (1 trial at a time)", "trials": len(study.trials),
            "compile_s": first, "wall_s": first + loop, "steady_s": loop,
            "best_val": study.best_value}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/optuna_search.json")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    rows = [batched(split, args.rounds, args.batch, args.steps),
            one_at_a_time(split, args.rounds * args.batch, args.steps)]
    print(f"{'method':38s} {'trials':>6s} {'compile s':>9s} {'steady s':>9s} "
          f"{'wall s':>7s} {'best mse':>9s}")
    for r in rows:
        print(f"{r['method']:38s} {r['trials']:6d} {r['compile_s']:9.2f} "
              f"{r['steady_s']:9.2f} {r['wall_s']:7.2f} {r['best_val']:9.4f}")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import machine_info, write_json

    out = {"machine": machine_info(), "task": f"ridge on diabetes, {args.steps} steps, 1 seed",
           "rounds": args.rounds, "batch": args.batch, "rows": rows}
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
