"""Reference models, each a :class:`jaxhp.Model` of pure functions.

- :func:`linear_regression`: the seed's example. The slope ``w`` and the
  intercept ``b`` are parameters; the learning rate and the L2 strength are
  hyperparameters. Objective: ``0.5 * mean((x @ w + b - y)**2) + 0.5 * l2 * |w|^2``
  (the intercept is not penalised), i.e. scikit-learn's ``Ridge(alpha=l2 * n)``.
- :func:`softmax_regression`: logistic / softmax regression with L2,
  ``mean CE + 0.5 * l2 * |W|^2``, where ``W`` has one column per class (the
  intercepts are not penalised). With 3 or more classes this is scikit-learn's
  multinomial ``LogisticRegression(C=1 / (l2 * n))``, which also penalises every
  class column. With 2 classes it is ``LogisticRegression(C=2 / (l2 * n))``:
  the two-class softmax with columns ``w0, w1`` is a logistic model on
  ``w = w1 - w0``, the minimiser has ``w0 = -w1``, so ``|W|^2 = |w|^2 / 2``.
- :func:`mlp_classifier`: a ReLU MLP with static width and depth and tunable
  learning rate, weight decay and dropout rate; ``batch_norm=True`` adds
  BatchNorm to every hidden layer, a model with state (its running mean and
  variance, used at evaluation).

Each model checks its data before anything compiles (``Model.check_data``):
``x`` of shape ``(n, n_features)`` and a float dtype; ``y`` of shape ``(n,)``,
a float for regression, an integer label in ``[0, n_classes)`` for the
classifiers. A mismatch raises :class:`jaxhp.DataError` naming the array.
Parameters take JAX's default float dtype (float32; float64 under
``jax_enable_x64``), like the tunable hyperparameters.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxhp._data import DataError
from jaxhp._hparams import HParams, padded_size, static, tunable, unit_mask
from jaxhp._model import Model

__all__ = [
    "LinearHP",
    "MLPHP",
    "SoftmaxHP",
    "linear_regression",
    "make_optimizer",
    "mlp_classifier",
    "softmax_regression",
]

OPTIMIZERS = ("sgd", "adam", "adamw")
# Declared, never guessed from the names: accuracy is better high, cross entropy low.
CLASSIFIER_DIRECTIONS = {"accuracy": "max", "ce": "min"}
# Adam's sqrt(v) has an infinite derivative at v = 0 (a gradient coordinate exactly 0,
# e.g. a zero-initialised bias on balanced classes): forward-mode hypergradients through
# it are NaN. A tiny eps_root keeps them finite; in float32 it only moves second-moment
# estimates below ~1e-22.
_EPS_ROOT = 1e-30


def make_optimizer(name: str, learning_rate, *, momentum=0.0,
                   weight_decay=None) -> optax.GradientTransformation:
    """Builds an Optax optimizer from (possibly traced) hyperparameters.

    Args:
      name: ``"sgd"`` (with heavy-ball ``momentum``; 0 is plain gradient
        descent), ``"adam"`` or ``"adamw"``. ``weight_decay`` is decoupled
        (added to the update, scaled by the learning rate); ``None`` omits it.
      learning_rate, momentum, weight_decay: scalars or traced arrays.

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> opt = make_optimizer("adamw", hp.learning_rate, weight_decay=hp.weight_decay)
    """
    if name == "sgd":
        sgd = optax.sgd(learning_rate, momentum=momentum)
        if weight_decay is None:
            return sgd
        return optax.chain(optax.add_decayed_weights(weight_decay), sgd)
    if name == "adam":
        adam = optax.adam(learning_rate, eps_root=_EPS_ROOT)
        if weight_decay is None:
            return adam
        return optax.chain(optax.add_decayed_weights(weight_decay), adam)
    if name == "adamw":
        return optax.adamw(learning_rate, eps_root=_EPS_ROOT,
                           weight_decay=0.0 if weight_decay is None else weight_decay)
    raise ValueError(f"`optimizer`={name!r}: must be one of {list(OPTIMIZERS)}")


class LinearHP(HParams):
    """Hyperparameters of :func:`linear_regression`."""

    learning_rate: float = tunable(0.1, low=0, low_open=True, log=True,
                                   doc="step size")
    l2: float = tunable(1e-3, low=0, low_open=True, log=True,
                        doc="L2 penalty strength on the slope")
    momentum: float = tunable(0.0, low=0, high=1, high_open=True,
                              doc="heavy-ball momentum (sgd only)")
    steps: int = static(500, low=1, integer=True, doc="training steps")
    batch_size: int = static(None, low=1, integer=True, doc="None: full batch")
    optimizer: str = static("sgd", choices=OPTIMIZERS)


def linear_regression(n_features: int) -> Model:
    """Linear regression with an L2 penalty on the slope (ridge).

    Args:
      n_features: the number of input features: ``batch["x"]`` has shape
        ``(n, n_features)`` and ``batch["y"]`` (float targets) shape ``(n,)``,
        checked before anything compiles.

    Returns:
      A :class:`~jaxhp.Model` reading ``batch["x"]`` and ``batch["y"]``, with
      metrics ``mse`` (no penalty) and hyperparameters :class:`LinearHP`.

    Example:
      >>> model = linear_regression(10)
      >>> run = jaxhp.train(model, LinearHP(learning_rate=0.1), split, key=key)
    """
    _check_dim("n_features", n_features)

    def init(key, hp):
        del key, hp
        return {"w": jnp.zeros((n_features,)), "b": jnp.zeros(())}  # default float dtype

    def predict(params, x):
        return x @ params["w"] + params["b"]

    def loss(params, batch, hp):
        mse = jnp.mean((predict(params, batch["x"]) - batch["y"]) ** 2)
        return 0.5 * mse + 0.5 * hp.l2 * jnp.sum(params["w"] ** 2), {"mse": mse}

    def metrics(params, batch, hp):
        return {"mse": jnp.mean((predict(params, batch["x"]) - batch["y"]) ** 2)}

    def optimizer(hp):
        return make_optimizer(hp.optimizer, hp.learning_rate, momentum=hp.momentum)

    desc = f"linear_regression(n_features={n_features})"

    def check_data(part, name):
        n = _check_features(part, name, n_features, desc)
        _check_targets(part, name, n, desc)

    return Model(init, loss, optimizer, metrics, LinearHP, "linear_regression",
                 directions={"mse": "min"}, check_data=check_data)


class SoftmaxHP(HParams):
    """Hyperparameters of :func:`softmax_regression`."""

    learning_rate: float = tunable(0.5, low=0, low_open=True, log=True)
    l2: float = tunable(1e-3, low=0, low_open=True, log=True,
                        doc="L2 penalty strength on the weights")
    momentum: float = tunable(0.0, low=0, high=1, high_open=True)
    steps: int = static(500, low=1, integer=True)
    batch_size: int = static(None, low=1, integer=True)
    optimizer: str = static("sgd", choices=OPTIMIZERS)


def _ce_and_accuracy(logits, y):
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    acc = jnp.mean(jnp.argmax(logits, -1) == y)  # JAX's default float dtype
    return ce, acc


def softmax_regression(n_features: int, n_classes: int) -> Model:
    """Logistic (softmax) regression with an L2 penalty on the weights.

    Objective: ``mean CE + 0.5 * l2 * |W|^2`` with ``W`` of shape
    ``(n_features, n_classes)`` (one column per class; the intercepts are not
    penalised). In scikit-learn's terms, for ``n`` training examples:

    - ``n_classes >= 3``: the multinomial ``LogisticRegression(C=1 / (l2 * n))``
      (which also penalises every class column);
    - ``n_classes == 2``: ``LogisticRegression(C=2 / (l2 * n))``. The two-class
      softmax with columns ``w0, w1`` is a logistic model on ``w = w1 - w0``,
      and the minimiser has ``w0 = -w1``, so ``|W|^2 = |w|^2 / 2``: the penalty
      on ``w`` is half as strong as ``l2`` suggests.

    Args:
      n_features: input features; ``batch["x"]`` has shape ``(n, n_features)``.
      n_classes: classes; ``batch["y"]`` holds integer labels in
        ``[0, n_classes)``, shape ``(n,)`` (checked before anything compiles).

    Returns:
      A :class:`~jaxhp.Model` with metrics ``accuracy`` and ``ce`` (cross
      entropy without penalty) and hyperparameters :class:`SoftmaxHP`.
    """
    _check_dim("n_features", n_features)
    _check_dim("n_classes", n_classes, 2)

    def init(key, hp):
        del key, hp
        return {"w": jnp.zeros((n_features, n_classes)), "b": jnp.zeros((n_classes,))}

    def logits(params, x):
        return x @ params["w"] + params["b"]

    def loss(params, batch, hp):
        ce, acc = _ce_and_accuracy(logits(params, batch["x"]), batch["y"])
        return ce + 0.5 * hp.l2 * jnp.sum(params["w"] ** 2), {"accuracy": acc}

    def metrics(params, batch, hp):
        ce, acc = _ce_and_accuracy(logits(params, batch["x"]), batch["y"])
        return {"accuracy": acc, "ce": ce}

    def optimizer(hp):
        return make_optimizer(hp.optimizer, hp.learning_rate, momentum=hp.momentum)

    return Model(init, loss, optimizer, metrics, SoftmaxHP, "softmax_regression",
                 directions=CLASSIFIER_DIRECTIONS,
                 check_data=_classifier_check(
                     n_features, n_classes,
                     f"softmax_regression(n_features={n_features}, n_classes={n_classes})"))


class MLPHP(HParams):
    """Hyperparameters of :func:`mlp_classifier`."""

    learning_rate: float = tunable(1e-3, low=0, low_open=True, log=True)
    weight_decay: float = tunable(1e-4, low=0, doc="decoupled (AdamW) weight decay")
    dropout: float = tunable(0.0, low=0, high=1, high_open=True,
                             doc="dropout rate on hidden units")
    width: int = static(128, low=1, integer=True, doc="hidden units per layer")
    depth: int = static(2, low=1, integer=True, doc="hidden layers")
    steps: int = static(300, low=1, integer=True)
    batch_size: int = static(128, low=1, integer=True)
    optimizer: str = static("adamw", choices=OPTIMIZERS)
    activation: str = static("relu", choices=("relu", "tanh", "gelu"))


_ACTIVATIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "gelu": jax.nn.gelu}


def mlp_classifier(n_features: int, n_classes: int, *, batch_norm: bool = False,
                   bn_momentum: float = 0.9, bn_eps: float = 1e-5) -> Model:
    """A multilayer perceptron classifier (He-initialised, dropout on hidden units).

    Args:
      n_features: input features; ``batch["x"]`` has shape ``(n, n_features)``.
      n_classes: classes; ``batch["y"]`` holds integer labels in
        ``[0, n_classes)``, shape ``(n,)`` (checked before anything compiles).
      batch_norm: BatchNorm on every hidden layer (before the activation; the
        hidden layers then have no bias but a per-unit ``scale`` and ``shift``).
        In training each layer normalises with its minibatch's mean and
        (biased) variance and updates its running statistics,
        ``running = bn_momentum * running + (1 - bn_momentum) * batch``; at
        evaluation it normalises with the running statistics. The model is
        then declared ``has_state=True``: its state is
        ``[{"mean", "var"}]`` per hidden layer (initially 0 and 1), carried in
        ``TrainState.model_state``.
      bn_momentum: the running statistics' momentum, in ``[0, 1)`` (a constant
        of the model, like a layer's size).
      bn_eps: added to the variance before its square root.

    Returns:
      A :class:`~jaxhp.Model` with metrics ``accuracy`` and ``ce`` and
      hyperparameters :class:`MLPHP` (named ``"mlp_classifier_bn"`` with
      BatchNorm).

    Example:
      >>> model = mlp_classifier(64, 10, batch_norm=True)
      >>> run = jaxhp.train(model, MLPHP(steps=50, batch_size=64), split, key=key)
      >>> run.state.model_state[0]["mean"].shape  # (width,)
    """
    _check_dim("n_features", n_features)
    _check_dim("n_classes", n_classes, 2)
    if not isinstance(batch_norm, bool):
        raise TypeError(f"`batch_norm`={batch_norm!r}: must be True or False")
    if batch_norm:
        return _mlp_bn(n_features, n_classes, bn_momentum, bn_eps)

    def init(key, hp):
        layers = []
        for i, (m, n) in enumerate(_layer_sizes(n_features, n_classes, hp)):
            w = _he_normal(jax.random.fold_in(key, i), m, n)  # default float
            layers.append({"w": w, "b": jnp.zeros((n[1],), w.dtype)})
        return layers

    def logits(params, x, hp, key):
        act = _ACTIVATIONS[hp.activation]
        for i, layer in enumerate(params[:-1]):
            x = _hidden(act(x @ layer["w"] + layer["b"]), hp)
            if key is not None:
                x = _dropout(x, hp, jax.random.fold_in(key, i))
        return x @ params[-1]["w"] + params[-1]["b"]

    def loss(params, batch, hp, key=None):
        ce, acc = _ce_and_accuracy(logits(params, batch["x"], hp, key), batch["y"])
        return ce, {"accuracy": acc}

    def metrics(params, batch, hp):
        ce, acc = _ce_and_accuracy(logits(params, batch["x"], hp, None), batch["y"])
        return {"accuracy": acc, "ce": ce}

    def optimizer(hp):
        return make_optimizer(hp.optimizer, hp.learning_rate,
                              weight_decay=hp.weight_decay)

    return Model(init, loss, optimizer, metrics, MLPHP, "mlp_classifier",
                 directions=CLASSIFIER_DIRECTIONS, param_mask=_mlp_mask,
                 check_data=_classifier_check(
                     n_features, n_classes,
                     f"mlp_classifier(n_features={n_features}, n_classes={n_classes})"))


def _mlp_bn(n_features: int, n_classes: int, momentum, eps) -> Model:
    """:func:`mlp_classifier` with BatchNorm on its hidden layers (a stateful model)."""
    if not isinstance(momentum, (int, float)) or isinstance(momentum, bool) \
            or not 0 <= momentum < 1:
        raise ValueError(f"`bn_momentum`={momentum!r}: must be a number in [0, 1) (the "
                         "weight of the old running statistics)")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise ValueError(f"`bn_eps`={eps!r}: must be a number > 0")
    momentum, eps = float(momentum), float(eps)

    def init(key, hp):
        params, state = [], []
        for i, (m, n) in enumerate(_layer_sizes(n_features, n_classes, hp)):
            w = _he_normal(jax.random.fold_in(key, i), m, n)
            if i < hp.depth:
                params.append({"w": w, "scale": jnp.ones((n[1],), w.dtype),
                               "shift": jnp.zeros((n[1],), w.dtype)})
                state.append({"mean": jnp.zeros((n[1],), w.dtype),
                              "var": jnp.ones((n[1],), w.dtype)})
            else:
                params.append({"w": w, "b": jnp.zeros((n[1],), w.dtype)})
        return params, state

    def logits(params, state, x, hp, key):
        """The logits and the new state (the running statistics, updated in training)."""
        act = _ACTIVATIONS[hp.activation]
        new_state = []
        for i, (layer, stats) in enumerate(zip(params[:-1], state)):
            h = x @ layer["w"]
            if key is None:  # evaluation: the running statistics
                mean, var = stats["mean"], stats["var"]
                new_state.append(stats)
            else:  # training: the minibatch's statistics, and a running-average step
                mean, var = jnp.mean(h, axis=0), jnp.var(h, axis=0)
                new_state.append({
                    "mean": momentum * stats["mean"] + (1 - momentum) * mean,
                    "var": momentum * stats["var"] + (1 - momentum) * var})
            h = (h - mean) * jax.lax.rsqrt(var + eps) * layer["scale"] + layer["shift"]
            x = _hidden(act(h), hp)
            if key is not None:
                x = _dropout(x, hp, jax.random.fold_in(key, i))
        return x @ params[-1]["w"] + params[-1]["b"], new_state

    def loss(params, state, batch, hp, key=None):
        z, new_state = logits(params, state, batch["x"], hp, key)
        ce, acc = _ce_and_accuracy(z, batch["y"])
        return ce, ({"accuracy": acc}, new_state)

    def metrics(params, state, batch, hp):
        ce, acc = _ce_and_accuracy(logits(params, state, batch["x"], hp, None)[0],
                                   batch["y"])
        return {"accuracy": acc, "ce": ce}

    def optimizer(hp):
        return make_optimizer(hp.optimizer, hp.learning_rate,
                              weight_decay=hp.weight_decay)

    desc = f"mlp_classifier(n_features={n_features}, n_classes={n_classes}, batch_norm=True)"
    return Model(init, loss, optimizer, metrics, MLPHP, "mlp_classifier_bn",
                 directions=CLASSIFIER_DIRECTIONS, param_mask=_mlp_mask,
                 check_data=_classifier_check(n_features, n_classes, desc), has_state=True)


# ------------------------------------------------------- padded width (MLPHP.width)
# A padded group (a subclass of MLPHP declaring width with pad_to) allocates every
# hidden layer at padded_size(hp, "width") and masks the units past the member's own
# hp.width (a traced int32 there). The random numbers a real unit sees are those of
# the unpadded model: a (m, n) draw is read from one flat draw of m_alloc * n_alloc
# numbers at position i * n + j, as jax.random draws (m, n) (checked by the tests), so
# an unpadded model (every size a Python int) draws exactly as before padding existed.

def _layer_sizes(n_features: int, n_classes: int, hp) -> list:
    """Per layer ``((m, m_alloc), (n, n_alloc))``: its real and allocated fan-in and
    fan-out (the real hidden size is ``hp.width``, traced in a padded group)."""
    width = (hp.width, padded_size(hp, "width"))
    sizes = [(n_features, n_features)] + [width] * hp.depth + [(n_classes, n_classes)]
    return list(zip(sizes[:-1], sizes[1:]))


def _is_padded(*sizes) -> bool:
    return any(real is not alloc and not isinstance(real, int) for real, alloc in sizes)


def _flat_draw(draw, key, rows, cols):
    """``draw(key, (r, c))`` for the real ``(r, c)`` of an allocated ``(r_alloc,
    c_alloc)`` block (``rows``, ``cols``: ``(real, alloc)``), zero outside it."""
    (r, ra), (c, ca) = rows, cols
    if not _is_padded(rows, cols):
        return draw(key, (r, c))
    flat = draw(key, (ra * ca,))
    i, j = jnp.arange(ra)[:, None], jnp.arange(ca)[None, :]
    real = (i < r) & (j < c)
    return jnp.where(real, flat[jnp.where(real, i * c + j, 0)], 0.0)


def _he_normal(key, m, n):
    """He-initialised weights ``(m, n)``: standard normal times ``sqrt(2 / fan-in)``
    (the real fan-in)."""
    w = _flat_draw(jax.random.normal, key, m, n)
    return w * jnp.sqrt(2.0 / m[0])


def _hidden(x, hp):
    """Hidden activations with the padded units (past ``hp.width``) set to zero."""
    if not _is_padded((hp.width, padded_size(hp, "width"))):
        return x
    return jnp.where(unit_mask(hp, "width"), x, 0.0)


def _dropout(x, hp, key):
    """Inverted dropout of hidden units ``(batch, width)``: a real unit draws what it
    draws in the unpadded model."""
    keep = 1.0 - hp.dropout
    u = _flat_draw(jax.random.uniform, key, (x.shape[0], x.shape[0]),
                   (hp.width, padded_size(hp, "width")))
    return jnp.where(u < keep, x / keep, 0.0)


def _mlp_mask(hp, params):
    """The MLP's real parameter entries in a padded group (``Model.param_mask``)."""
    units = unit_mask(hp, "width")
    out = []
    for i, layer in enumerate(params):
        rows = None if i == 0 else units[:, None]
        cols = None if i == len(params) - 1 else units[None, :]
        w = cols if rows is None else rows if cols is None else rows & cols
        out.append({k: (w if k == "w" else None if cols is None else cols[0])
                    for k in layer})
    return out


