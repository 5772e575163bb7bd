"""Gradient-based tuning: gradient descent on hyperparameters, from many starts at once.

Every outer step computes the hypergradient of each start (``vmap`` over the
starts of :func:`jaxhp._search.hypergrad.value_and_grad_fn`), takes an Optax step in
the hypergradient coordinates (log space for ``log=True`` fields) and
projects back into each field's valid range. The whole descent is one
compiled program (``lax.scan`` over outer steps); its last evaluation (the
run of every seed at each start's final point) is the result's row, so no
second sweep retrains the final settings. The result is a :class:`TuneResult`
(a :class:`~jaxhp.SweepResult`): selection and the single test evaluation
work exactly as for a sweep.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxhp import _population as population
from jaxhp._data import Split, part_size
from jaxhp._engine import table_from
from jaxhp._hparams import Field, HParams
from jaxhp._model import Model
from jaxhp._record import GroupInfo
from jaxhp._result import SweepResult
from jaxhp._search.common import replace_columns
from jaxhp._search.hypergrad import (
    check_mode,
    check_objective,
    check_stateful,
    from_coords,
    make_solver,
    objective_value,
    resolve_remat,
    resolve_wrt,
    to_coords,
    value_and_grad_fn,
)
from jaxhp._train import check_key, resolve_loop, run_pure, validate


def coord_bounds(f: Field) -> tuple[float, float]:
    """A field's projection interval (:meth:`Field.bounds`) in hypergradient
    coordinates (log for log fields)."""
    lo, hi = f.bounds()
    return (math.log(lo), math.log(hi)) if f.log else (lo, hi)


def _finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                              for x in jax.tree_util.tree_leaves(tree)]))


@functools.partial(jax.jit, static_argnames=("model", "cfg", "objective", "mode", "solver",
                                             "optimizer", "steps", "keep"))
def _descend(model, cfg, objective, mode, solver, optimizer, steps, keep, z0, lo, hi, hp,
             train_part, val_part, keys):
    vg = value_and_grad_fn(model, cfg, objective, mode, solver)
    plain = cfg._replace(remat=None)  # no gradient through the final evaluation

    def final_run(z, hp):
        """Every seed's run at ``z``: the objective and the full record of the run."""
        def one(k):
            h = from_coords(hp, z)
            run = run_pure(model, plain, h, train_part, val_part, k)
            v = objective_value(model, objective, run.state.params, val_part, h,
                                run.state.model_state)
            return jnp.where(run.diverged_at < 0, v, jnp.nan), run._replace(state=None)

        v, runs = jax.vmap(one)(keys)
        return jnp.mean(v), runs

    def one_start(z0, hp):
        def mean_vg(z):
            v, g, _ = jax.vmap(lambda k: vg(z, hp, train_part, val_part, k))(keys)
            return jnp.mean(v), jax.tree_util.tree_map(lambda a: jnp.mean(a, 0), g)

        def outer(carry, _):
            z, opt_state = carry
            v, g = mean_vg(z)
            ok = jnp.isfinite(v) & _finite(g)
            g = jax.tree_util.tree_map(lambda a: jnp.where(ok, a, 0.0), g)
            updates, new_state = optimizer.update(g, opt_state, z)
            new_z = jax.tree_util.tree_map(jnp.clip, optax.apply_updates(z, updates), lo, hi)
            keep_ = lambda new, old: jax.tree_util.tree_map(
                lambda a, b: jnp.where(ok, a, b), new, old)
            return (keep_(new_z, z), keep_(new_state, opt_state)), (z, v, g)

        (z, _), (zs, vs, gs) = jax.lax.scan(outer, (z0, optimizer.init(z0)), None,
                                            length=steps)
        v_final, runs = final_run(z, hp)
        pick = jnp.asarray(steps)
        if keep == "best":  # the row is the best iterate's run (another run of training)
            all_v = jnp.concatenate([vs, v_final[None]])
            pick = jnp.argmin(jnp.where(jnp.isfinite(all_v), all_v, jnp.inf))
            z_pick = jax.tree_util.tree_map(
                lambda a, b: jnp.concatenate([a, b[None]])[pick], zs, z)
            runs = final_run(z_pick, hp)[1]
        return z, zs, vs, gs, v_final, pick, runs

    return jax.vmap(one_start)(z0, hp)


