"""SweepResult: per-member outcomes, selection on validation, one test evaluation.

Arrays are indexed ``[setting, seed]``. Selection (:meth:`SweepResult.best`,
:meth:`SweepResult.top_k`) reads validation metrics only; a setting with a
diverged or failed member is never selected. The test part is read by
:meth:`SweepResult.evaluate_test` only, once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import numpy as np

from jaxhp import _result_io
from jaxhp._checkpoint import data_hash
from jaxhp._data import Folds, Split
from jaxhp._hparams import did_you_mean, pad_alloc
from jaxhp._io import FormatError
from jaxhp._record import (
    GroupInfo,
    StackedParams,
    group_info,
    unflatten_params,
)
from jaxhp._refit import member_params, test_runs
from jaxhp._table import SettingsTable
from jaxhp._train import learned, learned_shapes
from jaxhp._version import versions

OK, DIVERGED, FAILED = "ok", "diverged", "failed"


class SelectionError(ValueError):
    """No setting can be selected (all diverged or failed), or a bad metric."""


class Selection(NamedTuple):
    """A selected setting and its validation score (mean and std over seeds)."""

    index: int
    setting: Any
    metric: str
    mode: str
    value: float
    std: float
    per_seed: np.ndarray


class TestReport(NamedTuple):
    """The single test evaluation of a selected setting.

    ``params`` holds one entry per seed: the parameters tested, or the pair
    ``(params, state)`` for a model declared ``has_state=True``.
    """

    selection: Selection
    metrics: dict[str, float]
    per_seed: dict[str, np.ndarray]
    refit: bool
    params: list


def metric_name(metric: str) -> str:
    """A validation metric's name: the ``val_`` prefix, if any, dropped."""
    return metric[4:] if metric.startswith("val_") else metric


def resolve_direction(directions: Mapping[str, str], metric: str,
                      mode: str | None = None) -> str:
    """``"min"`` or ``"max"`` for ``metric``: ``mode`` if given, else as declared.

    A metric's direction is declared on the model (``Model(directions=...)``),
    never guessed from its name; only ``loss`` (the training objective)
    defaults to ``"min"``.

    Raises:
      ValueError: ``mode`` is not ``"min"``/``"max"``.
      SelectionError: the direction of ``metric`` is not declared.
    """
    if mode is not None:
        if mode not in ("min", "max"):
            raise ValueError(f"`mode`={mode!r}: must be 'min' or 'max'")
        return mode
    name = metric_name(metric)
    if name == "loss":
        return "min"
    declared = dict(directions).get(name)
    if declared is None:
        raise SelectionError(
            f"the direction of metric {name!r} is not declared, and jaxhp does not guess "
            f"it from the name. Declare it on the model, e.g. "
            f"jaxhp.Model(..., directions={{{name!r}: 'max'}}) if higher is better "
            f"('min' if lower is better), or pass mode='max' / mode='min' here. "
            f"Declared: {dict(directions) or 'none'}")
    return declared


