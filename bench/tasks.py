"""The two workloads, defined once and shared by every competitor.

- ``ridge``: linear regression with an L2 penalty on standardised diabetes,
  full-batch gradient descent, 500 steps; learning rate log-uniform in
  [1e-3, 1], L2 strength log-uniform in [1e-5, 1]. Validation metric: MSE.
- ``mlp``: a 64-128-128-10 ReLU classifier on digits, AdamW, 300 steps of
  minibatch 128; learning rate log-uniform in [1e-4, 1e-1], weight decay
  log-uniform in [1e-6, 1e-1]. Validation metric: accuracy.

With ``--quick`` (environment ``JAXHP_BENCH_QUICK=1``): 100 and 60 steps.

Every competitor trains the same settings (the first ``n`` of one
``jaxhp.random`` space, seed 0) on the same split.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np

RIDGE_STEPS = 500
MLP_STEPS, MLP_BATCH, MLP_WIDTH, MLP_DEPTH = 300, 128, 128, 2
if os.environ.get("JAXHP_BENCH_QUICK"):  # ``python -m bench --quick``: a smoke test
    RIDGE_STEPS, MLP_STEPS = 100, 60


@dataclass(frozen=True)
class Task:
    name: str
    steps: int
    metric: str  # the validation metric used to compare competitors
    mode: str  # "min" or "max"
    arg_names: tuple[str, str]  # the two tunables, as named in jaxhp's HParams
    split: object
    model: object
    base: object  # the HParams setting every sampled setting starts from

    def space(self, n: int):
        import jaxhp

        if self.name == "ridge":
            return jaxhp.random(n, seed=0, learning_rate=jaxhp.loguniform(1e-3, 1.0),
                                l2=jaxhp.loguniform(1e-5, 1.0))
        return jaxhp.random(n, seed=0, learning_rate=jaxhp.loguniform(1e-4, 1e-1),
                            weight_decay=jaxhp.loguniform(1e-6, 1e-1))

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` settings as two float32 arrays (the same values jaxhp trains)."""
        return _arrays(self.name, n)

    def best(self, values) -> float:
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return float("nan")
        return float(v.min() if self.mode == "min" else v.max())

    @property
    def flops_per_setting(self) -> float:
        """Matrix-product FLOPs of one training run (forward + backward), no evaluation."""
        n, d = np.shape(self.split.train["x"])
        if self.name == "ridge":
            # forward x @ w (2nd), backward x.T @ r (2nd) per step
            return float(self.steps * 2 * (2 * n * d))
        sizes = [d] + [MLP_WIDTH] * MLP_DEPTH + [10]
        mn = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
        fwd = 2 * MLP_BATCH * sum(mn)
        bwd_w = 2 * MLP_BATCH * sum(mn)  # weight gradients
        bwd_x = 2 * MLP_BATCH * sum(mn[1:])  # input gradients (none for the first layer)
        return float(self.steps * (fwd + bwd_w + bwd_x))


@functools.cache
def get(name: str) -> Task:
    import jaxhp
    from jaxhp.models import MLPHP, LinearHP, linear_regression, mlp_classifier

    if name == "ridge":
        split = jaxhp.datasets.load("diabetes")
        d = split.train["x"].shape[1]
        return Task("ridge", RIDGE_STEPS, "mse", "min", ("learning_rate", "l2"), split,
                    linear_regression(d), LinearHP(steps=RIDGE_STEPS, optimizer="sgd"))
    if name == "mlp":
        split = jaxhp.datasets.load("digits")
        d = split.train["x"].shape[1]
        return Task("mlp", MLP_STEPS, "accuracy", "max", ("learning_rate", "weight_decay"),
                    split, mlp_classifier(d, 10),
                    MLPHP(width=MLP_WIDTH, depth=MLP_DEPTH, steps=MLP_STEPS,
                          batch_size=MLP_BATCH, optimizer="adamw", dropout=0.0))
    raise ValueError(f"unknown task {name!r}")


@functools.lru_cache(maxsize=8)
def _arrays(name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = get(name)
    a, b = t.arg_names
    settings = t.space(n).settings(type(t.base), base=t.base)
    return (np.array([getattr(s, a) for s in settings], np.float32),
            np.array([getattr(s, b) for s in settings], np.float32))


@functools.lru_cache(maxsize=2)
def mlp_batches(seed: int = 0) -> np.ndarray:
    """Minibatch indices ``(steps, batch)`` shared by the hand-written and torch MLPs:
    epoch ``e`` is a permutation, cut into ``n // batch`` batches (remainder dropped)."""
    n = get("mlp").split.train["x"].shape[0]
    per_epoch = n // MLP_BATCH
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < MLP_STEPS:
        perm = rng.permutation(n)
        out.extend(perm[i * MLP_BATCH:(i + 1) * MLP_BATCH] for i in range(per_epoch))
    return np.stack(out[:MLP_STEPS]).astype(np.int32)


@functools.lru_cache(maxsize=2)
def mlp_init(seed: int = 0) -> list[dict[str, np.ndarray]]:
    """He-initialised MLP parameters (``x @ w + b`` layout) shared by hand JAX and torch."""
    d = get("mlp").split.train["x"].shape[1]
    sizes = [d] + [MLP_WIDTH] * MLP_DEPTH + [10]
    rng = np.random.default_rng(seed)
    return [{"w": (rng.standard_normal((m, k)) * np.sqrt(2.0 / m)).astype(np.float32),
             "b": np.zeros((k,), np.float32)} for m, k in zip(sizes[:-1], sizes[1:])]
