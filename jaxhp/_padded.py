"""What padded folds cannot compute exactly, refused before anything compiles.

K-fold cross-validation with ``k`` not dividing the rows pads every fold to the
largest (:meth:`jaxhp.Folds.stacked`); :func:`jaxhp._train.rowwise_mean` then
averages full-batch losses and metrics over each fold's real rows, one row at a
time. :func:`check_padded_folds` refuses the models for which that is not exact.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp._data import Padded
from jaxhp._hparams import HParams
from jaxhp._model import Model, init_fn, loss_fn, metrics_fn
from jaxhp._train import INIT, LoopConfig, rowwise_mean


def check_padded_folds(model: Model, hp: HParams, cfg: LoopConfig, folds, parts,
                       key: jax.Array) -> None:
    """Refuses, before anything compiles, what padded folds (``jaxhp.kfold`` with ``k``
    not dividing the rows) cannot compute exactly.

    Padded rows are never sampled; full-batch losses, validation metrics and the
    final training objective of a padded fold are means over its real rows of each
    row alone (:func:`rowwise_mean`). That equals the unpadded computation only for
    a stateless model whose loss and metrics are means over rows: checked here on
    a few rows of fold 0 at perturbed initial parameters. A full-batch loss that
    reads its key (dropout) is refused, as is a ``batch_size`` at which some folds
    train full-batch and others on minibatches.
    """
    train, val = parts
    if not isinstance(train, Padded) and not isinstance(val, Padded):
        return
    tr, va = folds.sizes
    why = (f"the k={folds.k} folds of {len(folds.fold_of)} rows differ in size (training "
           f"{tr.min()}-{tr.max()} rows, validation {va.min()}-{va.max()}), so they are "
           "padded to the largest and masked")
    fix = f"; or pick k dividing {len(folds.fold_of)} (equal folds need no padding)"
    if model.has_state:
        raise ValueError(f"kfold: {why}, and model {model.name!r} has state "
                         "(has_state=True, e.g. BatchNorm statistics), which a masked mean "
                         f"cannot keep exact: its batch statistics would see padded rows{fix}")
    bs = cfg.batch_size
    full = bs is None or bs >= tr.max()
    if not full and bs >= tr.min():
        raise ValueError(f"`batch_size`={bs}: {why}; the smallest folds would train "
                         f"full-batch and the others on minibatches: use batch_size < "
                         f"{tr.min()}, or >= {tr.max()} (None: full batch){fix}")
    one = folds.split(0)
    m = int(min(8, va.min(), tr.min()))
    if m < 2:
        return  # one-row folds: every mean over rows is the row's value
    head = lambda part: jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a)[:m]), part)
    params, _ = init_fn(model, jax.random.fold_in(key, INIT), hp)
    noise = jax.random.key(12345)
    params = jax.tree_util.tree_map(
        lambda p: p + 0.1 * jax.random.normal(noise, jnp.shape(p), p.dtype)
        if jnp.issubdtype(jnp.asarray(p).dtype, jnp.floating) else p, params)
    pad = lambda part: Padded(part, jnp.asarray(m, jnp.int32))
    if full and _uses_key(model, params, head(one.train), hp, key):
        raise ValueError(
            f"kfold: {why}; the training loss of model {model.name!r} draws from its key "
            "(dropout?), and full-batch training of a padded fold evaluates each row alone, "
            "which would not draw the batch's random mask: use minibatches (batch_size < "
            f"{tr.min()}){fix}")
    checks = [("training loss", lambda b: {"loss": loss_fn(model, params, b, hp)[0]},
               head(one.train)),
              ("validation metric",
               lambda b: metrics_fn(model, params, b, hp), head(one.val))]
    for what, fn, batch in checks:
        whole, rows = fn(batch), rowwise_mean(fn, pad(batch))
        for name in whole:
            a, b = float(whole[name]), float(rows[name])
            if not np.isclose(a, b, rtol=1e-4, atol=1e-6):
                raise ValueError(
                    f"kfold: {why}; the {what} {name!r} is not a mean over rows: on {m} "
                    f"rows it is {a:.6g}, the mean of its values on each row alone is "
                    f"{b:.6g}, so it cannot be averaged over a fold's real rows only. "
                    f"Use a loss/metric that is a mean of per-example terms{fix}")


def _uses_key(model: Model, params, batch, hp: HParams, key: jax.Array) -> bool:
    """Whether the training loss reads its PRNG key (structurally: the key is an input
    of some operation of its jaxpr, whatever the tunable values, e.g. a dropout rate)."""
    jaxpr = jax.make_jaxpr(lambda k: loss_fn(model, params, batch, hp, k)[0])(key).jaxpr
    var = jaxpr.invars[0]
    return any(v is var for eqn in jaxpr.eqns for v in eqn.invars) or \
        any(v is var for v in jaxpr.outvars)
