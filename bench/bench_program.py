"""jaxhp's compiled sweep program against the hand-written ``jit(vmap(scan))``, same chunks.

Issue 10, "the compiled program". In one process, on one device, for the bench's
own tasks (``bench/tasks.py``):

- ``hand``: the bench's hand-written program (``bench/jax_impls.py``: the loss
  of every step and the final validation metric; ``hand_val``: the validation
  metric only), run over the population in the same chunks as jaxhp;
- ``before``: jaxhp's whole-run program (``population.run`` of ``run_pure``)
  built from ``jaxhp/_train.py`` as of git revision ``--baseline`` (default
  ``HEAD``), loaded from git into a module of its own;
- ``after``: the sweep's program built from the working tree (``run_pure(...,
  checked=False)``: steps that check the loss only; a suspect member would run again
  checked, which none of these tasks has: a diverging ridge's loss overflows first);
- ``handmomentum`` (ridge): the hand-written program with the reference model's
  optimizer (SGD with a traced momentum, 0 here), i.e. the same work as jaxhp's;
- ``sweep``: a whole warm ``jaxhp.sweep`` call (settings from the space,
  stacking, transfers, result building), at its default chunking;
- with ``loss_every=0`` also ``end`` and ``sweepend``: the same with
  ``health="end"`` (no step computes the loss; the final state is checked once).

Each is compiled first (compile time excluded), then all are timed round-robin
(``--reps`` rounds), every call followed by ``block_until_ready`` and the copy of
its outputs to the host. Reported: min/median/max seconds and each one's ratio
``hand / x`` of the round-robin minima (above 1: faster than the hand-written
program). Cases: ridge N=1,024 (curve of every step, as the sweep's default),
ridge N=1,024 with ``loss_every=0``, MLP N=256, and with ``--big`` ridge
N=100,000 with ``loss_every=0`` (with ``loss_every=0`` the hand-written program
has no curve, so XLA drops the loss; ``handcurve``: the hand-written program with the
loss, which jaxhp computes anyway for its health check); with ``--huge`` ridge
N=1,000,000 with ``loss_every=0``, the hand-written programs against ``health="end"``
only (``JAXHP_BENCH_QUICK=1``: 100 steps instead of 500). Chunkings: ``"all"``
(one call) and the engine's default plan.

Usage: python bench/bench_program.py [--reps 5] [--big] [--huge] [--tasks ridge,mlp]
       [--baseline HEAD]
       [--out bench/results/program-cpu.json]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

if __package__ in (None, ""):  # ``python bench/bench_program.py``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import numpy as np

import jaxhp
from bench import jax_impls, tasks
from bench.common import machine_info, write_json
from jaxhp import _engine as engine
from jaxhp import _population as population
from jaxhp._data import part_size
from jaxhp._train import resolve_loop

ROOT = Path(__file__).resolve().parent.parent


def _train_module(rev: str):
    """``jaxhp/_train.py`` at git revision ``rev``, as a module of its own."""
    src = subprocess.run(["git", "show", f"{rev}:jaxhp/_train.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    mod = types.ModuleType(f"jaxhp_train_{rev}")
    mod.__file__ = f"<git {rev}:jaxhp/_train.py>"
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)  # noqa: S102 - our own file
    return mod


def _program(run_pure, model, cfg):
    """The plain sweep's whole-run program (``_sweep._program``, ``keep_params=False``)."""

    def one(h, train_part, val_part, k):
        return run_pure(model, cfg, h, train_part, val_part, k)._replace(state=None)

    run = population.over_members(one, 0, 2)

    def program(hp, train_part, val_part, key, seed_ids):
        return run(hp, train_part, val_part, population.member_keys(key, seed_ids))

    return program


class Timed:
    """A prepared callable (compiled beforehand); :meth:`once` times one call."""

    def __init__(self, call, compile_s: float):
        self.call, self.compile_s, self.times = call, compile_s, []
        call()  # warm: first-call allocations outside the timing

    def once(self) -> None:
        t0 = time.perf_counter()
        self.call()
        self.times.append(time.perf_counter() - t0)


def _chunks(n: int, c: int):
    return [(s, min(c, n - s)) for s in range(0, n, c)]


