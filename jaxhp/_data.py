"""Data: the train / validation / test split, its checks, and minibatches.

A *part* is a pytree of arrays sharing a leading example axis (for example
``{"x": (n, d), "y": (n,)}``). A :class:`Split` holds three parts. The test
part is never passed to training: only selection's final evaluation reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class DataError(ValueError):
    """The data is malformed: names the part, the array and the shapes."""


class Split(NamedTuple):
    """Train, validation and test parts (pytrees with a leading example axis)."""

    train: Any
    val: Any
    test: Any

    @property
    def sizes(self) -> tuple[int, int, int]:
        """Number of examples in (train, val, test)."""
        return tuple(part_size(p) for p in self)  # type: ignore[return-value]


class Folds(NamedTuple):
    """The K folds of a cross-validation, made by :func:`jaxhp.kfold`.

    ``data`` (every non-test row) is cut into ``k`` folds; fold ``f`` validates
    on the rows with ``fold_of == f`` and trains on the others, exactly as
    scikit-learn's ``KFold`` / ``StratifiedKFold`` with the same arguments.
    ``test`` is kept apart, read once by ``SweepResult.evaluate_test`` after a
    refit on all of ``data``. :func:`jaxhp.sweep` accepts a ``Folds`` wherever
    it accepts a :class:`Split`.

    Attributes:
      data: the cross-validation data (a pytree with a leading example axis).
      test: the held-out test part.
      fold_of: ``(n,)`` int array: the fold in which each row of ``data`` validates.
      k: the number of folds.
      shuffle, random_state: as in scikit-learn (rows shuffled before cutting).
      stratified: whether each class is spread evenly over the folds.

    Example:
      >>> folds = jaxhp.kfold(split, 5, shuffle=True, random_state=0)
      >>> folds.split(0).sizes          # fold 0 as a Split: (train, val, test)
    """

    data: Any
    test: Any
    fold_of: np.ndarray
    k: int
    shuffle: bool = False
    random_state: int | None = None
    stratified: bool = False

    def indices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``[(train_rows, val_rows)]`` per fold, sorted, as scikit-learn's ``split()``."""
        rows = np.arange(len(self.fold_of))
        return [(rows[self.fold_of != f], rows[self.fold_of == f]) for f in range(self.k)]

    def split(self, fold: int) -> Split:
        """Fold ``fold`` as a :class:`Split` (train, validation rows; the test part):
        ``jaxhp.train(model, hp, folds.split(f), key=...)`` trains it alone."""
        if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) \
                or not 0 <= fold < self.k:
            raise ValueError(f"`fold`={fold!r}: must be an integer in [0, {self.k - 1}]")
        tr, va = self.indices()[int(fold)]
        take = lambda idx: jax.tree_util.tree_map(lambda a: np.asarray(a)[idx], self.data)
        return Split(take(tr), take(va), self.test)

    def refit_split(self) -> Split:
        """All the cross-validation data as training part (and, unused for selection,
        as validation part), with the test part: what the final refit trains on."""
        return Split(self.data, self.data, self.test)

    @property
    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows per fold: ``(train sizes, validation sizes)``, each ``(k,)``."""
        val = np.bincount(self.fold_of, minlength=self.k)
        return len(self.fold_of) - val, val

    def stacked(self) -> tuple[Any, Any]:
        """The folds' training and validation parts stacked on a leading fold axis,
        ``(k, rows, ...)``. Folds of unequal size are padded to the largest (by
        repeating their first row) and returned as :class:`Padded` with
        ``count`` the real rows of each fold, ``(k,)``."""
        parts = []
        for which in (0, 1):
            idx = [pair[which] for pair in self.indices()]
            counts = np.asarray([len(i) for i in idx], np.int32)
            m = int(counts.max())
            pad = [np.concatenate([i, np.repeat(i[:1], m - len(i))]) for i in idx]
            rows = np.stack(pad)
            stack = jax.tree_util.tree_map(lambda a, r=rows: np.asarray(a)[r], self.data)
            parts.append(stack if np.all(counts == m) else Padded(stack, counts))
        return parts[0], parts[1]

    def record(self) -> dict:
        """What defines the folds, for a result's record (JSON)."""
        return {"k": int(self.k), "shuffle": bool(self.shuffle),
                "random_state": self.random_state, "stratified": bool(self.stratified),
                "n": int(len(self.fold_of))}


