"""Population-based training (Jaderberg et al. 2017) as one compiled program.

The population's tunable hyperparameters live in the ``lax.scan`` carry next
to its training state. Between two ready points every member trains with
:func:`jaxhp._train.advance` (the Optax optimizer is built from the carried,
traced hyperparameters). At a ready point (every ``ready_every`` steps) each
member is evaluated on validation; the bottom ``fraction`` copy the
parameters, optimizer state, health and hyperparameters of members drawn from
the top ``fraction`` (exploit) and multiply the chosen tunables by a factor
drawn from ``perturb`` (explore), projected into each field's range.

A member is a setting trained with every seed (its seeds are copied
together, ranked by the mean over seeds); seed ``s`` uses ``fold_in(key, s)``
as in :func:`jaxhp.sweep`, so a copy continues on its source's minibatches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp._adaptive import (
    build,
    check_int,
    check_metric,
    compiled,
    jnp_scores,
    member_keys,
    over_population,
    population,
    row,
)
from jaxhp._data import Split, check_split
from jaxhp._engine import check_seeds
from jaxhp._hparams import HParams, did_you_mean, stack
from jaxhp._model import Model, loss_fn, metrics_fn
from jaxhp._result import Selection, SweepResult, TestReport, resolve_direction
from jaxhp._train import advance, check_key, resolve_loop, start, validate
from jaxhp._tune import _project_host, natural_bounds

# The exploit/explore decisions draw from fold_in(key, _STREAM): a stream no seed uses
# (seed ids are < 2**32 - 1 in practice), so the members' keys stay those of a sweep.
_STREAM = 2**32 - 1


class PBTResult(SweepResult):
    """The final population of :func:`pbt`, with its schedules and lineage.

    Rows are the population's slots; ``settings[i]`` holds slot ``i``'s final
    hyperparameters and the result keeps every slot's final parameters. A
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
        from jaxhp._train import evaluate

        model, split, _ = self._context(model, split)
        sel: Selection = self.best(metric, mode)
        hp = self._hp(sel.index)
        params = [self.params(sel.index, s) for s in range(self.n_seeds)]
        per_seed = {}
        for p in params:
            for k, v in evaluate(model, p, hp, split.test).items():
                per_seed.setdefault(k, []).append(float(v))
        arrays = {k: np.asarray(v) for k, v in per_seed.items()}
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
        lo, hi = natural_bounds(f)
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


def _program(model, cfg, k, n_int, rem, metric, mode, n_q, spec, factors):
    """Scans ``n_int`` intervals of ``k`` steps (a ready point after each but a
    final one), then trains ``rem`` more steps."""
    n_ready = n_int if rem else n_int - 1
    begin = over_population(lambda hp, key: start(model, hp, key), 0)

    def segment(n):
        return over_population(lambda hp, carry, part, s0, key: advance(
            model, cfg, hp, carry, part, key, s0, n), 2)

    evaluate = over_population(
        lambda hp, carry, part, key: metrics_fn(model, carry[0].params, part, hp), 1)
    train_obj = over_population(
        lambda hp, carry, part, key: loss_fn(model, carry[0].params, part, hp)[0], 1)

    def exploit_explore(key, score, hp):
        n = score.shape[0]
        order = jnp.argsort(score)
        top, bottom = order[:n_q], order[n - n_q:]
        pick = jax.random.randint(jax.random.fold_in(key, 0), (n_q,), 0, n_q)
        src = jnp.arange(n).at[bottom].set(top[pick])
        replaced = jnp.zeros(n, bool).at[bottom].set(True)
        new = jax.tree_util.tree_map(lambda a: a[src], hp)
        table = jnp.asarray(factors)
        changes = {}
        for i, (name, lo, hi) in enumerate(spec):
            f = table[jax.random.randint(jax.random.fold_in(key, i + 1), (n,), 0,
                                         len(factors))]
            v = getattr(new, name)
            moved = jnp.clip(v * f.astype(v.dtype), jnp.asarray(lo, v.dtype),
                             jnp.asarray(hi, v.dtype))
            changes[name] = jnp.where(replaced, moved, v)
        leaves = [changes.get(n, getattr(new, n)) for n in type(hp).tunable_names()]
        return src, jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(hp), leaves)

    def program(hp, train_part, val_part, key, seed_ids):
        keys = member_keys(key, seed_ids)
        stream = jax.random.fold_in(key, _STREAM)
        run_k = segment(k)

        def interval(c, j):
            carry, hp = c
            carry, losses = run_k(hp, carry, train_part, j * k, keys)
            val = evaluate(hp, carry, val_part, keys)
            score = jnp_scores(val[metric], carry[1], mode)
            src, new_hp = exploit_explore(jax.random.fold_in(stream, j), score, hp)
            src = jnp.where(j < n_ready, src, jnp.arange(src.shape[0]))  # none at the end
            new_hp = jax.tree_util.tree_map(lambda a, b: jnp.where(j < n_ready, a, b),
                                            new_hp, hp)
            carry = jax.tree_util.tree_map(lambda a: a[:, src], carry)
            return (carry, new_hp), (losses, val, hp, src, score)

        (carry, hp), (losses, vals, hps, srcs, score) = jax.lax.scan(
            interval, (begin(hp, keys), hp), jnp.arange(n_int, dtype=jnp.int32))
        if rem:
            carry, tail = segment(rem)(hp, carry, train_part, n_int * k, keys)
        else:
            tail = jnp.zeros(losses.shape[1:3] + (0,), losses.dtype)
        return (carry, hp, losses, tail, vals, hps, srcs, score,
                evaluate(hp, carry, val_part, keys), train_obj(hp, carry, train_part, keys))

    return program