def hand_chunked(task, n: int, c: int, val_only: bool) -> Timed:
    """The hand-written ``jit(vmap(scan))`` over ``n`` settings in chunks of ``c`` (the last
    one padded, as jaxhp pads it)."""
    *_, run = jax_impls._fns(task)
    fn = jax.vmap((lambda a, b: run(a, b)[1]) if val_only else run)
    lr, b = task.arrays(n)
    args = [tuple(jax.device_put(engine.pad_axis(a[s:s + c], c)) for a in (lr, b))
            for s, _ in _chunks(n, c)]
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args[0]).compile()
    dt = time.perf_counter() - t0
    return Timed(lambda: [jax.device_get(compiled(*a)) for a in args], dt)


def hand_momentum_chunked(task, n: int, c: int, val_only: bool) -> Timed:
    """Ridge only: the hand-written program with the reference model's optimizer,
    ``optax.sgd(lr, momentum=m)`` with ``m`` traced (0 here, as in the sweep), so its
    momentum buffer is in both programs: the same work, the engine's cost alone."""
    import jax.numpy as jnp
    import optax

    tr, va = task.split.train, task.split.val
    xtr, ytr, xv, yv = (jnp.asarray(a) for a in (tr["x"], tr["y"], va["x"], va["y"]))

    def loss(p, l2):
        return 0.5 * jnp.mean((xtr @ p[0] + p[1] - ytr) ** 2) + 0.5 * l2 * jnp.sum(p[0] ** 2)

    def run(lr, l2, m):
        opt = optax.sgd(lr, momentum=m)
        p0 = (jnp.zeros((xtr.shape[1],), jnp.float32), jnp.zeros((), jnp.float32))

        def body(carry, _):
            p, s = carry
            value, g = jax.value_and_grad(loss)(p, l2)
            u, s = opt.update(g, s)
            return (optax.apply_updates(p, u), s), value

        (p, _), losses = jax.lax.scan(body, (p0, opt.init(p0)), None, length=task.steps)
        val = jnp.mean((xv @ p[0] + p[1] - yv) ** 2)
        return val if val_only else (losses, val)

    fn = jax.vmap(run)
    lr, b = task.arrays(n)
    m = np.zeros_like(lr)
    args = [tuple(jax.device_put(engine.pad_axis(a[s:s + c], c)) for a in (lr, b, m))
            for s, _ in _chunks(n, c)]
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args[0]).compile()
    dt = time.perf_counter() - t0
    return Timed(lambda: [jax.device_get(compiled(*a)) for a in args], dt)


def jaxhp_chunked(task, n: int, c: int, run_pure, loss_every, health="step") -> Timed:
    """jaxhp's compiled whole-run program over ``n`` settings in chunks of ``c``, as
    ``_sweep._run_group`` calls it (inputs placed beforehand)."""
    settings = task.space(n).settings(type(task.base), base=task.base)
    cfg = resolve_loop(settings[0], part_size(task.split.train), None, loss_every, health)
    fn = _program(run_pure, task.model, cfg)
    hp = jaxhp.stack(settings)
    shared = jax.device_put((task.split.train, task.split.val, jax.random.key(0),
                             np.arange(1, dtype=np.uint32)))
    args = [(jax.device_put(engine.pad_axis(hp[s:s + c], c)), *shared)
            for s, _ in _chunks(n, c)]
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args[0]).compile()
    dt = time.perf_counter() - t0
    return Timed(lambda: [jax.device_get(jax.block_until_ready(compiled(*a)))
                          for a in args], dt)


def whole_sweep(task, n: int, loss_every, chunk_size=None, health="step") -> Timed:
    space = task.space(n)
    kw = dict(key=jax.random.key(0), base=task.base, progress=False,
              loss_every=loss_every, chunk_size=chunk_size, health=health)
    first = jaxhp.sweep(task.model, space, task.split, **kw)
    timed = Timed(lambda: jaxhp.sweep(task.model, space, task.split, **kw),
                  first.compile_seconds)
    timed.health = {"diverged_settings": int((first.diverged_at >= 0).any(axis=1).sum()),
                    "rechecked_settings": sum(g.rechecked for g in first.groups)}
    return timed


