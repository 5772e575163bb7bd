"""The population: members = settings x seeds, on the device, as pure functions.

A population holds, for one static group:

- ``hp``: the settings' tunable leaves, shape ``(settings,)``;
- ``carry``: the training state (parameters, optimizer state and, for a
  stateful model, its state) and health ``(TrainState, dead_at)``, leaves
  ``(seeds, settings, ...)``;
- ``keys``: one PRNG key per seed, ``(seeds,)``.

Two rules live here and nowhere else:

- **member keys**: member ``(setting, seed s)`` trains with ``fold_in(key, s)``,
  exactly the key ``jaxhp.train(..., key=fold_in(key, s))`` uses, so every
  member equals its solo run whatever its chunk or neighbours;
- **the vmap nesting**: ``vmap`` over seeds (outer) of ``vmap`` over settings
  (inner). Within a seed, a step's minibatch is shared by all settings, so
  their first layer is one wide matrix product. K-fold cross-validation adds a
  ``vmap`` over folds outside the seeds (each fold its own training and
  validation data, the same member keys): the replica axis becomes folds x
  seeds, fold-major (replica ``f * seeds + s``), so member ``(setting, seed s,
  fold f)`` equals ``jaxhp.train(model, hp, folds.split(f), key=fold_in(key, s))``.

And one scoring rule (:func:`score`): the mean over seeds of a validation
metric; a setting with any unhealthy seed (diverged, or a non-finite metric)
never wins. Every function is pure and jit-, vmap- and grad-safe.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp._hparams import HParams
from jaxhp._model import Model, loss_fn, metrics_fn
from jaxhp._train import SUSPECT, LoopConfig, make_step, mark_suspect, run_pure, start


def member_keys(key: jax.Array, seed_ids) -> jax.Array:
    """The key of every seed, ``(seeds,)``: ``fold_in(key, s)`` (the one rule)."""
    return jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.asarray(seed_ids))


def over_members(fn: Callable, n_member: int, n_shared: int, n_fold: int = 0) -> Callable:
    """``fn(hp, *member_args, *shared_args, *fold_args, key)`` over the whole population.

    ``hp`` is batched over settings; each member argument over
    ``(seeds, settings)``; shared arguments (the data, a start step) over
    nothing; ``key`` over seeds. Outputs have leading axes ``(seeds, settings)``.
    With ``n_fold`` fold arguments (each fold's data, leading axis ``folds``)
    an outer ``vmap`` runs every fold with the same keys: member arguments are
    then ``(folds, seeds, settings)``, and so are the outputs.
    The nesting (folds outer, seeds, settings inner) is defined here only.
    """
    in_settings = (0,) + (0,) * n_member + (None,) * (n_shared + n_fold) + (None,)
    in_seeds = (None,) + (0,) * n_member + (None,) * (n_shared + n_fold) + (0,)
    inner = jax.vmap(jax.vmap(fn, in_axes=in_settings), in_axes=in_seeds)
    if not n_fold:
        return inner
    in_folds = (None,) + (0,) * n_member + (None,) * n_shared + (0,) * n_fold + (None,)
    return jax.vmap(inner, in_axes=in_folds)


def fold_replicas(tree):
    """Leaves ``(folds, seeds, ...)`` as ``(folds * seeds, ...)``: the replica axis of a
    cross-validated population, fold-major (replica ``f * seeds + s``)."""
    return jax.tree_util.tree_map(
        lambda a: a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:]), tree)


def init(model: Model, hp: HParams, keys: jax.Array):
    """The population's carry before its first step, leaves ``(seeds, settings, ...)``."""
    return over_members(lambda h, k: start(model, h, k), 0, 0)(hp, keys)


def run(model: Model, cfg: LoopConfig, keep_params: bool, folds: bool = False,
        checked: bool = True) -> Callable:
    """The whole-run program ``(hp, train, val, keys) -> Run`` of a plain sweep.

    ``folds``: ``train`` and ``val`` hold every fold's part on a leading fold axis
    (``jaxhp.Folds.stacked``); the outputs' replica axis is folds x seeds
    (:func:`fold_replicas`). ``checked=False``: the unchecked run
    (:func:`jaxhp._train.run_pure`); the settings :func:`suspects` names must then
    be run again checked, and :func:`replace_settings` puts them in place.
    """

    def one(h, train_part, val_part, k):
        out = run_pure(model, cfg, h, train_part, val_part, k, checked)
        return out if keep_params else out._replace(state=None)

    if not folds:
        return over_members(one, 0, 2)
    every = over_members(one, 0, 0, n_fold=2)
    return lambda hp, train, val, keys: fold_replicas(every(hp, train, val, keys))


def advance(model: Model, cfg: LoopConfig, length: int, checked: bool = True) -> Callable:
    """``(hp, carry, train, start, stop, keys) -> (carry, losses)``: steps ``start..stop-1``.

    ``start`` and ``stop`` are traced (shared by every member), so one compiled
    program serves every segment of at most ``length`` steps: the rungs of
    successive halving, the intervals of PBT. ``losses`` has a fixed
    ``(seeds, settings, length)`` shape; entries past ``stop - start`` are NaN.
    A segment continues bit for bit where the previous one stopped.
    ``checked=False``: steps that check the loss only, and the state once at the
    segment's end (as :func:`run`); :func:`suspects` names the settings to run
    again, from the segment's start, checked.
    """

    def one(h, carry, train_part, s0, s1, k):
        stepper = make_step(model, cfg, h, train_part, k, checked=checked)
        buf = jnp.full((length,), jnp.nan, jnp.float32)

        def body(i, c):
            carry, buf = c
            carry, loss = stepper.step(carry, s0 + i)
            return carry, buf.at[i].set(loss.astype(buf.dtype))

        ((state, dead_at), _), buf = jax.lax.fori_loop(
            0, s1 - s0, body, ((carry, stepper.order0(s0)), buf))
        if not checked:
            dead_at = mark_suspect(state, dead_at)
        return (state, dead_at), buf

    return over_members(one, 1, 3)


def evaluate(model: Model) -> Callable:
    """``(hp, carry, val, train, keys) -> (val metrics, train objective)`` per member."""

    def one(h, carry, val_part, train_part, k):
        del k
        params, state = carry[0].params, carry[0].model_state
        return (metrics_fn(model, params, val_part, h, state),
                loss_fn(model, params, train_part, h, state=state)[0])

    return over_members(one, 1, 2)


def score(val, dead_at, mode: str, xp=jnp):
    """Per setting, the one selection rule: the mean over seeds of ``val``
    (``(seeds, settings)``), sign-flipped for ``mode="max"`` so lower is better;
    ``+inf`` for a setting with a diverged seed or a non-finite value (it never
    ranks first). ``xp`` is ``jax.numpy`` inside a program or ``numpy`` on the host.
    """
    v = xp.asarray(val, xp.float64 if xp is np else None)
    ok = xp.all(xp.asarray(dead_at) < 0, axis=0) & xp.all(xp.isfinite(v), axis=0)
    mean = xp.mean(xp.where(ok[None], v, 0.0), axis=0)
    return xp.where(ok, mean if mode == "min" else -mean, xp.inf)


def suspects(diverged_at) -> np.ndarray:
    """Host side, after an unchecked run: the settings (positions along axis 1 of
    ``diverged_at``, ``(replicas, settings)``) with a suspect replica, to run again
    with the checked program. A setting is run again whole (every seed and fold),
    so its replicas all come from one program."""
    d = np.asarray(diverged_at)
    if d.size == 0 or d.min() > SUSPECT:  # the usual case, cheaply (-2 is the least value)
        return np.zeros((0,), np.int64)
    return np.flatnonzero(np.any(d == SUSPECT, axis=0))


def replace_settings(out, idx, checked):
    """Host side: the outputs ``out`` (numpy leaves ``(replicas, settings, ...)``) with
    settings ``idx`` replaced by the first ``len(idx)`` settings of ``checked``."""
    k = len(idx)

    def one(a, b):
        a = np.array(a)  # a writable copy (device_get may hand back read-only views)
        a[:, idx] = np.asarray(b)[:, :k]
        return a

    return jax.tree_util.tree_map(one, out, checked)


def take(carry, idx):
    """Members ``idx`` of a carry (leaves ``(seeds, settings, ...)``): survivors, or
    the sources of PBT's exploit (a member copies its source's whole state: parameters,
    optimizer state, model state and health)."""
    return jax.tree_util.tree_map(lambda a: a[:, idx], carry)


def take_settings(hp: HParams, idx) -> HParams:
    """Settings ``idx`` of a batched setting."""
    return jax.tree_util.tree_map(lambda a: a[idx], hp)


def replace_tunables(hp: HParams, **columns) -> HParams:
    """``hp`` with some tunable leaves replaced (PBT explore, gradient tuning)."""
    names = type(hp).tunable_names()
    unknown = set(columns) - set(names)
    if unknown:
        raise ValueError(f"replace_tunables(): {sorted(unknown)} are not tunable fields of "
                         f"{type(hp).__name__}; tunables are {list(names)}")
    old, treedef = jax.tree_util.tree_flatten(hp)
    leaves = [columns.get(n, getattr(hp, n)) for n in names]
    # a padded group's per-member sizes follow the tunables: kept
    return jax.tree_util.tree_unflatten(treedef, leaves + old[len(names):])
