"""A model is a few pure functions the user writes; this module checks them.

``init(key, hp) -> params``, ``loss(params, batch, hp, key=None) -> (loss, aux)``,
``optimizer(hp) -> optax.GradientTransformation`` and optionally
``metrics(params, batch, hp) -> dict``. ``loss`` receives a PRNG ``key`` for
stochastic layers (dropout) during training and ``key=None`` at evaluation.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxhp._hparams import did_you_mean

DIRECTIONS = ("min", "max")


def _freeze_directions(directions) -> tuple[tuple[str, str], ...]:
    """Validates ``{metric: "min"|"max"}`` and freezes it into sorted pairs (hashable)."""
    if directions is None:
        return ()
    items = directions.items() if isinstance(directions, Mapping) else directions
    try:
        pairs = [(k, v) for k, v in items]
    except (TypeError, ValueError) as e:
        raise TypeError(f"Model(directions=...): expected a dict {{metric: 'min' | 'max'}}, "
                        f"got {directions!r}") from e
    for k, v in pairs:
        if not isinstance(k, str):
            raise TypeError(f"Model(directions=...): metric names are strings, got {k!r}")
        if v not in DIRECTIONS:
            raise ValueError(f"Model(directions=...): `{k}`={v!r}: a direction must be "
                             "'min' (lower is better) or 'max' (higher is better)")
        if k == "loss" and v != "min":
            raise ValueError("Model(directions=...): `loss` is the training objective and "
                             "is always minimised; declare a separate metric to maximise")
    return tuple(sorted(dict(pairs).items()))


class _ModelFields(NamedTuple):
    init: Callable
    loss: Callable
    optimizer: Callable
    metrics: Callable | None = None
    hparams: type | None = None
    name: str = "model"
    directions: tuple[tuple[str, str], ...] = ()
    check_data: Callable | None = None


class Model(_ModelFields):
    """The pure functions that define a model.

    Attributes:
      init: ``init(key, hp) -> params`` (a pytree of float arrays).
      loss: ``loss(params, batch, hp, key=None) -> (scalar loss, aux)``; the
        training objective, penalties included. ``key`` is given during
        training (for dropout) and is ``None`` at evaluation.
      optimizer: ``optimizer(hp) -> optax.GradientTransformation``, built from
        the (possibly traced) hyperparameters.
      metrics: optional ``metrics(params, batch, hp) -> dict`` of scalars;
        ``loss`` is always added.
      hparams: optional default :class:`~jaxhp.HParams` subclass of the model.
      name: a short name used in results and fingerprints.
      directions: whether each metric is better low or high, declared:
        ``{"accuracy": "max", "ce": "min"}`` (a dict is accepted and stored as
        sorted pairs, so the model stays hashable). ``loss`` is always
        ``"min"``. Selecting on an undeclared metric raises an error rather
        than guessing from its name.
      check_data: optional ``check_data(part, name) -> None``, called with each
        part of the data (concrete arrays; ``name`` is ``"train"``, ``"val"``
        or ``"test"``) before anything compiles; raises
        :class:`~jaxhp.DataError` naming the array when the data do not fit
        the model (a label out of range, ``y`` of the wrong shape).

    Example:
      >>> model = jaxhp.Model(init, loss, optimizer, metrics, hparams=MyHP,
      ...                     directions={"accuracy": "max", "ce": "min"})
    """

    __slots__ = ()

    def __new__(cls, init, loss, optimizer, metrics=None, hparams=None, name="model",
                directions=None, check_data=None):
        return super().__new__(cls, init, loss, optimizer, metrics, hparams, name,
                               _freeze_directions(directions), check_data)

    def _replace(self, **changes) -> Model:
        return Model(**{**self._asdict(), **changes})

    def direction(self, metric: str) -> str | None:
        """``"min"`` or ``"max"`` as declared for ``metric`` (``loss``: ``"min"``), or None."""
        if metric == "loss":
            return "min"
        return dict(self.directions).get(metric)


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


_TRACER_ERRORS = (jax.errors.ConcretizationTypeError,
                  jax.errors.TracerIntegerConversionError,
                  jax.errors.TracerArrayConversionError,
                  jax.errors.NonConcreteBooleanIndexError)


def _with_concrete(hp_traced, hp, name: str):
    """``hp_traced`` with the tunable field ``name`` replaced by its concrete value."""
    names = type(hp).tunable_names()
    leaves, treedef = jax.tree_util.tree_flatten(hp_traced)
    leaves[names.index(name)] = np.asarray(getattr(hp, name))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _tracer_culprits(call, hp, args) -> list[str]:
    """The tunable fields whose concrete value makes ``call(hp, *args)`` trace."""
    found = []
    for name in type(hp).tunable_names():
        try:
            jax.eval_shape(lambda h, *a, n=name: call(_with_concrete(h, hp, n), *a), hp, *args)
        except _TRACER_ERRORS:
            continue
        except Exception:  # noqa: BLE001 - another error: this field got past the branch
            pass
        found.append(name)
    return found


def _abstract(what: str, fn, call, hp, *args):
    """``jax.eval_shape(call, hp, *args)``; a tracer-conversion error becomes a
    :class:`ModelError` naming the tunable field used in Python control flow."""
    try:
        return jax.eval_shape(call, hp, *args)
    except _TRACER_ERRORS as e:
        fields = _tracer_culprits(call, hp, args)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if fields:
            names = ", ".join(f"`{n}`" for n in fields)
            subject = (f"uses the tunable field{'s' * (len(fields) > 1)} {names} "
                       "in Python control flow")
            fix = (f"Either declare {names} static (jaxhp.static(...): a compile-time "
                   "constant, one compiled program per value), or keep it tunable and "
                   "write the branch with jnp.where(...) or jax.lax.cond(...)")
        else:
            subject = "uses a traced value (a tunable field, the data or the key) in " \
                      "Python control flow"
            fix = ("Make the value static (a static hyperparameter field), or write the "
                   "branch with jnp.where(...) or jax.lax.cond(...)")
        raise ModelError(
            f"{what} ({_qualname(fn)}) {subject} (an `if`, `bool()`, `int()`, `float()`, "
            "a shape or an index computed from it). Tunable fields are traced arrays under "
            "jit and vmap, so their values are unknown when the program is built. "
            f"{fix}. (JAX said: {type(e).__name__}: {first})") from e


def check_model(model: Model, hp, batch) -> None:
    """Traces each model function abstractly (nothing compiles) and checks outputs.

    Raises:
      ModelError: naming the function and what it returned, or the tunable
        field it uses in Python control flow.
    """
    if not isinstance(model, Model):
        raise TypeError(f"expected a jaxhp.Model, got {type(model).__name__}")
    for field in ("init", "loss", "optimizer"):
        if not callable(getattr(model, field)):
            raise ModelError(f"model.{field} must be callable, got "
                             f"{getattr(model, field)!r}")
    key = jax.random.key(0)
    params = _abstract("model.init", model.init, lambda h, k: model.init(k, h), hp, key)
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ModelError(f"model.init ({_qualname(model.init)}) returned a "
                             f"non-float parameter {jax.tree_util.keystr(path)} of "
                             f"dtype {leaf.dtype}; parameters must be float arrays")
    out = _abstract("model.loss", model.loss,
                    lambda h, p, b, k: loss_fn(model, p, b, h, k), hp, params, batch, key)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ModelError(f"model.loss ({_qualname(model.loss)}) must return "
                         f"(loss, aux), got {type(out).__name__}")
    if not _is_scalar(out[0]):
        raise ModelError(f"model.loss ({_qualname(model.loss)}) must return a scalar "
                         f"loss, got shape {tuple(out[0].shape)}; reduce it "
                         "(e.g. with jnp.mean) over the batch")
    _abstract("model.loss", model.loss,
              lambda h, p, b: loss_fn(model, p, b, h, None), hp, params, batch)
    opt = model.optimizer(hp)
    if not isinstance(opt, optax.GradientTransformation):
        raise ModelError(f"model.optimizer ({_qualname(model.optimizer)}) must return "
                         f"an optax.GradientTransformation, got {type(opt).__name__}")

    def opt_step(h, p):
        o = model.optimizer(h)
        return o.update(p, o.init(p), p)

    _abstract("model.optimizer", model.optimizer, opt_step, hp, params)
    if model.metrics is not None:
        m = _abstract("model.metrics", model.metrics,
                      lambda h, p, b: model.metrics(p, b, h), hp, params, batch)
        if not isinstance(m, dict):
            raise ModelError(f"model.metrics ({_qualname(model.metrics)}) must return "
                             f"a dict, got {type(m).__name__}")
        for k, v in m.items():
            if not _is_scalar(v):
                raise ModelError(f"model.metrics ({_qualname(model.metrics)}) returned "
                                 f"`{k}` of shape {tuple(v.shape)}; metrics are scalars")
    names = ["loss"] + (sorted(m) if model.metrics is not None else [])
    for k, _ in model.directions:
        if k not in names:
            raise ModelError(f"Model(directions=...) declares `{k}`, which model.metrics "
                             f"does not return{did_you_mean(k, names)}; metrics are {names}")


# A function's repr (in a callback's parameters) holds its address, which differs
# between processes; JAX masks it today, this makes sure of it.
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")


def _hash_value(h, value) -> None:
    """Adds an array's dtype, shape and bytes to ``h`` (PRNG keys: their key data)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    a = np.ascontiguousarray(np.asarray(value))
    h.update(f"|{a.dtype}|{a.shape}|".encode())
    h.update(a.tobytes())


