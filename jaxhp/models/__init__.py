"""Reference models, each a :class:`jaxhp.Model` of pure functions.

- :func:`linear_regression`: the seed's example. The slope ``w`` and the
  intercept ``b`` are parameters; the learning rate and the L2 strength are
  hyperparameters. Objective: ``0.5 * mean((x @ w + b - y)**2) + 0.5 * l2 * |w|^2``
  (the intercept is not penalised), i.e. scikit-learn's ``Ridge(alpha=l2 * n)``.
- :func:`softmax_regression`: logistic / softmax regression with L2,
  ``mean CE + 0.5 * l2 * |W|^2``, i.e. ``LogisticRegression(C=1 / (l2 * n))``.
- :func:`mlp_classifier`: a ReLU MLP with static width and depth and tunable
  learning rate, weight decay and dropout rate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxhp._hparams import HParams, static, tunable
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
      n_features: the number of input features (``x`` has shape ``(n, d)``).

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
        return {"w": jnp.zeros((n_features,), jnp.float32), "b": jnp.zeros((), jnp.float32)}

    def predict(params, x):
        return x @ params["w"] + params["b"]

    def loss(params, batch, hp):
        mse = jnp.mean((predict(params, batch["x"]) - batch["y"]) ** 2)
        return 0.5 * mse + 0.5 * hp.l2 * jnp.sum(params["w"] ** 2), {"mse": mse}

    def metrics(params, batch, hp):
        return {"mse": jnp.mean((predict(params, batch["x"]) - batch["y"]) ** 2)}

    def optimizer(hp):
        return make_optimizer(hp.optimizer, hp.learning_rate, momentum=hp.momentum)

    return Model(init, loss, optimizer, metrics, LinearHP, "linear_regression")


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
    acc = jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32))
    return ce, acc


def softmax_regression(n_features: int, n_classes: int) -> Model:
    """Logistic (softmax) regression with an L2 penalty on the weights.

    Args:
      n_features: input features; ``batch["x"]`` has shape ``(n, n_features)``.
      n_classes: classes; ``batch["y"]`` holds integer labels.

    Returns:
      A :class:`~jaxhp.Model` with metrics ``accuracy`` and ``ce`` (cross
      entropy without penalty) and hyperparameters :class:`SoftmaxHP`.
    """
    _check_dim("n_features", n_features)
    _check_dim("n_classes", n_classes, 2)

    def init(key, hp):
        del key, hp
        return {"w": jnp.zeros((n_features, n_classes), jnp.float32),
                "b": jnp.zeros((n_classes,), jnp.float32)}

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

    return Model(init, loss, optimizer, metrics, SoftmaxHP, "softmax_regression")


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


def mlp_classifier(n_features: int, n_classes: int) -> Model:
    """A multilayer perceptron classifier (He-initialised, dropout on hidden units).

    Args:
      n_features: input features; ``batch["x"]`` has shape ``(n, n_features)``.
      n_classes: classes; ``batch["y"]`` holds integer labels.

    Returns:
      A :class:`~jaxhp.Model` with metrics ``accuracy`` and ``ce`` and
      hyperparameters :class:`MLPHP`.
    """
    _check_dim("n_features", n_features)
    _check_dim("n_classes", n_classes, 2)

    def init(key, hp):
        sizes = [n_features] + [hp.width] * hp.depth + [n_classes]
        layers = []
        for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = jax.random.normal(jax.random.fold_in(key, i), (m, n), jnp.float32)
            layers.append({"w": w * jnp.sqrt(2.0 / m), "b": jnp.zeros((n,), jnp.float32)})
        return layers

    def logits(params, x, hp, key):
        act = _ACTIVATIONS[hp.activation]
        for i, layer in enumerate(params[:-1]):
            x = act(x @ layer["w"] + layer["b"])
            if key is not None:
                keep = 1.0 - hp.dropout
                u = jax.random.uniform(jax.random.fold_in(key, i), x.shape)
                x = jnp.where(u < keep, x / keep, 0.0)
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

    return Model(init, loss, optimizer, metrics, MLPHP, "mlp_classifier")


def _check_dim(name: str, v, low: int = 1) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise ValueError(f"`{name}`={v!r}: must be an integer >= {low}")
