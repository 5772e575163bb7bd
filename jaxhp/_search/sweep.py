"""``sweep``: every setting of a space with every seed; the engine with no policy.

Settings are grouped by their static part (one compiled program per group);
within a group the population (settings x seeds) runs in chunks of the
whole-run program of :func:`jaxhp._population.run`, sharded over the devices.
Keys depend on the seed index only (common random numbers), so a member's
result does not depend on its chunk or its batch-mates.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxhp import _engine as engine
from jaxhp import _population as population
from jaxhp._checkpoint import fingerprint
from jaxhp._data import Folds, Split, check_split
from jaxhp._engine import SweepWarning
from jaxhp._folds import check_folds
from jaxhp._hosts import open_checkpoint
from jaxhp._hparams import HParams
from jaxhp._member_steps import check_member_steps
from jaxhp._model import Model, model_fingerprint
from jaxhp._padded import check_padded_folds
from jaxhp._record import ChunkRecord
from jaxhp._result import SweepResult, resolve_direction
from jaxhp._train import LoopConfig, check_key, eval_steps, resolve_loop

__all__ = ["SweepWarning", "sweep"]


def _program(model: Model, cfg: LoopConfig, keep_params: bool, folds: bool = False,
             checked: bool = True):
    run = population.run(model, cfg, keep_params, folds, checked)

    def program(hp, train_part, val_part, key, seed_ids):
        return run(hp, train_part, val_part, population.member_keys(key, seed_ids))

    return program


_SPECS = (engine.POP, engine.SHARED, engine.SHARED, engine.SHARED, engine.SHARED)


def sweep(
    model: Model,
    space: Any,
    split: Split | Folds,
    *,
    key: jax.Array,
    seeds: int | Sequence[int] = 1,
    base: HParams | None = None,
    eval_every: int | None = None,
    loss_every: int | None = 1,
    health: str = "step",
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
    max_chunk: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    keep_params: bool = False,
    on_error: str = "record",
    progress: bool | None = None,
    select: tuple[str, str | None] = ("loss", None),
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkRecord], Any] | None = None,
) -> SweepResult:
    """Trains every setting of a space with every seed: one program per static group.

    Args:
      model: the model's functions.
      space: a search space (``jaxhp.grid``, ``jaxhp.random``, ...) or a list
        of :class:`~jaxhp.HParams` settings.
      split: the data; training reads ``train``, selection ``val``; the test
        part is only read by :meth:`SweepResult.evaluate_test`. A
        :class:`~jaxhp.Folds` (:func:`jaxhp.kfold`) cross-validates: every
        member trains on every fold, in the same compiled program (folds of
        unequal size are padded and masked), and selection averages over folds
        then seeds.
      key: base PRNG key. Member ``(setting, seed s)`` trains with
        ``fold_in(key, s)``: exactly what ``jaxhp.train(..., key=fold_in(key, s))``
        uses, whatever the chunking or ordering.
      seeds: the number of seeds (``0..seeds-1``) or a list of seed indices.
      base: the setting whose values fill the fields the space leaves unset
        (default: the model's hyperparameter class defaults).
      eval_every, loss_every: curve resolution, as in :func:`jaxhp.train`.
      health: how divergence is detected, as in :func:`jaxhp.train`: ``"step"``
        (every step; a diverging member is frozen at its last finite state) or
        ``"end"`` (with ``loss_every=0``: no step computes the loss, the final
        state and training objective are checked once; see the README, Health).
        Recorded per group (:attr:`GroupInfo.health`).
      chunk_size: settings per compiled call (each with all seeds); ``None``
        sizes it from ``memory_budget`` (capped at ``max_chunk``), ``"all"``
        runs a group in one call. The last chunk is padded (no recompile).
      memory_budget: bytes of memory a chunk may use on each device (estimate);
        ``None``: the backend's default (:func:`jaxhp.chunk_defaults`).
      max_chunk: the largest automatic chunk per device (on a CPU smaller chunks
        stay in cache); a chunk spans ``max_chunk * len(devices)`` settings at
        most. ``None``: the backend's default (512 on a CPU, larger on a GPU or
        TPU: :func:`jaxhp.chunk_defaults`).
      devices: devices to shard the population over (default: ``jax.devices()``,
        all of them, of every process after ``jax.distributed.initialize()``:
        every process then makes the same call, and each holds the whole
        result; only the first process writes ``checkpoint_dir``).
      keep_params: keep every member's trained parameters (host memory!).
      on_error: ``"record"`` marks a failing static group ``failed`` with its
        message and runs the others; ``"raise"`` re-raises.
      progress: a tqdm bar over chunks (``None``: only on a terminal).
      select: ``(metric, mode)`` shown as best-so-far in the progress bar.
      checkpoint_dir: persist every finished chunk there (atomically, with a
        manifest); running the same sweep again skips the finished chunks and
        gives bit-identical results. A changed sweep (space, seeds, data,
        model, key, versions, chunk plan) is refused, listing what differs.
      overwrite: discard an existing checkpoint in ``checkpoint_dir``.
      on_chunk: called with a :class:`~jaxhp.ChunkRecord` after each finished
        chunk (its settings, seeds, validation metrics per member, health),
        before the chunk is checkpointed: stream results to a file, TensorBoard,
        W&B or MLflow. Over one call every setting of a healthy group is reported
        exactly once; on resume the chunks read from ``checkpoint_dir`` are
        reported too, with ``loaded=True``. A group that fails reports what it
        finished before failing (its rows are ``failed`` in the result).

    Returns:
      A :class:`~jaxhp.SweepResult`.

    Raises:
      HParamsError, SpaceError, DataError, ModelError, ValueError: bad input,
      before anything compiles. CheckpointMismatch: resuming a different sweep.
      CheckpointLocked: another live process is using ``checkpoint_dir``.
      KeyboardInterrupt: re-raised after the finished chunks are saved.
      CallbackError: ``on_chunk`` raised (the original error is its
      ``__cause__``); the chunks checkpointed before it stay valid.

    Example:
      >>> space = jaxhp.random(1024, learning_rate=jaxhp.loguniform(1e-3, 1),
      ...                      l2=jaxhp.loguniform(1e-5, 1))
      >>> result = jaxhp.sweep(model, space, split, key=jax.random.key(0), seeds=3)
      >>> result.best("mse").setting
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"`on_error`={on_error!r}: must be 'record' or 'raise'")
    seed_ids = engine.check_seeds(seeds)
    engine.check_chunking(chunk_size, memory_budget, max_chunk)
    key = check_key(key)
    if not (isinstance(select, (tuple, list)) and len(select) == 2):
        raise ValueError(f"`select`={select!r}: must be a (metric, mode) pair, e.g. "
                         "('accuracy', None); mode None uses the model's declared direction")
    select = (select[0], resolve_direction(model.directions, *select))
    reporter = engine.ChunkReporter(on_chunk, "sweep", seed_ids)
    table = engine.table_from(space, model, base)
    if not len(table):
        raise ValueError("sweep(): the space has no settings")
    folds = split if isinstance(split, Folds) else None
    data = split if folds is None else check_folds(folds)  # fold 0 stands for the checks
    n_train = check_split(data)[0] if folds is None else int(folds.sizes[0].max())
    groups = [table.rows(g) for g in range(table.n_groups)]
    firsts = [table.batch(idx[:1])[0] for idx in groups]  # one HParams per group
    cfgs = [resolve_loop(first, n_train, eval_every, loss_every, health)
            for first in firsts]
    for idx, first in zip(groups, firsts):  # a group that pads `steps`: each member's own
        check_member_steps(first, table.columns["steps"][idx], idx, eval_every)
    failures, errors = engine.validate_groups(model, firsts, data, on_error)
    parts = (data.train, data.val) if folds is None else folds.stacked()
    if folds is not None:
        for gi, (first, cfg) in enumerate(zip(firsts, cfgs)):
            if gi not in failures:
                check_padded_folds(model, first, cfg, folds, parts, key)
    replicas = len(seed_ids) * (1 if folds is None else folds.k)
    columns = seed_ids if folds is None else np.tile(seed_ids, folds.k)  # fold-major
    reporter.seed_ids = np.asarray(columns, np.int64)  # one per replica (fold x seed)
    devices, mesh = engine.mesh_for(devices)
    multi = engine.spans_processes(mesh)
    healthy = [gi for gi in range(len(groups)) if gi not in failures]
    n_metrics = 0 if not healthy else engine.count_metrics(model, firsts[healthy[0]],
                                                           data.val)

    plans = []
    for gi, (idx, cfg) in enumerate(zip(groups, cfgs)):
        if gi in failures:
            plans.append((idx, cfg, 1, 0, 1))
            continue
        per = engine.member_bytes(model, firsts[gi], cfg, n_metrics, keep_params)
        c = engine.plan_chunks(len(idx), replicas, per, len(devices), chunk_size,
                               memory_budget, max_chunk)
        cap = engine.chunk_cap(len(idx), replicas, per, len(devices), memory_budget,
                               max_chunk)
        plans.append((idx, cfg, c, math.ceil(len(idx) / c), cap))
    bar = engine.progress_bar(sum(len(p[0]) for gi, p in enumerate(plans)
                                  if gi not in failures), progress, unit="setting")
    ckpt = None
    if checkpoint_dir is not None:
        loop = {"eval_every": eval_every, "loss_every": loss_every,
                "keep_params": keep_params}
        if health != "step":  # (the default keeps the fingerprints of earlier checkpoints)
            loop["health"] = health
        plan = [[len(p[0]), p[2], p[3]] for p in plans]
        try:
            ckpt = open_checkpoint(checkpoint_dir, fingerprint(
                space=space, settings=table,
                model_fp=model_fingerprint(model, [firsts[gi] for gi in healthy],
                                           data.train),
                split=split, seed_ids=seed_ids, key=key, loop=loop, plan=plan),
                overwrite=overwrite, mesh=mesh)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        reporter.folder = str(ckpt.folder)
    builder = SweepResult.builder(table, columns, model=model, split=split, key=key,
                                  devices=devices,
                                  chunk_defaults=engine.chunk_defaults()._asdict())
    try:
        for gi, (idx, cfg, c, n_chunks, cap) in enumerate(plans):
            info = engine.new_group_info(dict(table.group_statics[gi]), len(idx), c,
                                         n_chunks, cfg.steps, eval_steps(cfg).tolist())
            info.health = cfg.health
            with engine.failure_policy(
                    info, on_error, errors, ckpt,
                    lambda: f"{len(ckpt.done)} finished chunk(s) are saved in {ckpt.folder}; "
                            "run the same sweep to resume"):
                if gi in failures:
                    raise engine.GroupFailed(failures[gi])
                # automatic chunks are measured unless a checkpoint fixes the plan, or
                # several processes run it (their timings differ: they must agree)
                policy = engine.ChunkPolicy(
                    c, len(idx), len(devices), cap,
                    tune=chunk_size is None and ckpt is None and not multi,
                    key=("sweep", model, cfg, keep_params, replicas, c, cap,
                         tuple(d.id for d in devices), engine.shapes_of(Split(*parts, None))))
                _run_group(model, cfg, keep_params, table, idx, policy, parts, key,
                           seed_ids, mesh, info, builder, bar, select, gi, ckpt, reporter,
                           folds is not None)
            if info.error:
                builder.fail(idx, info.error)
            builder.groups.append(info)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    engine.report_failures(builder.groups, errors)
    return builder.build()