class TuneResult(SweepResult):
    """The outcome of :func:`tune_gradient`: one row per start, at its final (or best)
    point, as trained by the descent's own last evaluation.

    Attributes:
      trajectory: ``values`` (``{field: (starts, steps + 1)}``: every start's
        path), ``objective`` (``(starts, steps + 1)``), ``grad`` (the
        hypergradients), ``log_fields``, ``picked`` (the iterate each row is),
        ``train_steps``, ``compile_s``, ``run_s`` and ``mode``. Kept by
        ``save``/``load``.
    """

    EXTRAS = ("trajectory",)


def tune_gradient(
    model: Model,
    starts: Any,
    split: Split,
    *,
    key: jax.Array,
    wrt: str | Sequence[str] | None = None,
    steps: int = 30,
    optimizer: optax.GradientTransformation | None = None,
    objective: str | Callable = "loss",
    mode: str = "reverse",
    remat: int | str | None = "auto",
    seeds: int = 1,
    base: HParams | None = None,
    keep: str = "final",
    solver: str = "cg",
    solver_steps: int = 100,
) -> TuneResult:
    """Gradient descent on hyperparameters from many starting settings at once.

    Each start follows its own hypergradient (see :func:`hypergradient`) for
    ``steps`` outer steps of ``optimizer``, in hypergradient coordinates (the
    logarithm for ``log=True`` fields, the value otherwise); after every step
    each field is clipped into its valid range (open bounds nudged inside).
    All starts run as one compiled ``vmap``. A start whose run diverges or
    whose hypergradient is not finite keeps its current values for that step.

    Args:
      model: the model's functions.
      starts: the starting settings: a search space (``jaxhp.random(...)``,
        filled from ``base`` or the model's defaults), a list of settings, or
        a batched setting. All must share their static fields.
      split: the data; training reads ``train``, the objective ``val``.
      key: the base PRNG key; seed ``s`` trains with ``fold_in(key, s)``, as
        in :func:`jaxhp.sweep`.
      wrt: the fields to tune (default: every continuous tunable field).
      steps: outer (hyperparameter) steps.
      optimizer: an Optax optimizer on the coordinates; default
        ``optax.adam(0.1)`` (steps of ~0.1 in log space: ~10% per step).
      objective: a validation metric to minimise, or
        ``callable(params, val_part, hp) -> scalar`` (a stateful model:
        ``callable(params, state, val_part, hp)``).
      mode: ``"reverse"``, ``"forward"`` or ``"implicit"`` hypergradients
        (``"implicit"`` is refused for a model with state, see
        :func:`jaxhp.hypergradient`).
      remat: reverse mode's checkpointing (see :func:`hypergradient`).
      seeds: the objective is averaged over this many seeds (keys
        ``fold_in(key, 0..seeds-1)``); the result has one column per seed.
      base: the setting filling the fields a space leaves unset.
      keep: ``"final"`` (the last point of each trajectory) or ``"best"``
        (the point with the lowest objective along it).
      solver, solver_steps: implicit mode's linear solve (see
        :func:`hypergradient`).

    Returns:
      A :class:`TuneResult` with one row per start (its final, or best,
      setting, as the descent's own last evaluation trained and validated it:
      no second sweep), so that ``best()`` and ``evaluate_test()`` work as for
      a sweep, plus ``result.trajectory``:
      ``values`` (``{field: (n_starts, steps + 1)}``, the values after 0..steps
      outer steps), ``objective`` (``(n_starts, steps + 1)``), ``grad``
      (``{field: (n_starts, steps)}``, in coordinates), ``log_fields``,
      ``train_steps`` (training steps run: starts x seeds x (steps + 1) x
      ``hp.steps``; one more run per start and seed with ``keep="best"``),
      ``picked``, ``compile_s`` and ``run_s``. ``save``/``load`` keep it.

    Raises:
      ValueError: for bad ``wrt``, ``mode``, ``objective``, ``steps``,
        ``keep`` or starts with different static fields.

    Example:
      >>> starts = [LinearHP(learning_rate=lr, l2=l2, steps=200)
      ...           for lr, l2 in [(0.01, 1e-4), (0.3, 1.0)]]
      >>> result = tune_gradient(model, starts, split, key=jax.random.key(0),
      ...                        wrt=("learning_rate", "l2"), objective="mse")
      >>> result.best("mse").setting, result.trajectory["objective"].shape
    """
    check_mode(mode)
    check_stateful(model, mode)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"`steps`={steps!r}: must be an integer >= 1 (outer steps)")
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise ValueError(f"`seeds`={seeds!r}: must be an integer >= 1")
    if keep not in ("final", "best"):
        raise ValueError(f"`keep`={keep!r}: must be 'final' or 'best'")
    table = table_from(starts, model, base, caller="tune_gradient")
    if not len(table):
        raise ValueError("tune_gradient(): no starting settings")
    if table.n_groups > 1:
        i = int(np.argmax(table.groups != 0))
        raise ValueError(f"starts[{i}] differs from starts[0] in its static fields "
                         f"({table.group_statics[table.groups[i]]} vs "
                         f"{table.group_statics[0]}); gradient-based tuning runs one "
                         "program: group the starts by static fields")
    n = len(table)
    batch = table.batch(np.arange(n))
    first = batch[0]
    key = check_key(key)
    validate(model, first, split)
    names = resolve_wrt(type(first), wrt)
    check_objective(model, first, split, objective)
    if isinstance(objective, str) and model.direction(objective) == "max":
        raise ValueError(f"`objective`={objective!r}: the model declares it 'max' (higher "
                         "is better), and tune_gradient minimises its objective; pass a "
                         "metric to minimise (e.g. 'loss' or a cross entropy), or a "
                         "callable(params, val_part, hp) returning minus the metric")
    cfg = resolve_loop(first, part_size(split.train), None, None)
    if mode == "reverse":
        cfg = cfg._replace(remat=resolve_remat(remat, cfg.steps))
    slv = make_solver(solver, solver_steps, 0.0, None)
    optimizer = optax.adam(0.1) if optimizer is None else optimizer
    fields = type(first).fields()
    bounds = {n: coord_bounds(fields[n]) for n in names}
    z0 = {n: jnp.clip(v, *bounds[n]) for n, v in to_coords(batch, names).items()}
    lo = {n: jnp.asarray(b[0], z0[n].dtype) for n, b in bounds.items()}
    hi = {n: jnp.asarray(b[1], z0[n].dtype) for n, b in bounds.items()}
    seed_ids = np.arange(seeds, dtype=np.uint32)
    keys = population.member_keys(key, seed_ids)
    args = (model, cfg, objective, mode, slv, optimizer, steps, keep, z0, lo, hi, batch,
            split.train, split.val, keys)
    t0 = time.perf_counter()
    compiled = _descend.lower(*args).compile()
    t1 = time.perf_counter()
    z, zs, vs, gs, v_final, pick, runs = jax.device_get(
        jax.block_until_ready(compiled(*args[8:])))
    t2 = time.perf_counter()
    to_np = lambda t: {n: np.asarray(a) for n, a in t.items()}
    coords = {n: np.concatenate([np.asarray(zs[n]), np.asarray(z[n])[:, None]], axis=1)
              for n in names}
    objective_traj = np.concatenate([np.asarray(vs), np.asarray(v_final)[:, None]], axis=1)
    values = {n: np.exp(c) if fields[n].log else c for n, c in coords.items()}
    pick = np.asarray(pick)
    final = replace_columns(table, **{f: fields[f].project(values[f][np.arange(n), pick])
                                      for f in names})
    builder = SweepResult.builder(final, seed_ids, model=model, split=split, key=key,
                                  devices=jax.local_devices()[:1])
    # (starts, seeds, ...) -> (seeds, starts, ...), as the builder takes a chunk
    builder.add(np.arange(n), jax.tree_util.tree_map(lambda a: np.swapaxes(a, 0, 1), runs),
                n, group=0)
    info = GroupInfo(statics=first.statics(), n_settings=n, chunk_size=n, n_chunks=1,
                     steps=cfg.steps, compile_s=t1 - t0, run_s=t2 - t1, compiled=1,
                     chunks_computed=1)
    builder.groups.append(info)
    res = builder.build()
    res.meta["search"] = {"method": "tune_gradient", "mode": mode, "steps": steps,
                          "keep": keep, "objective": objective if isinstance(objective, str)
                          else getattr(objective, "__qualname__", "callable")}
    trajectory = {
        "values": values, "objective": objective_traj, "grad": to_np(gs),
        "log_fields": tuple(n for n in names if fields[n].log), "picked": pick,
        "train_steps": int(n * seeds * (steps + 1 + (keep == "best")) * cfg.steps),
        "compile_s": t1 - t0, "run_s": t2 - t1, "mode": mode,
    }
    return TuneResult(settings=res.table, seed_ids=res.seed_ids, status=res.status,
                      diverged_at=res.diverged_at, train_loss=res.train_loss, val=res.val,
                      loss_curve=res.loss_curve, val_curve=res.val_curve, errors=res.errors,
                      groups=res.groups, meta=res.meta, model=model, split=split, key=key,
                      group_of=res.group_of, trajectory=trajectory)
