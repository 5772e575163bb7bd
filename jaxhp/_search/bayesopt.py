"""``bayesopt``: a Gaussian process proposes each round's batch; the engine trains it.

Round 0 is quasi-random (:func:`jaxhp.quasirandom`, the batch shared out between the
static groups). Every later round fits one GP per static group (:mod:`gp`) to the
settings trained so far and proposes by Thompson sampling: ``batch`` joint posterior
draws over a candidate set (Sobol points plus perturbations of the group's best
settings), one argmin per draw; each draw's slot goes to the static group whose draw
reaches the lowest value. The batch trains as one :func:`jaxhp.sweep` (chunks,
devices and compile cache apply).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp import _qmc
from jaxhp._data import Folds
from jaxhp._distributions import SpaceError
from jaxhp._folds import check_folds
from jaxhp._hparams import HParams, HParamsError
from jaxhp._model import Model
from jaxhp._search import gp
from jaxhp._search.common import check_int, check_metric
from jaxhp._search.rounds import (
    RoundsResult,
    check_mode,
    check_params,
    check_sweep_options,
    hparams_class,
    rounds_result,
)
from jaxhp._search.sweep import sweep
from jaxhp._space import grid, quasirandom
from jaxhp._train import check_key

__all__ = ["BayesOptResult", "bayesopt"]

FN = "bayesopt()"
_LOCAL_SCALES = (0.01, 0.04, 0.15)  # perturbation sd of the best settings (unit cube)
_TOP = 4  # the best settings of a group whose neighbourhoods are candidates


class BayesOptResult(RoundsResult):
    """A :class:`~jaxhp.SweepResult` of the settings a :func:`bayesopt` trained.

    One row per setting, in the order proposed; ``round`` is also a column of
    :meth:`~SweepResult.cv_results` and :meth:`~SweepResult.to_pandas`, and
    ``save``/``load`` keep it.

    Attributes:
      rounds: per setting, the round (0: quasi-random) it was proposed in.
    """

    _observed: Any = None  # per static group: (statics, unit x, targets); not saved

    def surrogate(self, group: int = 0) -> gp.GPSurrogate:
        """The GP of static group ``group`` fitted to every round's settings.

        Its inputs are the unit-cube coordinates of the fields
        ``meta["search"]["dims"]`` (log fields on the log scale), its outputs the
        standardised targets the search used (lower is better, diverged settings at
        the worst value plus a margin).

        Args:
          group: the index of a static group in ``meta["search"]["groups"]``.

        Returns:
          A :class:`~jaxhp.GPSurrogate`.

        Raises:
          ValueError: on a loaded result (the observations are not saved) or an
            unknown group.

        Example:
          >>> mean, std = result.surrogate().predict(np.array([[0.5, 0.5]]))
        """
        if self._observed is None:
            raise ValueError("surrogate(): only the result bayesopt() returned holds the "
                             "observations (they are not saved); run the search again")
        if not (isinstance(group, int) and 0 <= group < len(self._observed)):
            raise ValueError(f"surrogate(): `group`={group!r}: must be an int in "
                             f"[0, {len(self._observed) - 1}]")
        x, z, seed = self._observed[group]
        return gp.GPSurrogate.fit(x, z, key=jax.random.key(seed))


class _Dim:
    """One modelled tunable: its unit coordinate <-> its value."""

    def __init__(self, name: str, d):
        self.name, self.dist = name, d
        spec = d.to_dict()
        self.kind = spec["type"]
        if self.kind == "intrange" and spec["log"]:
            self.kind = "intlog"
        self.spec = spec
        if self.kind == "choice":
            self.values = np.sort(np.asarray(spec["values"], np.float64))

    def to_values(self, u: np.ndarray) -> np.ndarray:
        if self.kind == "choice":
            k = len(self.values)
            return self.values[np.minimum((u * k).astype(np.int64), k - 1)]
        return np.asarray(self.dist.sample_units(u), np.float64)

    def to_unit(self, v: np.ndarray) -> np.ndarray:
        s = self.spec
        v = np.asarray(v, np.float64)
        if self.kind == "uniform":
            u = (v - s["low"]) / (s["high"] - s["low"])
        elif self.kind == "loguniform":
            u = np.log(v / s["low"]) / math.log(s["high"] / s["low"])
        elif self.kind == "intrange":
            u = (v - s["low"] + 0.5) / (s["high"] - s["low"] + 1)
        elif self.kind == "intlog":
            lo, hi = math.log(s["low"]), math.log(s["high"] + 1)
            u = (np.log(v + 0.5) - lo) / (hi - lo)
        else:  # choice: the centre of the value's cell among the sorted values
            idx = np.argmin(np.abs(v[:, None] - self.values[None, :]), axis=1)
            u = (idx + 0.5) / len(self.values)
        return np.clip(u, 0.0, 1.0)


def _plan(params: Mapping, cls: type[HParams]):
    """Splits the searched fields into static groups, constants and modelled dims."""
    fields = cls.fields()
    statics: dict[str, list] = {}
    consts: dict[str, Any] = {}
    dims: list[_Dim] = []
    problems = []
    for name, d in params.items():
        spec = d.to_dict()
        kind = spec.get("type")
        if fields[name].is_static:
            if kind == "choice":
                k = len(spec["values"])
                statics[name] = [d.sample_unit((i + 0.5) / k) for i in range(k)]
            elif kind == "fixed":
                consts[name] = d.sample_unit(0.0)
            elif kind == "intrange":
                statics[name] = list(range(spec["low"], spec["high"] + 1))
            else:
                problems.append(f"`{name}`: a static field takes {d!r}; bayesopt models "
                                "tunables only: give a static field a finite set of "
                                "values (choice, intrange or fixed), one GP per "
                                "combination")
        elif kind == "fixed" or (kind == "choice" and len(spec["values"]) == 1):
            consts[name] = d.sample_unit(0.0)
        elif kind in ("uniform", "loguniform", "intrange", "choice"):
            dims.append(_Dim(name, d))
        else:
            problems.append(f"`{name}`: {d!r} is not a bounded distribution; bayesopt "
                            "models uniform, loguniform, intrange and numeric choice")
    if problems:
        raise SpaceError(problems, header=f"{FN} space")
    if not dims:
        raise SpaceError(f"{FN}: `space` searches no tunable field (it sets "
                         f"{list(params)}); bayesopt models tunables: give at least one "
                         "a uniform, loguniform, intrange or choice distribution")
    groups = [dict(zip(statics, combo)) for combo in itertools.product(*statics.values())]
    return groups, consts, dims


def _targets(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """The GP's outputs (lower is better): the healthy values by rank through the normal
    quantile function (a copula transform: a loss that spans orders of magnitude near a
    divergence does not squash the good settings together), failed/diverged/NaN
    settings at the worst value plus a margin, then standardised."""
    f = values[ok]
    ranks = np.empty(len(f))
    ranks[np.argsort(f, kind="stable")] = np.arange(len(f))
    for v in np.unique(f):  # ties share their mean rank
        ranks[f == v] = ranks[f == v].mean()
    normal = statistics.NormalDist()
    z = np.zeros(len(values))
    z[ok] = [normal.inv_cdf((q + 0.5) / len(f)) for q in ranks]
    worst, best = z[ok].max(), z[ok].min()
    z[~ok] = worst + (0.25 * (worst - best) if worst > best else 1.0)
    return (z - z.mean()) / (z.std() or 1.0)


def _fit(x, y, mask, key, rnd, group):
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 1), rnd), group)
    return gp.fit(x, y, mask, k)[0]


@jax.jit
def _fit_and_draw(x, y, mask, sobol, seed, rnd, group, n_draws_like):
    """Fits the group's GP, then draws ``len(n_draws_like)`` joint posterior samples over
    the candidates (``sobol`` and perturbations of the best observed settings), the
    first replaced by the posterior mean."""
    key = jax.random.key(seed)
    hyper = _fit(x, y, mask, key, rnd, group)
    k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 2), rnd), group)
    k_local, k_draw = jax.random.split(k)
    n_local = sobol.shape[0]
    order = jnp.argsort(jnp.where(mask, y, jnp.inf))[:_TOP]
    top = jnp.where(mask[order], order, order[0])
    centre = x[top[jnp.arange(n_local) % top.shape[0]]]
    scale = jnp.asarray(_LOCAL_SCALES, x.dtype)[jnp.arange(n_local) % len(_LOCAL_SCALES)]
    noise = jax.random.normal(k_local, centre.shape, x.dtype) * scale[:, None]
    cands = jnp.concatenate([sobol, jnp.clip(centre + noise, 0.0, 1.0)])
    draws = gp.joint_samples(hyper, x, y, mask, cands, k_draw, n_draws_like.shape[0])
    mean, _ = gp.posterior(hyper, x, y, mask, cands)
    return cands, draws.at[0].set(mean)  # slot 0 exploits: the posterior mean's argmin


def _capacity(rounds: int, batch: int) -> int:
    """Observations a group's GP is padded to: its most (``batch`` per model round but
    the last) rounded up to a power of two, so one program serves the whole search."""
    return max(16, 1 << (batch * max(rounds - 1, 1) - 1).bit_length())


def _padded(x: np.ndarray, z: np.ndarray, dtype, cap: int):
    xp = np.zeros((cap, x.shape[1]), dtype)
    zp = np.zeros(cap, dtype)
    xp[:len(z)], zp[:len(z)] = x, z
    return xp, zp, np.arange(cap) < len(z)


def bayesopt(
    model: Model,
    space: Mapping[str, Any],
    split,
    *,
    key: jax.Array,
    rounds: int,
    batch: int,
    seeds=1,
    base: HParams | None = None,
    metric: str = "loss",
    mode: str | None = None,
    seed: int = 0,
    candidates: int = 512,
    **sweep_options,
) -> BayesOptResult:
    """Bayesian optimisation: a Gaussian process proposes each round's batch.

    Round 0 trains ``batch`` quasi-random settings (:func:`jaxhp.quasirandom`,
    shared out between the static groups). Each later round fits, per static group,
    a GP (Matern 5/2, one lengthscale per tunable, hyperparameters maximising the
    marginal likelihood from 8 starts in one vmapped program) to the mean over seeds
    of the validation ``metric``, and proposes by Thompson sampling: ``batch`` joint
    posterior draws over ``candidates`` points (half Sobol, half perturbations of
    the group's best settings), the argmin of each draw; a draw's slot goes to the
    static group whose draw is lowest. The batch trains as one :func:`jaxhp.sweep`.

    Args:
      model: the model's functions.
      space: the searched fields, ``{name: distribution}``. Tunables:
        ``uniform``/``loguniform`` (modelled on the linear/log scale, scaled to
        ``[0, 1]`` by their bounds), ``intrange`` and numeric ``choice``
        (modelled on their cells, proposals rounded to a value), ``fixed``.
        Static fields: ``choice``/``intrange``/``fixed``: one GP per combination
        of their values (at most ``batch`` combinations).
      split: the data (a :class:`~jaxhp.Split`, or :func:`jaxhp.kfold` folds).
      key, seeds: the training key and seeds, as in :func:`jaxhp.sweep` (a setting's
        value does not depend on its round or batch-mates).
      rounds: rounds to run (round 0 is quasi-random).
      batch: settings proposed (and trained together) per round.
      base: the setting whose values fill the fields ``space`` leaves unset.
      metric: the validation metric minimised or maximised (mean over seeds).
      mode: ``"min"``/``"max"`` for a metric the model declares no direction for.
      seed: a non-negative integer seeding the proposals: round 0's scramble
        (``jaxhp.quasirandom(..., seed=seed)``), the GP fits' starts, the candidates
        and the Thompson draws.
      candidates: the size of the candidate set of the Thompson draws.
      **sweep_options: ``eval_every``, ``loss_every``, ``health``, ``chunk_size``,
        ``memory_budget``, ``max_chunk``, ``devices``, ``keep_params``,
        ``on_error``, ``progress``, ``on_chunk``, passed to every round's sweep.

    Returns:
      A :class:`BayesOptResult` of every round's settings, with ``rounds``;
      ``best``/``evaluate_test`` work as for a sweep, ``surrogate()`` gives a
      static group's fitted GP.

    Raises:
      TypeError: an unknown keyword. ValueError: bad ``rounds``/``batch``/
      ``candidates``/``key``, ``mode`` contradicting the metric's declared
      direction, more static groups than ``batch``. SpaceError: bad ``space``
      (unknown field, range outside a field's rule, a continuous distribution over
      a static field, no modelled tunable). SelectionError: an unknown metric, or
      an undeclared one without ``mode``. All before anything compiles.

    Example:
      >>> result = jaxhp.bayesopt(
      ...     model, {"learning_rate": jaxhp.loguniform(1e-3, 1)}, split,
      ...     key=jax.random.key(0), rounds=4, batch=8, metric="mse")
      >>> result.best("mse").setting
    """
    check_sweep_options(FN, sweep_options)
    rounds = check_int("rounds", rounds, 1)
    batch = check_int("batch", batch, 1)
    candidates = check_int("candidates", candidates, 2)
    seed = check_int("seed", seed, 0, 2**31 - 1)
    key = check_key(key)
    cls = hparams_class(FN, model, base)
    checked = check_params(FN, "space", space, cls, base)
    groups, consts, dims = _plan(space, cls)
    if len(groups) > batch:
        raise ValueError(f"{FN}: `batch`={batch}: the space's static fields make "
                         f"{len(groups)} groups; round 0 trains every group at least "
                         f"once, so `batch` must be >= {len(groups)}")
    data = check_folds(split) if isinstance(split, Folds) else split
    name = check_metric(model, checked.settings(cls, base)[0], data, metric)
    mode = check_mode(FN, model, name, mode)
    make = cls if base is None else base.replace
    dtype = np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
    tunable_dists = {n: d for n, d in space.items() if not cls.fields()[n].is_static}
    names = [d.name for d in dims]
    obs_x: list[list[np.ndarray]] = [[] for _ in groups]
    obs_v: list[list[float]] = [[] for _ in groups]
    obs_ok: list[list[bool]] = [[] for _ in groups]
    seen: set = set()
    parts, rows_round, quasi_rounds = [], [], []

    def ident(g, hp):
        return (g, tuple(float(np.float32(getattr(hp, n))) for n in names))

    for r in range(rounds):
        ok_any = any(any(o) for o in obs_ok)
        if not ok_any:
            quasi_rounds.append(r)
            new = _quasirandom_round(groups, tunable_dists, batch, seed + r, cls, base)
            new = [(g, hp) for g, hp in new if ident(g, hp) not in seen]
        else:
            new = _model_round(groups, consts, dims, obs_x, obs_v, obs_ok, mode, batch,
                               candidates, seed, r, dtype, make, seen, ident,
                               _capacity(rounds, batch))
        if not new:
            break
        part = sweep(model, [hp for _, hp in new], split, key=key, seeds=seeds,
                     select=(name, mode), **sweep_options)
        values = np.asarray(part.aggregate(name)[0], np.float64)
        status = part.setting_status()
        for (g, hp), v, s in zip(new, values, status):
            seen.add(ident(g, hp))
            obs_x[g].append(np.array([d.to_unit(np.array([getattr(hp, d.name)]))[0]
                                      for d in dims]))
            obs_v[g].append(float(v))
            obs_ok[g].append(bool(s == "ok" and math.isfinite(v)))
        parts.append(part)
        rows_round += [r] * len(new)
    search = {"method": "bayesopt", "metric": name, "mode": mode, "rounds": rounds,
              "batch": batch, "acquisition": "thompson", "candidates": candidates,
              "dims": [{"field": d.name, **d.spec} for d in dims],
              "groups": groups, "quasirandom_rounds": quasi_rounds}
    out = rounds_result(BayesOptResult, parts, search,
                        rounds=np.asarray(rows_round, np.int64))
    out._observed = _observations(obs_x, obs_v, obs_ok, mode, seed)
    return out


def _observations(obs_x, obs_v, obs_ok, mode, seed):
    """Per group ``(unit x, targets, fit key)``: what :meth:`BayesOptResult.surrogate`
    fits."""
    v = np.concatenate([np.asarray(o, np.float64) for o in obs_v])
    ok = np.concatenate([np.asarray(o, bool) for o in obs_ok])
    if not ok.any():
        return None
    z = _targets(v if mode == "min" else -v, ok)
    out, start = [], 0
    for xs in obs_x:
        n = len(xs)
        out.append((np.stack(xs) if n else np.zeros((0, 0)), z[start:start + n], seed))
        start += n
    return out


def _quasirandom_round(groups, tunable_dists, batch, seed, cls, base):
    """``batch`` quasi-random settings shared out between the static groups (a
    scramble per ``seed`` and group)."""
    out = []
    for g, statics in enumerate(groups):
        k = batch // len(groups) + (g < batch % len(groups))
        if k == 0:
            continue
        space = grid(**{n: [v] for n, v in statics.items()}) * quasirandom(
            k, tunable_dists, seed=seed * len(groups) + g)
        out += [(g, hp) for hp in space.settings(cls, base)]
    return out


def _model_round(groups, consts, dims, obs_x, obs_v, obs_ok, mode, batch, candidates,
                 seed, r, dtype, make, seen, ident, cap):
    """The round's settings: Thompson draws of every group's GP, one argmin per draw."""
    v = np.concatenate([np.asarray(o, np.float64) for o in obs_v])
    ok = np.concatenate([np.asarray(o, bool) for o in obs_ok])
    z = _targets(v if mode == "min" else -v, ok)
    sobol = _qmc.sobol(candidates // 2, len(dims), seed * 1009 + r).astype(dtype)
    like = np.zeros(batch, dtype)
    draws, cands, start = [], [], 0
    for g in range(len(groups)):
        n = len(obs_x[g])
        xp, zp, mask = _padded(np.stack(obs_x[g]), z[start:start + n], dtype, cap)
        start += n
        c, d = _fit_and_draw(xp, zp, mask, sobol, np.int32(seed), np.int32(r),
                             np.int32(g), like)
        cands.append(np.asarray(c, np.float64))
        draws.append(np.asarray(d, np.float64))
    order = [np.argsort(d, axis=1) for d in draws]
    pos = [np.zeros(batch, np.int64) for _ in groups]
    out = []
    for j in range(batch):
        best = None
        for g in range(len(groups)):
            while pos[g][j] < order[g].shape[1]:
                i = order[g][j, pos[g][j]]
                hp = _setting(make, groups[g], consts, dims, cands[g][i])
                if hp is not None and ident(g, hp) not in seen:
                    if best is None or draws[g][j, i] < best[0]:
                        best = (draws[g][j, i], g, hp)
                    break
                pos[g][j] += 1
        if best is None:
            continue
        _, g, hp = best
        seen.add(ident(g, hp))
        out.append((g, hp))
    for g, hp in out:  # the round's picks are new until trained: bayesopt re-adds them
        seen.discard(ident(g, hp))
    return out


def _setting(make, statics, consts, dims, u):
    values = {d.name: d.to_values(np.array([u[k]]))[0] for k, d in enumerate(dims)}
    try:
        return make(**statics, **consts, **{n: float(v) for n, v in values.items()})
    except HParamsError:
        return None
