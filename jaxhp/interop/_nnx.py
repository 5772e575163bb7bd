"""Flax NNX modules as jaxhp models."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxhp._model import Model, ModelError
from jaxhp.interop._common import build_model, check_args, require, state_error


def from_nnx(
    factory: Callable,
    *,
    loss: Callable,
    optimizer: Callable,
    metrics: Callable | None = None,
    input: str = "x",
    has_state: bool = False,
    hparams: type | None = None,
    directions=None,
    name: str | None = None,
    param_mask: Callable | None = None,
) -> Model:
    """A :class:`jaxhp.Model` from a Flax NNX module factory ``(hp, rngs) -> module``.

    The factory is called with the setting inside the traced program: static
    fields may shape the module (``width=hp.width``); tunable fields arrive as
    traced scalars and may be kept as plain attributes (``self.rate = rate``).
    They are never trained: the parameters are the module's ``nnx.Param``
    variables only, as a plain nested dict (``nnx.State.to_pure_dict``). The
    module is rebuilt from the setting in every traced call and its
    parameters are replaced by the trained ones (XLA drops the unused
    initialisation), so the traced values never pass through NNX's static
    graph structure.

    Training and evaluation: the adapter calls ``module.train()`` in training
    and ``module.eval()`` at evaluation (they set ``deterministic`` and
    ``use_running_average`` wherever a submodule has them). In training the
    factory's ``rngs`` is ``nnx.Rngs(key)`` with the run's step key, so
    ``rngs.dropout()`` draws fresh masks each step. Use :func:`jaxhp.nn.dropout`
    for a tunable dropout rate (``nnx.Dropout`` branches on its rate in
    Python, which a traced rate refuses)::

        class MLP(nnx.Module):
            def __init__(self, width, rate, rngs):
                self.hidden = nnx.Linear(64, width, rngs=rngs)
                self.out = nnx.Linear(width, 10, rngs=rngs)
                self.rate, self.rngs, self.deterministic = rate, rngs, False

            def __call__(self, x):
                key = None if self.deterministic else self.rngs.dropout()
                return self.out(jaxhp.nn.dropout(nnx.relu(self.hidden(x)), self.rate, key))

    Args:
      factory: ``factory(hp, rngs) -> flax.nnx.Module``.
      loss: ``loss(out, batch, hp) -> scalar`` (or ``(scalar, aux)``) on the
        module's output ``out = module(batch[input])``.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``.
      metrics: optional ``metrics(out, batch, hp) -> dict`` of scalars, on the
        evaluation-mode output.
      input: the batch entry holding the module's input.
      has_state: the module has ``nnx.BatchStat`` variables (BatchNorm's
        running statistics): they are the model's non-trained state
        (``jaxhp.Model(has_state=True)``), updated in training and read at
        evaluation. Without it such a module is refused.
      param_mask: declares padding support (a field declared
        ``jaxhp.static(..., pad_to=...)``), as ``jaxhp.Model(param_mask=...)``:
        ``param_mask(hp, params) -> masks`` over this adapter's parameters
        (the nested dict of ``nnx.Param`` values). The module sizes its layers with
        ``jaxhp.padded_size(hp, name)`` and masks its padded units with
        ``jaxhp.unit_mask(hp, name)``.
        The library's initialisers and dropout draw over the allocated shape
        (and scale by its fan-in), so a padded member equals its unpadded run
        only with an initialisation and dropout whose real units draw what the
        unpadded module draws (see the README, "Widths and step counts in one
        program").
      hparams, directions, name: as in :class:`jaxhp.Model` (``name`` defaults
        to ``from_nnx(<factory>)``).

    Returns:
      A :class:`jaxhp.Model` whose parameters are the ``nnx.Param`` values
      (with ``has_state``: ``(params, batch_stats)``, both nested dicts).

    Raises:
      TypeError: an argument of the wrong kind. ImportError: without Flax
        (``pip install "jaxhp[interop]"``).

    Example:
      >>> model = jaxhp.interop.from_nnx(
      ...     lambda hp, rngs: MLP(hp.width, hp.dropout, rngs),
      ...     loss=lambda out, batch, hp: optax.softmax_cross_entropy_with_integer_labels(
      ...         out, batch["y"]).mean(),
      ...     optimizer=lambda hp: optax.adam(hp.learning_rate), hparams=MyHP)
    """
    nnx = require("flax.nnx", "from_nnx")
    check_args("from_nnx", factory, loss, optimizer, metrics, input, has_state,
               param_mask)

    def make(hp, key):
        module = factory(hp, nnx.Rngs(key))
        if not isinstance(module, nnx.Module):
            raise ModelError(f"from_nnx: the factory must return a flax.nnx.Module, "
                             f"got {type(module).__name__}")
        return module

    def put(module, kind, values):
        state = nnx.state(module, kind)
        nnx.replace_by_pure_dict(state, values)
        nnx.update(module, state)

    def init(key, hp):
        module = make(hp, key)
        params = nnx.state(module, nnx.Param).to_pure_dict()
        stats = nnx.state(module, nnx.BatchStat).to_pure_dict()
        if has_state:
            return params, stats
        if jax.tree_util.tree_leaves(stats):
            raise state_error("from_nnx", "nnx.BatchStat variables")
        return params

    def forward(params, state, x, hp, key):
        training = key is not None
        # Evaluation draws no randomness; the key only feeds the dead initialisation.
        module = make(hp, key if training else jax.random.key(0))
        put(module, nnx.Param, params)
        if state is not None:
            put(module, nnx.BatchStat, state)
        if training:
            module.train()
        else:
            module.eval()
        out = module(x)
        if state is None or not training:
            return out, state
        return out, nnx.state(module, nnx.BatchStat).to_pure_dict()

    return build_model("from_nnx", init=init, forward=forward, loss=loss,
                       optimizer=optimizer, metrics=metrics, input=input, hparams=hparams,
                       directions=directions, name=name, factory=factory,
                       has_state=has_state, param_mask=param_mask)
