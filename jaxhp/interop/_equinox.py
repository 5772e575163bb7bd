"""Equinox modules as jaxhp models."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from jaxhp._model import Model, ModelError
from jaxhp.interop._common import build_model, call_params, check_args, require, state_error


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
    has_state: bool = False,
    hparams: type | None = None,
    directions=None,
    name: str | None = None,
    param_mask: Callable | None = None,
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
      has_state: the module has Equinox state (``eqx.nn.BatchNorm``,
        ``eqx.nn.StateIndex``): it is the model's non-trained state
        (``jaxhp.Model(has_state=True)``), the list of the ``StateIndex`` values. The module is
        then called as ``module(x, state, key=...) -> (out, state)``, vmapped
        with ``axis_name="batch"`` (give ``eqx.nn.BatchNorm(..., axis_name="batch")``).
        The factory returns the module itself (not ``eqx.nn.make_with_state``'s
        pair): the adapter collects its state. Without ``has_state`` a module
        with state is refused.
      param_mask: declares padding support (a field declared
        ``jaxhp.static(..., pad_to=...)``), as ``jaxhp.Model(param_mask=...)``:
        ``param_mask(hp, params) -> masks`` over this adapter's parameters
        (the module with its untrained arrays None). The module sizes its layers with
        ``jaxhp.padded_size(hp, name)`` and masks its padded units with
        ``jaxhp.unit_mask(hp, name)``.
        The library's initialisers and dropout draw over the allocated shape
        (and scale by its fan-in), so a padded member equals its unpadded run
        only with an initialisation and dropout whose real units draw what the
        unpadded module draws (see the README, "Widths and step counts in one
        program").
      hparams, directions, name: as in :class:`jaxhp.Model` (``name`` defaults
        to ``from_equinox(<factory>)``).

    Returns:
      A :class:`jaxhp.Model` whose parameters are the module's trained arrays
      (with ``has_state``: ``(params, state)``, ``state`` the list of the
      module's ``StateIndex`` values in tree order).

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
    check_args("from_equinox", factory, loss, optimizer, metrics, input, has_state,
               param_mask)

    is_index = lambda x: isinstance(x, eqx.nn.StateIndex)

    def make(hp, key):
        """``(module, indices, state)``: the factory's module with its initial state
        deleted, its ``StateIndex`` nodes (empty: stateless) and the ``eqx.nn.State``
        of their initial values (None unless ``has_state``)."""
        module = factory(hp, key)
        if not isinstance(module, eqx.Module):
            hint = (" (not eqx.nn.make_with_state's (module, state): the adapter collects "
                    "the state itself)" if isinstance(module, tuple) else "")
            raise ModelError(f"from_equinox: the factory must return an equinox.Module"
                             f"{hint}, got {type(module).__name__}")
        indices = [x for x in jax.tree_util.tree_leaves(module, is_leaf=is_index)
                   if is_index(x)]
        if indices and not has_state:
            raise state_error("from_equinox", "Equinox state (eqx.nn.StateIndex, e.g. in "
                              "eqx.nn.BatchNorm)")
        state = eqx.nn.State(module) if has_state else None
        return (eqx.nn.delete_init_state(module) if indices else module), indices, state

    def build(hp, key):
        """``make``'s, and per leaf of the module whether it is trained: an inexact
        array not computed from the tunables alone (found from the factory's jaxpr)."""
        hp_leaves, hp_def = jax.tree_util.tree_flatten(hp)

        def arrays(tunables, k):
            module = make(jax.tree_util.tree_unflatten(hp_def, tunables), k)[0]
            return [x for x in jax.tree_util.tree_leaves(module) if eqx.is_array(x)]

        closed = jax.make_jaxpr(arrays)([_abstract(x) for x in hp_leaves], _abstract(key))
        from_hp = iter(h and not k for h, k in _sources(closed, len(hp_leaves)))
        module, indices, state = make(hp, key)
        mask = [eqx.is_array(x) and not next(from_hp) and eqx.is_inexact_array(x)
                for x in jax.tree_util.tree_leaves(module)]
        return module, mask, indices, state

    def init(key, hp):
        module, mask, indices, state = build(hp, key)
        # The trained arrays in the module's layout, the others None; StateIndex nodes
        # (whose markers are new objects at every construction) are left out as well.
        stripped = jax.tree_util.tree_map(lambda x: None if is_index(x) else x, module,
                                          is_leaf=is_index)
        leaves, treedef = jax.tree_util.tree_flatten(stripped)
        params = jax.tree_util.tree_unflatten(
            treedef, [x if m else None for x, m in zip(leaves, mask)])
        # jaxhp's state: the list of the StateIndex values, in the module's order.
        return (params, [state.get(i) for i in indices]) if has_state else params

    def forward(params, state, x, hp, key):
        training = key is not None
        # At evaluation the key feeds only the (dead) initialisation of the rebuilt module.
        module, mask, indices, st = build(hp, key if training else jax.random.key(0))
        # Put the trained arrays back by position (the rebuilt module's own tree
        # structure is kept: its StateIndex markers are those of this construction).
        leaves, treedef = jax.tree_util.tree_flatten(module)
        trained = iter(jax.tree_util.tree_leaves(params))
        module = jax.tree_util.tree_unflatten(
            treedef, [next(trained) if m else x for x, m in zip(leaves, mask)])
        module = eqx.nn.inference_mode(module, value=not training)
        takes_key = "key" in call_params(type(module).__call__)
        keys = jax.random.split(key, x.shape[0]) if training and takes_key else None
        axes = 0 if keys is not None else None
        if not has_state:
            call = lambda xi, ki: module(xi, key=ki) if takes_key else module(xi)
            return jax.vmap(call, in_axes=(0, axes))(x, keys), None
        for i, value in zip(indices, state):  # the rebuilt module's State, our values
            st = st.set(i, value)
        call = lambda xi, s, ki: module(xi, s, key=ki) if takes_key else module(xi, s)
        out, new = jax.vmap(call, axis_name="batch", in_axes=(0, None, axes),
                            out_axes=(0, None))(x, st, keys)
        return out, ([new.get(i) for i in indices] if training else state)

    return build_model("from_equinox", init=init, forward=forward, loss=loss,
                       optimizer=optimizer, metrics=metrics, input=input, hparams=hparams,
                       directions=directions, name=name, factory=factory,
                       has_state=has_state, param_mask=param_mask)