def _hash_consts(h, jaxpr) -> None:
    """Adds the values of every constant and literal of a jaxpr, nested ones included."""
    from jax.extend import core as jcore

    if isinstance(jaxpr, jcore.ClosedJaxpr):
        for c in jaxpr.consts:
            _hash_value(h, c)
        jaxpr = jaxpr.jaxpr
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            if isinstance(v, jcore.Literal):
                _hash_value(h, v.val)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                if isinstance(sub, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                    _hash_consts(h, sub)


def jaxpr_text(closed) -> str:
    """A closed jaxpr as text, stable across processes (no memory addresses)."""
    return _ADDRESS.sub("0x?", str(closed))


def _hash_jaxpr(h, closed) -> None:
    h.update(jaxpr_text(closed).encode())
    _hash_consts(h, closed)
    h.update(b"\n--\n")


FINGERPRINTED = ("init", "loss", "metrics", "optimizer")


def model_fingerprint(model: Model, hps: Sequence, batch: Any) -> dict[str, Any]:
    """What the model's functions compute (for resumable sweeps).

    Each function is traced with ``jax.make_jaxpr`` on abstract inputs: every
    setting of ``hps`` (one per static group: statics shape the program), an
    abstract ``batch`` (``split.train`` or its shapes) and a PRNG key. Its
    fingerprint is the SHA-256 of the jaxprs' text and of the bytes of every
    constant they capture (a closed-over array is a constant): an edit of a
    function body, of a function it calls or of a captured array changes it;
    renaming a function does not.

    Traced: ``init(key, hp)``; ``loss`` with a key, with ``key=None`` and its
    gradient in the parameters (so custom differentiation rules count);
    ``metrics``; ``optimizer(hp).init`` and ``.update``.

    Returns:
      ``{"model": {"name", "init", "loss", "optimizer", "metrics": qualified
      names, "hparams"}, "model.init", "model.loss", "model.metrics",
      "model.optimizer": SHA-256 hex digests}`` (``model.metrics`` is None
      without metrics).
    """
    names: dict[str, Any] = {"name": model.name}
    for f in ("init", "loss", "optimizer", "metrics"):
        fn = getattr(model, f)
        names[f] = None if fn is None else f"{getattr(fn, '__module__', '?')}.{_qualname(fn)}"
    names["hparams"] = None if model.hparams is None else model.hparams.__qualname__
    hashes = {f: hashlib.sha256() for f in FINGERPRINTED}
    batch = abstract_batch(batch)
    key = jax.random.key(0)
    make = jax.make_jaxpr
    train_loss = lambda p, b, h, k: loss_fn(model, p, b, h, k)
    eval_loss = lambda p, b, h: loss_fn(model, p, b, h)
    loss_grad = jax.grad(lambda p, b, h, k: loss_fn(model, p, b, h, k)[0])
    opt_init = lambda h, p: model.optimizer(h).init(p)
    opt_update = lambda h, g, s, p: model.optimizer(h).update(g, s, p)
    for hp in hps:
        _hash_jaxpr(hashes["init"], make(model.init)(key, hp))
        params = jax.eval_shape(model.init, key, hp)
        _hash_jaxpr(hashes["loss"], make(train_loss)(params, batch, hp, key))
        _hash_jaxpr(hashes["loss"], make(eval_loss)(params, batch, hp))
        _hash_jaxpr(hashes["loss"], make(loss_grad)(params, batch, hp, key))
        if model.metrics is not None:
            _hash_jaxpr(hashes["metrics"], make(model.metrics)(params, batch, hp))
        _hash_jaxpr(hashes["optimizer"], make(opt_init)(hp, params))
        state = jax.eval_shape(opt_init, hp, params)
        _hash_jaxpr(hashes["optimizer"], make(opt_update)(hp, params, state, params))
    out: dict[str, Any] = {"model": names}
    for f in FINGERPRINTED:
        out[f"model.{f}"] = (None if getattr(model, f) is None
                             else hashes[f].hexdigest())
    return out


def abstract_batch(part) -> Any:
    """A ``ShapeDtypeStruct`` tree of a part (for abstract checks)."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype
                                       if not hasattr(a, "dtype") else a.dtype), part)
