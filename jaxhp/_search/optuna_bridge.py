"""``optuna_search``: Optuna's samplers propose, the engine trains each batch in one call.

Each round asks the study for ``batch`` trials, trains their settings with every seed
as one :func:`jaxhp.sweep` (the engine's chunking, devices and compile cache apply:
rounds of one static group and one batch size compile once), then tells each trial
the mean over seeds of the validation metric (:meth:`SweepResult.aggregate`, the
engine's one scoring rule), or ``FAIL`` (with a ``reason`` user attribute) for a
setting that diverged, failed or scored NaN/Inf.

Optuna is imported only when a search runs (the ``search`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxhp._data import Folds
from jaxhp._distributions import Distribution
from jaxhp._export import import_optuna, optuna_distributions
from jaxhp._folds import check_folds
from jaxhp._hparams import HParams, HParamsError
from jaxhp._model import Model
from jaxhp._result import SweepResult
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

__all__ = ["OptunaResult", "optuna_search"]

ROUND_ATTR = "jaxhp_round"
STALE = ("left RUNNING by an optuna_search call that stopped before telling it (the "
         "process was killed or interrupted); told FAIL by the next optuna_search call")


class OptunaResult(RoundsResult):
    """A :class:`~jaxhp.SweepResult` of the settings an :func:`optuna_search` trained.

    One row per distinct setting trained by this call, in the order they were asked.

    Attributes:
      rounds: per setting, the round (of the study, counted over every call) it was
        first asked in.
      trial_numbers: per setting, the number of the Optuna trial that first asked it
        (a setting asked again later is not retrained: the later trial is told the same
        value).
      study: the Optuna study (not saved with the result).
    """

    EXTRAS = ("rounds", "trial_numbers")
    study: Any = None

    def cv_results(self, directions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """:meth:`SweepResult.cv_results`, plus ``round`` and ``trial_number`` per setting
        (also columns of :meth:`~SweepResult.to_pandas`)."""
        out = super().cv_results(directions)
        out["trial_number"] = np.asarray(self.trial_numbers, np.int64)
        return out


def _check_study(optuna, study) -> str:
    """The study's direction as ``"min"``/``"max"``; anything else is refused."""
    if not isinstance(study, optuna.Study):
        raise TypeError(f"optuna_search(): `study` must be an optuna.Study "
                        f"(optuna.create_study(...)), got {type(study).__name__}")
    if len(study.directions) > 1:
        raise ValueError(
            f"optuna_search(): the study {study.study_name!r} has "
            f"{len(study.directions)} objectives; optuna_search tells one value per "
            "trial (one validation metric): create a single-objective study")
    return "min" if study.direction == optuna.study.StudyDirection.MINIMIZE else "max"


def _reason(result: SweepResult, row: int, status: str, metric: str) -> str:
    if status == "diverged":
        at = [int(v) for v in np.asarray(result.diverged_at[row]) if v >= 0]
        return f"diverged (non-finite loss) at step(s) {at}"
    if status == "failed":
        return f"failed: {result.errors[row]}"
    return f"NaN/Inf validation {metric!r}"


def _stale_trials(optuna, study) -> list[int]:
    """Tells FAIL the trials an earlier, stopped optuna_search left RUNNING."""
    stale = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if ROUND_ATTR in t.user_attrs:
            optuna.trial.Trial(study, t._trial_id).set_user_attr("reason", STALE)
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
            stale.append(t.number)
    return stale


def _next_round(study) -> int:
    done = [t.user_attrs[ROUND_ATTR] for t in study.get_trials(deepcopy=False)
            if ROUND_ATTR in t.user_attrs]
    return int(max(done)) + 1 if done else 0


