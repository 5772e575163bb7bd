"""Gradient-based tuning: gradient descent on hyperparameters, from many starts at once.

Every outer step computes the hypergradient of each start (``vmap`` over the
starts of :func:`jaxhp._search.hypergrad.value_and_grad_fn`), takes an Optax step in
the hypergradient coordinates (log space for ``log=True`` fields) and
projects back into each field's valid range. The whole descent is one
compiled program (``lax.scan`` over outer steps) per static group, run by the
engine over chunks of starts (padded and sharded over the devices, each
finished chunk checkpointed); its last evaluation (the run of every seed at
each start's final point) is the result's row, so no second sweep retrains
the final settings. The result is a :class:`TuneResult`
(a :class:`~jaxhp.SweepResult`): selection and the single test evaluation
work exactly as for a sweep.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxhp import _engine as engine
from jaxhp import _population as population
from jaxhp._checkpoint import fingerprint
from jaxhp._data import Split, check_split
from jaxhp._hosts import open_checkpoint
from jaxhp._hparams import Field, HParams, tunable_dtype
from jaxhp._model import Model, function_hash, model_fingerprint
from jaxhp._record import ChunkRecord
from jaxhp._result import SweepResult
from jaxhp._search.common import build, check_int, group_firsts, replace_columns
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
from jaxhp._train import check_key, resolve_loop, run_pure


def coord_bounds(f: Field) -> tuple[float, float]:
    """A field's projection interval (:meth:`Field.bounds`) in hypergradient
    coordinates (log for log fields)."""
    lo, hi = f.bounds()
    return (math.log(lo), math.log(hi)) if f.log else (lo, hi)


def _finite(tree) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x))
                              for x in jax.tree_util.tree_leaves(tree)]))


def _descend(model, cfg, objective, mode, solver, optimizer, steps, keep, z0, lo, hi, hp,
             train_part, val_part, keys):
    """Every start's whole descent (pure; ``vmap`` over the starts, the leading axis of
    ``z0`` and ``hp``): ``(z, zs, vs, gs, v_final, pick, runs)`` per start."""
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


_DEFAULT_OPTIMIZER = optax.adam(0.1)  # one object: its program is cached across calls
_SPECS = (engine.POP, engine.SHARED, engine.SHARED, engine.POP, engine.SHARED,
          engine.SHARED, engine.SHARED)


class _Descent(NamedTuple):
    """What the descent of every static group shares (hashable: its program's name)."""

    model: Model
    objective: Any
    mode: str
    solver: Any
    optimizer: Any
    steps: int
    keep: str

    def program(self, cfg) -> Callable:
        """``(z0, lo, hi, hp, train, val, keys) -> outputs`` of :func:`_descend`: the
        program of a static group (loop ``cfg``), its chunk of starts on the leading
        axis."""
        model, objective, mode, solver, optimizer, steps, keep = self

        def program(z0, lo, hi, hp, train_part, val_part, keys):
            return _descend(model, cfg, objective, mode, solver, optimizer, steps, keep,
                            z0, lo, hi, hp, train_part, val_part, keys)

        return program


def start_bytes(model: Model, hp: HParams, cfg, mode: str, n_wrt: int, seeds: int) -> int:
    """Estimated device bytes of one start (all its seeds): a training member's
    (:func:`jaxhp._engine.member_bytes`) times what the mode keeps at once: reverse
    mode the carries its backward pass stores (every ``remat`` steps and one block,
    else every step), forward mode a primal and a tangent per field, implicit mode the
    conjugate-gradient vectors."""
    member = engine.member_bytes(model, hp, cfg, 1, False)
    if mode == "reverse":
        k = cfg.remat
        stored = (math.ceil(cfg.steps / k) + k) if k else cfg.steps
    elif mode == "forward":
        stored = 2 * n_wrt
    else:
        stored = 6
    return int(seeds * member * (2 + stored))


def starts_chunk(n: int, seeds: int, member: int, per_start: int, n_devices: int,
                 chunk_size, memory_budget, max_chunk) -> int:
    """Starts per compiled call: a sweep's chunk of training members (the working set of
    a step, :func:`jaxhp._engine.plan_chunks`), automatic chunks also capped so that
    what the mode stores (``per_start`` bytes a start) fits the memory budget; a device
    multiple, evened out over the chunks."""
    c = engine.plan_chunks(n, seeds, member, n_devices, chunk_size, memory_budget, max_chunk)
    if chunk_size is not None:
        return c
    cap = engine.chunk_cap(n, 1, per_start, n_devices, memory_budget, None)
    c = max(1, min(c, cap))
    c = math.ceil(n / math.ceil(n / c))  # equal chunks
    return int(math.ceil(c / n_devices) * n_devices)


class _Plan(NamedTuple):
    """A static group's program and chunks, fixed before anything runs."""

    cfg: Any
    chunk: int
    n_chunks: int


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
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
    max_chunk: int | None = None,
    on_error: str = "record",
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkRecord], Any] | None = None,
) -> TuneResult:
    """Gradient descent on hyperparameters from many starting settings at once.

    Each start follows its own hypergradient (see :func:`hypergradient`) for
    ``steps`` outer steps of ``optimizer``, in hypergradient coordinates (the
    logarithm for ``log=True`` fields, the value otherwise); after every step
    each field is clipped into its valid range (open bounds nudged inside).
    A start whose run diverges or whose hypergradient is not finite keeps its
    current values for that step. Starts are independent: they run on the
    engine as a sweep's settings do, in chunks (one compiled ``vmap`` of the
    whole descent per static group), sharded over the devices; starts that
    differ in a static field form static groups, each tuned by its own
    program, with selection across all of them.

    Args:
      model: the model's functions.
      starts: the starting settings: a search space (``jaxhp.random(...)``,
        filled from ``base`` or the model's defaults), a list of settings, or
        a batched setting.
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
      devices: devices to shard each chunk of starts over (default:
        ``jax.devices()``, as in :func:`jaxhp.sweep`).
      chunk_size: starts per compiled call (``"all"``: one call per static
        group; default: from the memory budget and an estimate of one start's
        memory, :func:`start_bytes`).
      memory_budget, max_chunk: as in :func:`jaxhp.sweep`.
      on_error: ``"record"`` (a failing static group is marked ``failed``, the
        others run; a warning quotes the first error) or ``"raise"``.
      progress: a tqdm bar over the starts (``None``: only on a terminal).
      checkpoint_dir: save every finished chunk there (atomically, with a lock
        and a fingerprint that includes a hash of the descent's program, so a
        changed optimizer or objective is refused); the same call again
        resumes after the last finished chunk and gives bit-identical results.
        overwrite: start afresh in that folder.
      on_chunk: called with a :class:`~jaxhp.ChunkRecord` after each chunk
        (its rows' final settings and their last evaluation; ``step`` is the
        training steps), before the chunk is checkpointed. An exception in it
        stops the search as :class:`~jaxhp.CallbackError`.

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
      ``picked`` (``-1`` for the starts of a failed group), ``compile_s`` and
      ``run_s``. ``save``/``load`` keep it. A failed group's rows are its
      starting settings, ``failed``, with NaN trajectories.

    Raises:
      ValueError: for bad ``wrt``, ``mode``, ``objective``, ``steps``,
        ``keep``, seeds or chunk options, before anything compiles.

    Example:
      >>> starts = [LinearHP(learning_rate=lr, l2=l2, steps=200)
      ...           for lr, l2 in [(0.01, 1e-4), (0.3, 1.0)]]
      >>> result = tune_gradient(model, starts, split, key=jax.random.key(0),
      ...                        wrt=("learning_rate", "l2"), objective="mse")
      >>> result.best("mse").setting, result.trajectory["objective"].shape
    """
    check_mode(mode)
    check_stateful(model, mode)
    check_int("steps", steps, 1, why=" (outer steps)")
    check_int("seeds", seeds, 1)
    if keep not in ("final", "best"):
        raise ValueError(f"`keep`={keep!r}: must be 'final' or 'best'")
    if on_error not in ("record", "raise"):
        raise ValueError(f"`on_error`={on_error!r}: must be 'record' or 'raise'")
    engine.check_chunking(chunk_size, memory_budget, max_chunk)
    reporter = engine.ChunkReporter(on_chunk, "tune_gradient", np.arange(seeds))
    table = engine.table_from(starts, model, base, caller="tune_gradient")
    if not len(table):
        raise ValueError("tune_gradient(): no starting settings")
    key = check_key(key)
    n_train = check_split(split)[0]
    names = resolve_wrt(table.cls, wrt)
    groups = [table.rows(g) for g in range(table.n_groups)]
    firsts = group_firsts(table)
    cfgs = []
    for first in firsts:
        cfg = resolve_loop(first, n_train, None, None)
        cfgs.append(cfg._replace(remat=resolve_remat(remat, cfg.steps)) if mode == "reverse"
                    else cfg)
    failures, errors = engine.validate_groups(model, firsts, split, on_error)
    healthy = [gi for gi in range(len(groups)) if gi not in failures]
    if healthy:
        check_objective(model, firsts[healthy[0]], split, objective)
    if isinstance(objective, str) and model.direction(objective) == "max":
        raise ValueError(f"`objective`={objective!r}: the model declares it 'max' (higher "
                         "is better), and tune_gradient minimises its objective; pass a "
                         "metric to minimise (e.g. 'loss' or a cross entropy), or a "
                         "callable(params, val_part, hp) returning minus the metric")
    slv = make_solver(solver, solver_steps, 0.0, None)
    optimizer = _DEFAULT_OPTIMIZER if optimizer is None else optimizer
    fields = table.cls.fields()
    bounds = {n: coord_bounds(fields[n]) for n in names}
    dtype = tunable_dtype()
    lo = {n: np.asarray(b[0], dtype) for n, b in bounds.items()}
    hi = {n: np.asarray(b[1], dtype) for n, b in bounds.items()}
    seed_ids = np.arange(seeds, dtype=np.uint32)
    devices, mesh = engine.mesh_for(devices)
    plans: dict[int, _Plan] = {}
    for gi in healthy:
        idx = groups[gi]
        try:
            member = engine.member_bytes(model, firsts[gi], cfgs[gi], 1, False)
            per = start_bytes(model, firsts[gi], cfgs[gi], mode, len(names), seeds)
        except Exception as e:  # noqa: BLE001 - a user function failed for this group
            if on_error == "raise":
                raise
            failures[gi] = f"{type(e).__name__}: {e}"
            errors.append(e)
            continue
        c = starts_chunk(len(idx), seeds, member, per, len(devices), chunk_size,
                         memory_budget, max_chunk)
        plans[gi] = _Plan(cfgs[gi], c, math.ceil(len(idx) / c))
    descent = _Descent(model, objective, mode, slv, optimizer, steps, keep)
    shared = engine.put((lo, hi), mesh) + engine.put(
        (split.train, split.val, population.member_keys(key, seed_ids)), mesh)
    bar = engine.progress_bar(sum(len(groups[gi]) for gi in plans), progress,
                              desc="tune_gradient", unit="start")
    ckpt = None
    if checkpoint_dir is not None:
        try:
            ckpt = _open_checkpoint(checkpoint_dir, overwrite, mesh, starts, table, firsts,
                                    plans, groups, split, seed_ids, key, names, descent,
                                    shared)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        reporter.folder = str(ckpt.folder)
    n = len(table)
    outs = _Outputs(n, names, steps)
    infos = []
    try:
        for gi, idx in enumerate(groups):
            info = engine.new_group_info(dict(table.group_statics[gi]), len(idx), 0, 0,
                                         firsts[gi].steps, [])
            with engine.failure_policy(
                    info, on_error, errors, ckpt,
                    lambda: f"{len(ckpt.done)} finished chunk(s) are saved in "
                            f"{ckpt.folder}; run the same call to resume"):
                if gi not in plans:
                    raise engine.GroupFailed(failures[gi])
                _run_group(table, idx, gi, plans[gi], descent, names, fields, (lo, hi),
                           shared, mesh, info, outs, ckpt, reporter, bar)
            infos.append(info)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    engine.report_failures(infos, errors)
    return _result(model, split, key, table, seed_ids, names, fields, infos, groups, outs,
                   devices, search={
                       "method": "tune_gradient", "mode": mode, "steps": steps,
                       "keep": keep, "objective": objective if isinstance(objective, str)
                       else getattr(objective, "__qualname__", "callable")})


