"""Padded widths against one static group per width: compile time, wall time, waste.

Issue 13, part 2. The digits MLP (``jaxhp.models.mlp_classifier``, depth 2,
AdamW, dropout), ``--n`` settings per width (quasi-random learning rate, weight
decay and dropout), one seed, ``chunk_size="all"``. Each case trains the same
settings three ways:

- ``per-width``: ``width`` an ordinary static field: one program per width;
- ``padded``: ``static(..., pad_to=max(widths))``: one program, every member
  allocated at the largest width;
- ``auto``: ``static(..., pad_to="auto")``: the default bucketing rule
  (``jaxhp._hparams.auto_buckets``).

Cases: ``similar`` (8 widths 72..128, every one >= half the largest) and
``unequal`` (7 widths 8..56 and one of 512: padding allocates every member at
512). Each configuration runs ``--reps`` times from a cold compile cache; the
compile seconds and the seconds in the compiled calls (``block_until_ready``
and the copy to the host are inside the engine's timing) are reported
separately, min / median / max over the repetitions. Wasted FLOPs: analytic
(the MLP's matrix products, forward and backward, of the real widths against
the allocated ones) and XLA's own cost analysis of the compiled programs
(``compiled.cost_analysis()["flops"]``; XLA counts a loop body once, so its
figures are per step, comparable between configurations).

Usage: python bench/bench_padding.py [--n 32] [--steps 100] [--reps 3]
       [--cases similar,unequal] [--out bench/results/padding.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/bench_padding.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

import jaxhp
from bench.common import machine_info
from jaxhp import _engine as engine
from jaxhp._io import atomic_write_json
from jaxhp.models import MLPHP, mlp_classifier

ROOT = Path(__file__).resolve().parent.parent
CASES = {"similar": [72, 80, 88, 96, 104, 112, 120, 128],
         "unequal": [8, 16, 24, 32, 40, 48, 56, 512]}
DEPTH, BATCH, N_FEATURES, N_CLASSES = 2, 64, 64, 10


def _classes(widths):
    top = max(widths)

    class PerWidth(MLPHP):
        width: int = jaxhp.static(top, low=1, integer=True)

    class Padded(MLPHP):
        width: int = jaxhp.static(top, low=1, integer=True, pad_to=top)

    class Auto(MLPHP):
        width: int = jaxhp.static(top, low=1, integer=True, pad_to="auto")

    return {"per-width": PerWidth, "padded": Padded, "auto": Auto}


def _space(widths, n):
    tun = jaxhp.quasirandom(n, seed=0, learning_rate=jaxhp.loguniform(1e-3, 3e-2),
                            weight_decay=jaxhp.loguniform(1e-5, 1e-1),
                            dropout=jaxhp.uniform(0.0, 0.5))
    return jaxhp.grid(width=widths) * tun


def _matmul_flops(widths) -> float:
    """Multiply-adds x 2 of one training step per member (forward + backward: x 3)."""
    return sum(2 * 3 * BATCH * (N_FEATURES * w + (DEPTH - 1) * w * w + w * N_CLASSES)
               for w in widths)


def _xla_flops() -> float:
    """XLA's cost analysis (flops) summed over the programs in the engine's cache."""
    total = 0.0
    for compiled in engine.CACHE._programs.values():
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        total += float(cost.get("flops", 0.0))
    return total


def _one(model, cls, widths, n, steps, split):
    base = cls(steps=steps, batch_size=BATCH, depth=DEPTH, optimizer="adamw")
    engine.CACHE.clear()
    jax.clear_caches()
    t0 = time.perf_counter()
    result = jaxhp.sweep(model, _space(widths, n), split, key=jax.random.key(0),
                         base=base, chunk_size="all", loss_every=0)
    wall = time.perf_counter() - t0
    flops = _xla_flops()
    return {"wall_s": wall, "compile_s": result.compile_seconds, "run_s": result.run_seconds,
            "programs": result.compile_count, "groups": [g.statics["width"]
                                                         for g in result.groups],
            "xla_flops": flops,
            "best_ce": float(np.nanmin(result.val["ce"].mean(axis=1)))}


def _summary(xs):
    return {"min": min(xs), "median": statistics.median(xs), "max": max(xs)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32, help="settings per width")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--cases", default="similar,unequal")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "padding.json"))
    args = ap.parse_args(argv)
    split = jaxhp.datasets.load("digits", key=jax.random.key(0))
    model = mlp_classifier(N_FEATURES, N_CLASSES)
    machine = machine_info()
    print(f"commit {machine['git_commit']}, {machine['cpu_model']}, {machine['cores']} "
          f"cores, load average {machine['load_average']}")
    out = {"machine": machine, "args": vars(args), "cases": {}}
    for case in args.cases.split(","):
        widths = CASES[case]
        classes = _classes(widths)
        runs = {name: [] for name in classes}
        for _ in range(args.reps):  # round-robin: the machine's load hits every config
            for name, cls in classes.items():
                runs[name].append(_one(model, cls, widths, args.n, args.steps, split))
        real = _matmul_flops(widths) * args.n
        alloc = {"per-width": real,
                 "padded": _matmul_flops([max(widths)] * len(widths)) * args.n}
        buckets = jaxhp._hparams.auto_buckets(widths)
        auto_w = [buckets[w] if sum(buckets[v] == buckets[w] for v in widths) > 1 else w
                  for w in widths]
        alloc["auto"] = _matmul_flops(auto_w) * args.n
        rec = {"widths": widths, "n_per_width": args.n, "steps": args.steps,
               "analytic_step_flops": alloc,
               "analytic_wasted_fraction": {k: 1 - real / v for k, v in alloc.items()}}
        for name, rs in runs.items():
            rec[name] = {"programs": rs[0]["programs"], "groups": rs[0]["groups"],
                         "xla_flops": rs[0]["xla_flops"],
                         "compile_s": _summary([r["compile_s"] for r in rs]),
                         "run_s": _summary([r["run_s"] for r in rs]),
                         "wall_s": _summary([r["wall_s"] for r in rs]),
                         "best_ce": rs[0]["best_ce"], "reps": rs}
        out["cases"][case] = rec
        print(f"\n{case}: widths {widths}, {args.n} settings each, {args.steps} steps")
        for name in classes:
            r = rec[name]
            print(f"  {name:9s} programs {r['programs']:2d}  compile "
                  f"{r['compile_s']['median']:6.1f} s  run {r['run_s']['median']:6.2f} s  "
                  f"wall {r['wall_s']['median']:6.1f} s  (min {r['wall_s']['min']:.1f}, max "
                  f"{r['wall_s']['max']:.1f})  wasted matmul FLOPs "
                  f"{100 * rec['analytic_wasted_fraction'][name]:4.1f}%  XLA flops "
                  f"{r['xla_flops']:.3g}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    atomic_write_json(args.out, out)
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
