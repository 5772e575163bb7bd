"""Successive halving and Hyperband: train all, keep the best 1/eta, continue them.

The policy: rung ``r`` trains the surviving settings (every seed each) up to
its budget of steps, continuing every survivor from its carried state
(parameters, optimizer state, health), never from scratch; the best
``max(1, n // eta)`` by the one scoring rule (:func:`jaxhp._population.score`)
go on. Member ``(i, s)`` uses the key ``fold_in(key, s)`` and step ``t`` draws
its minibatch from ``t`` only, so a survivor's trajectory is the one
``jaxhp.train`` computes for the same setting with ``steps`` = the steps it
trained.

The mechanism is the engine's: each static group runs its own rungs; a rung's
survivors run in chunks of one fixed size (padded), sharded over the devices;
a segment program takes its start and stop steps as traced values, so the
whole search compiles one program per static group (initialise from step 0,
train a segment, evaluate), whatever the number of rungs and brackets.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxhp import _engine as engine
from jaxhp import _population as population
from jaxhp._checkpoint import fingerprint
from jaxhp._data import Split, check_split
from jaxhp._hosts import open_checkpoint
from jaxhp._hparams import HParams
from jaxhp._member_steps import refuse_padded_steps
from jaxhp._model import Model, model_fingerprint
from jaxhp._record import ChunkRecord, Rung
from jaxhp._result import SweepResult, resolve_direction
from jaxhp._search.common import (
    build,
    check_int,
    check_metric,
    group_firsts,
    replace_columns,
)
from jaxhp._train import check_key, resolve_loop


class HalvingResult(SweepResult):
    """The outcome of :func:`successive_halving` or :func:`hyperband`.

    One row per setting the search used, holding its validation metrics at the
    rung where it stopped; its setting's ``steps`` is the steps it trained, so
    ``params()`` and ``evaluate_test()`` (which retrain with ``jaxhp.train``)
    reproduce that run. Declared fields, kept by ``save``/``load``:

    Attributes:
      rungs: one :class:`~jaxhp.Rung` per rung (and bracket), in order.
      steps_trained: per setting, the steps it trained.

    Example:
      >>> result.rungs[0].promoted, result.steps_trained
    """

    EXTRAS = ("rungs", "steps_trained")


def rung_budgets(min_steps: int, max_steps: int, eta: int) -> list[int]:
    """The steps after each rung: ``min_steps * eta**r``, the last one ``max_steps``.

    The number of rungs is ``1 + round(log_eta(max_steps / min_steps))``.

    Example:
      >>> rung_budgets(20, 500, 3)
      [20, 60, 180, 500]
    """
    n = max(0, round(math.log(max_steps / min_steps) / math.log(eta)))
    return [min_steps * eta**r for r in range(n)] + [max_steps]


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


def rung_sizes(n: int, budgets: list[int], eta: int) -> list[int]:
    sizes = [n]
    for _ in budgets[1:]:
        sizes.append(max(1, sizes[-1] // eta))
    return sizes


def search_chunk(sizes: Sequence[int], cap: int, n_devices: int, chunk_size) -> int:
    """The one chunk size of a search: every rung (and bracket) runs in chunks of it,
    so one program serves them all.

    Rungs shrink geometrically; a chunk as large as the first rung would pad
    the last rungs (the longest) with idle members, a chunk as small as the
    last would cut the first into many small calls. The geometric mean of the
    largest and smallest rung balances the two; ``cap`` (the engine's memory
    plan) bounds it, an explicit ``chunk_size`` overrides it. A device multiple.
    """
    if chunk_size == "all":
        c = max(sizes)
    elif chunk_size is not None:
        c = min(int(chunk_size), max(sizes))
    else:
        c = min(cap, math.ceil(math.sqrt(max(sizes) * min(sizes))))
    return int(math.ceil(max(1, c) / n_devices) * n_devices)


def _halve(group: engine.Runner, brackets: list, eta: int, metric: str, mode: str, gi: int,
           bar=None, ckpt=None) -> list[Rung]:
    """Runs every bracket's rungs over the group (group-local member indices); after
    each rung the whole state is checkpointed, and a saved state is resumed from."""
    n_seeds = group.shape[1]
    labelled = len(brackets) > 1
    b, r, alive, rungs = 0, 0, np.asarray(brackets[0][0]), []
    saved = None if ckpt is None else ckpt.latest_state(gi)
    if saved is not None:
        step, state = saved
        group.restore(state["runner"])
        b, r, alive, rungs = state["bracket"], state["rung"], state["alive"], state["rungs"]
        if bar is not None:
            bar.update(step + 1)
    while b < len(brackets):
        budgets = brackets[b][1]
        s0 = budgets[r - 1] if r else 0
        t0 = group.info.run_s, group.info.compile_s
        val, dead = group.run(alive, s0, budgets[r])
        score = population.score(val[metric], dead, mode, xp=np)
        order = np.argsort(score, kind="stable")
        n_keep = 0 if r == len(budgets) - 1 else max(1, len(alive) // eta)
        keep = np.sort(order[:n_keep][np.isfinite(score[order[:n_keep]])])
        shown = np.where(np.isfinite(score), score if mode == "min" else -score, np.nan)
        rungs.append(Rung(rung=r, bracket=b if labelled else None, group=gi,
                          steps=budgets[r], settings=alive, promoted=alive[keep],
                          value=shown, train_steps=len(alive) * n_seeds * (budgets[r] - s0),
                          compile_s=group.info.compile_s - t0[1],
                          run_s=group.info.run_s - t0[0]))
        if keep.size:
            r, alive = r + 1, alive[keep]
        else:  # the bracket is over: the last rung promotes nobody
            b, r = b + 1, 0
            alive = np.asarray(brackets[b][0]) if b < len(brackets) else alive[:0]
        if ckpt is not None:
            ckpt.save_state(gi, len(rungs) - 1, {
                "runner": group.state(), "bracket": b, "rung": r, "alive": alive,
                "rungs": rungs})
        if bar is not None:
            bar.update(1)
    return rungs


def _prepare(model, space, split, base, seeds, max_steps, min_steps, eta, metric, mode,
             devices, chunk_size, memory_budget, max_chunk, on_error, who):
    """Validates everything once, before anything compiles; groups by static part.

    The settings stay columns: ``max_steps`` replaces the ``steps`` column."""
    if on_error not in ("record", "raise"):
        raise ValueError(f"`on_error`={on_error!r}: must be 'record' or 'raise'")
    seed_ids = engine.check_seeds(seeds)
    engine.check_chunking(chunk_size, memory_budget, max_chunk)
    check_int("eta", eta, 2, why=" (keep the best 1/eta of each rung)")
    check_int("min_steps", min_steps, 1)
    table = engine.table_from(space, model, base, who)
    if not len(table):
        raise ValueError(f"{who}(): the space has no settings")
    n_train = check_split(split)[0]
    for first in group_firsts(table):
        resolve_loop(first, n_train, None, None)  # a static `steps`, a valid batch size
    if max_steps is not None:
        check_int("max_steps", max_steps, 1)
        table = replace_columns(table, steps=np.full(len(table), max_steps))
    steps = table.columns["steps"]
    if (min_steps > steps).any():
        raise ValueError(f"`min_steps`={min_steps} exceeds `max_steps`="
                         f"{steps[np.argmax(min_steps > steps)]}: the first rung must not "
                         "train longer than the last")
    groups = [table.rows(g) for g in range(table.n_groups)]
    firsts = group_firsts(table)
    for gi, first in enumerate(firsts):
        refuse_padded_steps(first, who, dict(table.group_statics[gi]))
    failures, errors = engine.validate_groups(model, firsts, split, on_error)
    healthy = [gi for gi in range(len(groups)) if gi not in failures]
    if healthy:
        metric = check_metric(model, firsts[healthy[0]], split, metric)
    mode = resolve_direction(model.directions, metric, mode)
    return seed_ids, table, groups, firsts, failures, errors, metric, mode


def _used(brackets) -> np.ndarray:
    """The group-local members any bracket trains, ascending."""
    return np.unique(np.concatenate([np.asarray(m, np.int64) for m, _ in brackets]))


def _search(model, space, split, *, key, seeds, min_steps, eta, metric, mode, base,
            max_steps, devices, chunk_size, memory_budget, max_chunk, on_error, progress,
            who, plan, checkpoint_dir=None, overwrite=False, on_chunk=None):
    """The engine loop shared by :func:`successive_halving` and :func:`hyperband`.

    ``plan(n, budgets_fn)`` gives a group's brackets as ``(members, budgets)``.
    """
    key = check_key(key)
    seed_ids, table, groups, firsts, failures, errors, metric, mode = _prepare(
        model, space, split, base, seeds, max_steps, min_steps, eta, metric, mode,
        devices, chunk_size, memory_budget, max_chunk, on_error, who)
    reporter = engine.ChunkReporter(on_chunk, who, seed_ids)
    devices, mesh = engine.mesh_for(devices)
    n_train = check_split(split)[0]
    shared = {"train": engine.put(split.train, mesh), "val": engine.put(split.val, mesh),
              "key": engine.put(key, mesh), "seed_ids": engine.put(seed_ids, mesh)}
    ctx = {"model": model, "mesh": mesh, "seed_ids": seed_ids, "shared": shared,
           "reporter": reporter}
    brackets_of = [plan(len(idx), firsts[gi].steps) for gi, idx in enumerate(groups)]
    in_result = np.zeros(len(table), bool)  # the rows the result holds (see _finish)
    for gi, idx in enumerate(groups):
        in_result[idx[_used(brackets_of[gi])]] = True
    result_row = np.cumsum(in_result) - 1  # row of the space -> row of the result
    plans: dict[int, tuple] = {}  # group -> (cfg, length, chunk), before anything runs
    infos = []
    for gi, first in enumerate(firsts):
        cfg = resolve_loop(first, n_train, None, None)
        brackets = brackets_of[gi]
        used = _used(brackets)
        sizes = [s for members, b in brackets for s in rung_sizes(len(members), b, eta)]
        length = max(max([b[0]] + [y - x for x, y in zip(b, b[1:])]) for _, b in brackets)
        infos.append(engine.new_group_info(dict(table.group_statics[gi]), len(used), 0, 0,
                                           first.steps, []))
        if gi in failures:
            continue
        try:
            per = engine.member_bytes(model, first, cfg, 1, False)
        except Exception as e:  # noqa: BLE001 - a user function failed for this group
            if on_error == "raise":
                raise
            failures[gi] = f"{type(e).__name__}: {e}"
            errors.append(e)
            continue
        cap = engine.plan_chunks(max(sizes), len(seed_ids), per + 4 * length, len(devices),
                                 None, memory_budget, max_chunk)
        plans[gi] = (cfg, length, search_chunk(sizes, cap, len(devices), chunk_size))
    bar = engine.progress_bar(sum(len(b) for gi in plans for _, b in brackets_of[gi]),
                              progress, desc=who)
    ckpt = None
    if checkpoint_dir is not None:
        search_args = {"search": who, "min_steps": min_steps, "eta": eta, "metric": metric,
                       "mode": mode, "max_steps": max_steps}
        try:
            ckpt = open_checkpoint(checkpoint_dir, fingerprint(
                space=space, settings=table,
                model_fp=model_fingerprint(model, [firsts[gi] for gi in plans],
                                           split.train),
                split=split, seed_ids=seed_ids, key=key, loop=search_args,
                plan=[[len(groups[gi]), plans[gi][2]] for gi in sorted(plans)]),
                overwrite=overwrite, mesh=mesh)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        reporter.folder = str(ckpt.folder)
    builder_groups, rungs, outcomes, failed = [], [], [], []
    trained = np.zeros(len(table), np.int64)
    try:
        for gi, idx in enumerate(groups):
            info = infos[gi]
            rows = idx[_used(brackets_of[gi])]  # the group's used rows of the table
            with engine.failure_policy(
                    info, on_error, errors, ckpt,
                    lambda: "the search state after the last finished rung is saved in "
                            f"{ckpt.folder}; run the same call to resume"):
                if gi not in plans:
                    raise engine.GroupFailed(failures[gi])
                cfg, length, c = plans[gi]
                info.chunk_size = c
                brackets = brackets_of[gi]
                group = engine.Runner(ctx, table.batch(rows), cfg, c, length, info,
                                      total_steps=firsts[gi].steps,
                                      max_evals=max(len(b) for _, b in brackets),
                                      group=gi, rows=result_row[rows])
                local = [(np.searchsorted(_used(brackets), np.asarray(members)), budgets)
                         for members, budgets in brackets]
                for rg in _halve(group, local, eta, metric, mode, gi, bar, ckpt):
                    rg.settings, rg.promoted = rows[rg.settings], rows[rg.promoted]
                    rungs.append(rg)
                outcomes.append((gi, rows, group.outcome()))
                trained[rows] = group.trained
                info.n_chunks = info.chunks_computed
            if info.error:
                failed.append((gi, rows, info.error))
            builder_groups.append(info)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    engine.report_failures(builder_groups, errors)
    return table, seed_ids, outcomes, failed, trained, builder_groups, rungs, metric, mode, \
        key, devices


def _finish(model, split, key, seed_ids, table, outcomes, failed, trained, groups, rungs,
            search, devices):
    """The result: one row per setting the search used (in space order), whose ``steps``
    is the steps it trained (kept when it trained none).

    Rows are renumbered with an inverse index (row of the space -> row of the result);
    the final settings are columns: the used rows with their ``steps`` column replaced.
    """
    used = np.zeros(len(table), bool)
    for _, rows, *_ in (*outcomes, *failed):
        used[rows] = True
    keep = np.flatnonzero(used)
    pos = np.full(len(table), -1, np.int64)
    pos[keep] = np.arange(keep.size)
    steps = table.columns["steps"][keep]
    final = replace_columns(table.take(keep),
                            steps=np.where(trained[keep] > 0, trained[keep], steps))
    search["train_steps"] = int(sum(r.train_steps for r in rungs))
    search["full_sweep_train_steps"] = int(len(seed_ids) * steps.sum())
    for r in rungs:
        r.settings, r.promoted = pos[r.settings], pos[r.promoted]
    return build(final, seed_ids, [(gi, pos[rows], run) for gi, rows, run in outcomes],
                 groups, model=model, split=split, key=key, search=search,
                 result_cls=HalvingResult, devices=devices,
                 failed=[(gi, pos[rows], msg) for gi, rows, msg in failed],
                 rungs=rungs, steps_trained=trained[keep])


_ENGINE_ARGS = """devices: devices to shard each chunk over (default: ``jax.devices()``, of
        every process after ``jax.distributed.initialize()``, as in :func:`jaxhp.sweep`).
      chunk_size: settings per compiled call (see :func:`search_chunk`; default:
        from the rung sizes and the memory budget); ``"all"``: the largest rung.
      memory_budget, max_chunk: as in :func:`jaxhp.sweep`.
      on_error: ``"record"`` (a failing static group is marked ``failed``, the
        others run; a warning quotes the first error) or ``"raise"``.
      progress: a tqdm bar over rungs (``None``: only on a terminal).
      checkpoint_dir: save the whole search state after every rung there
        (atomically, with a lock and a fingerprint, as :func:`jaxhp.sweep`);
        the same call again resumes after the last finished rung and gives
        bit-identical results. overwrite: start afresh in that folder.
      on_chunk: called with a :class:`~jaxhp.ChunkRecord` after each chunk of
        each rung (a setting is reported once per rung it trains in; ``step``
        is the rung's budget), before the rung is checkpointed. Resuming
        reports only the rungs run after the restored state. An exception in
        it stops the search as :class:`~jaxhp.CallbackError`."""


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
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
    max_chunk: int | None = None,
    on_error: str = "record",
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkRecord], Any] | None = None,
) -> HalvingResult:
    """Successive halving: every rung keeps the best ``1/eta`` and trains them ``eta``x longer.

    Rung ``r`` trains the surviving settings (each with every seed) until step
    ``min_steps * eta**r`` (the last rung until ``max_steps``; see
    :func:`rung_budgets`), continuing each from its carried state. The
    settings are ranked by their mean validation ``metric`` over seeds; the
    best ``max(1, n // eta)`` go on; a setting with a diverged seed never
    does. Settings that differ in a static field form static groups, each
    with its own rungs; selection runs across all of them. Survivors run in
    chunks of one size, sharded over the devices: one compiled program per
    static group, whatever the number of rungs.

    Args:
      model: the model's functions.
      space: a search space or a list of settings.
      split: the data; training reads ``train``, the ranking ``val``.
      key: base PRNG key; member ``(setting, seed s)`` uses ``fold_in(key, s)``
        as in :func:`jaxhp.sweep`.
      seeds: the number of seeds or a list of seed indices.
      min_steps: the steps of the first rung.
      eta: the reduction factor (an integer >= 2).
      metric, mode: the ranking rule (as in :meth:`SweepResult.best`; the
        direction is the model's declared one unless ``mode`` is given).
      base: fills the fields the space leaves unset.
      max_steps: the steps of the last rung (default: each setting's
        ``steps``). During the search every setting has ``steps = max_steps``
        (models whose functions read ``hp.steps`` see the full horizon).
      devices, chunk_size, memory_budget, max_chunk, on_error, progress,
      checkpoint_dir, overwrite, on_chunk: the engine's options (see below).

    Engine options:
      {engine}

    Returns:
      A :class:`HalvingResult` with one row per setting, holding its
      validation metrics at the rung where it stopped; its setting has
      ``steps`` replaced by the steps it actually trained, so ``best()``,
      ``params()`` and ``evaluate_test()`` (which retrain with ``jaxhp.train``)
      reproduce that run. Also ``result.steps_trained`` (per setting),
      ``result.rungs`` (per rung: ``group``, ``steps``, ``settings`` trained,
      ``promoted``, ``value`` (mean metric), ``train_steps`` (member steps
      spent), compile and run seconds) and ``result.meta["search"]`` (budgets,
      total ``train_steps`` and what a full sweep would have spent).
      ``groups`` holds one entry per static group.

    Raises:
      ValueError: a bad ``eta``, ``min_steps``, ``max_steps``, seeds or chunk
        options, before anything compiles.
      SelectionError: an unknown ``metric`` or an undeclared direction.

    Example:
      >>> space = jaxhp.random(81, learning_rate=jaxhp.loguniform(1e-3, 1.0),
      ...                      l2=jaxhp.loguniform(1e-5, 1.0))
      >>> result = successive_halving(model, space, split, key=jax.random.key(0),
      ...                             min_steps=20, max_steps=500, metric="mse")
      >>> result.best("mse").setting.steps, result.meta["search"]["train_steps"]
      (500, 4740)
    """

    def plan(n, steps):
        budgets = rung_budgets(min_steps, steps, eta)
        return [(np.arange(n), budgets)]

    table, seed_ids, outcomes, failed, trained, groups, rungs, metric, mode, key, \
        devices = \
        _search(model, space, split, key=key, seeds=seeds, min_steps=min_steps, eta=eta,
                metric=metric, mode=mode, base=base, max_steps=max_steps, devices=devices,
                chunk_size=chunk_size, memory_budget=memory_budget, max_chunk=max_chunk,
                on_error=on_error, progress=progress, who="successive_halving", plan=plan,
                checkpoint_dir=checkpoint_dir, overwrite=overwrite, on_chunk=on_chunk)
    steps = int(table.columns["steps"].max())
    return _finish(model, split, key, seed_ids, table, outcomes, failed, trained, groups,
                   rungs, search={"method": "successive_halving", "eta": eta,
                                  "min_steps": min_steps, "max_steps": steps,
                                  "budgets": rung_budgets(min_steps, steps, eta),
                                  "metric": metric, "mode": mode}, devices=devices)


successive_halving.__doc__ = successive_halving.__doc__.replace("{engine}", _ENGINE_ARGS)


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
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
    max_chunk: int | None = None,
    on_error: str = "record",
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkRecord], Any] | None = None,
) -> HalvingResult:
    """Hyperband: successive halving brackets from aggressive to none (Li et al. 2018).

    Bracket ``b`` (see :func:`hyperband_brackets`) takes the next ``n_b``
    settings of the space (of each static group) in order and runs successive
    halving from its first budget. Every bracket shares the group's one
    compiled program (one chunk size, traced segment bounds). The result has
    one row per setting used, as for :func:`successive_halving`
    (``result.rungs`` entries name their ``bracket``).

    Args:
      model, split, key, seeds, min_steps, eta, metric, mode, base, max_steps,
      devices, chunk_size, memory_budget, max_chunk, on_error, progress,
      checkpoint_dir, overwrite, on_chunk: as in :func:`successive_halving`.
      space: a search space or list of settings with at least the brackets'
        total number of settings per static group (extra ones are not used).

    Returns:
      A :class:`HalvingResult`, as for :func:`successive_halving`.

    Raises:
      ValueError: as :func:`successive_halving`, or a space too small.

    Example:
      >>> n = sum(b[0] for b in hyperband_brackets(10, 90, 3))  # 17
      >>> result = hyperband(model, jaxhp.random(n, learning_rate=...), split,
      ...                    key=jax.random.key(0), min_steps=10, max_steps=90)
    """
    check_int("eta", eta, 2, why=" (keep the best 1/eta of each rung)")
    check_int("min_steps", min_steps, 1)

    def plan(n, steps):
        brackets = hyperband_brackets(min_steps, steps, eta)
        need = sum(b[0] for b in brackets)
        if n < need:
            raise ValueError(f"hyperband(): the brackets {[b[0] for b in brackets]} need "
                             f"{need} settings, the space has {n}; sample at least {need} "
                             f"(e.g. jaxhp.random({need}, ...))")
        out, offset = [], 0
        for n_b, budgets in brackets:
            out.append((np.arange(offset, offset + n_b), budgets))
            offset += n_b
        return out

    table, seed_ids, outcomes, failed, trained, groups, rungs, metric, mode, key, \
        devices = \
        _search(model, space, split, key=key, seeds=seeds, min_steps=min_steps, eta=eta,
                metric=metric, mode=mode, base=base, max_steps=max_steps, devices=devices,
                chunk_size=chunk_size, memory_budget=memory_budget, max_chunk=max_chunk,
                on_error=on_error, progress=progress, who="hyperband", plan=plan,
                checkpoint_dir=checkpoint_dir, overwrite=overwrite, on_chunk=on_chunk)
    steps = int(table.columns["steps"].max())
    return _finish(model, split, key, seed_ids, table, outcomes, failed, trained, groups,
                   rungs, search={"method": "hyperband", "eta": eta, "min_steps": min_steps,
                                  "max_steps": steps,
                                  "brackets": [[n, b] for n, b in hyperband_brackets(
                                      min_steps, steps, eta)],
                                  "metric": metric, "mode": mode}, devices=devices)