def _leaves_with_names(part) -> list[tuple[str, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(part)
    return [(jax.tree_util.keystr(path) or "<array>", leaf) for path, leaf in flat]


def part_size(part) -> int:
    """The number of examples in a part (its leading axis)."""
    leaves = jax.tree_util.tree_leaves(part)
    if not leaves:
        raise DataError("a data part has no arrays")
    return int(np.shape(leaves[0])[0]) if np.ndim(leaves[0]) else 0


def check_part(part, name: str = "data") -> int:
    """Checks one part: arrays with a common leading axis, non-empty, finite.

    Returns:
      The number of examples.

    Raises:
      DataError: naming the array and its shape.
    """
    named = _leaves_with_names(part)
    if not named:
        raise DataError(f"`{name}` holds no arrays")
    sizes = {}
    for path, leaf in named:
        shape = np.shape(leaf)
        if len(shape) == 0:
            raise DataError(f"`{name}{path}` is a scalar; every array needs a leading "
                            "example axis")
        sizes[path] = shape[0]
    if len(set(sizes.values())) > 1:
        desc = ", ".join(f"{name}{p} has {n}" for p, n in sizes.items())
        raise DataError(f"`{name}`: arrays disagree on the number of examples ({desc})")
    n = next(iter(sizes.values()))
    if n == 0:
        raise DataError(f"`{name}` is empty (0 examples)")
    for path, leaf in named:
        arr = np.asarray(leaf)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
            raise DataError(f"`{name}{path}` (shape {arr.shape}) holds {bad} NaN/Inf "
                            "value(s); clean or impute the data first")
    return n


def check_split(split: Split) -> tuple[int, int, int]:
    """Checks every part, and that the parts agree in structure and feature shapes.

    Returns:
      The sizes of (train, val, test).

    Raises:
      DataError: naming the part, the array and the shapes.
    """
    if isinstance(split, Folds):
        raise TypeError("expected a jaxhp.Split, got jaxhp.Folds: K-fold cross-validation "
                        "is supported by jaxhp.sweep only; elsewhere pass one Split (one "
                        "fold is folds.split(f))")
    if not isinstance(split, Split):
        raise TypeError(f"expected a jaxhp.Split, got {type(split).__name__}")
    sizes = tuple(check_part(p, n) for p, n in zip(split, Split._fields))
    ref = dict(_leaves_with_names(split.train))
    for pname in ("val", "test"):
        other = dict(_leaves_with_names(getattr(split, pname)))
        if set(other) != set(ref):
            raise DataError(f"`{pname}` has arrays {sorted(other)} but `train` has "
                            f"{sorted(ref)}")
        for path, leaf in other.items():
            a, b = np.shape(ref[path])[1:], np.shape(leaf)[1:]
            if a != b:
                raise DataError(f"feature shapes differ: train{path} is "
                                f"{np.shape(ref[path])}, {pname}{path} is "
                                f"{np.shape(leaf)} (trailing {a} vs {b})")
    return sizes  # type: ignore[return-value]


def _check_xy(x, y) -> None:
    if np.shape(x)[:1] != np.shape(y)[:1]:
        raise DataError(f"X and y lengths differ: X has shape {np.shape(x)}, "
                        f"y has shape {np.shape(y)}")


def split_data(
    data: Any,
    *,
    key: jax.Array,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    stratify: str | np.ndarray | None = None,
) -> Split:
    """Splits a part into train / validation / test, deterministically from a key.

    Args:
      data: a pytree of arrays with a common leading axis, e.g. ``{"x": X, "y": y}``.
      key: a PRNG key; the same key gives the same split.
      fractions: three positive fractions summing to 1.
      stratify: a leaf name of ``data`` (e.g. ``"y"``) or an array of labels:
        each class is split with the same fractions.

    Returns:
      A :class:`Split`.

    Raises:
      ValueError: for bad fractions; DataError for malformed data.

    Example:
      >>> split = split_data({"x": X, "y": y}, key=jax.random.key(0), stratify="y")
    """
    if isinstance(data, dict) and "x" in data and "y" in data:
        _check_xy(data["x"], data["y"])
    n = check_part(data, "data")
    fr = np.asarray(fractions, np.float64)
    if fr.shape != (3,) or np.any(fr <= 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"`fractions` must be three positive numbers summing to 1, "
                         f"got {tuple(fractions)}")
    if stratify is None:
        groups = [np.arange(n)]
    else:
        labels = np.asarray(data[stratify] if isinstance(stratify, str) else stratify)
        if labels.shape[:1] != (n,):
            raise DataError(f"`stratify` labels have shape {labels.shape}, expected ({n},)")
        groups = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    seed = np.asarray(jax.random.key_data(key)).ravel().astype(np.uint64)
    rng = np.random.default_rng(seed.tolist())
    parts: list[list[np.ndarray]] = [[], [], []]
    for idx in groups:
        idx = rng.permutation(idx)
        cut1 = int(round(fr[0] * len(idx)))
        cut2 = cut1 + int(round(fr[1] * len(idx)))
        for j, sl in enumerate((idx[:cut1], idx[cut1:cut2], idx[cut2:])):
            parts[j].append(sl)
    out = []
    for pieces in parts:
        sel = np.sort(np.concatenate(pieces))
        out.append(jax.tree_util.tree_map(lambda a, s=sel: np.asarray(a)[s], data))
    split = Split(*out)
    check_split(split)
    return split


def standardize(split: Split, keys: Sequence[str] = ("x",)) -> Split:
    """Standardises the named leaves with the mean and std of the train part only.

    Constant features (std 0) are centred and left unscaled.

    Args:
      split: a :class:`Split` whose parts are dicts.
      keys: the entries to standardise.

    Returns:
      A new :class:`Split`; validation and test use the training statistics.
    """
    check_split(split)
    parts = [dict(p) for p in split]
    for k in keys:
        if k not in parts[0]:
            raise KeyError(f"standardize(): no entry `{k}` in the data; "
                           f"entries are {sorted(parts[0])}")
        tr = np.asarray(parts[0][k], np.float64)
        mu, sd = tr.mean(axis=0), tr.std(axis=0)
        sd = np.where(sd > 0, sd, 1.0)
        for p in parts:
            p[k] = ((np.asarray(p[k], np.float64) - mu) / sd).astype(np.float32)
    return Split(*parts)


class Padded(NamedTuple):
    """A part padded to a fixed number of rows: only its first ``count`` rows are real.

    The folds of a K-fold cross-validation differ in size by one row when ``k``
    does not divide the data; stacked, each is padded to the largest fold so that
    one program serves them all. ``count`` is traced: no padded row is ever
    sampled (:func:`sample_batch`) or counted in a mean (``jaxhp._train``).
    """

    data: Any
    count: Any


def sort_keys(key: jax.Array, n: int, count=None) -> jax.Array:
    """Random ``uint32`` sort keys of rows ``0..n-1``: row ``i``'s from ``fold_in(key, i)``
    only, so a row's key does not depend on ``n``; rows ``>= count`` get the largest key."""
    keys = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (), jnp.uint32))(
        jnp.arange(n, dtype=jnp.uint32))
    if count is None:
        return keys
    return jnp.where(jnp.arange(n) < count, keys, jnp.uint32(0xFFFFFFFF))