def _check_dim(name: str, v, low: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"`{name}`={v!r}: must be an integer >= {low}")


# ----------------------------------------------------------------- data checks
# Shared by the reference models' ``check_data``: each runs on concrete arrays
# before anything compiles and raises DataError naming the array as written.

def _where(name: str, key: str) -> str:
    """The array as the caller wrote it: ``split.train["y"]``, or ``part["y"]``."""
    head = f"split.{name}" if name in ("train", "val", "test") else name
    return f'{head}["{key}"]'


def _dtype(a) -> np.dtype:
    dtype = getattr(a, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(a).dtype


def _entry(part, name: str, key: str, desc: str):
    if not isinstance(part, Mapping) or key not in part:
        got = (f"entries {sorted(part)}" if isinstance(part, Mapping)
               else f"a {type(part).__name__}")
        raise DataError(f"{_where(name, key)} is missing: {desc} reads a dict with "
                        f'"x" (features) and "y" (targets), got {got}')
    return part[key]


def _check_features(part, name: str, n_features: int, desc: str) -> int:
    """``x`` is a float array of shape ``(n, n_features)``; returns ``n``."""
    x = _entry(part, name, "x", desc)
    shape, dtype = tuple(np.shape(x)), _dtype(x)
    where = _where(name, "x")
    if len(shape) != 2 or shape[1] != n_features:
        hint = (f"; build the model for {shape[1]} features, or pass the "
                f"{n_features} it was built for" if len(shape) == 2 else
                "; use x.reshape(len(x), -1)" if len(shape) > 2 else
                "; use x.reshape(-1, 1) for one feature" if len(shape) == 1 else "")
        raise DataError(f"{where} has shape {shape}; {desc} takes features of shape "
                        f"(n, {n_features}){hint}")
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DataError(f"{where} has dtype {dtype}; {desc} takes float features: "
                        "x.astype(np.float32)")
    return shape[0]


def _check_one_per_example(y, where: str, n: int, desc: str, what: str) -> None:
    shape = tuple(np.shape(y))
    if shape == (n,):
        return
    hint = ""
    if shape == (n, 1):
        hint = "; use y.ravel() (a trailing axis of 1 broadcasts against the predictions)"
    elif len(shape) == 2 and shape[0] == n and what == "label":
        hint = "; one-hot labels: use y.argmax(axis=1)"
    raise DataError(f"{where} has shape {shape}; {desc} takes one {what} per example, "
                    f"shape ({n},){hint}")


def _check_targets(part, name: str, n: int, desc: str) -> None:
    """Regression targets: ``y`` is a float array of shape ``(n,)``."""
    y, where = _entry(part, name, "y", desc), _where(name, "y")
    _check_one_per_example(y, where, n, desc, "target")
    dtype = _dtype(y)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise DataError(f"{where} has dtype {dtype}; {desc} takes float targets: "
                        "y.astype(np.float32)")


def _check_labels(part, name: str, n: int, n_classes: int, desc: str) -> None:
    """Class labels: ``y`` is an integer array of shape ``(n,)`` in ``[0, n_classes)``."""
    y, where = _entry(part, name, "y", desc), _where(name, "y")
    _check_one_per_example(y, where, n, desc, "label")
    dtype = _dtype(y)
    if not jnp.issubdtype(dtype, jnp.integer):
        raise DataError(f"{where} has dtype {dtype}; {desc} takes integer class labels "
                        f"0..{n_classes - 1}: y.astype(np.int32) if they are whole "
                        "numbers, else relabel them (np.unique(y, return_inverse=True)[1])")
    if isinstance(y, jax.core.Tracer):
        return  # values unknown while tracing; checked when concrete
    arr = np.asarray(y)
    bad = (arr < 0) | (arr >= n_classes)
    if bad.any():
        values, counts = np.unique(arr[bad], return_counts=True)
        listed = ", ".join(f"{v} ({c} example{'s' * (c != 1)})"
                           for v, c in zip(values[:5].tolist(), counts[:5].tolist()))
        more = f" and {len(values) - 5} more values" if len(values) > 5 else ""
        raise DataError(f"{where} holds {int(bad.sum())} label(s) outside "
                        f"0..{n_classes - 1} for {desc}: {listed}{more}; relabel to "
                        "0..n_classes-1 (np.unique(y, return_inverse=True)[1]) or build "
                        "the model with more classes")


def _classifier_check(n_features: int, n_classes: int, desc: str):
    def check_data(part, name):
        n = _check_features(part, name, n_features, desc)
        _check_labels(part, name, n, n_classes, desc)
    return check_data
