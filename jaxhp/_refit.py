"""Retraining one chosen setting alone: a member's parameters, and the one test read.

A result is a record of what a search computed; when it did not keep a
member's parameters, or when the chosen setting is tested, the setting is
trained again here, alone, with the member's own key ``fold_in(key, seed)``
(equal to the search's member within float tolerance).

"Parameters" here are what a user gets back (:func:`jaxhp._train.learned`): the
parameter pytree, or the pair ``(params, state)`` for a model declared
``has_state=True`` (its state, e.g. BatchNorm statistics, is used at test).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxhp._data import Split
from jaxhp._hparams import HParams
from jaxhp._model import Model
from jaxhp._train import evaluate, learned, split_learned, train


def member_params(model: Model, hp: HParams, split: Split, key: jax.Array, seed: int,
                  health: str = "step"):
    """The trained parameters of member ``(hp, seed)``, retrained alone (a stateful
    model: ``(params, state)``) with the search's ``health`` (a diverged member's
    parameters: frozen at its last finite state, or as its steps left them)."""
    run = train(model, hp, split, key=jax.random.fold_in(key, int(seed)),
                loss_every=0 if health == "end" else 1, health=health)
    return learned(model, run.state)


def test_runs(model: Model, hp: HParams, split: Split, key: jax.Array,
              seed_ids: Sequence[int], refit: bool, health: str = "step") -> tuple[dict, list]:
    """Trains ``hp`` with every seed (on train, or train + validation when ``refit``)
    and evaluates each on the test part: ``({metric: per-seed array}, params)``."""
    train_part = split.train
    if refit:
        train_part = jax.tree_util.tree_map(
            lambda a, b: np.concatenate([np.asarray(a), np.asarray(b)]), split.train,
            split.val)
    fit_split = Split(train_part, split.val, split.test)
    params = [member_params(model, hp, fit_split, key, s, health) for s in seed_ids]
    return test_metrics(model, hp, params, split), params


def test_metrics(model: Model, hp: HParams, params: Sequence, split: Split) -> dict:
    """``{metric: per-seed array}`` of trained ``params`` (one per seed; ``(params,
    state)`` pairs for a stateful model) on the test part."""
    per_seed: dict[str, list] = {}
    for p in params:
        p, state = split_learned(model, p)
        for k, v in evaluate(model, p, hp, split.test, state=state).items():
            per_seed.setdefault(k, []).append(float(v))
    return {k: np.asarray(v) for k, v in per_seed.items()}
