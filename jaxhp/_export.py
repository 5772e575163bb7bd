"""Export a result to Optuna: one finished trial per setting (``SweepResult.to_optuna``).

Optuna is an optional dependency (the ``search`` extra), imported only here,
only when an export is asked for. Nothing is trained: the trials are built
from the result's columns and per-member arrays.

- **params**: every field of the setting, each with the Optuna distribution of
  its declaration: a field with ``choices`` or a static field is categorical
  (its choices, or the values the result holds; values that are not
  ``None``/bool/int/float/str are stored as their ``repr``); an ``integer``
  tunable is an ``IntDistribution``; another tunable a ``FloatDistribution``,
  ``log=True`` for a ``log`` field. A numeric range is the field's declared
  ``[low, high]`` where both are finite (and ``low > 0`` for a log field), else
  the smallest and largest value exported, widened to hold every value. A
  field that takes one value in the result has a one-value distribution (one
  choice, ``low == high``), so Optuna gives it no importance.
- **value**: the mean over seeds of the validation metric, exactly
  :meth:`SweepResult.aggregate`'s; the study's direction is the metric's
  declared one (:func:`resolve_direction`: an undeclared metric raises the
  ``SelectionError`` selection raises).
- **state**: ``COMPLETE``, or ``FAIL`` for a setting selection would never pick
  (a diverged or failed seed, or a NaN/Inf metric).
- **user attributes**: see :func:`to_optuna`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxhp._distributions import Distribution
from jaxhp._result import metric_name, resolve_direction


def import_optuna(caller: str = "to_optuna()"):
    try:
        import optuna
    except ImportError as e:
        raise ImportError(f"{caller} needs optuna: pip install 'jaxhp[search]' "
                          "(the `search` extra)") from e
    return optuna


def _plain(v: Any) -> Any:
    """A value Optuna stores as a categorical choice: None, bool, int, float, str."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return repr(v)


def _number(v: float) -> float | None:
    """A float for JSON (Optuna's storages); NaN and Inf become None."""
    v = float(v)
    return v if math.isfinite(v) else None


def _distributions(optuna, table) -> tuple[dict[str, Any], dict[str, list]]:
    """Per field: the Optuna distribution and every row's value in it."""
    dist, values = {}, {}
    od = optuna.distributions
    for name, f in table.cls.fields().items():
        col = np.asarray(table.columns[name])
        if f.choices is not None or f.is_static:
            if f.choices is not None and f.is_tunable:  # float32 column, float choices
                choices = np.asarray(f.choices, np.float64)
                near = np.abs(col.astype(np.float64)[:, None] - choices[None, :]).argmin(1)
                vals = [_plain(f.choices[k]) for k in near]
            else:
                vals = [_plain(v) for v in col.tolist()]
            seen = list(dict.fromkeys(vals))
            options = [_plain(c) for c in f.choices] if f.choices is not None \
                and len(seen) > 1 else seen
            dist[name] = od.CategoricalDistribution(tuple(options))
            values[name] = vals
            continue
        x = col.astype(np.float64)
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        declared = (f.low is not None and f.high is not None
                    and math.isfinite(f.low) and math.isfinite(f.high)
                    and (not f.log or f.low > 0))
        if declared and lo < hi:  # widened: a float32 value may round outside a bound
            lo, hi = min(lo, float(f.low)), max(hi, float(f.high))
        if f.integer:
            dist[name] = od.IntDistribution(math.floor(lo), math.ceil(hi), log=f.log)
            values[name] = [int(round(v)) for v in x.tolist()]
        else:
            dist[name] = od.FloatDistribution(lo, hi, log=f.log)
            values[name] = x.tolist()
    return dist, values


