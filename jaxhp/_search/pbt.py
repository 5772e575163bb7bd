"""Population-based training (Jaderberg et al. 2017): a policy on the engine.

Between two ready points the population trains a segment with the engine's
segment program (the Optax optimizer is built from each member's traced
hyperparameters, so new values never recompile). At a ready point (every
``ready_every`` steps) each member has been evaluated on validation; on the
host, the bottom ``fraction`` copy the parameters, optimizer state, model state
(BatchNorm statistics, for a stateful model), health and hyperparameters of
members drawn from the top ``fraction`` (exploit) and multiply the chosen
tunables by a factor drawn from ``perturb`` (explore), projected into each
field's range. Each static group is its own population.

A member is a setting trained with every seed (its seeds are copied
together, ranked by the mean over seeds); seed ``s`` uses ``fold_in(key, s)``
as in :func:`jaxhp.sweep`, so a copy continues on its source's minibatches.
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
from jaxhp._hparams import HParams, did_you_mean, pad_alloc, tunable_dtype
from jaxhp._member_steps import refuse_padded_steps
from jaxhp._model import model_fingerprint
from jaxhp._record import ChunkRecord, StackedParams
from jaxhp._refit import test_metrics
from jaxhp._result import Selection, SweepResult, TestReport, resolve_direction
from jaxhp._search.common import (
    build,
    check_int,
    check_metric,
    group_firsts,
    replace_columns,
)
from jaxhp._train import check_key, learned, resolve_loop

# The exploit/explore decisions draw from fold_in(key, _STREAM): a stream no seed uses
# (seed ids are < 2**32 - 1 in practice), so the members' keys stay those of a sweep.
_STREAM = 2**32 - 1


class PBTResult(SweepResult):
    """The final population of :func:`pbt`, with its schedules and lineage.

    Rows are the population's slots; ``settings[i]`` holds slot ``i``'s final
    hyperparameters and the result keeps every slot's final parameters (with
    its state, as ``(params, state)``, for a model declared ``has_state=True``;
    ``save``/``load`` keep both). A
    member's parameters were trained by a *schedule* of hyperparameters (and
    by copies along its lineage), not by its final setting alone: retraining
    the final setting from scratch would be another experiment.

    Attributes:
      schedule: ``{field: (n_settings, n_intervals)}`` the values slot ``i``
        trained with in interval ``j`` (steps ``schedule_steps[j]`` onwards).
      schedule_steps: the first step of each interval.
      lineage: ``(n_settings, n_ready)``: after ready point ``j``, slot ``i``
        holds a copy of slot ``lineage[i, j]`` (itself if it was not replaced).
      ready_steps: the steps of the ready points.
      ready_value: ``(n_settings, n_ready)`` the mean validation metric of each
        slot at each ready point, before exploit (NaN: diverged).

    Example:
      >>> result = jaxhp.pbt(model, space, split, key=key, ready_every=30)
      >>> result.lineage[:, 0], result.schedule["learning_rate"][:, -1]
    """

    EXTRAS = ("schedule", "schedule_steps", "lineage", "ready_steps", "ready_value")
    SAVES_PARAMS = True

    def ancestry(self, index: int) -> dict:
        """The schedule that trained slot ``index``'s final parameters, across copies.

        Returns:
          ``{"slot": (n_intervals,) the slot that trained each interval, field:
          (n_intervals,) its values}``.

        Example:
          >>> result.ancestry(result.best("mse").index)["learning_rate"]
        """
        n = len(self.schedule_steps)
        slots = np.empty(n, np.int64)
        slots[-1] = index
        for j in range(n - 2, -1, -1):
            slots[j] = self.lineage[slots[j + 1], j]
        out = {"slot": slots}
        out.update({f: v[slots, np.arange(n)] for f, v in self.schedule.items()})
        return out

    def evaluate_test(self, metric: str = "loss", mode: str | None = None, *,
                      refit: bool = False, model=None, split: Split | None = None,
                      allow_repeat: bool = False) -> TestReport:
        """Tests the best slot's final PBT-trained parameters, once (no retraining).

        Selection is on the final validation metrics (mean over seeds). Unlike a
        sweep, the parameters are not retrained from the final setting (that
        would ignore the schedule): the slot's final parameters for each seed
        are evaluated on the test part.

        Raises:
          ValueError: ``refit=True`` (a PBT run cannot be refit on train + val
            without replaying its schedule).
          RuntimeError: a second test evaluation without ``allow_repeat``.

        Example:
          >>> result.evaluate_test("mse").metrics["mse"]
        """
        if refit:
            raise ValueError("refit=True is not available for PBT: its parameters come "
                             "from a schedule of hyperparameters and copies; retrain "
                             "with `result.ancestry(i)` yourself if you need it")
        self._check_test_unread(allow_repeat)  # a loaded result remembers its reads
        model, split, _ = self._context(model, split)
        sel: Selection = self.best(metric, mode)
        params = [self.params(sel.index, s, model=model) for s in range(self.n_seeds)]
        arrays = test_metrics(model, self.setting(sel.index), params, split)
        report = TestReport(sel, {k: float(v.mean()) for k, v in arrays.items()}, arrays,
                            False, params)
        self._record_test_read(report)
        return report


def _explore_spec(cls, fields, perturb):
    every = cls.fields()
    continuous = [n for n in cls.tunable_names()
                  if not every[n].integer and every[n].choices is None]
    if fields is None:
        names = continuous
    else:
        names = (fields,) if isinstance(fields, str) else tuple(fields)
    spec = []
    for n in names:
        f = every.get(n)
        if f is None or not f.is_tunable:
            raise ValueError(f"`fields`: {n!r} is not a tunable field of {cls.__name__}"
                             f"{did_you_mean(n, cls.tunable_names())}; tunables are "
                             f"{list(cls.tunable_names())}")
        if n not in continuous:
            raise ValueError(f"`fields`: {n!r} is an integer or a choice among values; "
                             "explore multiplies values, so it perturbs continuous "
                             "fields only (it still copies this one)")
        lo, hi = f.bounds()
        spec.append((n, float(lo), float(hi)))
    if not spec:
        raise ValueError("`fields` is empty: name at least one tunable field to perturb")
    try:
        factors = tuple(float(p) for p in perturb)
    except (TypeError, ValueError):
        factors = ()
    if not factors or not all(math.isfinite(p) and p > 0 for p in factors):
        raise ValueError(f"`perturb`={perturb!r}: must be a non-empty sequence of "
                         "positive finite factors, e.g. (0.8, 1.25)")
    return tuple(spec), factors


def _exploit_explore(key, score, hp: HParams, n_q: int, spec, factors):
    """The policy at a ready point, on the host: the bottom ``n_q`` by ``score`` copy a
    member drawn uniformly from the top ``n_q`` (``src``) and multiply each ``spec``
    field by a factor drawn from ``factors``, clipped into its range.

    Returns ``(src, new_hp)``; ``src[i]`` is the member slot ``i`` now continues.
    """
    n = score.shape[0]
    # numpy draws seeded by the key's bits: no device program per population size
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    order = np.argsort(score, kind="stable")
    top, bottom = order[:n_q], order[n - n_q:]
    pick = rng.integers(0, n_q, n_q)
    src = np.arange(n)
    src[bottom] = top[pick]
    replaced = np.zeros(n, bool)
    replaced[bottom] = True
    new = population.take_settings(hp, src)
    table = np.asarray(factors, np.float64)
    changes = {}
    for name, lo, hi in spec:
        draw = rng.integers(0, len(factors), n)
        v = np.asarray(getattr(new, name))
        moved = np.clip(v * table[draw].astype(v.dtype), v.dtype.type(lo), v.dtype.type(hi))
        changes[name] = np.where(replaced, moved, v).astype(v.dtype)
    return src, population.replace_tunables(new, **changes)


def _pbt_group(runner: engine.Runner, steps: int, k: int, n_q: int, spec, factors, metric,
               mode, stream, bar, ckpt=None, gi: int = 0):
    """Runs one static group's population through its intervals; returns its records.
    After each interval the whole state is checkpointed; a saved state is resumed."""
    n = runner.shape[0]
    everyone = np.arange(n)
    bounds = [(s0, min(s0 + k, steps)) for s0 in range(0, steps, k)]
    n_ready = len(bounds) - 1
    first, schedule, srcs, scores = 0, [], [], []
    saved = None if ckpt is None else ckpt.latest_state(gi)
    if saved is not None:
        step, state = saved
        runner.restore(state["runner"])
        first, schedule, srcs, scores = step + 1, state["schedule"], state["srcs"], \
            state["scores"]
        if bar is not None:
            bar.update(first)
    for j in range(first, len(bounds)):
        s0, s1 = bounds[j]
        schedule.append({f: np.asarray(v).copy() for f, v in runner.hp.tunables().items()})
        val, dead = runner.run(everyone, s0, s1)
        if j < n_ready:
            score = population.score(val[metric], dead, mode, xp=np)
            src, runner.hp = _exploit_explore(jax.random.fold_in(stream, j), score,
                                              runner.hp, n_q, spec, factors)
            runner.carry = population.take(runner.carry, src)  # curves stay per slot
            srcs.append(src)
            scores.append(score)
        if ckpt is not None:
            ckpt.save_state(gi, j, {"runner": runner.state(), "schedule": schedule,
                                    "srcs": srcs, "scores": scores})
        if bar is not None:
            bar.update(1)
    return schedule, srcs, scores, bounds


def pbt(
    model,
    space,
    split: Split,
    *,
    key: jax.Array,
    seeds: int | Sequence[int] = 1,
    steps: int | None = None,
    ready_every: int,
    fraction: float = 0.25,
    perturb: Sequence[float] = (0.8, 1.25),
    fields: Sequence[str] | None = None,
    metric: str = "loss",
    mode: str | None = None,
    base: HParams | None = None,
    devices: Sequence[jax.Device] | None = None,
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
    max_chunk: int | None = None,
    on_error: str = "record",
    progress: bool | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
    on_chunk: Callable[[ChunkRecord], Any] | None = None,
) -> PBTResult:
    """Population-based training: exploit and explore every ``ready_every`` steps.

    The population (the settings of ``space``, each trained with every seed)
    trains for ``steps`` steps on the engine (chunked, sharded over the devices,
    one compiled program per static group). At each ready point
    (steps ``ready_every, 2 * ready_every, ...`` before the end) the members
    are ranked by their mean validation ``metric`` over seeds (a diverged
    member ranks last); each of the bottom ``max(1, floor(fraction * n))``
    copies the whole state (parameters, optimizer state, model state, health: a
    diverged member is revived) and hyperparameters of a member drawn uniformly from
    the top as many, then multiplies each of its ``fields`` by a factor drawn
    from ``perturb`` (a step in log space for ``log`` fields; a linear field
    at 0 stays at 0) and clips it into the field's range (open bounds nudged
    inside).

    Args:
      model: the model's functions.
      space: the initial population: a search space or list of settings (at
        least 2 per static group); each static group is its own population.
      split: the data; training reads ``train``, ranking ``val``.
      key: base PRNG key; seed ``s`` trains with ``fold_in(key, s)``; the
        exploit/explore draws use a separate stream of ``key``.
      seeds: the number of seeds or a list of seed indices.
      steps: total training steps (default: the settings' ``steps``).
      ready_every: steps between ready points, in ``[1, steps]``.
      fraction: the share replaced at each ready point, in ``(0, 0.5]``.
      perturb: the factors explore draws from.
      fields: the tunables to perturb (default: every continuous one, i.e.
        neither ``integer`` nor ``choices``); the others are only copied.
      metric, mode: the ranking rule (as in :meth:`SweepResult.best`).
      base: fills the fields the space leaves unset.
      devices, chunk_size, memory_budget, max_chunk, on_error, progress: the
        engine's options, as in :func:`jaxhp.successive_halving`.
      checkpoint_dir, overwrite: save the whole state (parameters, optimizer
        states, hyperparameters, schedule, lineage) after every interval; the
        same call again resumes after the last ready point, bit-identical.
      on_chunk: called with a :class:`~jaxhp.ChunkRecord` after each chunk of
        each interval (every slot is reported once per interval, with the
        hyperparameters it trained the interval with; ``step`` is the
        interval's end), before exploit and the checkpoint. Resuming reports
        only the intervals run after the restored state. An exception in it
        stops the search as :class:`~jaxhp.CallbackError`.

    Returns:
      A :class:`PBTResult` (a :class:`~jaxhp.SweepResult`): one row per slot of
      the population with its final hyperparameters, final validation
      metrics, per-step loss curve and validation curve (at each ready point
      before exploit, then at the end: ``groups[0]["eval_steps"]``), its
      final parameters, ``schedule``, ``lineage`` and :meth:`PBTResult.ancestry`.
      ``evaluate_test`` tests the selected slot's final parameters.

    Raises:
      ValueError: a bad ``ready_every``, ``fraction``, ``perturb``, ``fields``,
        ``steps``, fewer than 2 settings in a static group,
        before anything compiles. SelectionError: an unknown ``metric``.

    Example:
      >>> space = jaxhp.random(16, learning_rate=jaxhp.loguniform(1e-3, 1.0),
      ...                      l2=jaxhp.loguniform(1e-5, 1.0))
      >>> result = pbt(model, space, split, key=jax.random.key(0), steps=300,
      ...              ready_every=30, metric="mse")
      >>> i = result.best("mse").index
      >>> result.ancestry(i)["learning_rate"], result.evaluate_test("mse").metrics
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"`on_error`={on_error!r}: must be 'record' or 'raise'")
    seed_ids = engine.check_seeds(seeds)
    engine.check_chunking(chunk_size, memory_budget, max_chunk)
    key = check_key(key)
    reporter = engine.ChunkReporter(on_chunk, "pbt", seed_ids)
    table = engine.table_from(space, model, base, "pbt")
    n_train = check_split(split)[0]
    for first in group_firsts(table):
        resolve_loop(first, n_train, None, None)  # a static `steps`, a valid batch size
    if steps is None:
        all_steps = np.unique(table.columns["steps"]).tolist()
        if len(all_steps) > 1:
            raise ValueError(f"pbt(): the settings vary `steps` ({all_steps}); the "
                             "population's ready points need one horizon: pass `steps=`")
        steps = all_steps[0] if all_steps else 1
    steps = check_int("steps", steps, 1)
    check_int("ready_every", ready_every, 1, steps, why=" (the steps between ready points)")
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise ValueError(f"`fraction`={fraction!r}: must be in (0, 0.5] (the bottom "
                         "fraction copies from the top fraction)")
    table = replace_columns(table, steps=np.full(len(table), steps))
    groups = [table.rows(g) for g in range(table.n_groups)]
    small = [len(idx) for idx in groups if len(idx) < 2]
    if small:
        raise ValueError(f"pbt(): a population (a static group) has {small[0]} setting; "
                         "exploit needs at least 2 per static group")
    firsts = group_firsts(table)
    for gi, first in enumerate(firsts):  # a padded `steps` first: PBT sets the steps itself
        refuse_padded_steps(first, "pbt", dict(table.group_statics[gi]))
    padded = sorted({n for st in table.group_statics for n, v in st.items()
                     if pad_alloc(v) is not None and table.cls.fields()[n].pad_to is not None})
    if padded:
        raise ValueError(
            f"pbt(): {padded} padded (static(..., pad_to=...)): exploit copies a member's "
            "parameters, and in a padded group their size is the member's own value, "
            "which PBT's record (the tunables of every ready point) does not follow; "
            "declare the field without pad_to (one population per value)")
    spec, factors = _explore_spec(table.cls, fields, perturb)
    failures, errors = engine.validate_groups(model, firsts, split, on_error)
    healthy = [gi for gi in range(len(groups)) if gi not in failures]
    if healthy:
        metric = check_metric(model, firsts[healthy[0]], split, metric)
    mode = resolve_direction(model.directions, metric, mode)
    devices, mesh = engine.mesh_for(devices)
    shared = {"train": engine.put(split.train, mesh), "val": engine.put(split.val, mesh),
              "key": engine.put(key, mesh), "seed_ids": engine.put(seed_ids, mesh)}
    ctx = {"model": model, "mesh": mesh, "seed_ids": seed_ids, "shared": shared,
           "reporter": reporter}
    stream = jax.random.fold_in(key, _STREAM)
    n_segments = math.ceil(steps / ready_every)
    n = len(table)
    final = {name: np.array(col) for name, col in table.tunables().items()}
    params = []  # (rows, parameters with leaves (seeds, len(rows), ...)) per group
    schedule_all: dict = {}
    lineage = np.tile(np.arange(n)[:, None], (1, n_segments - 1))
    ready_value = np.full((n, n_segments - 1), np.nan)
    chunks: dict[int, int] = {}  # group -> chunk size, planned before anything runs
    for gi, idx in enumerate(groups):
        if gi in failures:
            continue
        first = firsts[gi]
        try:
            per = engine.member_bytes(model, first, resolve_loop(first, n_train, None, None),
                                      1, True)
        except Exception as e:  # noqa: BLE001 - a user function failed for this group
            if on_error == "raise":
                raise
            failures[gi] = f"{type(e).__name__}: {e}"
            errors.append(e)
            continue
        chunks[gi] = engine.plan_chunks(len(idx), len(seed_ids), per + 4 * ready_every,
                                        len(devices), chunk_size, memory_budget, max_chunk)
    bar = engine.progress_bar(n_segments * len(chunks), progress, desc="pbt")
    ckpt = None
    if checkpoint_dir is not None:
        args = {"search": "pbt", "steps": steps, "ready_every": ready_every,
                "fraction": fraction, "perturb": list(perturb), "fields": fields,
                "metric": metric, "mode": mode}
        try:
            ckpt = open_checkpoint(checkpoint_dir, fingerprint(
                space=space, settings=table,
                model_fp=model_fingerprint(model, [firsts[gi] for gi in chunks],
                                           split.train),
                split=split, seed_ids=seed_ids, key=key, loop=args,
                plan=[[len(groups[gi]), chunks[gi]] for gi in sorted(chunks)]),
                overwrite=overwrite, mesh=mesh)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        reporter.folder = str(ckpt.folder)
    infos, outcomes, failed = [], [], []
    try:
        for gi, idx in enumerate(groups):
            first = firsts[gi]
            cfg = resolve_loop(first, n_train, None, None)
            info = engine.new_group_info(dict(table.group_statics[gi]), len(idx), 0, 0,
                                         steps, [min(steps, ready_every * (j + 1))
                                                 for j in range(n_segments)])
            with engine.failure_policy(
                    info, on_error, errors, ckpt,
                    lambda: f"the state after the last ready point is saved in {ckpt.folder}; "
                            "run the same call to resume"):
                if gi not in chunks:
                    raise engine.GroupFailed(failures[gi])
                c = info.chunk_size = chunks[gi]
                runner = engine.Runner(ctx, table.batch(idx), cfg, c, ready_every, info,
                                       total_steps=steps, max_evals=n_segments,
                                       group=gi, rows=idx)
                n_q = max(1, int(fraction * len(idx)))
                schedule, srcs, scores, _ = _pbt_group(
                    runner, steps, ready_every, n_q, spec, factors, metric, mode,
                    jax.random.fold_in(stream, gi) if gi else stream, bar, ckpt, gi)
                info.n_chunks = info.chunks_computed
                for j, src in enumerate(srcs):
                    lineage[idx, j] = idx[src]
                    sc = np.asarray(scores[j], np.float64)
                    ready_value[idx, j] = np.where(np.isfinite(sc),
                                                   sc if mode == "min" else -sc, np.nan)
                for f in schedule[0]:
                    col = schedule_all.setdefault(f, np.full((n, n_segments), np.nan))
                    col[idx] = np.stack([sch[f] for sch in schedule], axis=1)
                for f, v in _projected(table.cls, runner.hp).items():
                    final[f][idx] = v
                outcomes.append((gi, idx, runner.outcome()))
                params.append((idx, learned(model, runner.carry[0])))
            if info.error:
                failed.append((gi, idx, info.error))
            infos.append(info)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:
            ckpt.close()
    engine.report_failures(infos, errors)
    n_ready = n_segments - 1
    search = {"method": "pbt", "steps": steps, "ready_every": ready_every,
              "fraction": fraction, "perturb": list(factors),
              "n_replaced": [max(1, int(fraction * len(idx))) for idx in groups],
              "fields": [s_[0] for s_ in spec], "metric": metric,
              "mode": mode, "train_steps": n * len(seed_ids) * steps}
    if len(groups) == 1:
        search["n_replaced"] = search["n_replaced"][0]
    return build(replace_columns(table, **final), seed_ids, outcomes, infos, model=model,
                 split=split, key=key, search=search, params=StackedParams(n, params),
                 result_cls=PBTResult, failed=failed, devices=devices,
                 schedule={f: v.astype(tunable_dtype()) for f, v in schedule_all.items()},
                 schedule_steps=ready_every * np.arange(n_ready + 1), lineage=lineage,
                 ready_steps=ready_every * np.arange(1, n_ready + 1),
                 ready_value=ready_value)


def _projected(cls, hp) -> dict[str, np.ndarray]:
    """A batched setting's tunable columns, each projected into its field's range
    (:meth:`Field.project`, vectorised): the final settings of a population."""
    fields = cls.fields()
    return {f: fields[f].project(np.asarray(v)) for f, v in hp.tunables().items()}
