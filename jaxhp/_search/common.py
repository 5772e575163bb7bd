"""Small pieces the adaptive searches share: argument checks and the result builder.

The mechanism (keys, vmap nesting, scoring, chunks, devices, compile cache)
lives in :mod:`jaxhp._population` and :mod:`jaxhp._engine`; this module only
checks a search's own arguments and turns its groups' outcomes into a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxhp._data import Split
from jaxhp._hosts import chunk_defaults
from jaxhp._hparams import HParams, did_you_mean
from jaxhp._model import Model, metric_names
from jaxhp._result import SelectionError, SweepResult, metric_name
from jaxhp._table import SettingsTable


def check_int(name: str, v, low: int, high: int | None = None, why: str = "") -> int:
    """``v`` as an int in ``[low, high]``, else a ValueError naming the argument."""
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not ok or v < low or (high is not None and v > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"`{name}`={v!r}: must be an integer {rng}{why}")
    return int(v)


def check_metric(model: Model, hp: HParams, split: Split, metric: str) -> str:
    """The validation metric's name (``val_`` prefix dropped); unknown names are refused."""
    names = metric_names(model, hp, split.val)
    name = metric_name(metric)
    if name not in names:
        raise SelectionError(f"unknown validation metric {metric!r}"
                             f"{did_you_mean(name, names)}; available: {names}")
    return name


def group_firsts(table: SettingsTable) -> list[HParams]:
    """One setting per static group (its first row): the only ``HParams`` a search makes
    before its result is asked for one."""
    return [table.batch(table.rows(g)[:1])[0] for g in range(table.n_groups)]


def replace_columns(table: SettingsTable, **columns) -> SettingsTable:
    """``table`` with some columns replaced (one value per row), validated once per field."""
    return SettingsTable(table.cls, {**table.columns, **columns})


def build(table: SettingsTable, seed_ids, outcomes: Sequence[tuple], groups: list, *,
          model: Model, split: Split, key, search: dict, params=None,
          result_cls=SweepResult, failed: Sequence[tuple] = (), devices=None,
          **extras) -> SweepResult:
    """A :class:`SweepResult` (or subclass, with its declared ``extras``) of the rows of
    ``table``: each static group's outcome is added at once, ``outcomes`` holding
    ``(group, rows, Run)`` with leaves ``(seeds, len(rows), ...)``; ``failed`` holds
    ``(group, rows, message)`` of the groups that failed; ``devices`` those the search
    ran on (recorded; default: one local device)."""
    builder = SweepResult.builder(table, seed_ids, model=model, split=split, key=key,
                                  devices=jax.local_devices()[:1] if devices is None
                                  else devices, chunk_defaults=chunk_defaults()._asdict())
    for gi, rows, run in outcomes:
        builder.add(rows, run, len(rows), group=gi)
    for gi, rows, msg in failed:
        builder.fail(rows, msg, group=gi)
    builder.groups.extend(groups)
    res = builder.build()
    res.meta["search"] = search
    return result_cls(settings=res.table, seed_ids=res.seed_ids, status=res.status,
                      diverged_at=res.diverged_at, train_loss=res.train_loss, val=res.val,
                      loss_curve=res.loss_curve, val_curve=res.val_curve,
                      errors=res.errors, groups=res.groups, meta=res.meta, params=params,
                      model=model, split=split, key=key, group_of=res.group_of, **extras)
