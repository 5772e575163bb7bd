"""Shared pieces of the adaptive searches (successive halving, Hyperband, PBT).

An adaptive search trains one population of ``(setting, seed)`` members whose
settings share their static part, as ``vmap`` over seeds of ``vmap`` over
settings (the sweep engine's layout, so outputs are ``(seeds, settings, ...)``).
Member ``(i, s)`` uses the key ``fold_in(key, s)``: the common random numbers
of :func:`jaxhp.sweep`, so a member's trajectory is the one a plain sweep or
:func:`jaxhp.train` of the same setting and steps computes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp._data import Split
from jaxhp._engine import settings_from
from jaxhp._hparams import HParams, did_you_mean
from jaxhp._model import Model, metrics_fn
from jaxhp._result import SelectionError, SweepResult, metric_name
from jaxhp._train import Run


def population(space, model: Model, base: HParams | None, who: str) -> list[HParams]:
    """The settings of a search, checked to form one static group."""
    settings = settings_from(space, model, base, who)
    if not settings:
        raise ValueError(f"{who}(): the space has no settings")
    first = settings[0]
    varying = set()
    for s in settings[1:]:
        if type(s) is not type(first):
            raise ValueError(f"{who}(): settings mix {type(first).__name__} and "
                             f"{type(s).__name__}; use one hyperparameter class")
        varying |= {n for n in first.static_names() if getattr(s, n) != getattr(first, n)}
    if varying:
        names = ", ".join(f"`{n}`" for n in sorted(varying))
        raise ValueError(f"{who}(): the settings vary the static field(s) {names}; "
                         f"{who} runs one compiled population, so every setting must "
                         "share its static fields. Run one search per static value "
                         "(fix them in `base=` or in the space)")
    return settings


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


def member_keys(key: jax.Array, seed_ids: jax.Array) -> jax.Array:
    """The keys of the seeds (traced; common random numbers, as in a sweep)."""
    return jax.vmap(lambda s: jax.random.fold_in(key, s))(seed_ids)


def over_population(fn, n_shared: int):
    """``vmap`` over seeds of ``vmap`` over settings of ``fn(hp, *per_member, *shared, key)``.

    ``fn``'s first argument is the settings (batched over settings only), then
    per-member arguments (``(seeds, settings, ...)``), then ``n_shared`` shared
    ones, and last the key (batched over seeds only).
    """

    def call(hp, *args):
        per, shared, keys = args[:-n_shared - 1], args[-n_shared - 1:-1], args[-1]
        in_settings = (0,) + (0,) * len(per) + (None,) * (n_shared + 1)
        in_seeds = (None,) + (0,) * len(per) + (None,) * n_shared + (0,)
        inner = jax.vmap(fn, in_axes=in_settings)
        return jax.vmap(inner, in_axes=in_seeds)(hp, *per, *shared, keys)

    return call


_COMPILED: dict = {}


def compiled(fn, name: tuple, *args):
    """``jit(fn)`` compiled for ``args`` (cached by ``name`` and shapes) and its seconds."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    signature = tuple((np.shape(a), str(getattr(a, "dtype", type(a).__name__)))
                      for a in leaves)
    cache_key = (name, treedef, signature)
    if cache_key in _COMPILED:
        return _COMPILED[cache_key], 0.0
    t0 = time.perf_counter()
    out = jax.jit(fn).lower(*args).compile()
    _COMPILED[cache_key] = out
    return out, time.perf_counter() - t0


def scores(val: np.ndarray, dead_at: np.ndarray, mode: str) -> np.ndarray:
    """Per setting: the mean metric over seeds, sign-flipped for ``max``; ``inf`` if
    any seed diverged or is not finite (such a setting never ranks first)."""
    v = np.asarray(val, np.float64)
    ok = np.all(dead_at < 0, axis=0) & np.all(np.isfinite(v), axis=0)
    mean = np.where(ok, np.where(ok[None], v, 0.0).mean(axis=0), np.inf)
    return np.where(ok, mean if mode == "min" else -mean, np.inf)


def jnp_scores(val: jax.Array, dead_at: jax.Array, mode: str) -> jax.Array:
    """:func:`scores` inside a traced program."""
    ok = jnp.all(dead_at < 0, axis=0) & jnp.all(jnp.isfinite(val), axis=0)
    mean = jnp.mean(jnp.where(ok[None], val, 0.0), axis=0)
    return jnp.where(ok, mean if mode == "min" else -mean, jnp.inf)


def row(train_loss, val: dict, loss_curve, val_curve: dict, dead_at) -> Run:
    """One setting's outcome, leaves ``(seeds, ...)``, as the sweep builder takes it."""
    return Run(None, np.asarray(train_loss), {k: np.asarray(v) for k, v in val.items()},
               np.asarray(loss_curve, np.float32),
               {k: np.asarray(v, np.float32) for k, v in val_curve.items()},
               np.asarray(dead_at, np.int32))


def build(settings: Sequence[HParams], seed_ids, rows: Sequence[Run], groups: list,
          *, model: Model, split: Split, key, search: dict, params=None,
          result_cls=SweepResult) -> SweepResult:
    """A :class:`SweepResult` (or subclass) from per-setting rows."""
    builder = SweepResult.builder(list(settings), seed_ids, model=model, split=split,
                                  key=key, devices=jax.local_devices()[:1])
    for i, r in enumerate(rows):
        builder.add([i], jax.tree_util.tree_map(lambda a: a[:, None], r), 1)
    builder.groups.extend(groups)
    res = builder.build()
    res.meta["search"] = search
    return result_cls(settings=res.settings, seed_ids=res.seed_ids, status=res.status,
                      diverged_at=res.diverged_at, train_loss=res.train_loss, val=res.val,
                      loss_curve=res.loss_curve, val_curve=res.val_curve,
                      errors=res.errors, groups=res.groups, meta=res.meta, params=params,
                      model=model, split=split, key=key)
