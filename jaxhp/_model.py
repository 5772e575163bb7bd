"""A model is a few pure functions the user writes; this module checks them.

``init(key, hp) -> params``, ``loss(params, batch, hp, key=None) -> (loss, aux)``,
``optimizer(hp) -> optax.GradientTransformation`` and optionally
``metrics(params, batch, hp) -> dict``. ``loss`` receives a PRNG ``key`` for
stochastic layers (dropout) during training and ``key=None`` at evaluation.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax


class Model(NamedTuple):
    """The pure functions that define a model.

    Attributes:
      init: ``init(key, hp) -> params`` (a pytree of float arrays).
      loss: ``loss(params, batch, hp, key=None) -> (scalar loss, aux)``; the
        training objective, penalties included. ``key`` is given during
        training (for dropout) and is ``None`` at evaluation.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``, built from
        the (possibly traced) hyperparameters.
      metrics: optional ``metrics(params, batch, hp) -> dict`` of scalars
        (lower or higher is better as you choose); ``loss`` is always added.
      hparams: optional default :class:`~jaxhp.HParams` subclass of the model.
      name: a short name used in results and fingerprints.
    """

    init: Callable
    loss: Callable
    optimizer: Callable
    metrics: Callable | None = None
    hparams: type | None = None
    name: str = "model"


class ModelError(TypeError):
    """A model function returned something of the wrong kind or shape."""


def _qualname(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def loss_fn(model: Model, params, batch, hp, key=None):
    """Calls ``model.loss``, passing ``key`` if it accepts one (``None``: evaluation)."""
    if _takes_key(model.loss):
        return model.loss(params, batch, hp, key=key)
    return model.loss(params, batch, hp)


@functools.lru_cache(maxsize=256)
def _takes_key(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "key" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def metrics_fn(model: Model, params, batch, hp) -> dict:
    """The model's metrics on a batch, with the objective added as ``loss``."""
    out = {"loss": loss_fn(model, params, batch, hp)[0]}
    if model.metrics is not None:
        out.update(model.metrics(params, batch, hp))
    return out


def _is_scalar(s) -> bool:
    return getattr(s, "shape", None) == ()


def check_model(model: Model, hp, batch) -> None:
    """Traces each model function abstractly (nothing compiles) and checks outputs.

    Raises:
      ModelError: naming the function and what it returned.
    """
    if not isinstance(model, Model):
        raise TypeError(f"expected a jaxhp.Model, got {type(model).__name__}")
    for field in ("init", "loss", "optimizer"):
        if not callable(getattr(model, field)):
            raise ModelError(f"model.{field} must be callable, got "
                             f"{getattr(model, field)!r}")
    key = jax.random.key(0)
    params = jax.eval_shape(model.init, key, hp)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ModelError(f"model.init ({_qualname(model.init)}) returned a "
                             f"non-float parameter {jax.tree_util.keystr(path)} of "
                             f"dtype {leaf.dtype}; parameters must be float arrays")
    out = jax.eval_shape(lambda p, b, h, k: loss_fn(model, p, b, h, k),
                         params, batch, hp, key)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ModelError(f"model.loss ({_qualname(model.loss)}) must return "
                         f"(loss, aux), got {type(out).__name__}")
    if not _is_scalar(out[0]):
        raise ModelError(f"model.loss ({_qualname(model.loss)}) must return a scalar "
                         f"loss, got shape {tuple(out[0].shape)}; reduce it "
                         "(e.g. with jnp.mean) over the batch")
    opt = model.optimizer(hp)
    if not isinstance(opt, optax.GradientTransformation):
        raise ModelError(f"model.optimizer ({_qualname(model.optimizer)}) must return "
                         f"an optax.GradientTransformation, got {type(opt).__name__}")
    if model.metrics is not None:
        m = jax.eval_shape(model.metrics, params, batch, hp)
        if not isinstance(m, dict):
            raise ModelError(f"model.metrics ({_qualname(model.metrics)}) must return "
                             f"a dict, got {type(m).__name__}")
        for k, v in m.items():
            if not _is_scalar(v):
                raise ModelError(f"model.metrics ({_qualname(model.metrics)}) returned "
                                 f"`{k}` of shape {tuple(v.shape)}; metrics are scalars")


def model_fingerprint(model: Model) -> dict[str, Any]:
    """Qualified names of the model's functions (for resumable sweeps)."""
    out: dict[str, Any] = {"name": model.name}
    for f in ("init", "loss", "optimizer", "metrics"):
        fn = getattr(model, f)
        out[f] = None if fn is None else f"{getattr(fn, '__module__', '?')}.{_qualname(fn)}"
    out["hparams"] = None if model.hparams is None else model.hparams.__qualname__
    return out


def abstract_batch(part) -> Any:
    """A ``ShapeDtypeStruct`` tree of a part (for abstract checks)."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype
                                       if not hasattr(a, "dtype") else a.dtype), part)
