"""Host time from a space to its settings: columns (``Space.table``) against objects.

A 2-field quasi-random space over ``LinearHP`` (learning rate log-uniform in
[1e-4, 1], L2 log-uniform in [1e-6, 1]; Sobol, seed 0), timed on the host only:

- ``table``: ``space.table(LinearHP)``: columns drawn, validated once per field,
  grouped by statics (no ``HParams`` object per setting);
- ``table+batch``: the same, then the engine's input: ``table.batch(table.rows(0))``,
  one batched setting of the (only) static group;
- ``settings``: ``space.settings(LinearHP)``: a list of ``HParams`` objects (now made
  from the table);
- ``per-setting``: the path before tables, one validated ``HParams(**values)`` per
  setting (kept here as the baseline).

Each is run 3 times; best and median wall time are reported, with µs per setting.
The object paths run only up to 100,000 settings; nothing is extrapolated.

Usage: python bench/bench_table.py [--out bench/results/table.json] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np

import jaxhp
from jaxhp._distributions import _coerce
from jaxhp.models import LinearHP

REPEATS = 3


def space(n: int) -> jaxhp.Space:
    return jaxhp.quasirandom(n, seed=0, learning_rate=jaxhp.loguniform(1e-4, 1.0),
                             l2=jaxhp.loguniform(1e-6, 1.0))


def per_setting(sp: jaxhp.Space, cls=LinearHP) -> list:
    """``Space.settings`` as it was before tables: one validated object per setting."""
    sp.validate(cls)
    fields = cls.fields()
    return [cls(**{n: _coerce(fields[n], v) for n, v in a.items()})
            for a in sp._assignments()]


def table_and_batch(sp: jaxhp.Space):
    table = sp.table(LinearHP)
    return table.batch(table.rows(0))


METHODS = {
    "table": lambda sp: sp.table(LinearHP),
    "table+batch": table_and_batch,
    "settings": lambda sp: sp.settings(LinearHP),
    "per-setting": per_setting,
}
OBJECT_METHODS = ("settings", "per-setting")


def timed(fn, arg) -> list[float]:
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn(arg)
        times.append(time.perf_counter() - t0)
        del out
    return times


def git_state() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    status = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status),
            "changed_paths": len(status.splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results",
                                                  "table.json"))
    ap.add_argument("--quick", action="store_true", help="10,000 settings only")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [10_000, 100_000, 1_000_000]

    # Same settings both ways (checked on the smallest size before timing).
    sp = space(1000)
    assert sp.table(LinearHP).settings() == per_setting(sp)

    rows = []
    for n in sizes:
        sp = space(n)
        for method, fn in METHODS.items():
            if method in OBJECT_METHODS and n > 100_000:
                continue
            times = timed(fn, sp)
            best, median = min(times), statistics.median(times)
            rows.append({"n": n, "method": method, "times_s": times, "best_s": best,
                         "median_s": median, "best_us_per_setting": best / n * 1e6,
                         "median_us_per_setting": median / n * 1e6})
            print(f"  n={n:>9,}  {method:<12} best {best:8.3f} s   median {median:8.3f} s"
                  f"   {best / n * 1e6:7.3f} us/setting (best)", flush=True)

    print("\nHost time, space -> settings (2-field quasirandom over LinearHP; best of 3)\n")
    head = f"{'n':>10}  {'method':<12} {'best s':>9} {'median s':>9} {'us/setting':>11}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['n']:>10,}  {r['method']:<12} {r['best_s']:9.4f} {r['median_s']:9.4f} "
              f"{r['best_us_per_setting']:11.3f}")
    target = [r for r in rows if r["method"] == "table"]
    met = all(r["best_us_per_setting"] <= 1.0 for r in target)
    print(f"\ntarget: table <= 1 us/setting: {'met' if met else 'NOT met'}")

    res = {"benchmark": "table", "space": space(1).describe().replace("quasirandom(1,",
                                                                       "quasirandom(n,"),
           "hparams": "LinearHP", "repeats": REPEATS, "git": git_state(),
           "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                       "python": platform.python_version(), "numpy": np.__version__,
                       "jaxhp": getattr(jaxhp, "__version__", None),
                       "load_average": list(os.getloadavg())},
           "target": {"table_us_per_setting": 1.0, "met": met}, "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