def optuna_search(
    study,
    model: Model,
    split,
    *,
    params: Mapping[str, Distribution],
    rounds: int,
    batch: int,
    key: jax.Array,
    seeds=1,
    base: HParams | None = None,
    metric: str = "loss",
    mode: str | None = None,
    **sweep_options,
) -> OptunaResult:
    """Model-based search with an Optuna study, each round's batch trained in one call.

    Every round asks ``study`` (its sampler: TPE, CMA-ES, GP, ...) for ``batch``
    trials, trains their settings with every seed as one :func:`jaxhp.sweep` and
    tells each trial its value before the next round is asked. Rounds of one static
    group and one batch size reuse one compiled program.

    Args:
      study: a single-objective ``optuna.Study``, whose direction is the metric's
        declared one. With persistent storage (``storage="sqlite:///f.db"``,
        ``load_if_exists=True``) a later call continues the study: its rounds are
        numbered on, and trials a stopped call left RUNNING are told FAIL (their
        ``reason`` user attribute says why) and not re-asked.
      model: the model's functions.
      split: the data (a :class:`~jaxhp.Split`, or :func:`jaxhp.kfold` folds).
      params: the searched fields: ``{name: jaxhp distribution}``; ``uniform``,
        ``loguniform``, ``intrange``, ``choice`` and ``fixed`` become Optuna's
        Float (``log`` for loguniform), Int and Categorical distributions.
      rounds: rounds to run in this call.
      batch: trials asked (and trained together) per round.
      key, seeds: as in :func:`jaxhp.sweep`: a setting's value does not depend on
        its round or batch-mates.
      base: the setting whose values fill the fields ``params`` leaves unset
        (default: the model's hyperparameter class defaults).
      metric: the validation metric told to the study (mean over seeds).
      mode: ``"min"``/``"max"`` for a metric the model declares no direction for.
      **sweep_options: ``eval_every``, ``loss_every``, ``health``, ``chunk_size``,
        ``memory_budget``, ``max_chunk``, ``devices``, ``keep_params``,
        ``on_error``, ``progress``, ``on_chunk``, passed to every round's sweep.

    Returns:
      An :class:`OptunaResult`: the distinct settings trained by this call (every
      round merged), with ``rounds``, ``trial_numbers`` and ``study``;
      ``best``/``evaluate_test`` work as for a sweep. Each trial holds user
      attributes ``jaxhp_round``, ``jaxhp_index`` (its row in the result),
      ``per_seed`` and, for a FAIL, ``reason``.

    Raises:
      ImportError: optuna is not installed. TypeError: ``study`` is not a study, or
      an unknown keyword. ValueError: a multi-objective study, a study direction
      other than the metric's, bad ``rounds``/``batch``. SpaceError: bad
      ``params`` (unknown field, range outside a field's rule). SelectionError: an
      unknown metric, or an undeclared one without ``mode``. All before anything
      compiles.

    Example:
      >>> study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
      >>> result = jaxhp.optuna_search(
      ...     study, model, split, key=jax.random.key(0), rounds=3, batch=8,
      ...     params={"learning_rate": jaxhp.loguniform(1e-3, 1)}, metric="mse")
      >>> study.best_params, result.best("mse").setting
    """
    optuna = import_optuna("optuna_search()")
    check_sweep_options("optuna_search()", sweep_options)
    rounds = check_int("rounds", rounds, 1)
    batch = check_int("batch", batch, 1)
    direction = _check_study(optuna, study)
    cls = hparams_class("optuna_search()", model, base)
    space = check_params("optuna_search()", "params", params, cls, base)
    data = check_folds(split) if isinstance(split, Folds) else split
    name = check_metric(model, space.settings(cls, base)[0], data, metric)
    mode = check_mode("optuna_search()", model, name, mode)
    if mode != direction:
        word = {"min": "minimize", "max": "maximize"}
        why = (f"mode={mode!r}" if name not in (model.directions or {})
               else "as the model declares")
        raise ValueError(
            f"optuna_search(): the study {study.study_name!r} is to {word[direction]}, "
            f"but the metric {name!r} is to {word[mode]} ({why}); create the study with "
            f"direction={word[mode]!r}")
    dists, decode = optuna_distributions(params, "optuna_search()")
    make = cls if base is None else base.replace  # a field without default may be searched
    stale = _stale_trials(optuna, study)
    first_round = _next_round(study)
    seen: dict[HParams, tuple[int, int]] = {}  # setting -> (part, row)
    parts: list[SweepResult] = []
    offsets = [0]
    rows_round: list[int] = []
    rows_trial: list[int] = []
    for r in range(first_round, first_round + rounds):
        pending: list = []  # asked, not yet told
        try:
            for _ in range(batch):
                pending.append(study.ask(dists))
                pending[-1].set_user_attr(ROUND_ATTR, r)
            trials = list(pending)
            new: list[HParams] = []
            where = []
            for t in trials:
                try:
                    hp = make(**{n: decode[n](v) for n, v in t.params.items()})
                except HParamsError as e:
                    where.append(str(e))
                    continue
                if hp not in seen:
                    seen[hp] = (len(parts), len(new))
                    new.append(hp)
                    rows_round.append(r)
                    rows_trial.append(t.number)
                where.append(seen[hp])
            if new:
                parts.append(sweep(model, new, split, key=key, seeds=seeds,
                                   select=(name, mode), **sweep_options))
                offsets.append(offsets[-1] + len(new))
            for t, w in zip(trials, where):
                _tell(optuna, study, t, w, parts, offsets, name)
                pending.remove(t)
        except BaseException as e:  # the round's untold trials must not stay RUNNING
            for t in pending:
                t.set_user_attr("reason", f"the round stopped before this trial was told: "
                                          f"{type(e).__name__}: {e}")
                study.tell(t, state=optuna.trial.TrialState.FAIL)
            raise
    if not parts:
        raise ValueError("optuna_search(): no asked setting was valid; see the trials' "
                         "`reason` user attributes")
    search = {"method": "optuna", "metric": name, "mode": mode,
              "study": study.study_name, "sampler": type(study.sampler).__name__,
              "rounds": [first_round, first_round + rounds - 1], "batch": batch,
              "stale_trials_failed": stale}
    out = rounds_result(OptunaResult, parts, search,
                        rounds=np.asarray(rows_round, np.int64),
                        trial_numbers=np.asarray(rows_trial, np.int64))
    out.study = study
    return out


def _tell(optuna, study, trial, where, parts, offsets, name: str) -> None:
    """Tells one trial its value, or FAIL with the reason."""
    fail = optuna.trial.TrialState.FAIL
    if isinstance(where, str):  # the asked values are not a valid setting
        trial.set_user_attr("reason", f"invalid setting: {where}")
        study.tell(trial, state=fail)
        return
    part, row = where
    res = parts[part]
    mean = float(res.aggregate(name)[0][row])
    status = str(res.setting_status()[row])
    trial.set_user_attr("jaxhp_index", offsets[part] + row)
    trial.set_user_attr("per_seed", [float(v) if math.isfinite(float(v)) else None
                                     for v in np.asarray(res.metric(name)[row])])
    if status == "ok" and math.isfinite(mean):
        study.tell(trial, mean)
    else:
        trial.set_user_attr("reason", _reason(res, row, status, name))
        study.tell(trial, state=fail)
