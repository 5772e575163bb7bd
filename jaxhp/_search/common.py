"""Small pieces the adaptive searches share: argument checks and the result builder.

The mechanism (keys, vmap nesting, scoring, chunks, devices, compile cache)
lives in :mod:`jaxhp._population` and :mod:`jaxhp._engine`; this module only
checks a search's own arguments and turns its per-setting rows into a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxhp._data import Split
from jaxhp._hparams import HParams, did_you_mean
from jaxhp._model import Model, metrics_fn
from jaxhp._result import SelectionError, SweepResult, metric_name
from jaxhp._train import Run


def check_int(name: str, v, low: int, high: int | None = None, why: str = "") -> int:
    """``v`` as an int in ``[low, high]``, else a ValueError naming the argument."""
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not ok or v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}`={v!r}: must be an integer {rng}{why}")
    return int(v)


def check_metric(model: Model, hp: HParams, split: Split, metric: str) -> str:
    """The validation metric's name (``val_`` prefix dropped); unknown names are refused."""
    params = jax.eval_shape(model.init, jax.random.key(0), hp)
    names = sorted(jax.eval_shape(lambda p: metrics_fn(model, p, split.val, hp), params))
    name = metric_name(metric)
    if name not in names:
        raise SelectionError(f"unknown validation metric {metric!r}"
                             f"{did_you_mean(name, names)}; available: {names}")
    return name


def row(train_loss, val: dict, loss_curve, val_curve: dict, dead_at) -> Run:
    """One setting's outcome, leaves ``(seeds, ...)``, as the sweep builder takes it."""
    return Run(None, np.asarray(train_loss), {k: np.asarray(v) for k, v in val.items()},
               np.asarray(loss_curve, np.float32),
               {k: np.asarray(v, np.float32) for k, v in val_curve.items()},
               np.asarray(dead_at, np.int32))


def build(settings: Sequence[HParams], seed_ids, rows: Sequence[Run], groups: list,
          *, model: Model, split: Split, key, search: dict, params=None,
          result_cls=SweepResult, group_of=None, failed=(), **extras) -> SweepResult:
    """A :class:`SweepResult` (or subclass, with its declared ``extras``) from
    per-setting rows; ``failed`` lists ``(rows, message)`` of failed groups."""
    builder = SweepResult.builder(list(settings), seed_ids, model=model, split=split,
                                  key=key, devices=jax.local_devices()[:1])
    for i, r in enumerate(rows):
        builder.add([i], jax.tree_util.tree_map(lambda a: a[:, None], r), 1,
                    group=None if group_of is None else int(group_of[i]))
    builder.groups.extend(groups)
    res = builder.build()
    res.meta["search"] = search
    for members, msg in failed:
        res.errors[members] = msg
        res.status[members] = "failed"
    return result_cls(settings=res.settings, seed_ids=res.seed_ids, status=res.status,
                      diverged_at=res.diverged_at, train_loss=res.train_loss, val=res.val,
                      loss_curve=res.loss_curve, val_curve=res.val_curve,
                      errors=res.errors, groups=res.groups, meta=res.meta, params=params,
                      model=model, split=split, key=key, group_of=res.group_of, **extras)
