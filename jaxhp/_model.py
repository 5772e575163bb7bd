"""A model is a few pure functions the user writes; this module checks them.

``init(key, hp) -> params``, ``loss(params, batch, hp, key=None) -> (loss, aux)``,
``optimizer(hp) -> optax.GradientTransformation`` and optionally
``metrics(params, batch, hp) -> dict``. ``loss`` receives a PRNG ``key`` for
stochastic layers (dropout) during training and ``key=None`` at evaluation.

A model declared ``has_state=True`` also carries non-trained state (BatchNorm
running statistics): ``init(key, hp) -> (params, state)``,
``loss(params, state, batch, hp, key=None) -> (loss, (aux, new_state))`` and
``metrics(params, state, batch, hp)``. The rest of jaxhp calls a model through
:func:`init_fn`, :func:`model_loss`, :func:`loss_fn` and :func:`metrics_fn`
only, so the two kinds differ in this module and nowhere else.
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

from jaxhp._hparams import did_you_mean, is_padded

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
    has_state: bool = False
    param_mask: Callable | None = None


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
      has_state: the model carries non-trained state beside its parameters
        (BatchNorm running statistics), declared, never guessed (default
        False). Then ``init(key, hp) -> (params, state)``;
        ``loss(params, state, batch, hp, key=None) -> (loss, (aux,
        new_state))``, where ``new_state`` has the structure, shapes and
        dtypes of ``state`` (training threads it from step to step; at
        evaluation, ``key=None``, it is ignored); ``metrics(params, state,
        batch, hp) -> dict``. The state is not differentiated nor touched by
        the optimizer; it is kept in ``TrainState.model_state``, and results
        hand parameters back as ``(params, state)`` pairs.
      param_mask: declares that the model supports padded fields
        (``jaxhp.static(..., pad_to=...)``): ``param_mask(hp, params) -> masks``,
        a pytree of the structure of ``params`` whose leaves are boolean arrays
        broadcastable to the parameter's shape (True: a real entry) or ``None``
        (all real). In a padded group, ``hp``'s padded fields are traced int32
        scalars and the parameters are allocated at :func:`jaxhp.padded_size`;
        jaxhp zeroes the masked entries at initialisation and masks every
        gradient and optimizer update, so they stay exactly zero. The model
        itself masks the padded units in its forward pass
        (:func:`jaxhp.unit_mask`). ``None`` (default): a padded group is refused
        before compiling.

    Example:
      >>> model = jaxhp.Model(init, loss, optimizer, metrics, hparams=MyHP,
      ...                     directions={"accuracy": "max", "ce": "min"})
      >>> bn = jaxhp.Model(init_with_stats, loss_with_stats, optimizer, has_state=True)
    """

    __slots__ = ()

    def __new__(cls, init, loss, optimizer, metrics=None, hparams=None, name="model",
                directions=None, check_data=None, has_state=False, param_mask=None):
        if not isinstance(has_state, bool):
            raise TypeError(f"Model(has_state=...): `has_state`={has_state!r}: must be True "
                            "(the model carries non-trained state such as BatchNorm "
                            "statistics) or False")
        if param_mask is not None and not callable(param_mask):
            raise TypeError(f"Model(param_mask=...): `param_mask`={param_mask!r}: must be "
                            "a function param_mask(hp, params) -> masks, or None")
        return super().__new__(cls, init, loss, optimizer, metrics, hparams, name,
                               _freeze_directions(directions), check_data, has_state,
                               param_mask)

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


def init_fn(model: Model, key, hp):
    """``(params, state)`` of any model; ``state`` is None for a stateless one."""
    if model.has_state:
        params, state = model.init(key, hp)
        return params, state
    return model.init(key, hp), None


