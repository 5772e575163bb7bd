"""Regret of ``jaxhp.bayesopt`` against random, quasi-random and successive halving.

Three problems, one training key (so a setting's value is one number), the searches
repeated with ``--reps`` seeds (0, 1, ...) for their own randomness:

- ``ridge``: linear regression on standardised diabetes, full-batch SGD, 200 steps;
  learning rate log-uniform in [1e-3, 1] (divergence near the top), L2 log-uniform in
  [1e-5, 1]; validation MSE.
- ``digits-mlp``: ``mlp_classifier`` 64-32-10 on digits, AdamW, batch 64, 200 steps;
  learning rate log-uniform in [1e-4, 0.1], weight decay uniform in [0, 0.01], dropout
  uniform in [0, 0.5]; validation cross-entropy.
- ``cancer-mlp``: a 30-16-2 MLP on breast cancer, SGD with momentum, batch 64, 200
  steps, four tunables: learning rate log-uniform in [1e-3, 1], L2 log-uniform in
  [1e-6, 0.1], dropout uniform in [0, 0.6], momentum uniform in [0, 0.98];
  validation cross-entropy.

Methods at equal member steps (``rounds * batch`` settings trained for the full steps,
one seed): random (``jaxhp.random``), quasi-random (``jaxhp.quasirandom``),
``jaxhp.successive_halving`` (eta 3, first rung ``steps // 9``, over as many random
settings as fit in the same member steps; the exact count is reported) and
``jaxhp.bayesopt`` (``rounds`` rounds of ``batch``). Regret: the best validation
value a method found minus the best of a dense quasi-random reference sweep (its size
reported). Wall times: a warm-up call per method and problem compiles first (reported
as ``first_call_s``); the repetitions then reuse the compiled programs. The machine may
be shared: wall times are indicative.

Usage: python bench/bench_bayesopt.py [--out bench/results/bayesopt.json] [--reps 10]
       [--rounds 4] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxhp
from jaxhp.models import MLPHP, LinearHP, linear_regression, mlp_classifier

KEY = jax.random.key(0)  # the training key of every run: one value per setting


class CancerHP(jaxhp.HParams):
    learning_rate: float = jaxhp.tunable(0.05, low=0, low_open=True, log=True)
    l2: float = jaxhp.tunable(1e-4, low=0, low_open=True, log=True)
    dropout: float = jaxhp.tunable(0.0, low=0, high=1, high_open=True)
    momentum: float = jaxhp.tunable(0.9, low=0, high=1, high_open=True)
    width: int = jaxhp.static(16, low=1, integer=True)
    steps: int = jaxhp.static(200, low=1, integer=True)
    batch_size: int = jaxhp.static(64, low=1, integer=True)


def _cancer_model() -> jaxhp.Model:
    def init(key, hp):
        k1, k2 = jax.random.split(key)
        return {"w1": jax.random.normal(k1, (30, hp.width)) / 30 ** 0.5,
                "b1": jnp.zeros(hp.width),
                "w2": jax.random.normal(k2, (hp.width, 2)) / hp.width ** 0.5,
                "b2": jnp.zeros(2)}

    def logits(params, x, hp, key):
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        return jaxhp.nn.dropout(h, hp.dropout, key) @ params["w2"] + params["b2"]

    def ce(params, batch, hp, key):
        out = logits(params, batch["x"], hp, key)
        return optax.softmax_cross_entropy_with_integer_labels(out, batch["y"]).mean()

    def loss(params, batch, hp, key=None):
        l2 = sum(jnp.sum(params[k] ** 2) for k in ("w1", "w2"))
        return ce(params, batch, hp, key) + hp.l2 * l2, {}

    def metrics(params, batch, hp):
        return {"ce": ce(params, batch, hp, None)}

    return jaxhp.Model(init, loss,
                       lambda hp: optax.sgd(hp.learning_rate, momentum=hp.momentum),
                       metrics, hparams=CancerHP, directions={"ce": "min"})


def problems():
    diabetes = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    digits = jaxhp.datasets.load("digits", key=jax.random.key(0))
    cancer = jaxhp.datasets.load("breast_cancer", key=jax.random.key(0))
    return [
        ("ridge", linear_regression(10), LinearHP(steps=200), diabetes, "mse",
         {"learning_rate": jaxhp.loguniform(1e-3, 1.0), "l2": jaxhp.loguniform(1e-5, 1.0)},
         1024),
        ("digits-mlp", mlp_classifier(64, 10),
         MLPHP(width=32, depth=1, steps=200, batch_size=64), digits, "ce",
         {"learning_rate": jaxhp.loguniform(1e-4, 0.1),
          "weight_decay": jaxhp.uniform(0.0, 0.01), "dropout": jaxhp.uniform(0.0, 0.5)},
         512),
        ("cancer-mlp", _cancer_model(), CancerHP(), cancer, "ce",
         {"learning_rate": jaxhp.loguniform(1e-3, 1.0), "l2": jaxhp.loguniform(1e-6, 0.1),
          "dropout": jaxhp.uniform(0.0, 0.6), "momentum": jaxhp.uniform(0.0, 0.98)},
         512),
    ]


def _best(result, metric) -> float:
    v = np.asarray(result.aggregate(metric)[0], np.float64)
    ok = result.setting_status() == "ok"
    return float(np.min(np.where(ok & np.isfinite(v), v, np.inf)))


def _halving_size(budget: int, steps: int, eta: int = 3) -> int:
    """The most settings successive halving (first rung ``steps // 9``) trains within
    ``budget`` member steps: each rung keeps ``max(1, n // eta)`` and continues them."""
    rungs = jaxhp.rung_budgets(steps // 9, steps, eta)

    def cost(n):
        total, prev = 0, 0
        for r in rungs:
            total += n * (r - prev)
            n, prev = max(1, n // eta), r
        return total

    n = 1
    while cost(n + 1) <= budget:
        n += 1
    return n


def methods(model, base, split, metric, space, rounds, batch):
    n = rounds * batch
    steps = base.steps
    common = dict(key=KEY, base=base, progress=False)

    def random(seed):
        r = jaxhp.sweep(model, jaxhp.random(n, space, seed=seed), split, **common)
        return _best(r, metric), n * steps

    def quasirandom(seed):
        r = jaxhp.sweep(model, jaxhp.quasirandom(n, space, seed=seed), split, **common)
        return _best(r, metric), n * steps

    n_sh = _halving_size(n * steps, steps)

    def halving(seed):
        r = jaxhp.successive_halving(model, jaxhp.random(n_sh, space, seed=seed), split,
                                     metric=metric, min_steps=steps // 9, eta=3, **common)
        return r.best(metric).value, r.meta["search"]["train_steps"]

    def bayesopt(seed):
        r = jaxhp.bayesopt(model, space, split, rounds=rounds, batch=batch, seed=seed,
                           metric=metric, **common)
        return _best(r, metric), n * steps

    return {"random": random, "quasirandom": quasirandom,
            "successive_halving": halving, "bayesopt": bayesopt}


def run_problem(name, model, base, split, metric, space, n_ref, reps, rounds, batch):
    t0 = time.perf_counter()
    ref = jaxhp.sweep(model, jaxhp.quasirandom(n_ref, space, seed=12345), split, key=KEY,
                      base=base, progress=False)
    ref_best = _best(ref, metric)
    out = {"problem": name, "metric": metric, "steps": base.steps,
           "reference": {"method": "quasirandom sweep", "settings": n_ref,
                         "best": ref_best, "wall_s": time.perf_counter() - t0},
           "methods": {}}
    for mname, fn in methods(model, base, split, metric, space, rounds, batch).items():
        t0 = time.perf_counter()
        fn(10_000)  # warm-up: compiles this method's programs
        first = time.perf_counter() - t0
        regrets, walls, budget = [], [], None
        for seed in range(reps):
            t0 = time.perf_counter()
            best, budget = fn(seed)
            walls.append(time.perf_counter() - t0)
            regrets.append(best - ref_best)
        q = np.percentile(regrets, [25, 50, 75])
        out["methods"][mname] = {
            "member_steps": int(budget), "regrets": regrets,
            "median_regret": float(q[1]), "iqr": [float(q[0]), float(q[2])],
            "min_regret": float(np.min(regrets)), "max_regret": float(np.max(regrets)),
            "wall_s": walls, "median_wall_s": float(np.median(walls)),
            "first_call_s": first}
        print(f"{name:11s} {mname:19s} steps {budget:7d}  median regret {q[1]:.4g} "
              f"(IQR {q[0]:.3g}..{q[2]:.3g})  wall {np.median(walls):.2f} s "
              f"(first {first:.1f} s)", flush=True)
    m = out["methods"]
    out["bayesopt_beats_quasirandom"] = (m["bayesopt"]["median_regret"]
                                         < m["quasirandom"]["median_regret"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench/results/bayesopt.json")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", default=None, help="run one problem (by name)")
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import machine_info, write_json

    t0 = time.perf_counter()
    rows = [run_problem(*p, args.reps, args.rounds, args.batch) for p in problems()
            if args.only in (None, p[0])]
    out = {"machine": machine_info(),
           "note": "wall times measured on a shared machine (other jobs running): "
                   "indicative only; regrets do not depend on the load",
           "rounds": args.rounds, "batch": args.batch, "reps": args.reps, "seeds": 1,
           "total_s": time.perf_counter() - t0, "problems": rows,
           "target_met": all(r["bayesopt_beats_quasirandom"] for r in rows)}
    print(f"target (bayesopt's median regret below quasi-random's on every problem): "
          f"{'met' if out['target_met'] else 'NOT met'}; total {out['total_s']:.0f} s")
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