def _open_checkpoint(folder, overwrite, mesh, starts, table, firsts, plans, groups, split,
                     seed_ids, key, names, descent, shared):
    """The checkpoint of a tuning: its fingerprint holds, per static group, the hash of
    the descent's program (what the optimizer, the objective and the mode compute)."""
    programs = {}
    for gi, plan in sorted(plans.items()):
        hp = population.take_settings(table.batch(groups[gi][:1]), np.zeros(plan.chunk,
                                                                             np.int64))
        z0 = {n: np.zeros(plan.chunk, shared[0][n].dtype) for n in names}
        programs[str(gi)] = function_hash(descent.program(plan.cfg), z0, *shared[:2], hp,
                                          *shared[2:])
    loop = {"search": "tune_gradient", "wrt": list(names), "outer_steps": descent.steps,
            "mode": descent.mode, "keep": descent.keep, "solver": list(descent.solver),
            "remat": {str(gi): p.cfg.remat for gi, p in plans.items()}}
    model_fp = model_fingerprint(descent.model, [firsts[gi] for gi in sorted(plans)],
                                 split.train)
    model_fp["tune_gradient.program_sha256"] = programs  # (named apart in a mismatch)
    return open_checkpoint(folder, fingerprint(
        space=starts, settings=table, model_fp=model_fp,
        split=split, seed_ids=seed_ids, key=key, loop=loop,
        plan=[[len(groups[gi]), p.chunk, p.n_chunks] for gi, p in sorted(plans.items())]),
        overwrite=overwrite, mesh=mesh)


