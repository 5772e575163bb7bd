"""Online hypergradient descent (Baydin et al. 2018) as an Optax transformation.

The learning rate adapts *during* training by gradient descent on itself.
With the update ``theta_t = theta_{t-1} - lr * d_{t-1}`` (``d`` the descent
direction: the gradient for SGD, Adam's normalised moment for Adam), the
derivative of the loss at step ``t`` with respect to the learning rate used at
step ``t - 1`` is ``-g_t . d_{t-1}``, so one step of gradient descent on the
learning rate is ``lr_t = lr_{t-1} + hyper_lr * g_t . d_{t-1}``: consecutive
directions that agree raise the rate, ones that disagree (overshooting) lower it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class HypergradientDescentState(NamedTuple):
    """State of :func:`hypergradient_descent`.

    Attributes:
      learning_rate: the current learning rate (a scalar array).
      prev_direction: the previous step's descent direction ``d_{t-1}``
        (zeros before the first step, so the first step keeps the rate).
      inner: the state of the ``base`` transformation.
    """

    learning_rate: jax.Array
    prev_direction: Any
    inner: Any


def hypergradient_descent(
    learning_rate: float | jax.Array,
    hyper_lr: float | jax.Array,
    *,
    base: optax.GradientTransformation | None = None,
    min_learning_rate: float | jax.Array = 0.0,
) -> optax.GradientTransformation:
    """SGD (or Adam, ...) whose learning rate follows its own hypergradient online.

    Each step: ``d_t = base(g_t)``; ``lr_t = max(lr_{t-1} + hyper_lr * <g_t,
    d_{t-1}>, min_learning_rate)``; the update is ``-lr_t * d_t``
    (Baydin et al. 2018, "Online learning rate adaptation with hypergradient
    descent"). With ``base=None`` it is SGD-HD; with
    ``base=optax.scale_by_adam()`` it is Adam-HD.

    Args:
      learning_rate: the initial learning rate (may be a traced hyperparameter).
      hyper_lr: the hypergradient step size ``beta`` (the learning rate of the
        learning rate). Its scale is that of ``1 / |g|^2`` for SGD.
      base: a transformation mapping gradients to the descent direction
        (default: the identity, i.e. SGD).
      min_learning_rate: the learning rate never goes below this (the
        original method has no bound; 0 keeps the steps descent steps).

    Returns:
      An ``optax.GradientTransformation`` with :class:`HypergradientDescentState`;
      the current rate is ``state.learning_rate``.

    Example:
      >>> opt = hypergradient_descent(1e-3, hyper_lr=1e-3)
      >>> state = opt.init(params)
      >>> updates, state = opt.update(grads, state, params)
      >>> state.learning_rate
    """
    base = optax.identity() if base is None else base

    def init_fn(params):
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(params)) \
            if jax.tree_util.tree_leaves(params) else jnp.float32
        return HypergradientDescentState(
            jnp.asarray(learning_rate, dtype),
            jax.tree_util.tree_map(jnp.zeros_like, params), base.init(params))

    def update_fn(updates, state, params=None):
        direction, inner = base.update(updates, state.inner, params)
        h = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(updates),
                                              jax.tree_util.tree_leaves(state.prev_direction)))
        lr = jnp.maximum(state.learning_rate + hyper_lr * h, min_learning_rate)
        lr = lr.astype(state.learning_rate.dtype)
        new = jax.tree_util.tree_map(lambda d: (-lr * d).astype(d.dtype), direction)
        return new, HypergradientDescentState(lr, direction, inner)

    return optax.GradientTransformation(init_fn, update_fn)
