"""Flax Linen modules as jaxhp models."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxhp._model import Model, ModelError
from jaxhp.interop._common import build_model, call_params, check_args, require, state_error

# The training-mode flags of Linen's conventions: name -> its value in training.
_MODE_FLAGS = {"train": True, "training": True, "deterministic": False}


def _example_input(example):
    """``example`` as an array: an array is used as is, a shape gives zeros."""
    if isinstance(example, (tuple, list)) and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in example):
        return jnp.zeros(tuple(int(d) for d in example), jnp.result_type(float))
    if hasattr(example, "shape") and hasattr(example, "dtype"):
        return example
    raise TypeError("jaxhp.interop.from_linen: `example` is an input batch for "
                    "initialisation (an array such as split.train['x'][:1]) or its shape "
                    f"(a tuple of ints), got {type(example).__name__}")


def _mode_kwargs(module, training: bool) -> dict:
    """``train=``/``training=``/``deterministic=`` as the module's ``__call__`` declares."""
    names = call_params(type(module).__call__)
    return {k: (v if training else not v) for k, v in _MODE_FLAGS.items() if k in names}


def from_linen(
    factory: Callable,
    example,
    *,
    loss: Callable,
    optimizer: Callable,
    metrics: Callable | None = None,
    input: str = "x",
    rngs: Sequence[str] = ("dropout",),
    has_state: bool = False,
    hparams: type | None = None,
    directions=None,
    name: str | None = None,
    param_mask: Callable | None = None,
) -> Model:
    """A :class:`jaxhp.Model` from a Flax Linen module factory ``hp -> module``.

    The factory is called with the setting inside the traced program: static
    fields may shape the module (``width=hp.width``); tunable fields arrive as
    traced scalars and may be stored in module attributes (``rate=hp.dropout``).
    They are never trained: the parameters are the module's ``"params"``
    collection only. Use :func:`jaxhp.nn.dropout` for a tunable dropout rate
    (Linen's ``nn.Dropout`` branches on its rate in Python, which a traced
    rate refuses).

    Training and evaluation: if the module's ``__call__`` declares ``train``
    or ``training`` (True in training) or ``deterministic`` (False in
    training), the adapter passes it. In training the module gets one PRNG
    stream per name in ``rngs`` (``self.make_rng("dropout")``), derived from
    the run's key; at evaluation none.

    Args:
      factory: ``factory(hp) -> flax.linen.Module``.
      example: an input batch for ``module.init`` (e.g. ``split.train["x"][:1]``)
        or its shape (a tuple: zeros of JAX's default float dtype).
      loss: ``loss(out, batch, hp) -> scalar`` (or ``(scalar, aux)``) on the
        module's output ``out = module(batch[input])``.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``.
      metrics: optional ``metrics(out, batch, hp) -> dict`` of scalars, on the
        evaluation-mode output.
      input: the batch entry holding the module's input.
      rngs: the names of the PRNG streams the module draws in training.
      has_state: the module has variable collections besides ``"params"``
        (BatchNorm's ``"batch_stats"``): they are the model's non-trained
        state (``jaxhp.Model(has_state=True)``), mutable in training (the new
        statistics are carried to the next step) and read at evaluation.
        Without it such a module is refused, naming the collections.
      param_mask: declares padding support (a field declared
        ``jaxhp.static(..., pad_to=...)``), as ``jaxhp.Model(param_mask=...)``:
        ``param_mask(hp, params) -> masks`` over this adapter's parameters
        (the ``"params"`` collection). The module sizes its layers with ``jaxhp.padded_size(hp,
        name)`` and masks its padded units with ``jaxhp.unit_mask(hp, name)``.
        The library's initialisers and dropout draw over the allocated shape
        (and scale by its fan-in), so a padded member equals its unpadded run
        only with an initialisation and dropout whose real units draw what the
        unpadded module draws (see the README, "Widths and step counts in one
        program").
      hparams, directions, name: as in :class:`jaxhp.Model` (``name`` defaults
        to ``from_linen(<factory>)``).

    Returns:
      A :class:`jaxhp.Model` whose parameters are the ``"params"`` collection
      (with ``has_state``: ``(params, {collection: variables})``).

    Raises:
      TypeError: an argument of the wrong kind. ImportError: without Flax
        (``pip install "jaxhp[interop]"``).

    Example:
      >>> model = jaxhp.interop.from_linen(
      ...     lambda hp: CNN(width=hp.width, rate=hp.dropout), split.train["x"][:1],
      ...     loss=lambda out, batch, hp: optax.softmax_cross_entropy_with_integer_labels(
      ...         out, batch["y"]).mean(),
      ...     optimizer=lambda hp: optax.adam(hp.learning_rate), hparams=MyHP)
    """
    nn = require("flax.linen", "from_linen")
    check_args("from_linen", factory, loss, optimizer, metrics, input, has_state,
               param_mask)
    x0 = _example_input(example)
    if isinstance(rngs, str) or not all(isinstance(r, str) for r in rngs):
        raise TypeError("jaxhp.interop.from_linen: `rngs` is a sequence of stream names "
                        f"such as ('dropout',), got {rngs!r}")
    streams = tuple(rngs)

    def make(hp):
        module = factory(hp)
        if not isinstance(module, nn.Module):
            raise ModelError(f"from_linen: the factory must return a flax.linen.Module, "
                             f"got {type(module).__name__}")
        return module

    def init(key, hp):
        module = make(hp)
        variables = dict(module.init({"params": key}, x0, **_mode_kwargs(module, False)))
        params = variables.pop("params", {})
        if has_state:
            return params, variables
        if variables:
            raise state_error("from_linen", f"variable collections {sorted(variables)} "
                              "besides 'params'")
        return params

    def forward(params, state, x, hp, key):
        module = make(hp)
        training = key is not None
        keys = ({s: jax.random.fold_in(key, i) for i, s in enumerate(streams)}
                if training else {})
        variables = {"params": params, **(state or {})}
        kwargs = _mode_kwargs(module, training)
        if training and state:
            out, new = module.apply(variables, x, rngs=keys, mutable=list(state), **kwargs)
            return out, {k: new[k] for k in state}
        return module.apply(variables, x, rngs=keys, **kwargs), state

    return build_model("from_linen", init=init, forward=forward, loss=loss,
                       optimizer=optimizer, metrics=metrics, input=input, hparams=hparams,
                       directions=directions, name=name, factory=factory,
                       has_state=has_state, param_mask=param_mask)
