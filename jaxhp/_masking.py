"""Padded groups: masks of the padded entries of parameters, and the refusal of models
that do not declare them.

In a padded group (a field declared ``jaxhp.static(..., pad_to=...)``) every member's
parameters are allocated at the group's allocation; the model's
``param_mask(hp, params)`` says which entries are real for the member. The training
loop (:mod:`jaxhp._train`) zeroes the others at initialisation and masks every
gradient and optimizer update with :func:`apply`, so padded entries stay exactly zero
(weight decay and Adam's moments included: they only ever see zeros there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxhp._hparams import HParams, is_padded, padded_fields
from jaxhp._model import Model, ModelError


def check_padding(model: Model, hp: HParams) -> None:
    """Refuses, before anything compiles, a padded group for a model that does not
    declare padding support (``Model(param_mask=...)``)."""
    if not is_padded(hp) or model.param_mask is not None:
        return
    # a padded `steps` is the training loop's (members stop after their own steps,
    # jaxhp._train.make_step): it allocates no array of the model's
    pads = {n: a for n, a in padded_fields(hp).items() if n != "steps"}
    if not pads:
        return
    listed = ", ".join(f"`{n}` (padded to {a})" for n, a in pads.items())
    raise ModelError(
        f"model {model.name!r} does not declare padding support, but {listed} of "
        f"{type(hp).__name__} is padded: settings of several values share one program "
        "whose arrays are allocated at the largest. Give the model "
        "`param_mask=lambda hp, params: masks` (jaxhp.Model(..., param_mask=...)) and "
        "mask its padded units with jaxhp.unit_mask(hp, name), or declare the field "
        "without pad_to (one program per value)")


def masks(model: Model, hp: HParams, params):
    """The model's masks of ``params`` for a member of a padded group, else ``None``."""
    if model.param_mask is None or not is_padded(hp):
        return None
    return model.param_mask(hp, params)


def apply(mask, tree):
    """``tree`` with the entries ``mask`` marks padded set to zero (``mask`` None: as is).

    ``tree`` has the structure of the parameters (gradients, updates, parameters);
    a ``None`` leaf of ``mask`` keeps the whole subtree."""
    if mask is None:
        return tree
    return jax.tree_util.tree_map(
        lambda m, t: t if m is None else jax.tree_util.tree_map(
            lambda x: jnp.where(m, x, jnp.zeros((), x.dtype)), t),
        mask, tree, is_leaf=lambda m: m is None)
