"""Successive halving and Hyperband: train all, keep the best 1/eta, continue them.

Rung ``r`` trains the surviving settings (every seed each) up to its budget of
steps, continuing every survivor from its carried state (parameters, optimizer
state, health) with :func:`jaxhp._train.advance`, never from scratch. A rung is
one compiled ``vmap`` over seeds of ``vmap`` over survivors; it gathers the
survivors out of the previous rung's carry itself. Member ``(i, s)`` uses the
key ``fold_in(key, s)`` and step ``t`` draws its minibatch from ``t`` only, so a
survivor's trajectory is the one ``jaxhp.train`` computes for the same setting
with ``steps`` = the steps it trained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxhp._adaptive import (
    build,
    check_int,
    check_metric,
    compiled,
    member_keys,
    over_population,
    population,
    row,
    scores,
)
from jaxhp._data import Split, check_split
from jaxhp._hparams import HParams, stack
from jaxhp._model import Model, loss_fn, metrics_fn
from jaxhp._result import SweepResult, resolve_direction
from jaxhp._sweep import _check_args
from jaxhp._train import LoopConfig, advance, check_key, resolve_loop, start, validate


def rung_budgets(min_steps: int, max_steps: int, eta: int) -> list[int]:
    """The steps after each rung: ``min_steps * eta**r``, the last one ``max_steps``.

    The number of rungs is ``1 + round(log_eta(max_steps / min_steps))``.

    Example:
      >>> rung_budgets(20, 500, 3)
      [20, 60, 180, 500]
    """
    n = max(0, round(math.log(max_steps / min_steps) / math.log(eta)))
    return [min_steps * eta**r for r in range(n)] + [max_steps]


def _rung_program(model: Model, cfg: LoopConfig, start_step: int, n_steps: int,
                  fresh: bool):
    def member(hp, carry, train_part, val_part, key):
        carry = start(model, hp, key) if fresh else carry
        carry, losses = advance(model, cfg, hp, carry, train_part, key, start_step, n_steps)
        params = carry[0].params
        return (carry, losses, metrics_fn(model, params, val_part, hp),
                loss_fn(model, params, train_part, hp)[0])

    run = over_population(member, 2)

    def program(hp, prev, idx, train_part, val_part, key, seed_ids):
        carry = None if fresh else jax.tree_util.tree_map(lambda a: a[:, idx], prev)
        return run(hp, carry, train_part, val_part, member_keys(key, seed_ids))

    return program


def _check(eta, min_steps, settings, max_steps) -> int:
    check_int("eta", eta, 2, why=" (keep the best 1/eta of each rung)")
    check_int("min_steps", min_steps, 1)
    if max_steps is None:
        max_steps = settings[0].steps
    check_int("max_steps", max_steps, 1)
    if min_steps > max_steps:
        raise ValueError(f"`min_steps`={min_steps} exceeds `max_steps`={max_steps}: the "
                         "first rung must not train longer than the last")
    return max_steps


def _halve(model, cfg, settings, offset, budgets, eta, split, key, seed_ids, metric,
           mode, groups, rungs, bracket=None):
    """Runs the rungs over ``settings``; returns per-setting rows and steps trained."""
    n = len(settings)
    alive = np.arange(n)
    losses = [[] for _ in range(n)]
    vals = [[] for _ in range(n)]
    last: list = [None] * n
    trained = np.zeros(n, np.int64)
    carry = idx = None
    seed_arr = jax.device_put(seed_ids)
    for r, budget in enumerate(budgets):
        s0 = budgets[r - 1] if r else 0
        hp = stack([settings[i] for i in alive])
        program = _rung_program(model, cfg, s0, budget - s0, r == 0)
        args = (hp, carry, idx, split.train, split.val, key, seed_arr)
        fn, compile_s = compiled(program, ("halving", model, cfg, s0, budget, r == 0), *args)
        t0 = time.perf_counter()
        carry, step_losses, val, train_loss = jax.block_until_ready(fn(*args))
        run_s = time.perf_counter() - t0
        step_losses, val, train_loss, dead = jax.device_get(
            (step_losses, val, train_loss, carry[1]))
        for j, i in enumerate(alive):
            losses[i].append(step_losses[:, j])
            vals[i].append({k: v[:, j] for k, v in val.items()})
            last[i] = (train_loss[:, j], dead[:, j])
            trained[i] = budget
        score = scores(val[metric], dead, mode)
        order = np.argsort(score, kind="stable")
        n_keep = 0 if r == len(budgets) - 1 else max(1, len(alive) // eta)
        keep = np.sort(order[:n_keep][np.isfinite(score[order[:n_keep]])])
        shown = np.where(np.isfinite(score), score if mode == "min" else -score, np.nan)
        rungs.append({"rung": r, "bracket": bracket, "steps": budget,
                      "settings": alive + offset, "promoted": alive[keep] + offset,
                      "value": shown, "train_steps": len(alive) * len(seed_ids) * (budget - s0),
                      "compile_s": compile_s, "run_s": run_s})
        groups.append({"statics": settings[0].replace(steps=budget).statics(),
                       "n_settings": len(alive) - len(keep), "chunk_size": len(alive),
                       "n_chunks": 1, "compile_s": compile_s, "run_s": run_s,
                       "error": None, "eval_steps": budgets[:r + 1], "steps": budget,
                       "compiled": int(compile_s > 0), "chunks_computed": 1,
                       "chunks_loaded": 0, "rung": r, "bracket": bracket})
        if keep.size == 0:
            break
        alive, idx = alive[keep], jax.device_put(keep)
    rows = []
    for i in range(n):
        curve = {k: np.stack([v[k] for v in vals[i]], axis=-1) for k in vals[i][0]}
        final = {k: v[..., -1] for k, v in curve.items()}
        rows.append(row(last[i][0], final, np.concatenate(losses[i], axis=-1), curve,
                        last[i][1]))
    return rows, trained


def _prepare(model, space, split, base, seeds, max_steps, min_steps, eta, metric, mode, who):
    seed_ids = _check_args(seeds, None, None)
    settings = population(space, model, base, who)
    n_train = check_split(split)[0]
    resolve_loop(settings[0], n_train, None, None)  # a static `steps`, a valid batch size
    max_steps = _check(eta, min_steps, settings, max_steps)
    settings = [s.replace(steps=max_steps) for s in settings]
    validate(model, settings[0], split)
    cfg = resolve_loop(settings[0], n_train, None, None)
    metric = check_metric(model, settings[0], split, metric)
    mode = resolve_direction(model.directions, metric, mode)
    return seed_ids, settings, max_steps, cfg, metric, mode


def successive_halving(
    model: Model,
    space,
    split: Split,
    *,
    key: jax.Array,
    seeds: int | Sequence[int] = 1,
    min_steps: int,
    eta: int = 3,
    metric: str = "loss",
    mode: str | None = None,
    base: HParams | None = None,
    max_steps: int | None = None,
) -> SweepResult:
    """Successive halving: every rung keeps the best ``1/eta`` and trains them ``eta``x longer.

    Rung ``r`` trains the surviving settings (each with every seed) until step
    ``min_steps * eta**r`` (the last rung until ``max_steps``; see
    :func:`rung_budgets`), continuing each from its carried state. The
    settings are ranked by their mean validation ``metric`` over seeds; the
    best ``max(1, n // eta)`` go on; a setting with a diverged seed never
    does. Each rung is one compiled program over the survivors; the whole
    population of a rung is held in device memory at once (no chunking).

    Args:
      model: the model's functions.
      space: a search space or a list of settings, all with the same static
        fields (one compiled population).
      split: the data; training reads ``train``, the ranking ``val``.
      key: base PRNG key; member ``(setting, seed s)`` uses ``fold_in(key, s)``
        as in :func:`jaxhp.sweep`.
      seeds: the number of seeds or a list of seed indices.
      min_steps: the steps of the first rung.
      eta: the reduction factor (an integer >= 2).
      metric, mode: the ranking rule (as in :meth:`SweepResult.best`).
      base: fills the fields the space leaves unset.
      max_steps: the steps of the last rung (default: the settings' ``steps``).
        During the search every setting has ``steps = max_steps`` (models
        whose functions read ``hp.steps`` see the full horizon).

    Returns:
      A :class:`~jaxhp.SweepResult` with one row per setting, holding its
      validation metrics at the rung where it stopped; its setting has
      ``steps`` replaced by the steps it actually trained, so ``best()``,
      ``params()`` and ``evaluate_test()`` (which retrain with ``jaxhp.train``)
      reproduce that run. Also ``result.steps_trained`` (per setting),
      ``result.rungs`` (per rung: ``steps``, ``settings`` trained,
      ``promoted``, ``value`` (mean metric), ``train_steps`` (member steps
      spent), compile and run seconds) and ``result.meta["search"]`` (budgets,
      total ``train_steps`` and what a full sweep would have spent). ``groups``
      holds one entry per rung. ``rungs`` and ``steps_trained`` are not saved
      by ``save()`` (the settings' ``steps`` and ``meta`` are).

    Raises:
      ValueError: a bad ``eta``, ``min_steps`` or ``max_steps``, or settings
        that vary a static field, before anything compiles.
      SelectionError: an unknown ``metric``.

    Example:
      >>> space = jaxhp.random(81, learning_rate=jaxhp.loguniform(1e-3, 1.0),
      ...                      l2=jaxhp.loguniform(1e-5, 1.0))
      >>> result = successive_halving(model, space, split, key=jax.random.key(0),
      ...                             min_steps=20, max_steps=500, metric="mse")
      >>> result.best("mse").setting.steps, result.meta["search"]["train_steps"]
      (500, 4740)
    """
    key = check_key(key)
    seed_ids, settings, max_steps, cfg, metric, mode = _prepare(
        model, space, split, base, seeds, max_steps, min_steps, eta, metric, mode,
        "successive_halving")
    budgets = rung_budgets(min_steps, max_steps, eta)
    groups, rungs = [], []
    rows, trained = _halve(model, cfg, settings, 0, budgets, eta, split, key, seed_ids,
                           metric, mode, groups, rungs)
    return _finish(model, split, key, seed_ids, settings, rows, trained, groups, rungs, {
        "method": "successive_halving", "eta": eta, "min_steps": min_steps,
        "max_steps": max_steps, "budgets": budgets, "metric": metric, "mode": mode})


def _finish(model, split, key, seed_ids, settings, rows, trained, groups, rungs, search):
    final = [s.replace(steps=int(t)) for s, t in zip(settings, trained)]
    search["train_steps"] = int(sum(r["train_steps"] for r in rungs))
    search["full_sweep_train_steps"] = len(settings) * len(seed_ids) * search["max_steps"]
    result = build(final, seed_ids, rows, groups, model=model, split=split, key=key,
                   search=search)
    result.steps_trained = trained
    result.rungs = rungs
    return result


def hyperband_brackets(min_steps: int, max_steps: int, eta: int = 3) -> list[tuple[int, list]]:
    """Hyperband's brackets: ``(n_settings, rung budgets)`` from most to least aggressive.

    Bracket ``b`` starts at rung ``b`` of :func:`rung_budgets` with
    ``ceil((s_max + 1) / (s_max - b + 1) * eta**(s_max - b))`` settings.

    Example:
      >>> hyperband_brackets(10, 90, 3)
      [(9, [10, 30, 90]), (5, [30, 90]), (3, [90])]
    """
    budgets = rung_budgets(min_steps, max_steps, eta)
    s_max = len(budgets) - 1
    return [(math.ceil((s_max + 1) / (s + 1) * eta**s), budgets[s_max - s:])
            for s in range(s_max, -1, -1)]


def hyperband(
    model: Model,
    space,
    split: Split,
    *,
    key: jax.Array,
    seeds: int | Sequence[int] = 1,
    min_steps: int,
    eta: int = 3,
    metric: str = "loss",
    mode: str | None = None,
    base: HParams | None = None,
    max_steps: int | None = None,
) -> SweepResult:
    """Hyperband: successive halving brackets from aggressive to none (Li et al. 2018).

    Bracket ``b`` (see :func:`hyperband_brackets`) takes the next ``n_b``
    settings of the space in order and runs successive halving from its
    first budget. The result has one row per setting used, as for
    :func:`successive_halving` (``result.rungs`` entries name their
    ``bracket``).

    Args:
      model, split, key, seeds, min_steps, eta, metric, mode, base, max_steps:
        as in :func:`successive_halving`.
      space: a search space or list of settings with at least the brackets'
        total number of settings (extra settings are not used).

    Returns:
      A :class:`~jaxhp.SweepResult`, as for :func:`successive_halving`.

    Raises:
      ValueError: as :func:`successive_halving`, or a space too small.

    Example:
      >>> n = sum(b[0] for b in hyperband_brackets(10, 90, 3))  # 17
      >>> result = hyperband(model, jaxhp.random(n, learning_rate=...), split,
      ...                    key=jax.random.key(0), min_steps=10, max_steps=90)
    """
    key = check_key(key)
    seed_ids, settings, max_steps, cfg, metric, mode = _prepare(
        model, space, split, base, seeds, max_steps, min_steps, eta, metric, mode,
        "hyperband")
    brackets = hyperband_brackets(min_steps, max_steps, eta)
    need = sum(b[0] for b in brackets)
    if len(settings) < need:
        raise ValueError(f"hyperband(): the brackets {[b[0] for b in brackets]} need {need} "
                         f"settings, the space has {len(settings)}; sample at least {need} "
                         f"(e.g. jaxhp.random({need}, ...))")
    settings = settings[:need]
    groups, rungs, rows = [], [], []
    trained = np.zeros(need, np.int64)
    offset = 0
    for b, (n_b, budgets) in enumerate(brackets):
        part = settings[offset:offset + n_b]
        r, t = _halve(model, cfg, part, offset, budgets, eta, split, key, seed_ids,
                      metric, mode, groups, rungs, bracket=b)
        rows += r
        trained[offset:offset + n_b] = t
        offset += n_b
    return _finish(model, split, key, seed_ids, settings, rows, trained, groups, rungs, {
        "method": "hyperband", "eta": eta, "min_steps": min_steps, "max_steps": max_steps,
        "brackets": [[n, b] for n, b in brackets], "metric": metric, "mode": mode})