class _Outputs:
    """The descent's outputs of every start, filled chunk by chunk (rows in table order;
    a failed group's rows stay NaN, ``picked`` -1)."""

    def __init__(self, n: int, names, steps: int):
        nan = lambda *shape: np.full(shape, np.nan, tunable_dtype())  # as the program's
        self.coords = {f: nan(n, steps + 1) for f in names}
        self.objective = nan(n, steps + 1)
        self.grad = {f: nan(n, steps) for f in names}
        self.picked = np.full(n, -1, np.int64)
        self.runs: list[tuple] = []  # (group, rows, Run with leaves (seeds, rows, ...))

    def add(self, gi: int, rows, out) -> None:
        z, zs, vs, gs, v_final, pick, runs = out
        for f in self.coords:
            self.coords[f][rows] = np.concatenate([zs[f], z[f][:, None]], axis=1)
            self.grad[f][rows] = gs[f]
        self.objective[rows] = np.concatenate([vs, v_final[:, None]], axis=1)
        self.picked[rows] = pick
        # (starts, seeds, ...) -> (seeds, starts, ...), as a result takes a chunk
        self.runs.append((gi, rows, jax.tree_util.tree_map(lambda a: np.swapaxes(a, 0, 1),
                                                           runs)))


def _final_values(out, names, fields) -> dict[str, np.ndarray]:
    """The picked iterate's value of each tuned field, projected into its range."""
    z, zs, _, _, _, pick, _ = out
    rows = np.arange(len(pick))
    return {f: fields[f].project(np.exp(c) if fields[f].log else c) for f, c in (
        (f, np.concatenate([zs[f], z[f][:, None]], axis=1)[rows, pick]) for f in names)}


