"""Equinox modules as jaxhp models."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxhp._model import Model, ModelError
from jaxhp.interop._common import build_model, call_params, check_args, require


def _sources(closed, n_hp: int) -> list[tuple[bool, bool]]:
    """For each output of ``closed`` (inputs: ``n_hp`` tunables, then a key):
    whether it is computed from the tunables, and whether from the key."""
    from jax.extend import core as jcore

    def walk(jaxpr, ins: list[frozenset]) -> list[frozenset]:
        env = dict(zip(jaxpr.invars, ins))
        get = lambda v: frozenset() if isinstance(v, jcore.Literal) else env.get(
            v, frozenset())
        for eqn in jaxpr.eqns:
            srcs = [get(v) for v in eqn.invars]
            inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            inner = getattr(inner, "jaxpr", inner)
            if (isinstance(inner, jcore.Jaxpr) and len(inner.invars) == len(srcs)
                    and len(inner.outvars) == len(eqn.outvars)):
                outs = walk(inner, srcs)  # a nested call (jit, custom_jvp): look inside
            else:
                outs = [frozenset().union(*srcs)] * len(eqn.outvars)
            env.update(zip(eqn.outvars, outs))
        return [get(v) for v in jaxpr.outvars]

    ins = [frozenset({"hp"})] * n_hp + [frozenset({"key"})]
    return [("hp" in s, "key" in s) for s in walk(closed.jaxpr, ins)]


def _abstract(x):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype)


def from_equinox(
    factory: Callable,
    *,
    loss: Callable,
    optimizer: Callable,
    metrics: Callable | None = None,
    input: str = "x",
    hparams: type | None = None,
    directions=None,
    name: str | None = None,
) -> Model:
    """A :class:`jaxhp.Model` from an Equinox module factory ``(hp, key) -> module``.

    The factory is called with the setting inside the traced program: static
    fields may shape the module (``width=hp.width``); tunable fields arrive as
    traced scalars and may be stored in the module (``self.rate = rate``,
    ``eqx.nn.Dropout(rate)``). In Equinox every array of a module is usually
    trained; here an array computed from the tunable fields and not from the
    key (a stored rate, ``1 - rate``) is a hyperparameter and is **never
    trained**: the parameters are the module's other arrays (its weights,
    drawn from the key, and constants such as zero biases), as the module
    with the hyperparameter arrays set to None (``eqx.partition``'s layout).
    The module is rebuilt from the setting in every traced call and the
    trained arrays are put back in (XLA drops the unused initialisation).

    As Equinox's layers do, the module works on **one example**: the adapter
    ``jax.vmap``s it over the batch. Training and evaluation: in training the
    module is in ``eqx.nn.inference_mode(module, False)`` and, if its
    ``__call__`` takes ``key``, gets one key per example; at evaluation it is
    in inference mode with ``key=None``. ``eqx.nn.Dropout(rate)`` accepts a
    traced rate, and so does :func:`jaxhp.nn.dropout` (identity for
    ``key=None``).

    Args:
      factory: ``factory(hp, key) -> equinox.Module``.
      loss: ``loss(out, batch, hp) -> scalar`` (or ``(scalar, aux)``) on the
        output for the whole batch, ``out = vmap(module)(batch[input])``.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``.
      metrics: optional ``metrics(out, batch, hp) -> dict`` of scalars, on the
        inference-mode output.
      input: the batch entry holding the module's input.
      hparams, directions, name: as in :class:`jaxhp.Model` (``name`` defaults
        to ``from_equinox(<factory>)``).

    Returns:
      A :class:`jaxhp.Model` whose parameters are the module's trained arrays.

    Raises:
      TypeError: an argument of the wrong kind. ImportError: without Equinox
        (``pip install "jaxhp[interop]"``).

    Example:
      >>> model = jaxhp.interop.from_equinox(
      ...     lambda hp, key: MLP(hp.width, hp.dropout, key),
      ...     loss=lambda out, batch, hp: optax.softmax_cross_entropy_with_integer_labels(
      ...         out, batch["y"]).mean(),
      ...     optimizer=lambda hp: optax.adam(hp.learning_rate), hparams=MyHP)
    """
    eqx = require("equinox", "from_equinox")
    check_args("from_equinox", factory, loss, optimizer, metrics, input)

    def make(hp, key):
        module = factory(hp, key)
        if not isinstance(module, eqx.Module):
            raise ModelError(f"from_equinox: the factory must return an equinox.Module, "
                             f"got {type(module).__name__}")
        return module

    def build(hp, key):
        """The module and, per leaf, whether it is trained: an inexact array not
        computed from the tunables alone (found from the factory's jaxpr)."""
        hp_leaves, hp_def = jax.tree_util.tree_flatten(hp)

        def arrays(tunables, k):
            module = make(jax.tree_util.tree_unflatten(hp_def, tunables), k)
            return [x for x in jax.tree_util.tree_leaves(module) if eqx.is_array(x)]

        closed = jax.make_jaxpr(arrays)([_abstract(x) for x in hp_leaves], _abstract(key))
        from_hp = iter(h and not k for h, k in _sources(closed, len(hp_leaves)))
        module = make(hp, key)
        mask = [eqx.is_array(x) and not next(from_hp) and eqx.is_inexact_array(x)
                for x in jax.tree_util.tree_leaves(module)]
        return module, mask

    def init(key, hp):
        module, mask = build(hp, key)
        leaves, treedef = jax.tree_util.tree_flatten(module)
        # The trained arrays in the module's layout, the other leaves None.
        return jax.tree_util.tree_unflatten(treedef,
                                            [x if m else None for x, m in zip(leaves, mask)])

    def forward(params, x, hp, key):
        training = key is not None
        # At evaluation the key feeds only the (dead) initialisation of the rebuilt module.
        module, mask = build(hp, key if training else jax.random.key(0))
        # Put the trained arrays back by position: the rebuilt module keeps its own tree
        # structure (a static field may hold an object made anew at each construction).
        leaves, treedef = jax.tree_util.tree_flatten(module)
        trained = iter(jax.tree_util.tree_leaves(params))
        module = jax.tree_util.tree_unflatten(
            treedef, [next(trained) if m else x for x, m in zip(leaves, mask)])
        module = eqx.nn.inference_mode(module, value=not training)
        takes_key = "key" in call_params(type(module).__call__)
        keys = jax.random.split(key, x.shape[0]) if training and takes_key else None
        call = lambda xi, ki: module(xi, key=ki) if takes_key else module(xi)
        return jax.vmap(call, in_axes=(0, 0 if keys is not None else None))(x, keys)

    return build_model("from_equinox", init=init, forward=forward, loss=loss,
                       optimizer=optimizer, metrics=metrics, input=input, hparams=hparams,
                       directions=directions, name=name, factory=factory)