def optuna_distributions(params: Mapping[str, Distribution], caller: str) -> tuple[dict, dict]:
    """Optuna's distribution of each jaxhp distribution, and for each name a function from
    the value Optuna asks to the field's value.

    ``uniform``/``loguniform`` become a ``FloatDistribution`` (``log`` for the latter),
    ``intrange`` an ``IntDistribution``, ``choice`` a ``CategoricalDistribution`` of its
    values (a value that is not ``None``/bool/int/float/str stands as its ``repr``, mapped
    back to the value), ``fixed`` a one-choice categorical.
    """
    od = import_optuna(caller).distributions
    dists: dict[str, Any] = {}
    decode: dict[str, Any] = {}
    for name, d in params.items():
        spec = d.to_dict()
        kind = spec["type"]
        if kind in ("uniform", "loguniform"):
            dists[name] = od.FloatDistribution(spec["low"], spec["high"],
                                               log=kind == "loguniform")
            decode[name] = float
        elif kind == "intrange":
            dists[name] = od.IntDistribution(spec["low"], spec["high"], log=spec["log"])
            decode[name] = int
        else:
            values = list(d.values) if kind == "choice" else [d.value]
            options = [_plain(v) for v in values]
            dists[name] = od.CategoricalDistribution(tuple(options))
            decode[name] = (lambda x, options=options, values=values:
                            values[options.index(x)])
    return dists, decode


def _intermediate(result) -> list[dict[int, float]]:
    """Per setting, Optuna's intermediate values: a halving result's mean metric at
    each rung the setting trained in (keyed by the rung's steps); else empty."""
    out: list[dict[int, float]] = [{} for _ in range(result.n_settings)]
    for rung in getattr(result, "rungs", None) or []:
        for row, v in zip(np.asarray(rung.settings).tolist(), np.asarray(rung.value)):
            if math.isfinite(float(v)):
                out[row][int(rung.steps)] = float(v)
    return out


def to_optuna(result, *, storage=None, study_name: str | None = None,
              metric: str | None = None, mode: str | None = None):
    """Writes ``result`` into a new Optuna study, one finished trial per setting.

    See :meth:`jaxhp.SweepResult.to_optuna` (the public entry point).
    """
    optuna = import_optuna()
    search = result.meta.get("search") or {}
    if metric is None:  # what the search ranked on; a sweep selects on `loss` by default
        metric = search.get("metric", "loss")
        if mode is None and search.get("metric") is not None:
            mode = search.get("mode")
    result.metric(metric)  # an unknown metric is reported before its direction
    mode = resolve_direction(result.directions, metric, mode)
    name = metric_name(metric)
    mean, std = result.aggregate(name)
    per_seed = result.metric(name)
    status = result.setting_status()
    seeds = [int(s) for s in np.asarray(result.seed_ids)]
    dist, values = _distributions(optuna, result.table)
    inter = _intermediate(result)
    steps_trained = getattr(result, "steps_trained", None)
    trials = []
    for i in range(result.n_settings):
        ok = math.isfinite(float(mean[i]))
        attrs = {"jaxhp_index": i, "group": int(result.group_of[i]),
                 "status": str(status[i]), "seeds": seeds,
                 "per_seed": [_number(v) for v in per_seed[i]],
                 "std": _number(std[i]), "metric": name}
        if status[i] == "diverged":
            attrs["diverged_at"] = [int(v) for v in result.diverged_at[i]]
        if result.errors[i]:
            attrs["error"] = str(result.errors[i])
        if ok is False and status[i] == "ok":
            attrs["reason"] = f"NaN/Inf validation {name!r}"
        if steps_trained is not None:
            attrs["steps_trained"] = int(steps_trained[i])
        trials.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            value=float(mean[i]) if ok else None,
            params={k: v[i] for k, v in values.items()}, distributions=dist,
            user_attrs=attrs, intermediate_values=inter[i]))
    direction = "minimize" if mode == "min" else "maximize"
    try:
        study = optuna.create_study(storage=storage, study_name=study_name,
                                    direction=direction)
    except optuna.exceptions.DuplicatedStudyError as e:
        raise ValueError(
            f"to_optuna(): a study named {study_name!r} already exists in that storage; "
            "an export never appends to a study (its trials would mix two experiments). "
            "Pass another study_name=, or delete the old one first: "
            f"optuna.delete_study(study_name={study_name!r}, storage=...)") from e
    study.set_user_attr("jaxhp", {
        "metric": name, "mode": mode, "model": result.meta.get("model"),
        "search": search.get("method", "sweep"), "n_settings": result.n_settings,
        "seeds": seeds, "hparams": result.meta.get("hparams")})
    study.add_trials(trials)
    return study