def pbt(
    model: Model,
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
) -> PBTResult:
    """Population-based training: exploit and explore every ``ready_every`` steps.

    The population (the settings of ``space``, each trained with every seed)
    trains for ``steps`` steps in one compiled program. At each ready point
    (steps ``ready_every, 2 * ready_every, ...`` before the end) the members
    are ranked by their mean validation ``metric`` over seeds (a diverged
    member ranks last); each of the bottom ``max(1, floor(fraction * n))``
    copies the whole state (parameters, optimizer state, health: a diverged
    member is revived) and hyperparameters of a member drawn uniformly from
    the top as many, then multiplies each of its ``fields`` by a factor drawn
    from ``perturb`` (a step in log space for ``log`` fields; a linear field
    at 0 stays at 0) and clips it into the field's range (open bounds nudged
    inside).

    Args:
      model: the model's functions.
      space: the initial population: a search space or list of settings (at
        least 2), all with the same static fields.
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

    Returns:
      A :class:`PBTResult` (a :class:`~jaxhp.SweepResult`): one row per slot of
      the population with its final hyperparameters, final validation
      metrics, per-step loss curve and validation curve (at each ready point
      before exploit, then at the end: ``groups[0]["eval_steps"]``), its
      final parameters, ``schedule``, ``lineage`` and :meth:`PBTResult.ancestry`.
      ``evaluate_test`` tests the selected slot's final parameters.

    Raises:
      ValueError: a bad ``ready_every``, ``fraction``, ``perturb``, ``fields``,
        ``steps``, fewer than 2 settings, or settings varying a static field,
        before anything compiles. SelectionError: an unknown ``metric``.

    Example:
      >>> space = jaxhp.random(16, learning_rate=jaxhp.loguniform(1e-3, 1.0),
      ...                      l2=jaxhp.loguniform(1e-5, 1.0))
      >>> result = pbt(model, space, split, key=jax.random.key(0), steps=300,
      ...              ready_every=30, metric="mse")
      >>> i = result.best("mse").index
      >>> result.ancestry(i)["learning_rate"], result.evaluate_test("mse").metrics
    """
    seed_ids = check_seeds(seeds)
    key = check_key(key)
    settings = population(space, model, base, "pbt")
    if len(settings) < 2:
        raise ValueError(f"pbt(): the population has {len(settings)} setting; exploit "
                         "needs at least 2")
    n_train = check_split(split)[0]
    resolve_loop(settings[0], n_train, None, None)  # a static `steps`, a valid batch size
    steps = check_int("steps", settings[0].steps if steps is None else steps, 1)
    check_int("ready_every", ready_every, 1, steps, why=" (the steps between ready points)")
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise ValueError(f"`fraction`={fraction!r}: must be in (0, 0.5] (the bottom "
                         "fraction copies from the top fraction)")
    cls = type(settings[0])
    spec, factors = _explore_spec(cls, fields, perturb)
    settings = [s.replace(steps=steps) for s in settings]
    validate(model, settings[0], split)
    cfg = resolve_loop(settings[0], n_train, None, None)
    metric = check_metric(model, settings[0], split, metric)
    mode = resolve_direction(model.directions, metric, mode)
    n = len(settings)
    n_q = max(1, int(fraction * n))
    n_int, rem = divmod(steps, ready_every)
    n_ready = n_int if rem else n_int - 1
    statics = (cfg, ready_every, n_int, rem, metric, mode, n_q, spec, factors)
    program = _program(model, *statics)
    args = (stack(settings), split.train, split.val, key, jax.device_put(seed_ids))
    fn, compile_s = compiled(program, ("pbt", model, *statics), *args)
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    run_s = time.perf_counter() - t0
    carry, hp, losses, tail, vals, hps, srcs, score, val, train_loss = jax.device_get(out)
    params = carry[0].params
    # (n_int, seeds, n, k) -> (seeds, n, n_int * k), then the remaining steps.
    curve = np.concatenate(
        [np.moveaxis(losses, 0, 2).reshape(*tail.shape[:2], n_int * ready_every), tail], -1)
    # (n_int, seeds, n) -> (seeds, n, n_ready): the ready points only
    ready_val = {m: np.moveaxis(v, 0, -1)[..., :n_ready] for m, v in vals.items()}
    val_curve = {m: np.concatenate([ready_val[m], val[m][..., None]], -1) for m in val}
    names = cls.tunable_names()
    fields_ = cls.fields()
    schedule = {f: np.asarray(getattr(hps, f)).T[:, :n_ready + 1] for f in names}
    if rem:
        schedule = {f: np.concatenate([v, np.asarray(getattr(hp, f))[:, None]], axis=1)
                    for f, v in schedule.items()}
    final = [settings[i].replace(**{f: _project_host(schedule[f][i, -1], fields_[f])
                                    for f in names}) for i in range(n)]
    rows = [row(train_loss[:, i], {m: v[:, i] for m, v in val.items()}, curve[:, i],
                {m: v[:, i] for m, v in val_curve.items()}, carry[1][:, i])
            for i in range(n)]
    ready_steps = ready_every * np.arange(1, n_ready + 1)
    group = {"statics": settings[0].statics(), "n_settings": n, "chunk_size": n,
             "n_chunks": 1, "compile_s": compile_s, "run_s": run_s, "error": None,
             "eval_steps": ready_steps.tolist() + [steps], "steps": steps,
             "compiled": int(compile_s > 0), "chunks_computed": 1, "chunks_loaded": 0}
    search = {"method": "pbt", "steps": steps, "ready_every": ready_every,
              "fraction": fraction, "n_replaced": n_q, "perturb": list(factors),
              "fields": [s[0] for s in spec], "metric": metric, "mode": mode,
              "train_steps": n * len(seed_ids) * steps}
    per_setting = [jax.tree_util.tree_map(lambda a, i=i: a[:, i], params) for i in range(n)]
    result = build(final, seed_ids, rows, [group], model=model, split=split, key=key,
                   search=search, params=per_setting, result_cls=PBTResult)
    result.schedule = schedule
    result.schedule_steps = ready_every * np.arange(n_ready + 1)
    result.lineage = np.asarray(srcs).T[:, :n_ready]
    result.ready_steps = ready_steps
    score = np.asarray(score, np.float64).T[:, :n_ready]  # inf: diverged
    result.ready_value = np.where(np.isfinite(score), score if mode == "min" else -score,
                                  np.nan)
    return result