def model_loss(model: Model, params, state, batch, hp, key=None):
    """``(loss, (aux, new_state))`` of any model (``state`` None for a stateless one);
    ``key`` is passed if ``model.loss`` accepts one (``None``: evaluation)."""
    if not model.has_state:
        loss, aux = loss_fn(model, params, batch, hp, key)
        return loss, (aux, None)
    if _takes_key(model.loss):
        return model.loss(params, state, batch, hp, key=key)
    return model.loss(params, state, batch, hp)


def loss_fn(model: Model, params, batch, hp, key=None, *, state=None):
    """``(loss, aux)`` of ``model.loss``, passing ``key`` if it accepts one
    (``None``: evaluation); a stateful model reads ``state`` and its new state
    is dropped."""
    if model.has_state:
        loss, (aux, _) = model_loss(model, params, state, batch, hp, key)
        return loss, aux
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


def metrics_fn(model: Model, params, batch, hp, state=None) -> dict:
    """The model's metrics on a batch (evaluation mode), with the objective added as
    ``loss``; a stateful model reads ``state``."""
    out = {"loss": loss_fn(model, params, batch, hp, state=state)[0]}
    if model.metrics is not None:
        out.update(model.metrics(params, state, batch, hp) if model.has_state
                   else model.metrics(params, batch, hp))
    return out


def abstract_init(model: Model, hp):
    """The shapes of ``(params, state)`` (``jax.eval_shape``; ``state`` None when
    stateless)."""
    return jax.eval_shape(lambda k, h: init_fn(model, k, h), jax.random.key(0), hp)


def metric_names(model: Model, hp, part) -> list[str]:
    """The sorted names of the model's metrics on ``part`` (``loss`` included), abstractly."""
    params, state = abstract_init(model, hp)
    return sorted(jax.eval_shape(lambda p, s: metrics_fn(model, p, part, hp, s), params,
                                 state))


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


def _binds(fn, n: int) -> bool:
    """Whether ``fn`` can be called with ``n`` positional arguments (True if unknown)."""
    try:
        inspect.signature(fn).bind(*range(n))
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): let the call decide
        return True
    return True


def _describe(tree) -> str:
    r = repr(jax.tree_util.tree_map(lambda s: f"{s.dtype}{list(s.shape)}", tree))
    return r if len(r) <= 160 else r[:157] + "..."


def _check_same_state(fn, state, new_state) -> None:
    """``new_state`` has the structure, shapes and dtypes of ``state``, else a ModelError."""
    where = f"model.loss ({_qualname(fn)})"
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(new_state):
        raise ModelError(f"{where} returned a new state of another structure than the "
                         f"state model.init returned: {_describe(new_state)} instead of "
                         f"{_describe(state)}; return (loss, (aux, new_state)) with "
                         "new_state shaped like the state it received")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                            jax.tree_util.tree_leaves(new_state)):
        if a.shape != b.shape or a.dtype != b.dtype:
            raise ModelError(f"{where} returned new_state{jax.tree_util.keystr(path)} of "
                             f"shape {tuple(b.shape)} and dtype {b.dtype}; the state has "
                             f"shape {tuple(a.shape)} and dtype {a.dtype} (cast or reshape "
                             "the update so the state keeps its shape and dtype)")


def _check_loss_out(model: Model, out, state=None, train: bool = True) -> None:
    """The output of ``model.loss``: ``(loss, aux)``, or ``(loss, (aux, new_state))``
    for a stateful model (its structure checked against ``state`` in training)."""
    where = f"model.loss ({_qualname(model.loss)})"
    if model.has_state:
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], tuple)
                and len(out[1]) == 2):
            got = (f"({type(out[0]).__name__}, {type(out[1]).__name__})"
                   if isinstance(out, tuple) and len(out) == 2 else type(out).__name__)
            raise ModelError(f"{where} must return (loss, (aux, new_state)) for a model "
                             f"with has_state=True, got {got}; return the updated state "
                             "beside aux, e.g. `return loss, (aux, new_state)` (at "
                             "evaluation, key=None, return the state it received)")
        if train:
            _check_same_state(model.loss, state, out[1][1])
    elif not (isinstance(out, tuple) and len(out) == 2):
        raise ModelError(f"{where} must return (loss, aux), got {type(out).__name__}")
    if not _is_scalar(out[0]):
        raise ModelError(f"{where} must return a scalar loss, got shape "
                         f"{tuple(getattr(out[0], 'shape', ()))}; reduce it (e.g. with "
                         "jnp.mean) over the batch")


