"""What the searches that train a batch per round share: argument checks and the result.

:func:`jaxhp.optuna_search` and :func:`jaxhp.bayesopt` propose settings round by
round and train each round's batch as one :func:`jaxhp.sweep`; they validate the
same arguments the same way, and merge their rounds into one :class:`RoundsResult`
with a ``round`` per setting.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxhp._distributions import Distribution, SpaceError
from jaxhp._hparams import HParams
from jaxhp._model import Model
from jaxhp._result import SweepResult, resolve_direction, trained_from
from jaxhp._space import Space
from jaxhp._space import random as random_space

__all__ = ["SWEEP_OPTIONS", "RoundsResult", "check_mode", "check_params",
           "check_sweep_options", "hparams_class", "rounds_result"]

SWEEP_OPTIONS = ("eval_every", "loss_every", "health", "chunk_size", "memory_budget",
                 "max_chunk", "devices", "keep_params", "on_error", "progress", "on_chunk")


class RoundsResult(SweepResult):
    """A :class:`~jaxhp.SweepResult` of settings trained round by round.

    Attributes:
      rounds: per setting, the round it was trained in.
    """

    EXTRAS = ("rounds",)

    def cv_results(self, directions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """:meth:`SweepResult.cv_results`, plus ``round`` per setting (also a column of
        :meth:`~SweepResult.to_pandas`)."""
        out = super().cv_results(directions)
        out["round"] = np.asarray(self.rounds, np.int64)
        return out


def check_sweep_options(fn: str, options: Mapping[str, Any]) -> None:
    """Refuses a keyword that is not a sweep option the search passes on."""
    unknown = sorted(set(options) - set(SWEEP_OPTIONS))
    if unknown:
        raise TypeError(f"{fn}: unknown keyword(s) {unknown}; the sweep "
                        f"options it passes on are {list(SWEEP_OPTIONS)}")


def hparams_class(fn: str, model: Model, base: HParams | None) -> type[HParams]:
    """The hyperparameter class the searched settings are instances of."""
    cls = type(base) if base is not None else model.hparams
    if cls is None:
        raise ValueError(f"{fn}: the model has no `hparams` class; pass `base=`")
    return cls


def check_params(fn: str, name: str, params, cls: type[HParams],
                 base: HParams | None) -> Space:
    """The searched fields ``{field: distribution}``, validated against the
    hyperparameter class like a space (a SpaceError listing every problem)."""
    if not isinstance(params, Mapping) or not params:
        raise SpaceError(f"{fn}: `{name}` must be a non-empty dict of field "
                         f"name -> jaxhp distribution, got {params!r}")
    bad = [f"`{n}`={d!r}: not a jaxhp distribution (uniform, loguniform, intrange, "
           "choice, fixed)" for n, d in params.items() if not isinstance(d, Distribution)]
    if bad:
        raise SpaceError(bad, header=f"{fn} {name}")
    space = random_space(1, dict(params))
    space.validate(cls, base)
    return space


def check_mode(fn: str, model: Model, name: str, mode: str | None) -> str:
    """The metric's direction: declared by the model, else ``mode``; a ``mode`` that
    contradicts the declaration is refused, as is a missing one (SelectionError)."""
    declared = dict(model.directions or {}).get(name)
    if mode is not None and declared is not None and mode != declared:
        raise ValueError(f"{fn}: `mode`={mode!r} contradicts the direction "
                         f"{declared!r} the model declares for {name!r}; drop `mode=`")
    return resolve_direction(model.directions or {}, name, mode)


def rounds_result(cls: type[RoundsResult], parts: Sequence[SweepResult], search: dict,
                  **extras) -> RoundsResult:
    """The rounds' sweeps (their settings distinct) merged into one ``cls`` result whose
    ``meta["search"]`` is ``search``; ``extras`` are the class's declared fields."""
    merged = parts[0] if len(parts) == 1 else SweepResult.merge(parts)
    merged.meta["search"] = search
    return cls(settings=merged.table, seed_ids=merged.seed_ids, status=merged.status,
               diverged_at=merged.diverged_at, train_loss=merged.train_loss,
               val=merged.val, loss_curve=merged.loss_curve, val_curve=merged.val_curve,
               errors=merged.errors, groups=merged.groups, meta=merged.meta,
               group_of=merged.group_of, fold_of=merged.fold_of,
               **trained_from(merged)._asdict(), **extras)