def default_chunk(task, n: int, loss_every) -> int:
    """The engine's automatic chunk for this case (one device, one seed)."""
    settings = task.space(min(n, 8)).settings(type(task.base), base=task.base)
    cfg = resolve_loop(settings[0], part_size(task.split.train), None, loss_every)
    n_metrics = len(jaxhp.evaluate(task.model, task.model.init(jax.random.key(0),
                                                               settings[0]),
                                   settings[0], task.split.val))
    per = engine.member_bytes(task.model, settings[0], cfg, n_metrics, False)
    return engine.plan_chunks(n, 1, per, 1, None, None)


def measure(task_name: str, n: int, loss_every, reps: int, before, after,
            chunkings=("all", "default"), sweep=True, end_only=False) -> dict:
    """``end_only`` (``loss_every=0``): the hand-written programs and jaxhp's with
    ``health="end"`` only (the per-step check's cases are skipped: N=1,000,000)."""
    task = tasks.get(task_name)
    val_only = not loss_every
    cases: dict[str, Timed] = {}
    plan = {}
    for ch in chunkings:
        c = n if ch == "all" else default_chunk(task, n, loss_every)
        plan[ch] = c
        cases[f"hand_{ch}"] = hand_chunked(task, n, c, val_only)
        if task_name == "ridge":
            cases[f"handmomentum_{ch}"] = hand_momentum_chunked(task, n, c, val_only)
        if val_only and not end_only:  # health="step" computes the loss: the hand curve
            cases[f"handcurve_{ch}"] = hand_chunked(task, n, c, False)
        if before is not None and not end_only:
            cases[f"before_{ch}"] = jaxhp_chunked(task, n, c, before, loss_every)
        if not end_only:
            cases[f"after_{ch}"] = jaxhp_chunked(task, n, c, after, loss_every)
        if val_only:  # health="end": no step computes the loss
            cases[f"end_{ch}"] = jaxhp_chunked(task, n, c, after, loss_every, "end")
    if sweep and not end_only:
        cases["sweep"] = whole_sweep(task, n, loss_every)
    if sweep and val_only:
        cases["sweepend"] = whole_sweep(task, n, loss_every, health="end")
    for _ in range(reps):
        for t in cases.values():
            t.once()
    out = {"task": task_name, "n": n, "loss_every": loss_every, "reps": reps,
           "chunk": plan, "hand": "val only" if val_only else "loss curve + val", "cases": {}}
    for name, t in cases.items():
        ch = name.split("_", 1)[1] if "_" in name else "default"
        ref = min(cases[f"hand_{ch}"].times)
        out["cases"][name] = {
            "min_s": min(t.times), "median_s": statistics.median(t.times),
            "max_s": max(t.times), "times_s": t.times, "compile_s": t.compile_s,
            "settings_per_s": n / min(t.times),
            "ratio_vs_hand": ref / min(t.times),
            "ratio_vs_hand_median": statistics.median(cases[f"hand_{ch}"].times)
            / statistics.median(t.times)}
        if hasattr(t, "health"):  # the sweep: how many diverged, how many ran twice
            out["cases"][name].update(t.health)
        if f"handmomentum_{ch}" in cases:
            out["cases"][name]["ratio_vs_hand_momentum"] = (
                min(cases[f"handmomentum_{ch}"].times) / min(t.times))
        if f"handcurve_{ch}" in cases:
            out["cases"][name]["ratio_vs_hand_curve"] = (min(cases[f"handcurve_{ch}"].times)
                                                         / min(t.times))
    return out


def measure_batches(reps: int, before, after, n: int = 1024) -> dict:
    """jaxhp's program alone, before and after, on the ridge with minibatches of 64 (the
    epoch's row order: sorted at every step before, once per epoch after). No
    hand-written case: the bench's hand-written ridge is full batch."""
    import dataclasses

    from jaxhp.models import LinearHP

    task = tasks.get("ridge")
    task = dataclasses.replace(task, base=LinearHP(steps=task.steps, optimizer="sgd",
                                                   batch_size=64))
    cases = {"before_all": jaxhp_chunked(task, n, n, before, 1),
             "after_all": jaxhp_chunked(task, n, n, after, 1)}
    for _ in range(reps):
        for t in cases.values():
            t.once()
    ref = cases["before_all"]
    out = {"task": "ridge, batch_size=64", "n": n, "loss_every": 1, "reps": reps,
           "chunk": {"all": n}, "hand": "none (before = 1.0)", "cases": {}}
    for name, t in cases.items():
        out["cases"][name] = {
            "min_s": min(t.times), "median_s": statistics.median(t.times),
            "max_s": max(t.times), "times_s": t.times, "compile_s": t.compile_s,
            "settings_per_s": n / min(t.times), "ratio_vs_hand": min(ref.times) / min(t.times),
            "ratio_vs_hand_median": statistics.median(ref.times) / statistics.median(t.times)}
    return out


