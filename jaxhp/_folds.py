"""K-fold cross-validation: the folds of scikit-learn's ``KFold`` / ``StratifiedKFold``.

The partitions are scikit-learn's exactly (same arguments, same rows in each
fold, tested against its ``split()``), computed here with numpy only:

- ``KFold``: rows ``0..n-1`` (shuffled by ``np.random.RandomState(random_state)``
  when ``shuffle``) are cut into ``k`` consecutive blocks, the first ``n % k``
  one row longer;
- ``StratifiedKFold``: classes are numbered in order of first appearance; the
  sorted class codes are dealt round-robin to the folds, which fixes how many
  rows of each class every fold validates on; within a class the rows take
  their folds in blocks, in data order (the block labels shuffled per class
  when ``shuffle``).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np

from jaxhp._data import DataError, Folds, Split, check_part, check_split


class FoldWarning(UserWarning):
    """A stratified fold lacks a class (a class has fewer rows than ``k``)."""


def _check_k(k, n: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"kfold(): `k`={k!r}: must be an integer >= 2 (the number of "
                         "folds; scikit-learn's n_splits)")
    if k > n:
        raise ValueError(f"kfold(): `k`={k} is greater than the number of rows n={n}: "
                         f"each fold needs at least one row; use k <= {n}")
    return int(k)


def _rng(shuffle: bool, random_state) -> np.random.RandomState | None:
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"kfold(): `shuffle`={shuffle!r}: must be True or False")
    if random_state is not None and (isinstance(random_state, bool) or not isinstance(
            random_state, (int, np.integer)) or not 0 <= random_state < 2**32):
        raise ValueError(f"kfold(): `random_state`={random_state!r}: must be an integer "
                         "in [0, 2**32) or None")
    if not shuffle:
        if random_state is not None:
            raise ValueError(f"kfold(): `random_state`={random_state} has no effect since "
                             "`shuffle` is False (as in scikit-learn); drop it or pass "
                             "shuffle=True")
        return None
    if random_state is None:
        raise ValueError("kfold(): shuffle=True needs an integer `random_state` (the folds "
                         "must be reproducible; scikit-learn would draw from numpy's global "
                         "random state)")
    return np.random.RandomState(int(random_state))


def kfold_assignment(n: int, k: int, rng: np.random.RandomState | None) -> np.ndarray:
    """The fold of each row, ``(n,)``, as scikit-learn's ``KFold``."""
    order = np.arange(n)
    if rng is not None:
        rng.shuffle(order)
    sizes = np.full(k, n // k)
    sizes[:n % k] += 1
    fold_of = np.empty(n, np.int64)
    fold_of[order] = np.repeat(np.arange(k), sizes)
    return fold_of


def stratified_assignment(labels: np.ndarray, k: int,
                          rng: np.random.RandomState | None) -> np.ndarray:
    """The fold of each row, ``(n,)``, as scikit-learn's ``StratifiedKFold``."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    appearance = np.argsort(np.argsort(first))  # class code by first appearance
    codes = appearance[inverse.ravel()]
    n_classes = len(first)
    counts = np.bincount(codes, minlength=n_classes)
    if np.all(counts < k):
        raise ValueError(f"kfold(): `k`={k} is greater than the number of rows of every "
                         f"class (largest class: {int(counts.max())} rows); use k <= "
                         f"{int(counts.max())}")
    if counts.min() < k:
        warnings.warn(f"kfold(): the least populated class has only {int(counts.min())} "
                      f"rows, fewer than k={k}: some folds validate without it (as "
                      "scikit-learn's StratifiedKFold warns)", FoldWarning, stacklevel=3)
    dealt = np.sort(codes)
    # allocation[f, c]: rows of class c that fold f validates on (round robin)
    allocation = np.stack([np.bincount(dealt[f::k], minlength=n_classes) for f in range(k)])
    fold_of = np.empty(len(codes), np.int64)
    for c in range(n_classes):
        blocks = np.repeat(np.arange(k), allocation[:, c])
        if rng is not None:
            rng.shuffle(blocks)
        fold_of[codes == c] = blocks
    return fold_of


def _labels(data, stratify, n: int) -> np.ndarray:
    if isinstance(stratify, str):
        if not isinstance(data, dict) or stratify not in data:
            names = sorted(data) if isinstance(data, dict) else "not a dict"
            raise KeyError(f"kfold(): `stratify`={stratify!r} names no entry of the data "
                           f"(entries: {names})")
        labels = np.asarray(data[stratify])
    else:
        labels = np.asarray(stratify)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise DataError(f"kfold(): `stratify` labels have shape {labels.shape}, expected "
                        f"({n},): one class label per row")
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        raise ValueError("kfold(): `stratify` labels are continuous (non-integer floats); "
                         "stratified folds need class labels (scikit-learn refuses them too)")
    return labels


def kfold(
    data: Any,
    k: int = 5,
    *,
    test: Any = None,
    shuffle: bool = False,
    random_state: int | None = None,
    stratify: str | np.ndarray | None = None,
) -> Folds:
    """K-fold cross-validation folds, exactly scikit-learn's ``KFold`` / ``StratifiedKFold``.

    Args:
      data: a :class:`Split` (its train and validation parts are pooled as the
        cross-validation data, its test part kept apart), or a pytree of arrays
        with a leading example axis (then ``test=`` is required).
      k: the number of folds (scikit-learn's ``n_splits``), ``2 <= k <= rows``.
      test: the held-out test part when ``data`` is not a ``Split``.
      shuffle, random_state: as in scikit-learn: shuffle the rows with
        ``np.random.RandomState(random_state)`` before cutting; ``shuffle=True``
        needs an integer ``random_state``.
      stratify: a leaf name of the data (e.g. ``"y"``) or an array of class
        labels: the folds of ``StratifiedKFold`` (each class spread evenly).

    Returns:
      A :class:`Folds`, accepted by :func:`jaxhp.sweep` in place of a ``Split``.

    Raises:
      ValueError: ``k < 2``, ``k`` above the number of rows (or, stratified,
        above every class's rows), ``random_state`` without ``shuffle``,
        ``shuffle`` without ``random_state``, continuous labels.
      DataError: malformed data or labels.

    Warns:
      FoldWarning: stratified, a class has fewer rows than ``k`` (as
        scikit-learn warns).

    Example:
      >>> folds = jaxhp.kfold(split, 5, shuffle=True, random_state=0, stratify="y")
      >>> result = jaxhp.sweep(model, space, folds, key=jax.random.key(0), seeds=2)
    """
    if isinstance(data, Folds):
        raise TypeError("kfold(): `data` is already a jaxhp.Folds")
    if isinstance(data, Split):
        if test is not None:
            raise ValueError("kfold(): `test` is given, but `data` is a Split, whose test "
                             "part is the test part; pass one or the other")
        check_split(data)
        pooled = _concat(data.train, data.val)
        test = data.test
    else:
        if test is None:
            raise ValueError("kfold(): `test` is required when `data` is not a jaxhp.Split: "
                             "the held-out part read once by evaluate_test (or pass a "
                             "Split: its train and val parts are pooled)")
        pooled = data
        check_split(Split(pooled, pooled, test))
    n = check_part(pooled, "data")
    k = _check_k(k, n)
    rng = _rng(shuffle, random_state)
    if stratify is None:
        fold_of = kfold_assignment(n, k, rng)
    else:
        fold_of = stratified_assignment(_labels(pooled, stratify, n), k, rng)
    return Folds(pooled, test, fold_of, k, bool(shuffle),
                 None if random_state is None else int(random_state), stratify is not None)


def _concat(a, b):
    return jax.tree_util.tree_map(lambda x, y: np.concatenate([np.asarray(x), np.asarray(y)]),
                                  a, b)


def check_folds(folds: Folds) -> Split:
    """Checks a :class:`Folds` (its data and its fold assignment); returns fold 0 as a
    :class:`Split`, which stands for every fold in the model's checks."""
    check_split(Split(folds.data, folds.data, folds.test))
    n = check_part(folds.data, "data")
    k = folds.k
    fold_of = np.asarray(folds.fold_of)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"Folds: `k`={k!r}: must be an integer >= 2")
    if fold_of.shape != (n,) or fold_of.dtype.kind not in "iu":
        raise DataError(f"Folds: `fold_of` has shape {fold_of.shape} and dtype "
                        f"{fold_of.dtype}, expected ({n},) integers: one fold per row")
    counts = np.bincount(fold_of, minlength=k) if fold_of.min() >= 0 else None
    if counts is None or len(counts) > k or np.any(counts == 0) or np.any(counts == n):
        raise DataError(f"Folds: `fold_of` must assign every row a fold in [0, {k - 1}], "
                        "each fold validating on at least one row and training on at "
                        "least one (make folds with jaxhp.kfold)")
    return folds.split(0)
