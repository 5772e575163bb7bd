"""Step counts per member: one padded program against one program per step count.

Ridge on standardised diabetes (minibatch SGD, batch 64), 8 step counts (100, 200, ...,
800) x 32 learning rates (``--lrs``; log-uniform in [1e-3, 0.3]), 1 seed. Three declarations of
``steps``:

- ``static``: an ordinary static field, one program per step count (8 compiles);
- ``pad_to=800``: every count shares one program of 800 steps (1 compile);
- ``pad_to="auto"``: counts bucketed (each bucket runs its largest count).

"useful steps" counts member steps of the members' own counts, "run steps" what the
programs ran (a padded member runs its group's largest count; the steps after its own
are masked: computed, then discarded). Timings on a shared machine vary: the 1-minute
load average is recorded with them.

Usage: python bench/bench_steps.py [--out bench/results/steps.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

import jaxhp
from jaxhp.models import LinearHP, linear_regression

STEPS = [100, 200, 300, 400, 500, 600, 700, 800]


class AutoHP(LinearHP):
    steps: int = jaxhp.static(500, low=1, integer=True, pad_to="auto")


class CeilingHP(LinearHP):
    steps: int = jaxhp.static(500, low=1, integer=True, pad_to=800)


def _row(name, base, split, model, space) -> dict:
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    r = jaxhp.sweep(model, space, split, key=jax.random.key(0), base=base, loss_every=0,
                    chunk_size="all")
    wall = time.perf_counter() - t0
    steps = np.asarray(r.table.columns["steps"])
    run_steps = sum(g.steps * g.n_settings for g in r.groups)
    return {"declaration": name, "groups": len(r.groups), "compiles": r.compile_count,
            "compile_s": r.compile_seconds, "run_s": r.run_seconds, "wall_s": wall,
            "useful_steps": int(steps.sum()), "run_steps": int(run_steps),
            "best_mse": r.best("mse").value, "load_1min": load}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None)
    p.add_argument("--lrs", type=int, default=32, help="learning rates per step count")
    args = p.parse_args(argv)
    split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    model = linear_regression(10)
    lrs = np.exp(np.random.default_rng(0).uniform(np.log(1e-3), np.log(0.3), args.lrs))
    space = jaxhp.grid(steps=STEPS, learning_rate=lrs.tolist())
    rows = [_row(name, cls(batch_size=64), split, model, space)
            for name, cls in (("static", LinearHP), ("pad_to=800", CeilingHP),
                              ('pad_to="auto"', AutoHP))]
    print(f"{'declaration':<14} {'groups':>6} {'compile s':>9} {'run s':>7} {'wall s':>7} "
          f"{'run/useful steps':>16} {'load':>5}")
    for r in rows:
        print(f"{r['declaration']:<14} {r['groups']:>6} {r['compile_s']:>9.2f} "
              f"{r['run_s']:>7.2f} {r['wall_s']:>7.2f} "
              f"{r['run_steps'] / r['useful_steps']:>16.2f} {r['load_1min']:>5.1f}")
    out = {"task": f"ridge diabetes, batch 64, steps 100..800 x {args.lrs} lr", "rows": rows,
           "cores": os.cpu_count(), "jax": jax.__version__}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    sys.exit(main() and 0)