def _print(r: dict) -> None:
    print(f"\n{r['task']} N={r['n']:,} loss_every={r['loss_every']} chunks={r['chunk']} "
          f"(hand: {r['hand']}; {r['reps']} rounds)")
    print(f"  {'case':<16}{'min s':>9}{'median s':>10}{'max s':>9}{'settings/s':>12}"
          f"{'hand/x min':>12}{'hand/x med':>12}")
    for name, c in r["cases"].items():
        print(f"  {name:<16}{c['min_s']:>9.4f}{c['median_s']:>10.4f}{c['max_s']:>9.4f}"
              f"{c['settings_per_s']:>12,.0f}{c['ratio_vs_hand']:>12.3f}"
              f"{c['ratio_vs_hand_median']:>12.3f}"
              + (f"   hand with loss/x {c['ratio_vs_hand_curve']:.3f}"
                 if "ratio_vs_hand_curve" in c else "")
              + (f"   hand with momentum/x {c['ratio_vs_hand_momentum']:.3f}"
                 if "ratio_vs_hand_momentum" in c else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--baseline", default="HEAD",
                    help="git revision of jaxhp/_train.py for 'before' ('' to skip)")
    ap.add_argument("--big", action="store_true",
                    help="also ridge N=100,000 with loss_every=0 (minutes)")
    ap.add_argument("--huge", action="store_true",
                    help="also ridge N=1,000,000 with loss_every=0, health='end' and the "
                         "hand-written programs only (3 rounds; with JAXHP_BENCH_QUICK=1 "
                         "100 steps: about 15 minutes on 2 cores)")
    ap.add_argument("--tasks", default="ridge,mlp",
                    help="ridge, ridge0 (its loss_every=0 case alone), mlp, ridgebatch "
                         "(minibatches of 64: before/after only)")
    ap.add_argument("--out", default=str(ROOT / "bench/results/program-cpu.json"))
    args = ap.parse_args(argv)

    from jaxhp import _train

    before = _train_module(args.baseline).run_pure if args.baseline else None
    # the sweep's program: steps that check the loss only (suspects run again checked)
    after = functools.partial(_train.run_pure, checked=False)
    machine = machine_info()
    print(f"commit {machine['git_commit']} (baseline {args.baseline or '-'}), "
          f"{machine['cpu_model']}, {machine['cores']} cores, devices {machine['devices']}, "
          f"load {machine['load_average']}")
    if str(machine["git_commit"]).endswith("+dirty"):
        print("note: the working tree has uncommitted changes ('after' is the working tree)")
    results = []
    wanted = args.tasks.split(",")

    def write() -> None:  # after every case: a run stopped early keeps what it measured
        write_json(args.out, {"machine": machine, "baseline": args.baseline,
                              "results": results})

    if "ridge" in wanted:
        results.append(measure("ridge", 1024, 1, args.reps, before, after))
        _print(results[-1])
        write()
    if "ridge" in wanted or "ridge0" in wanted:  # ridge0: this case alone
        # loss_every=0 at the same size: no per-step loss output
        results.append(measure("ridge", 1024, 0, args.reps, before, after,
                               chunkings=("default",)))
        _print(results[-1])
        write()
    if "ridgebatch" in wanted and before is not None:
        results.append(measure_batches(args.reps, before, after))
        _print(results[-1])
        write()
    if "mlp" in wanted:
        results.append(measure("mlp", 256, 1, max(3, args.reps - 2), before, after))
        _print(results[-1])
        write()
    if args.big:
        results.append(measure("ridge", 100_000, 0, 3, before, after,
                               chunkings=("default",)))
        _print(results[-1])
        write()
    if args.huge:
        results.append(measure("ridge", 1_000_000, 0, 3, before, after,
                               chunkings=("default",), end_only=True))
        results[-1]["steps"] = tasks.RIDGE_STEPS
        _print(results[-1])
        write()
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