def _check_signatures(model: Model) -> None:
    """A stateful model's functions take the state: their arity is checked up front."""
    for field, n, sig in (("loss", 4, "loss(params, state, batch, hp, key=None)"),
                          ("metrics", 4, "metrics(params, state, batch, hp)")):
        fn = getattr(model, field)
        if fn is not None and not _binds(fn, n):
            raise ModelError(f"model.{field} ({_qualname(fn)}) cannot be called as "
                             f"{sig}: a model with has_state=True passes the state after "
                             "the parameters (declare has_state=False for a model "
                             "without state)")


def check_model(model: Model, hp, batch) -> None:
    """Traces each model function abstractly (nothing compiles) and checks outputs.

    For a model with ``has_state=True``: ``init`` returns ``(params, state)``,
    ``loss`` returns ``(loss, (aux, new_state))`` with ``new_state`` of the
    state's structure, shapes and dtypes, and ``loss``/``metrics`` take the
    state after the parameters.

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
    if model.has_state:
        _check_signatures(model)
    key = jax.random.key(0)
    out = _abstract("model.init", model.init, lambda h, k: model.init(k, h), hp, key)
    state = None
    if model.has_state:
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ModelError(f"model.init ({_qualname(model.init)}) must return "
                             "(params, state) for a model with has_state=True, got "
                             f"{type(out).__name__}{_shape_note(out)}; return the "
                             "non-trained state beside the parameters, e.g. "
                             "`return params, {'mean': jnp.zeros(d)}`")
        params, state = out
    else:
        params = out
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            raise ModelError(f"model.init ({_qualname(model.init)}) returned a "
                             f"non-float parameter {jax.tree_util.keystr(path)} of "
                             f"dtype {leaf.dtype}; parameters must be float arrays")
    # the raw output of model.loss (model_loss would unpack a malformed one)
    raw = ((lambda p, s, b, h, k: model_loss(model, p, s, b, h, k)) if model.has_state
           else (lambda p, s, b, h, k: loss_fn(model, p, b, h, k)))
    out = _abstract("model.loss", model.loss, lambda h, p, s, b, k: raw(p, s, b, h, k),
                    hp, params, state, batch, key)
    _check_loss_out(model, out, state, train=True)
    out = _abstract("model.loss", model.loss, lambda h, p, s, b: raw(p, s, b, h, None),
                    hp, params, state, batch)
    if model.has_state:
        _check_loss_out(model, out, state, train=False)
    opt = model.optimizer(hp)
    if not isinstance(opt, optax.GradientTransformation):
        raise ModelError(f"model.optimizer ({_qualname(model.optimizer)}) must return "
                         f"an optax.GradientTransformation, got {type(opt).__name__}")

    def opt_step(h, p):
        o = model.optimizer(h)
        return o.update(p, o.init(p), p)

    _abstract("model.optimizer", model.optimizer, opt_step, hp, params)
    if model.metrics is not None:
        if model.has_state:
            m = _abstract("model.metrics", model.metrics,
                          lambda h, p, s, b: model.metrics(p, s, b, h), hp, params, state,
                          batch)
        else:
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


def _shape_note(out) -> str:
    """`` (a tuple of 3)``-style detail of a wrong ``init`` output."""
    if isinstance(out, (tuple, list)):
        return f" of {len(out)}"
    return ""


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


def function_hash(fn, *args) -> str:
    """SHA-256 of what ``fn`` computes on (abstract) ``args``: its jaxpr's text and every
    constant and literal it captures, as :func:`model_fingerprint` hashes a model's
    functions (a search fingerprints its own program for a checkpoint this way)."""
    h = hashlib.sha256()
    _hash_jaxpr(h, jax.make_jaxpr(fn)(*args))
    return h.hexdigest()


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
    ``metrics``; ``optimizer(hp).init`` and ``.update``. A stateful model's
    ``loss`` and ``metrics`` are traced with its state, and ``has_state`` is
    recorded with the names. For the settings of padded groups, ``param_mask`` is
    traced too (``"model.param_mask"``, its name recorded; absent otherwise).

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
    if model.has_state:  # absent for a stateless model: its fingerprint is unchanged
        names["has_state"] = True
    hashes = {f: hashlib.sha256() for f in FINGERPRINTED}
    batch = abstract_batch(batch)
    key = jax.random.key(0)
    make = jax.make_jaxpr
    if model.has_state:  # the state is one more argument of loss and metrics
        train_loss = lambda p, s, b, h, k: model_loss(model, p, s, b, h, k)
        eval_loss = lambda p, s, b, h: model_loss(model, p, s, b, h)
        loss_grad = jax.grad(lambda p, s, b, h, k: model_loss(model, p, s, b, h, k)[0])
        metrics = lambda p, s, b, h: model.metrics(p, s, b, h)
    else:
        train_loss = lambda p, b, h, k: loss_fn(model, p, b, h, k)
        eval_loss = lambda p, b, h: loss_fn(model, p, b, h)
        loss_grad = jax.grad(lambda p, b, h, k: loss_fn(model, p, b, h, k)[0])
        metrics = model.metrics
    opt_init = lambda h, p: model.optimizer(h).init(p)
    opt_update = lambda h, g, s, p: model.optimizer(h).update(g, s, p)
    for hp in hps:
        _hash_jaxpr(hashes["init"], make(model.init)(key, hp))
        params, mstate = jax.eval_shape(lambda k, h: init_fn(model, k, h), key, hp)
        lead = (params, mstate) if model.has_state else (params,)
        _hash_jaxpr(hashes["loss"], make(train_loss)(*lead, batch, hp, key))
        _hash_jaxpr(hashes["loss"], make(eval_loss)(*lead, batch, hp))
        _hash_jaxpr(hashes["loss"], make(loss_grad)(*lead, batch, hp, key))
        if model.metrics is not None:
            _hash_jaxpr(hashes["metrics"], make(metrics)(*lead, batch, hp))
        _hash_jaxpr(hashes["optimizer"], make(opt_init)(hp, params))
        state = jax.eval_shape(opt_init, hp, params)
        _hash_jaxpr(hashes["optimizer"], make(opt_update)(hp, params, state, params))
    out: dict[str, Any] = {"model": names}
    for f in FINGERPRINTED:
        out[f"model.{f}"] = (None if getattr(model, f) is None
                             else hashes[f].hexdigest())
    padded = [hp for hp in hps if is_padded(hp)]
    if model.param_mask is not None and padded:  # else absent: fingerprints unchanged
        fn = model.param_mask
        names["param_mask"] = f"{getattr(fn, '__module__', '?')}.{_qualname(fn)}"
        h = hashlib.sha256()
        for hp in padded:
            params = jax.eval_shape(lambda k, h_: init_fn(model, k, h_), key, hp)[0]
            _hash_jaxpr(h, make(lambda h_, p: jax.tree_util.tree_map(
                lambda m: m, fn(h_, p), is_leaf=lambda m: m is None))(hp, params))
        out["model.param_mask"] = h.hexdigest()
    return out


def abstract_batch(part) -> Any:
    """A ``ShapeDtypeStruct`` tree of a part (for abstract checks)."""
    return jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype
                                       if not hasattr(a, "dtype") else a.dtype), part)