def _run_group(table, idx, gi, plan, descent, names, fields, bounds, shared, mesh, info, outs,
               ckpt, reporter, bar):
    """A static group's starts, chunk by chunk (computed, or loaded from ``ckpt``);
    ``bounds``: the coordinates' ``(lo, hi)`` on the host (``shared`` holds them on the
    devices, of every process over several)."""
    group_hp = table.batch(idx)  # straight from the columns
    z_all = {f: np.asarray(v) for f, v in to_coords(group_hp, names).items()}
    z_all = {f: np.clip(v, bounds[0][f], bounds[1][f]).astype(v.dtype)
             for f, v in z_all.items()}
    fn = descent.program(plan.cfg)
    name = ("tune_gradient", plan.cfg, *descent)
    info.chunk_size = plan.chunk
    n, c = len(idx), plan.chunk
    for ci, start in enumerate(range(0, n, c)):
        m = min(c, n - start)
        hp = engine.pad_axis(population.take_settings(group_hp, np.arange(start, start + m)),
                             c)
        z0 = engine.pad_axis({f: v[start:start + m] for f, v in z_all.items()}, c)
        if mesh is not None:
            hp, z0 = engine.put(hp, mesh, engine.POP), engine.put(z0, mesh, engine.POP)
        args = (z0, *shared[:2], hp, *shared[2:])
        if ckpt is not None and ckpt.has(gi, ci):
            out = ckpt.load(gi, ci, jax.eval_shape(fn, *args))
            info.chunks_loaded += 1
            loaded = True
        else:
            compiled, dt = engine.CACHE.get(name, fn, args, mesh, _SPECS)
            info.compile_s += dt
            info.compiled += int(dt > 0)
            t0 = time.perf_counter()
            out = jax.device_get(jax.block_until_ready(compiled(*args)))
            info.run_s += time.perf_counter() - t0
            info.chunks_computed += 1
            loaded = False
        full, out = out, jax.tree_util.tree_map(lambda a, m=m: np.asarray(a)[:m], out)
        rows = idx[start:start + m]
        if reporter:  # before the chunk is saved: a callback error leaves it unsaved
            runs = out[6]
            cols = {k: col[rows] for k, col in table.columns.items()}
            cols.update(_final_values(out, names, fields))
            reporter.report(group=gi, chunk=ci, step=plan.cfg.steps, rows=rows,
                            settings=cols, val=jax.tree_util.tree_map(
                                lambda a: np.swapaxes(a, 0, 1), runs.val),
                            train_loss=np.swapaxes(runs.train_loss, 0, 1),
                            diverged_at=np.swapaxes(runs.diverged_at, 0, 1), loaded=loaded)
        if ckpt is not None and not loaded:
            ckpt.save(gi, ci, full)  # padded, as its program returned it
        outs.add(gi, rows, out)
        if bar is not None:
            bar.update(m)
    info.n_chunks = math.ceil(n / c)