def _run_group(model, cfg, keep_params, table, idx, policy, parts, key, seed_ids, mesh,
               info, builder, bar, select, gi, ckpt, reporter, folds):
    group_hp = table.batch(idx)  # straight from the columns
    n = len(idx)
    shared = engine.put((*parts, key, seed_ids), mesh)
    # The program whose steps check the loss only; its suspect settings (a non-finite
    # final state) run again with the checked one (_recheck).
    fns = {False: _program(model, cfg, keep_params, folds, checked=False),
           True: _program(model, cfg, keep_params, folds, checked=True)}
    structure = None
    programs: dict[tuple, tuple] = {}  # (checked, size) -> (compiled, compile seconds)

    def program(checked: bool, args) -> tuple:
        size = jax.tree_util.tree_leaves(args[0])[0].shape[0]
        if (checked, size) not in programs:  # looked up once per program and size
            programs[checked, size] = engine.CACHE.get(
                ("sweep", model, cfg, keep_params, folds, checked), fns[checked], args, mesh,
                _SPECS)
            dt = programs[checked, size][1]
            info.compile_s += dt
            info.compiled += int(dt > 0)
            return programs[checked, size][0], dt
        return programs[checked, size][0], 0.0

    start = ci = 0
    while start < n:
        c = policy.next(n - start)
        chunk = engine.pad_axis(group_hp[start:start + c], c)
        if mesh is not None:  # one device: the compiled call takes the numpy columns
            chunk = engine.put(chunk, mesh, engine.POP)
        args = (chunk, *shared)
        m = min(c, n - start)
        if ckpt is not None and ckpt.has(gi, ci):
            if structure is None:  # equal shapes in every chunk: trace once per group
                structure = jax.eval_shape(fns[True], *args)
            out = ckpt.load(gi, ci, structure)
            info.chunks_loaded += 1
            loaded = True
        else:
            compiled, dt = program(False, args)
            t0 = time.perf_counter()
            out = jax.device_get(jax.block_until_ready(compiled(*args)))
            run_s = time.perf_counter() - t0
            info.run_s += run_s
            info.chunks_computed += 1
            policy.observe(c, dt, run_s, m)
            out = _recheck(out, group_hp, start, m, c, shared, mesh, program, info)
            loaded = False
        rows = idx[start:start + m]
        if reporter:  # before the chunk is saved: a callback error leaves it unsaved
            reporter.report(group=gi, chunk=ci, step=cfg.steps, rows=rows,
                            settings={k: col[rows] for k, col in table.columns.items()},
                            val=out.val, train_loss=out.train_loss,
                            diverged_at=out.diverged_at, loaded=loaded)
        if ckpt is not None and not loaded:
            ckpt.save(gi, ci, out)
        builder.add(rows, out, m)
        start, ci = start + m, ci + 1
        if bar is not None:
            bar.update(m)
            best = builder.best_so_far(*select)
            if best is not None:
                bar.set_postfix({f"best {select[0]}": f"{best:.4g}"})
    info.n_chunks = ci
    info.chunk_size = policy.chosen or policy.planned
    info.chunk_trials = [[int(c), float(t)] for c, t in policy.record["trials"].items()]



def _recheck(out, group_hp, start: int, m: int, c: int, shared, mesh, program, info):
    """The chunk's outputs with its suspect settings run again, whole, by the checked
    program (:func:`jaxhp._engine.recheck`)."""

    def run_checked(bad, size):
        hp = engine.pad_axis(population.take_settings(group_hp, start + bad), size)
        if mesh is not None:
            hp = engine.put(hp, mesh, engine.POP)
        compiled, _ = program(True, (hp, *shared))
        t0 = time.perf_counter()
        again = jax.device_get(jax.block_until_ready(compiled(hp, *shared)))
        info.run_s += time.perf_counter() - t0
        return again

    return engine.recheck(out, out.diverged_at, m, c, mesh, run_checked, info)
