"""Datasets that ship inside scikit-learn (no download), as ready splits.

Each loader returns a :class:`~jaxhp.Split` of ``{"x": float32 (n, d),
"y": ...}`` parts, split deterministically from ``key`` and standardised with
the training part's statistics only. Regression targets (diabetes) are
standardised too, so that errors are in units of the target's training std.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from jaxhp._data import Split, split_data, standardize

__all__ = ["NAMES", "load", "n_classes"]

NAMES = ("diabetes", "digits", "iris", "wine", "breast_cancer")
_REGRESSION = ("diabetes",)


def _sklearn_datasets():
    try:
        from sklearn import datasets
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ImportError("jaxhp.datasets needs scikit-learn: "
                          "pip install 'jaxhp[datasets]'") from e
    return datasets


def _raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    ds = _sklearn_datasets()
    loader = getattr(ds, f"load_{name}")
    x, y = loader(return_X_y=True)
    return np.asarray(x, np.float32), np.asarray(y)


def load(
    name: str,
    *,
    key: jax.Array | None = None,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    standardize_x: bool = True,
) -> Split:
    """Loads a scikit-learn bundled dataset as a standardised train/val/test split.

    Args:
      name: one of ``"diabetes"``, ``"digits"``, ``"iris"``, ``"wine"``,
        ``"breast_cancer"``.
      key: PRNG key of the split (default ``jax.random.key(0)``).
      fractions: train / validation / test fractions.
      standardize_x: standardise features with training statistics.

    Returns:
      A :class:`~jaxhp.Split`; ``y`` is float32 for regression (standardised)
      and int32 labels for classification (stratified split).

    Raises:
      ValueError: for an unknown name. ImportError: without scikit-learn.

    Example:
      >>> split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
      >>> split.sizes
      (265, 88, 89)
    """
    if name not in NAMES:
        from jaxhp._hparams import did_you_mean

        raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, NAMES)}; "
                         f"available: {list(NAMES)}")
    key = jax.random.key(0) if key is None else key
    x, y = _raw(name)
    regression = name in _REGRESSION
    y = y.astype(np.float32) if regression else y.astype(np.int32)
    split = split_data({"x": x, "y": y}, key=key, fractions=fractions,
                       stratify=None if regression else "y")
    keys = (["x"] if standardize_x else []) + (["y"] if regression else [])
    return standardize(split, keys) if keys else split


def n_classes(name: str) -> int:
    """Number of classes of a classification dataset (0 for regression)."""
    if name in _REGRESSION:
        return 0
    return int(len(np.unique(_raw(name)[1])))