def _result(model, split, key, table, seed_ids, names, fields, infos, groups, outs,
            devices, search) -> TuneResult:
    """The result: one row per start, its picked iterate's setting as trained by the
    descent's last evaluation; a failed group's rows keep their starting setting."""
    n = len(table)
    rows = np.arange(n)
    ok = outs.picked >= 0
    values = {f: np.exp(c) if fields[f].log else c for f, c in outs.coords.items()}
    final = replace_columns(table, **{
        f: np.where(ok, fields[f].project(np.where(ok, v[rows, np.maximum(outs.picked, 0)],
                                                   table.columns[f])),
                    table.columns[f]).astype(table.columns[f].dtype)
        for f, v in values.items()})
    failed = [(gi, groups[gi], info.error) for gi, info in enumerate(infos) if info.error]
    cfg_steps = {gi: info.steps for gi, info in enumerate(infos)}
    train_steps = sum(len(r) * len(seed_ids) * (search["steps"] + 1
                                                + (search["keep"] == "best"))
                      * cfg_steps[gi] for gi, r, _ in outs.runs)
    search["train_steps"] = int(train_steps)  # as every search's meta records it
    trajectory = {
        "values": values, "objective": outs.objective, "grad": outs.grad,
        "log_fields": tuple(f for f in names if fields[f].log), "picked": outs.picked,
        "train_steps": int(train_steps),
        "compile_s": float(sum(i.compile_s for i in infos)),
        "run_s": float(sum(i.run_s for i in infos)), "mode": search["mode"],
    }
    return build(final, seed_ids, outs.runs, infos, model=model, split=split, key=key,
                 search=search, result_cls=TuneResult, failed=failed, devices=devices,
                 trajectory=trajectory)