class _Builder:
    """Accumulates chunk outputs of a sweep into a :class:`SweepResult`.

    Chunks are kept as they come (leaves ``(seeds, m, ...)``) and scattered
    into ``(settings, seeds, ...)`` arrays once, in :meth:`build`, with array
    indexing: the cost does not grow with a Python loop over settings.
    """

    def __init__(self, settings, seed_ids, **context):
        self.settings, self.seed_ids, self.context = settings, seed_ids, context
        n, s = len(settings), len(seed_ids)
        self.chunks: list[tuple[np.ndarray, Any]] = []
        self.errors = np.full(n, "", dtype=object)
        self.groups: list[GroupInfo] = []
        self.group_of = np.full(n, -1, np.int64)
        self.shape = (n, s)
        self._best: dict[tuple, tuple[int, float | None]] = {}

    def add(self, indices: Sequence[int], out, m: int, group: int | None = None) -> None:
        """Adds a chunk: ``out`` leaves ``(seeds, chunk, ...)``, the first ``m`` real,
        of static group ``group`` (default: the group being run, ``len(groups)``)."""
        idx = np.asarray(indices[:m], np.int64)
        self.group_of[idx] = len(self.groups) if group is None else group
        self.chunks.append((idx, jax.tree_util.tree_map(lambda a: np.asarray(a)[:, :m], out)))

    def fail(self, indices: Sequence[int], message: str, group: int | None = None) -> None:
        self.errors[np.asarray(indices, np.int64)] = message
        self.group_of[np.asarray(indices, np.int64)] = \
            len(self.groups) if group is None else group

    def best_so_far(self, metric: str, mode: str) -> float | None:
        """The best mean-over-seeds metric of healthy settings so far (incremental).

        ``mode`` is the resolved direction (see :func:`resolve_direction`).
        """
        sign = -1.0 if mode == "max" else 1.0
        seen, best = self._best.get((metric, sign), (0, None))
        for _, out in self.chunks[seen:]:
            if metric not in out.val:
                continue
            v = np.asarray(out.val[metric], np.float64)
            ok = np.all(out.diverged_at < 0, axis=0) & np.all(np.isfinite(v), axis=0)
            if ok.any():
                cand = float(np.min(sign * v.mean(axis=0)[ok]))
                best = cand if best is None else min(best, cand)
        self._best[(metric, sign)] = (len(self.chunks), best)
        return None if best is None else sign * best

    def build(self) -> SweepResult:
        n, s = self.shape
        chunks = self.chunks
        metric_names = sorted(chunks[0][1].val) if chunks else []
        t_len = max((o.loss_curve.shape[-1] for _, o in chunks), default=0)
        e_len = max((next(iter(o.val_curve.values())).shape[-1] if o.val_curve else 0
                     for _, o in chunks), default=0)
        done = np.zeros(n, bool)
        diverged_at = np.full((n, s), -1, np.int32)
        train_loss = np.full((n, s), np.nan, np.float32)
        val = {k: np.full((n, s), np.nan, np.float32) for k in metric_names}
        loss_curve = np.full((n, s, t_len), np.nan, np.float32)
        val_curve = {k: np.full((n, s, e_len), np.nan, np.float32) for k in metric_names}
        for idx, o in chunks:
            done[idx] = True
            diverged_at[idx] = o.diverged_at.T
            train_loss[idx] = o.train_loss.T
            loss_curve[idx, :, :o.loss_curve.shape[-1]] = np.swapaxes(o.loss_curve, 0, 1)
            for k in metric_names:
                val[k][idx] = o.val[k].T
                ev = o.val_curve[k]
                val_curve[k][idx, :, :ev.shape[-1]] = np.swapaxes(ev, 0, 1)
        done &= self.errors == ""
        status = np.where(diverged_at >= 0, DIVERGED, OK).astype("<U8")
        status[~done] = FAILED
        for arr in (train_loss, loss_curve, *val.values(), *val_curve.values()):
            arr[~done] = np.nan
        diverged_at[~done] = -1
        params = None
        ctx = self.context
        if chunks and chunks[0][1].state is not None:
            params = StackedParams(n, [
                (idx[done[idx]], jax.tree_util.tree_map(lambda a, k=done[idx]: a[:, k],
                                                        learned(ctx["model"], o.state)))
                for idx, o in chunks])
        devices = ctx["devices"]
        meta = {
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **versions(),
            "device_kind": devices[0].device_kind,
            "platform": devices[0].platform,
            "n_devices": len(devices),
            "n_processes": len({getattr(d, "process_index", 0) for d in devices}),
            **({"chunk_defaults": dict(ctx["chunk_defaults"])}
               if ctx.get("chunk_defaults") is not None else {}),
            **({"data": data_fingerprint(ctx["split"])}
               if ctx.get("split") is not None else {}),
            "model": ctx["model"].name,
            "directions": dict(ctx["model"].directions),
            "hparams": (self.settings.cls if isinstance(self.settings, SettingsTable)
                        else type(self.settings[0])).__qualname__,
            "key_impl": str(jax.random.key_impl(ctx["key"])),
            "key_data": np.asarray(jax.random.key_data(ctx["key"])).tolist(),
        }
        folds = ctx["split"] if isinstance(ctx["split"], Folds) else None
        if folds is not None:  # columns are fold-major replicas: fold f, seed s -> f * S + s
            meta["cv"] = {**folds.record(), "fold_ids": np.repeat(
                np.arange(folds.k), s // folds.k).tolist()}
        return SweepResult(
            settings=self.settings if isinstance(self.settings, SettingsTable)
            else list(self.settings), seed_ids=np.asarray(self.seed_ids, np.int64),
            status=status, diverged_at=diverged_at, train_loss=train_loss, val=val,
            loss_curve=loss_curve, val_curve=val_curve,
            errors=self.errors.astype(str),
            groups=list(self.groups), meta=meta, params=params, model=ctx["model"],
            group_of=self.group_of.copy(),
            split=ctx["split"], key=ctx["key"],
            fold_of=None if folds is None else np.asarray(folds.fold_of, np.int64))


def data_fingerprint(split: Split | Folds) -> dict:
    """What identifies the data a search trained and selected on: the shapes and dtypes
    of the training and validation parts and a SHA-256 of their contents (the test
    part is not read by a search). Recorded as ``result.meta["data"]``."""

    def shapes(part):
        return [[list(np.shape(a)), str(np.asarray(a).dtype)]
                for a in jax.tree_util.tree_leaves(part)]

    if isinstance(split, Folds):  # the cross-validation data and its folds
        return {"train": shapes(split.data), "val": shapes(split.data),
                "sha256": data_hash((split.data, np.asarray(split.fold_of)))}
    return {"train": shapes(split.train), "val": shapes(split.val),
            "sha256": data_hash((split.train, split.val))}


class TrainedFrom(NamedTuple):
    """What a fresh result keeps of its training, besides its numbers: the kept
    parameters (:class:`~jaxhp._record.StackedParams`, a list, or ``None``), the model,
    the data and the key (each ``None`` after :meth:`SweepResult.load`). Read by the
    package's own rebuilding of results (:func:`jaxhp._merge.merge`, the rounds
    searches); users retrain through :meth:`SweepResult.params` and
    :meth:`SweepResult.evaluate_test`."""

    params: Any
    model: Any
    split: Any
    key: Any


def trained_from(result: SweepResult) -> TrainedFrom:
    """``result``'s :class:`TrainedFrom`."""
    return TrainedFrom(result._params, result._model, result._split, result._key)


def _masked_param(values: list) -> np.ma.MaskedArray:
    """One ``param_<field>`` column as scikit-learn builds it: a masked array whose
    dtype is inferred from the values, except strings and mixed values (object)."""
    try:
        arr = np.array(values)
        dtype = arr.dtype if arr.dtype.kind not in "UO" and arr.ndim == 1 else object
    except ValueError:
        dtype = np.dtype(object)
    if dtype is not object:
        return np.ma.MaskedArray(np.asarray(values, dtype), mask=np.zeros(len(values), bool))
    col = np.ma.MaskedArray(np.empty(len(values), dtype=object), mask=True)
    for i, v in enumerate(values):  # element-wise: tuples stay whole
        col[i] = v
    return col



class SweepResult:
    """The outcome of a sweep: one row per setting, one column per seed.

    Attributes:
      settings: the settings (``HParams``; plain dicts after ``load`` without
        ``hparams=``).
      seed_ids: the seed indices; member ``(i, s)`` used ``fold_in(key, seed_ids[s])``.
        A cross-validated result (a sweep of :func:`jaxhp.kfold` folds) has one
        column per (fold, seed), fold-major: column ``j`` is seed ``seed_ids[j]``
        on fold ``fold_ids[j]``.
      fold_of: for a cross-validated result, the fold each row of the
        cross-validation data validates in (``None`` otherwise).
      status: ``"ok"``, ``"diverged"`` or ``"failed"`` per member.
      diverged_at: the step a member diverged at, ``-1`` if healthy.
      train_loss: the final training objective per member.
      val: validation metrics per member (dict of ``(n_settings, n_seeds)``).
      loss_curve, val_curve: curves, NaN-padded to a common length.
      errors: the error message of a failed setting's group, ``""`` otherwise.
      groups: per static group: statics, chunk size, compile and run seconds.
      meta: versions, device, key; recorded for reproducibility.
      test_reads: one dict per test evaluation (:meth:`evaluate_test`): the
        selection rule (``metric``, ``mode``, ``refit``), the selected
        ``index`` and ``setting``, the test ``metrics`` (mean over seeds),
        ``per_seed`` values, ``seed_ids`` and ``time``. Saved and loaded with
        the result, so a loaded result still refuses a second look at test.
    """

    EXTRAS: ClassVar[tuple[str, ...]] = ()
    """The names of a search's own declared fields, saved and loaded with the result."""
    SAVES_PARAMS: ClassVar[bool] = False
    """Whether :meth:`save` keeps the trained parameters (PBT: its final parameters
    come from a schedule and cannot be retrained from the final setting)."""
    _TYPES: ClassVar[dict[str, type]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        SweepResult._TYPES[cls.__name__] = cls

    def __init__(self, *, settings, seed_ids, status, diverged_at, train_loss, val,
                 loss_curve, val_curve, errors, groups, meta, params=None, model=None,
                 split=None, key=None, test_reads=None, group_of=None, fold_of=None,
                 **extras):
        unknown = set(extras) - set(self.EXTRAS)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(unknown)}; "
                            f"declared extras are {list(self.EXTRAS)}")
        for name in self.EXTRAS:
            setattr(self, name, extras.get(name))
        if not isinstance(settings, SettingsTable):  # one type: always columns
            settings = SettingsTable.from_settings(list(settings))
        self._table, self._settings = settings, None  # HParams made on request
        self.seed_ids = seed_ids
        self.status = status
        self.diverged_at = diverged_at
        self.train_loss = train_loss
        self.val = val
        self.loss_curve = loss_curve
        self.val_curve = val_curve
        self.errors = errors
        self.groups: list[GroupInfo] = [group_info(g) for g in groups]
        self.group_of = (np.asarray(group_of, np.int64) if group_of is not None
                         else self._groups_by_statics())
        self.meta = meta
        self._params = params
        self._model, self._split, self._key = model, split, key
        self.test_reads: list[dict] = [dict(r) for r in test_reads or []]
        self._saved_params = None  # (paths, stacked, present) of a loaded result
        self.fold_of = None if fold_of is None else np.asarray(fold_of, np.int64)

    builder = staticmethod(lambda settings, seed_ids, **ctx: _Builder(settings, seed_ids,
                                                                       **ctx))

    # ------------------------------------------------------------- summaries
    @property
    def settings(self) -> list:
        """The settings, one ``HParams`` per row, fresh or loaded (a loaded result
        rebuilds its class from the saved declaration; see :meth:`load`). A result
        keeps its settings as columns (:attr:`table`); this list is built on
        first access."""
        if self._settings is None:
            self._settings = self._table.settings()
        return self._settings

    @property
    def table(self):
        """The settings as columns (a ``SettingsTable``)."""
        return self._table

    def setting(self, index: int):
        """Setting ``index`` (one ``HParams``, made from the columns on request).

        Example:
          >>> result.setting(result.best("mse").index)
        """
        return self._table.setting(int(index))

    @property
    def n_settings(self) -> int:
        return len(self._table)

    @property
    def n_seeds(self) -> int:
        """The number of seeds (distinct seeds of a cross-validated result)."""
        return len(self.seed_ids) // self.n_folds

    @property
    def cv(self) -> dict | None:
        """How the folds were made (``k``, ``shuffle``, ``random_state``,
        ``stratified``, ``n`` rows, ``fold_ids`` per column), ``None`` without
        cross-validation."""
        return self.meta.get("cv")

    @property
    def n_folds(self) -> int:
        """The number of cross-validation folds (1 without cross-validation)."""
        return int(self.cv["k"]) if self.cv else 1

    @property
    def fold_ids(self) -> np.ndarray:
        """The fold of each column (all 0 without cross-validation)."""
        if not self.cv:
            return np.zeros(len(self.seed_ids), np.int64)
        return np.asarray(self.cv["fold_ids"], np.int64)

    def per_fold(self, metric: str) -> np.ndarray:
        """A validation metric per setting and fold, the mean over seeds within each
        fold: ``(n_settings, n_folds)`` (``(n_settings, 1)`` without cross-validation).
        """
        return self._fold_means(self.metric(metric).astype(np.float64))

    def _fold_means(self, v: np.ndarray) -> np.ndarray:
        ids = self.fold_ids
        return np.stack([v[:, ids == f].mean(axis=1) for f in range(self.n_folds)], axis=1)

    def __len__(self) -> int:
        return self.n_settings

    @property
    def compile_count(self) -> int:
        """Programs compiled by this sweep (one per static group, if not cached)."""
        return int(sum(g.compiled for g in self.groups))

    @property
    def compile_seconds(self) -> float:
        return float(sum(g.compile_s for g in self.groups))

    @property
    def run_seconds(self) -> float:
        return float(sum(g.run_s for g in self.groups))

    def setting_status(self) -> np.ndarray:
        """Per setting: ``ok`` if every seed is ok, else ``failed`` or ``diverged``."""
        out = np.full(self.n_settings, OK, dtype="<U8")
        out[np.any(self.status == DIVERGED, axis=1)] = DIVERGED
        out[np.any(self.status == FAILED, axis=1)] = FAILED
        return out

    @property
    def directions(self) -> dict[str, str]:
        """Each metric's declared direction (``"min"``/``"max"``), from the model."""
        return dict(self.meta.get("directions", {}))

    def _errors_note(self) -> str:
        """The distinct group errors, quoted (for error messages)."""
        errs = list(dict.fromkeys(str(e) for e in np.asarray(self.errors).ravel() if e))
        if not errs:
            return ""
        more = f" (and {len(errs) - 1} other error(s) in result.errors)" if len(errs) > 1 \
            else ""
        return f". The sweep recorded failures; the first: {errs[0]}{more}"

    def metric(self, metric: str) -> np.ndarray:
        """A validation metric per member, ``(n_settings, n_seeds)``."""
        name = metric_name(metric)
        if name not in self.val:
            raise SelectionError(f"unknown validation metric {metric!r}"
                                 f"{did_you_mean(name, list(self.val))}; available: "
                                 f"{sorted(self.val)}{self._errors_note()}")
        return self.val[name]

    def aggregate(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std over seeds of a validation metric (NaN if not all seeds ok).

        Cross-validated: the mean over folds of each fold's mean over seeds (every
        fold has every seed, so this is also the mean over all members), and the
        std over folds of those fold means, as scikit-learn's ``std_test_<m>``.
        """
        v = self.metric(metric).astype(np.float64)
        ok = np.all(self.status == OK, axis=1) & np.all(np.isfinite(v), axis=1)
        v = np.where(ok[:, None], v, 0.0)
        if self.cv:
            folds = self._fold_means(v)
            return (np.where(ok, folds.mean(axis=1), np.nan),
                    np.where(ok, folds.std(axis=1), np.nan))
        return np.where(ok, v.mean(axis=1), np.nan), np.where(ok, v.std(axis=1), np.nan)

    # -------------------------------------------------------------- selection
    def _order(self, metric: str, mode: str | None) -> tuple[np.ndarray, np.ndarray, str]:
        self.metric(metric)  # an unknown metric is reported before its direction
        mode = resolve_direction(self.directions, metric, mode)
        mean, _ = self.aggregate(metric)
        eligible = np.flatnonzero(np.isfinite(mean))
        if eligible.size == 0:
            raise SelectionError(self._why_none(metric))
        key = mean[eligible] if mode == "min" else -mean[eligible]
        order = eligible[np.argsort(key, kind="stable")]
        return order, mean, mode

    def _why_none(self, metric: str) -> str:
        """Why no setting is selectable on ``metric``: counts of each cause."""
        st = self.setting_status()
        v = self.metric(metric)
        nonfinite = int(np.sum((st == OK) & ~np.all(np.isfinite(v), axis=1)))
        parts = [f"{int(np.sum(st == DIVERGED))} diverged in training",
                 f"{int(np.sum(st == FAILED))} failed (their group raised an error)",
                 f"{nonfinite} trained without diverging but have a NaN/Inf validation "
                 f"{metric_name(metric)!r}"]
        hint = ""
        if nonfinite:
            hint = (f"; the metric function returns NaN/Inf on the validation split "
                    f"(check model.metrics for {metric_name(metric)!r}, e.g. a division "
                    "by zero or a log of 0)")
        elif np.sum(st == DIVERGED) == self.n_settings:
            hint = "; lower the learning rates"
        return (f"no setting can be selected on {metric_name(metric)!r}: all "
                f"{self.n_settings} settings are excluded: " + ", ".join(parts) + hint
                + self._errors_note())

    def _selection(self, i: int, metric: str, mode: str) -> Selection:
        mean, std = self.aggregate(metric)
        return Selection(int(i), self.setting(i), metric_name(metric), mode,
                         float(mean[i]), float(std[i]), self.metric(metric)[i].copy())

    def best(self, metric: str = "loss", mode: str | None = None) -> Selection:
        """The setting with the best mean validation metric over seeds.

        Args:
          metric: a validation metric (``"mse"``, ``"accuracy"``; a ``val_``
            prefix is accepted).
          mode: ``"min"`` or ``"max"``; by default the direction the model
            declares for ``metric`` (``Model(directions=...)``; ``loss`` is
            ``"min"``). An undeclared direction is an error, never a guess.

        Returns:
          A :class:`Selection`.

        Raises:
          SelectionError: unknown metric, undeclared direction, or no setting
          selectable (all diverged, failed or with a NaN metric; the message
          counts each and quotes the first recorded error).

        Example:
          >>> result.best("mse").setting
        """
        order, _, mode = self._order(metric, mode)
        return self._selection(order[0], metric, mode)

    def top_k(self, k: int, metric: str = "loss", mode: str | None = None) -> list[Selection]:
        """The ``k`` best settings by mean validation metric (healthy ones only)."""
        if k < 1:
            raise ValueError(f"`k`={k}: must be >= 1")
        order, _, mode = self._order(metric, mode)
        return [self._selection(i, metric, mode) for i in order[:k]]

    def rank(self, metric: str = "loss", mode: str | None = None) -> np.ndarray:
        """Rank per setting, as scikit-learn's ``rank_test_<m>`` (int32, 1 = best).

        Ties share the lowest rank (``[0.1, 0.2, 0.2, 0.3]`` ranks ``[1, 2, 2,
        4]``); settings that cannot be selected (a diverged, failed or NaN
        member) tie with each other after every selectable one.
        """
        self.metric(metric)
        mode = resolve_direction(self.directions, metric, mode)
        mean, _ = self.aggregate(metric)
        ok = np.isfinite(mean)
        score = np.where(ok, mean if mode == "min" else -mean, np.inf)
        # the rank of x is 1 + the number of settings strictly better than x
        srt = np.sort(score)
        return (1 + np.searchsorted(srt, score, side="left")).astype(np.int32)

    # ----------------------------------------------------------------- export
    def _setting_dicts(self) -> list[dict]:
        return self._table.to_dicts()

    def cv_results(self, directions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The results in scikit-learn's ``cv_results_`` layout, key for key.

        pandas code written for ``GridSearchCV(...).cv_results_`` works
        unchanged. As in scikit-learn's cross-validation, **"test" in these
        keys means the held-out validation split** (``split.val``), never the
        test split; the seeds play the role of the CV splits. A cross-validated
        result (:func:`jaxhp.kfold`) has one ``split<k>_test_<m>`` per **fold**
        (the mean over seeds within fold ``k``), and ``mean_test_<m>`` /
        ``std_test_<m>`` are over folds, as in scikit-learn.

        Keys, in scikit-learn's order: ``mean_fit_time``, ``std_fit_time``,
        ``mean_score_time``, ``std_score_time``, ``param_<field>`` (masked
        arrays), ``params`` (a list of dicts), then for **every** metric ``m``:
        ``split<k>_test_<m>`` (seed ``k``), ``mean_test_<m>``,
        ``std_test_<m>`` (over seeds, population std) and ``rank_test_<m>``
        (int32, ties share the lowest rank). A setting with a diverged or
        failed member has NaN mean and std and ranks last. Fit time is the
        group's compiled run time shared equally by its members (they train
        together, so it has no spread: std 0); validation metrics are computed
        inside the same program, so score time is 0.

        Args:
          directions: directions for metrics the model does not declare
            (``{"balanced_accuracy": "max"}``); every metric needs one, to rank.

        Raises:
          SelectionError: a metric without a declared direction.

        Example:
          >>> pd.DataFrame(result.cv_results()).sort_values("rank_test_mse")
        """
        dirs = {**self.directions, **dict(directions or {})}
        names = sorted(self.val)
        missing = [m for m in names if m != "loss" and m not in dirs]
        if missing:
            raise SelectionError(
                f"cv_results() ranks every metric, and the direction of {missing} is not "
                "declared: declare it on the model (jaxhp.Model(..., directions={"
                f"{missing[0]!r}: 'max'}})) or pass cv_results(directions={{...}})")
        dicts = self._setting_dicts()
        fit = np.zeros(self.n_settings)
        for gi, g in enumerate(self.groups):
            idx = np.flatnonzero(self.group_of == gi)
            if len(idx):
                fit[idx] = g.run_s / (len(idx) * len(self.seed_ids))
        out: dict[str, Any] = {"mean_fit_time": fit, "std_fit_time": np.zeros_like(fit),
                               "mean_score_time": np.zeros_like(fit),
                               "std_score_time": np.zeros_like(fit)}
        for name in (dicts[0] if dicts else {}):
            out[f"param_{name}"] = _masked_param([d.get(name) for d in dicts])
        out["params"] = dicts
        for m in names:
            mean, std = self.aggregate(m)
            splits = self.per_fold(m) if self.cv else self.val[m].astype(np.float64)
            for k in range(splits.shape[1]):
                out[f"split{k}_test_{m}"] = splits[:, k]
            out[f"mean_test_{m}"], out[f"std_test_{m}"] = mean, std
            out[f"rank_test_{m}"] = self.rank(m, dirs.get(m))
        return out

    def to_optuna(self, *, storage=None, study_name: str | None = None,
                  metric: str | None = None, mode: str | None = None):
        """Writes the result into a new Optuna study: one finished trial per setting.

        Nothing is retrained. Each trial holds the setting's fields as params (a
        field with ``choices`` or a static field: categorical; an ``integer``
        tunable: ``IntDistribution``; other tunables: ``FloatDistribution``, log
        for a ``log`` field; ranges from the declared bounds where finite, else
        from the values exported; a field with one value in the result: a
        one-value distribution), the mean over seeds of the validation
        ``metric`` as its value (:meth:`aggregate`), and user attributes
        ``jaxhp_index`` (the result row), ``group``, ``status``, ``seeds``,
        ``per_seed`` (values per seed), ``std`` (over seeds), ``metric``, and
        where they apply ``diverged_at``, ``error``, ``steps_trained``. A setting
        selection never picks (a diverged or failed seed, a NaN metric) is a
        ``FAIL`` trial without a value. Optuna's tools (importances, plots,
        dashboards) then read the sweep.

        Adaptive results: successive halving and Hyperband export each setting
        at the rung where it stopped (its value there, ``steps`` = the steps it
        trained, also ``steps_trained``) with its mean metric at every rung it
        ran as Optuna's intermediate values, keyed by steps; PBT exports the
        final population: each slot's final hyperparameters and final
        validation metric (its parameters were trained by a schedule:
        ``result.ancestry(i)``).

        Args:
          storage: an Optuna storage or URL (``"sqlite:///runs.db"``); default:
            in memory.
          study_name: the new study's name (default: generated by Optuna). An
            existing study is never appended to: its name is refused.
          metric: the validation metric (default: the one the search ranked on,
            ``loss`` for a sweep).
          mode: ``"min"``/``"max"``; by default the metric's declared direction
            (the one the adaptive search used, for its metric). It sets the
            study's direction.

        Returns:
          The ``optuna.Study``.

        Raises:
          ImportError: optuna is not installed (``pip install 'jaxhp[search]'``).
          SelectionError: an unknown metric or an undeclared direction.
          ValueError: a study of that name exists in ``storage``.

        Example:
          >>> study = result.to_optuna(storage="sqlite:///runs.db", study_name="ridge",
          ...                          metric="mse")
          >>> optuna.importance.get_param_importances(study)
        """
        from jaxhp._export import to_optuna

        return to_optuna(self, storage=storage, study_name=study_name, metric=metric,
                         mode=mode)

    def _groups_by_statics(self) -> np.ndarray:
        """The static group of each setting, matched by statics (files without
        ``group_of``); -1 where no group matches."""
        dicts = self._setting_dicts()
        out = np.full(len(dicts), -1, np.int64)
        for gi, g in enumerate(self.groups):
            for i, d in enumerate(dicts):
                if out[i] < 0 and all(d.get(k) == v for k, v in g.statics.items()):
                    out[i] = gi
        return out

    def to_pandas(self, directions: Mapping[str, str] | None = None):
        """:meth:`cv_results` as a pandas DataFrame, plus a ``status`` column.

        ``params`` is kept (a column of dicts), as with
        ``pd.DataFrame(search.cv_results_)``. Needs ``jaxhp[table]``.
        """
        try:
            import pandas as pd
        except ImportError as e:
            raise ImportError("to_pandas() needs pandas: pip install 'jaxhp[table]'") from e
        df = pd.DataFrame(self.cv_results(directions))
        df["status"] = self.setting_status()
        return df

    # -------------------------------------------------------- params and test
    def params(self, index: int, seed: int = 0, *, model=None, split: Split | None = None):
        """Trained parameters of member ``(index, seed)``.

        Kept parameters are returned as they were trained in the sweep;
        otherwise the member is retrained alone with its key (equal to the
        sweep's member within float tolerance).

        For a model declared ``has_state=True`` this is the pair ``(params,
        state)`` (the state, e.g. BatchNorm running statistics, as trained with
        them): ``params, state = result.params(i)``, then
        ``jaxhp.evaluate(model, params, hp, part, state=state)``. The same pairs
        are in :attr:`TestReport.params`.
        """
        if self._params is not None and self._params[index] is not None:
            tree = jax.tree_util.tree_map(lambda a: a[seed], self._params[index])
            return self._own_shapes(index, tree, model)
        saved = self._saved_params
        if saved is not None and saved[2][index]:
            model = model if model is not None else self._model
            if model is None:
                raise ValueError("this result was loaded from disk with its parameters: "
                                 "pass `model=` so they can be put back into the "
                                 "model's parameter structure")
            structure = learned_shapes(model, self.setting(index))
            tree = unflatten_params(structure, saved[0], saved[1], index)
            return jax.tree_util.tree_map(lambda a: a[seed], tree)
        if self.SAVES_PARAMS:
            raise ValueError(f"{type(self).__name__}: the parameters of setting {index} "
                             "were not kept, and they cannot be retrained from its final "
                             "setting alone")
        model, split, key = self._context(model, split)
        if self.cv:  # column `seed` is that seed on its fold
            split = split.split(int(self.fold_ids[seed]))
        return member_params(model, self.setting(index), split, key, self.seed_ids[seed],
                             self._health(index))

    def _health(self, index: int) -> str:
        """The health rule of setting ``index``'s group (``"step"`` when unknown)."""
        g = int(self.group_of[index]) if self.group_of is not None else -1
        return self.groups[g].health if 0 <= g < len(self.groups) else "step"

    def _own_shapes(self, index: int, tree, model):
        """Kept parameters of a padded group (allocated at the group's size) cut to the
        setting's own shapes: the leading block of every axis, which is what the
        unpadded model holds (padded units come last and are zero)."""
        g = int(self.group_of[index]) if self.group_of is not None else -1
        if g < 0 or not any(pad_alloc(v) is not None for v in self.groups[g].statics.values()):
            return tree
        model = model if model is not None else self._model
        if model is None:
            return tree
        own_leaves, own_def = jax.tree_util.tree_flatten(
            learned_shapes(model, self.setting(index)))
        return jax.tree_util.tree_unflatten(own_def, [  # own treedef: a module's sizes
            a[tuple(slice(0, d) for d in s.shape)]
            for a, s in zip(jax.tree_util.tree_leaves(tree), own_leaves)])

    def _context(self, model, split):
        model = model if model is not None else self._model
        split = split if split is not None else self._split
        if model is None or split is None or self._key is None:
            raise ValueError("this result has no model or data attached (loaded from "
                             "disk?): pass `model=` and `split=`" + (
                                 " (the jaxhp.Folds it was cross-validated on)"
                                 if self.cv else ""))
        if self.cv and not isinstance(split, Folds):
            raise TypeError(f"this result was cross-validated on {self.n_folds} folds: "
                            f"`split` must be those jaxhp.Folds, got {type(split).__name__}")
        if self.cv and self.fold_of is not None and not np.array_equal(
                np.asarray(split.fold_of), self.fold_of):
            raise ValueError("`split`: these jaxhp.Folds are not the ones this result was "
                             f"cross-validated on (recorded: {self.cv['k']} folds of "
                             f"{len(self.fold_of)} rows, shuffle={self.cv['shuffle']}, "
                             f"random_state={self.cv['random_state']})")
        if not self.cv and isinstance(split, Folds):
            raise TypeError("`split`: this result was not cross-validated; pass the "
                            "jaxhp.Split it was trained on")
        return model, split, self._key

    def evaluate_test(self, metric: str = "loss", mode: str | None = None, *,
                      refit: bool | None = None, model=None,
                      split: Split | Folds | None = None,
                      allow_repeat: bool = False) -> TestReport:
        """Selects on validation, then evaluates the chosen setting on test, once.

        The selected setting is retrained with each of the sweep's seeds (on
        train, or on train + validation with ``refit=True``, like
        scikit-learn's ``refit``) and evaluated on the test part. A
        cross-validated result always refits: on all the cross-validation data
        (every fold's rows), once per seed, then tests.

        Args:
          metric, mode: the selection rule (see :meth:`best`).
          refit: retrain on train + validation before testing (default: False;
            cross-validated: True, and False is refused).
          model, split: needed only for a result loaded from disk.
          allow_repeat: permit a second test evaluation (the test set is then
            no longer an unbiased estimate; the default refuses).

        Returns:
          A :class:`TestReport` with mean and per-seed test metrics and params.

        Example:
          >>> report = result.evaluate_test("mse")
          >>> report.metrics["mse"]
        """
        if self.cv and refit is False:
            raise ValueError("`refit`=False: this result was cross-validated, so no single "
                             "training part stands for its folds; the test evaluation "
                             "refits on all the cross-validation data (refit=True)")
        self._check_test_unread(allow_repeat)
        model, split, key = self._context(model, split)
        sel = self.best(metric, mode)
        if self.cv:  # one refit per seed on every fold's rows, then the test part
            refit = True
            arrays, params = test_runs(model, self.setting(sel.index), split.refit_split(),
                                       key, self._distinct_seeds(), False,
                                       self._health(sel.index))
        else:
            refit = bool(refit)
            arrays, params = test_runs(model, self.setting(sel.index), split, key,
                                       self.seed_ids, refit, self._health(sel.index))
        report = TestReport(sel, {k: float(v.mean()) for k, v in arrays.items()}, arrays,
                            refit, params)
        self._record_test_read(report)
        return report

    def _check_test_unread(self, allow_repeat: bool) -> None:
        """Refuses a second test evaluation (also of a saved and loaded result)."""
        if self.test_reads and not allow_repeat:
            first = self.test_reads[0]
            raise RuntimeError(
                "the test set was already evaluated for this sweep; a second look turns "
                "it into a validation set. Pass allow_repeat=True if you really mean it "
                f"({len(self.test_reads)} earlier read(s), the first on "
                f"{first.get('time')}: metric {first.get('metric')!r}, setting "
                f"{first.get('index')}; see result.test_reads)")

    def _distinct_seeds(self) -> np.ndarray:
        """The seeds, each once (a cross-validated result repeats them per fold)."""
        ids = np.asarray(self.seed_ids)
        return ids[:self.n_seeds] if self.cv else ids

    def _record_test_read(self, report: TestReport) -> None:
        sel = report.selection
        setting = self.setting(sel.index)
        self.test_reads.append({
            "metric": sel.metric, "mode": sel.mode, "refit": bool(report.refit),
            "index": int(sel.index),
            "setting": setting.to_dict(),
            "val": float(sel.value),
            "metrics": {k: float(v) for k, v in report.metrics.items()},
            "per_seed": {k: [float(x) for x in np.asarray(v)]
                         for k, v in report.per_seed.items()},
            "seed_ids": [int(x) for x in self._distinct_seeds()],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        })

    # ------------------------------------------------------------ persistence
    def save(self, path, *, overwrite: bool = False) -> None:
        """Saves to ``path.npz`` + ``path.json`` atomically (plain arrays and JSON).

        The suffixes are appended (``runs/lr0.1`` gives ``runs/lr0.1.npz``); a
        path ending in ``.npz`` or ``.json`` names the same pair. Parameters are
        not saved; the settings, statuses, metrics, curves, groups, metadata
        and the record of test evaluations (:attr:`test_reads`) are.

        A result gathered over several processes (``meta["n_processes"] > 1``, a
        search after ``jax.distributed.initialize()``) is written by process 0
        only: on the others, which hold the same result, ``save`` writes nothing.

        Args:
          path: the stem of the pair.
          overwrite: replace an existing result of that name.

        Raises:
          FileExistsError: a result of that name exists and ``overwrite`` is false.
        """
        if self.meta.get("n_processes", 1) > 1 and jax.process_index() != 0:
            return
        _result_io.write(path, self, self._params if self.SAVES_PARAMS else None,
                         overwrite=overwrite)

    @classmethod
    def load(cls, path, hparams: type | None = None) -> SweepResult:
        """Loads a result saved by :meth:`save` (never unpickles anything).

        Args:
          path: the stem given to :meth:`save` (or it with ``.npz``/``.json``).
          hparams: the settings' class. By default it is the recorded class when
            its module is already imported and its declaration unchanged, else a
            class rebuilt from the saved declaration (same name, fields, rules);
            either way the settings are ``HParams``, as in a fresh result.

        Raises:
          FormatError: a missing, truncated, tampered or pickled file, or one
            lacking a field (naming the file and the field).
        """
        saved = _result_io.read(path, hparams)
        kind, js = saved.kind, saved.file
        rcls = SweepResult._TYPES.get(kind, SweepResult if kind == "SweepResult" else None)
        if rcls is None:
            raise FormatError(f"{js}: holds a {kind}, a result type this jaxhp does not "
                              "know")
        if not issubclass(rcls, cls):
            raise FormatError(f"{js}: holds a {kind}, not a {cls.__name__}; load it with "
                              f"{kind}.load or SweepResult.load")
        missing = [n for n in rcls.EXTRAS if n not in saved.extras]
        if missing:
            raise FormatError(f"{js}: lacks the field(s) {missing} of a {kind}")
        out = rcls(**saved.fields, **{n: saved.extras[n] for n in rcls.EXTRAS})
        out._saved_params = saved.params
        return out

    @classmethod
    def merge(cls, results: Sequence[SweepResult]) -> SweepResult:
        """One result from sweeps split by hand (one job per static group, or per slice
        of the settings), as if one sweep had trained them all.

        Rows are the parts' rows in order (part 0's first); everything each part
        recorded is kept: statuses, metrics, curves (padded with NaN to the
        longest), kept parameters, errors, test evaluations (``index`` renumbered,
        ``merged_from`` naming the part, so a merged result still refuses a second
        look at test). A static group run by several parts becomes one group whose
        settings, chunks, compile and run seconds are summed (``chunk_size``: the
        largest); ``meta["merged"]`` lists each part's creation time, devices and
        versions. Selection on the merged result equals selection on one sweep of
        all the settings.

        Args:
          results: plain sweep results (fresh or loaded).

        Returns:
          A :class:`SweepResult`.

        Raises:
          ValueError: the parts trained on different data (each records a
            fingerprint: shapes and a SHA-256 of its train and validation data;
            files saved before result format 2 have none and are refused), with
            a different key, seeds, model, hyperparameter class or metrics, ran a
            static group with different ``eval_every``/``loss_every``, or share a
            setting (which numbers to keep would be ambiguous); the message names
            the parts and what differs.
          TypeError: a part is not a plain :class:`SweepResult` (an adaptive
            search's result).

        Example:
          >>> parts = [jaxhp.sweep(model, part, split, key=key, seeds=3)
          ...          for part in (settings[:50], settings[50:])]  # e.g. two jobs
          >>> jaxhp.SweepResult.merge(parts).best("mse").setting
        """
        from jaxhp._merge import merge

        return merge(results)

    def __repr__(self) -> str:
        st = self.setting_status()
        folds = f" x {self.n_folds} folds" if self.cv else ""
        return (f"SweepResult({self.n_settings} settings x {self.n_seeds} seeds{folds}, "
                f"{int(np.sum(st == OK))} ok, {int(np.sum(st == DIVERGED))} diverged, "
                f"{int(np.sum(st == FAILED))} failed; {len(self.groups)} groups, "
                f"compile {self.compile_seconds:.2f}s, run {self.run_seconds:.2f}s)")

