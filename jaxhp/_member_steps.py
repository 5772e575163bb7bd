"""Step counts per member: a group that pads ``steps`` (``static(..., pad_to=...)``).

Such a group's program runs its allocation (:func:`jaxhp.padded_size`); each member's own
count is a per-member int32 leaf (:func:`own_steps`), after which the training step
(:func:`jaxhp._train.make_step`) freezes it as it freezes a diverged member. Here: that
count, the loss windows of a member that stops early (:func:`own_windows`), and the rules
the searches check before anything compiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp._hparams import HParams, is_padded, padded_size


def own_steps(hp: HParams) -> jax.Array | None:
    """A member's own step count when its group pads ``steps`` (a per-member int32
    leaf of the batched setting, traced inside the program), else ``None``: the loop
    then runs exactly ``LoopConfig.steps`` steps, with no mask at all.

    In a padded group the loop runs the group's allocation (``LoopConfig.steps``)
    and a member stops updating after its own last step
    (:func:`jaxhp._train.make_step`)."""
    v = getattr(hp, "steps", None)
    if not is_padded(hp) or v is None or isinstance(v, (int, np.integer)):
        return None
    return jnp.asarray(v, jnp.int32)


def check_member_steps(hp: HParams, steps, rows, eval_every: int | None) -> None:
    """The loop's rule on each member's own step count in a group that pads ``steps``
    (``steps``: the group's column, ``rows``: those rows in the space): ``eval_every``
    must not exceed any member's steps, as :func:`jaxhp._train.resolve_loop` requires
    of one run.
    A member's evaluations after its own last step are NaN, so ``eval_every`` need
    not divide its steps (its curve holds the evaluations up to them, as its solo run's)."""
    if own_steps(hp) is None or not eval_every:
        return
    steps = np.asarray(steps)
    bad = np.flatnonzero(steps < eval_every)
    if bad.size:
        i, alloc = int(bad[0]), padded_size(hp, "steps")
        raise ValueError(f"`eval_every`={eval_every} exceeds `steps`={int(steps[i])} of "
                         f"setting {int(rows[i])} (steps padded to {alloc}: a member is "
                         "evaluated after every eval_every of its own steps, as "
                         f"jaxhp.train evaluates one run); use eval_every <= "
                         f"{int(steps.min())}")


def refuse_padded_steps(hp: HParams, caller: str, statics: dict) -> None:
    """Refuses, before anything compiles, a static group that pads ``steps`` in a search
    that sets its members' steps itself (successive halving's rungs, PBT's ready points):
    there the step count is the search's budget, the same for every member it trains."""
    if own_steps(hp) is None:
        return
    raise ValueError(
        f"{caller}(): `steps` is padded (declared static(..., pad_to=...)), and the static "
        f"group {statics} would run members of different step counts in one program; "
        f"{caller} gives its members their step budgets itself, so it needs `steps` "
        "unpadded: declare it without pad_to (or with pad_to='auto', which leaves a "
        "group of equal step counts unpadded, e.g. after max_steps=/steps=)")


def own_windows(losses: jax.Array, every: int, stop) -> jax.Array:
    """Per-step ``losses`` averaged in windows of ``every`` steps, for a member whose own
    step count is ``stop``: a window straddling ``stop`` averages its steps before it (as
    the solo run's last, partial window does), a window wholly after ``stop`` is NaN, and
    a NaN of divergence before ``stop`` stays NaN."""
    n = losses.shape[0]
    pad = (-n) % every
    real = jnp.arange(n + pad) < stop
    vals = jnp.concatenate([losses, jnp.zeros((pad,), losses.dtype)])
    sums = jnp.sum(jnp.where(real, vals, 0).reshape(-1, every), axis=1)
    counts = jnp.sum(real.reshape(-1, every), axis=1)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1).astype(losses.dtype), jnp.nan)