def epoch_order(key: jax.Array, n: int, count=None) -> jax.Array:
    """The order of an epoch's rows: a stable argsort of :func:`sort_keys`.

    Its first ``count`` entries are a permutation of ``0..count-1`` and do not
    depend on ``n`` (padded rows sort last, behind any real row with the same
    key, since the sort is stable and they come after every real row): a padded
    part draws exactly the minibatches of its unpadded rows.
    """
    return jnp.argsort(sort_keys(key, n, count), stable=True)


def _minibatched(part, batch_size: int | None):
    """``(rows, count, n, per_epoch)`` of a part drawn in minibatches, else ``None``
    (the whole part is the batch)."""
    count = None
    if isinstance(part, Padded):
        part, count = part.data, part.count
    n = part_size(part)
    if batch_size is None or batch_size >= n:
        return None
    return part, count, n, (n if count is None else count) // batch_size


def sample_batch(part, key: jax.Array, step, batch_size: int | None):
    """The minibatch of a training step, sampled on device (pure, traceable).

    Examples are drawn without replacement within an epoch: epoch ``e`` takes
    its rows in the order of random sort keys drawn from ``fold_in(key, e)``
    (row ``i``'s from ``fold_in(fold_in(key, e), i)``), ``n // batch_size``
    batches per epoch, dropping the remainder. With ``batch_size`` unset or not
    smaller than the number of examples, the whole part is the batch.

    A padded part (the folds of ``jaxhp.kfold``) holds ``count`` real rows out of
    ``n``: it draws exactly the batches the unpadded ``count`` rows would, and
    never a padded row (``count // batch_size`` batches per epoch; ``count``
    may be traced). Its full batch is the padded part itself (masked by the caller).
    """
    return batch_from(part, batch_order(part, key, step, batch_size), step, batch_size)


def batch_order(part, key: jax.Array, step, batch_size: int | None):
    """The order of the rows of ``step``'s epoch (:func:`epoch_order`), ``None`` when
    the whole part is the batch. Steps of one epoch share it: a loop carries it and
    renews it with :func:`next_order` (one sort per epoch, not per step)."""
    mb = _minibatched(part, batch_size)
    if mb is None:
        return None
    _, count, n, per_epoch = mb
    return epoch_order(jax.random.fold_in(key, step // per_epoch), n, count)


def next_order(part, key: jax.Array, step, batch_size: int | None, order):
    """The order for ``step`` given the order of step ``step - 1``'s epoch: renewed
    (a ``lax.cond``: only then computed) at the first step of an epoch."""
    mb = _minibatched(part, batch_size)
    if mb is None:
        return None
    _, count, n, per_epoch = mb
    return jax.lax.cond(step % per_epoch == 0,
                        lambda: epoch_order(jax.random.fold_in(key, step // per_epoch), n,
                                            count),
                        lambda: order)


def batch_from(part, order, step, batch_size: int | None):
    """``step``'s minibatch given its epoch's ``order`` (:func:`batch_order`); the whole
    part (a :class:`Padded` one as is) when ``order`` is ``None``."""
    if order is None:
        return part
    part, _, _, per_epoch = _minibatched(part, batch_size)
    idx = jax.lax.dynamic_slice_in_dim(order, (step % per_epoch) * batch_size, batch_size)
    return jax.tree_util.tree_map(lambda a: jnp.take(a, idx, axis=0), part)
