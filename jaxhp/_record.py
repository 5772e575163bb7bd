"""Typed records of a search and their plain-JSON/array encoding (never pickled).

- :class:`GroupInfo`: one static group of a search (statics, chunking, compile
  and run seconds, error), the same fields for every search.
- :class:`Rung`: one rung of successive halving or Hyperband.
- :class:`ChunkRecord`: what a search's ``on_chunk`` callback receives for each
  finished chunk (or segment) of members.
- :func:`encode` / :func:`decode`: a result's declared extras (dicts, lists,
  numpy arrays, numbers, strings and the records above) to ``(arrays, JSON)``
  and back, so that ``save``/``load`` keep them exactly.
- :class:`StackedParams`: per-setting parameters read from stacked trees (one per
  group of settings), sliced only when a setting's parameters are asked for.
- :func:`flatten_params` / :func:`unflatten_params`: per-setting parameter
  pytrees as stacked arrays keyed by their tree paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np


class RecordError(ValueError):
    """An encoded record is malformed (a missing field, an unknown record type)."""


@dataclasses.dataclass
class GroupInfo:
    """One static group of a search.

    Attributes:
      statics: the group's static fields.
      n_settings: its settings.
      chunk_size: settings per compiled call (the size chosen by measurement when
        the sweep measured chunk sizes); n_chunks: compiled calls.
      chunk_trials: ``[[size, seconds per setting], ...]`` of the chunk sizes a sweep
        tried on this machine before choosing ``chunk_size`` (empty: none tried).
      steps: training steps of its settings (a group that pads ``steps``: the
        steps its program ran, each member stopping after its own ``steps``);
        eval_steps: when the validation curve was recorded.
      compile_s, run_s: seconds spent compiling and in the compiled calls.
      compiled: programs compiled for it (0 when all were cached).
      chunks_computed, chunks_loaded: chunks trained, and loaded from a checkpoint.
      rechecked: settings trained a second time by the checked program: the
        steps of a sweep (and of a segment) check the loss only and the state at
        the end; a setting whose final state is not finite runs again with the
        program that checks every step (see the README, Health).
      health: how its members' divergence was detected: ``"step"`` (every step's
        loss and state; a diverging member frozen at its last finite state) or
        ``"end"`` (the final state and training objective only; see
        :func:`jaxhp.train`).
      error: the message of the error that failed the group, else ``None``.
    """

    statics: dict
    n_settings: int
    chunk_size: int = 0
    n_chunks: int = 0
    chunk_trials: list = dataclasses.field(default_factory=list)
    steps: int = 0
    eval_steps: list = dataclasses.field(default_factory=list)
    compile_s: float = 0.0
    run_s: float = 0.0
    compiled: int = 0
    chunks_computed: int = 0
    chunks_loaded: int = 0
    rechecked: int = 0
    error: str | None = None
    health: str = "step"


@dataclasses.dataclass
class Rung:
    """One rung of successive halving (or of a Hyperband bracket).

    Attributes:
      rung: its index in the bracket; bracket: the Hyperband bracket (None for
        plain successive halving); group: the static group.
      steps: the steps every member has trained after the rung.
      settings: the result rows trained in the rung; promoted: those that go on.
      value: the mean validation metric of ``settings`` (NaN: unhealthy).
      train_steps: member steps spent in the rung.
      compile_s, run_s: seconds spent compiling and running it.
    """

    rung: int
    bracket: int | None
    group: int
    steps: int
    settings: np.ndarray
    promoted: np.ndarray
    value: np.ndarray
    train_steps: int
    compile_s: float = 0.0
    run_s: float = 0.0


@dataclasses.dataclass
class ChunkRecord:
    """One finished chunk of a search, as its ``on_chunk`` callback receives it.

    A chunk is the engine's unit of work: some settings of one static group,
    each with every seed, trained in one compiled call. Arrays are plain numpy,
    indexed ``[setting]`` or ``[setting, seed]`` like a result's, so a callback
    can write them anywhere (a file, TensorBoard, W&B, MLflow) without JAX.

    Attributes:
      search: ``"sweep"``, ``"successive_halving"``, ``"hyperband"`` or ``"pbt"``.
      group: the static group (``result.groups[group]``).
      chunk: the chunk's index in its group: for a sweep its checkpoint slot
        (``0 .. n_chunks - 1``); for an adaptive search a counter over the
        group's segments in this call.
      step: the steps every member has trained at the end of the chunk (a
        sweep: the settings' ``steps``, in a group that pads them the steps the
        program ran, a member's own in ``settings["steps"]``; halving: the
        rung's budget; PBT: the end of the interval).
      rows: ``(m,)`` the settings' rows in the search's result
        (``result.setting(rows[j])``).
      settings: ``{field: (m,) column}`` the settings as the search trained
        them (PBT: the interval's hyperparameters; halving: ``steps`` is the
        search's horizon, see ``step`` for the steps trained so far).
      seed_ids: ``(seeds,)`` the seed indices.
      val: ``{metric: (m, seeds)}`` the validation metrics after the chunk
        (``loss`` included).
      train_loss: ``(m, seeds)`` the training objective after the chunk.
      diverged_at: ``(m, seeds)`` the step a member diverged at, ``-1`` if healthy.
      loaded: the chunk was read from ``checkpoint_dir`` rather than trained
        by this call (a resumed sweep).

    Example:
      >>> def log(rec):
      ...     for row in rec.to_dicts():
      ...         print(row["index"], row["learning_rate"], row["val_mse"])
      >>> jaxhp.sweep(model, space, split, key=key, on_chunk=log)
    """

    search: str
    group: int
    chunk: int
    step: int
    rows: np.ndarray
    settings: dict
    seed_ids: np.ndarray
    val: dict
    train_loss: np.ndarray
    diverged_at: np.ndarray
    loaded: bool = False

    def __len__(self) -> int:
        return int(self.rows.size)

    @property
    def status(self) -> np.ndarray:
        """``(m, seeds)``: ``"ok"`` or ``"diverged"`` per member."""
        return np.where(self.diverged_at >= 0, "diverged", "ok").astype("<U8")

    def mean(self, metric: str) -> np.ndarray:
        """``(m,)`` the mean over seeds of a validation metric, as a result scores it
        (``SweepResult.aggregate``): NaN for a setting with a diverged seed or a
        NaN/Inf value."""
        v = np.asarray(self.val[metric], np.float64)
        ok = np.all(self.diverged_at < 0, axis=1) & np.all(np.isfinite(v), axis=1)
        return np.where(ok, np.where(ok[:, None], v, 0.0).mean(axis=1), np.nan)

    def to_dicts(self) -> list[dict]:
        """One flat dict of plain Python values per setting, ready for a logger:
        ``index`` (the result row), ``group``, ``chunk``, ``step``, every field,
        ``status`` (``"diverged"`` if any seed diverged) and ``val_<metric>``
        (:meth:`mean`) for every metric."""
        cols = {name: np.asarray(col).tolist() for name, col in self.settings.items()}
        means = {f"val_{k}": self.mean(k).tolist() for k in sorted(self.val)}
        bad = np.any(self.diverged_at >= 0, axis=1)
        out = []
        for j, row in enumerate(self.rows.tolist()):
            d = {"index": row, "group": self.group, "chunk": self.chunk, "step": self.step}
            d.update({name: col[j] for name, col in cols.items()})
            d["status"] = "diverged" if bad[j] else "ok"
            d.update({k: v[j] for k, v in means.items()})
            out.append(d)
        return out


RECORDS = {"GroupInfo": GroupInfo, "Rung": Rung}


def encode(obj: Any, arrays: dict[str, np.ndarray], prefix: str) -> Any:
    """``obj`` as JSON, its numpy arrays moved into ``arrays`` under ``prefix/...``."""
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            raise TypeError(f"{prefix}: an object array cannot be saved (no pickling)")
        arrays[prefix] = obj
        return {"__array__": prefix}
    if dataclasses.is_dataclass(obj) and type(obj).__name__ in RECORDS:
        return {"__record__": type(obj).__name__,
                "fields": {f.name: encode(getattr(obj, f.name), arrays, f"{prefix}/{f.name}")
                           for f in dataclasses.fields(obj)}}
    if isinstance(obj, Mapping):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"{prefix}: keys must be strings, got {k!r}")
        return {"__dict__": {k: encode(v, arrays, f"{prefix}/{k}") for k, v in obj.items()}}
    if isinstance(obj, (list, tuple)):
        items = [encode(v, arrays, f"{prefix}/{i}") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{prefix}: a {type(obj).__name__} cannot be saved as plain "
                    "arrays and JSON")


def decode(obj: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(obj, list):
        return [decode(v, arrays) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__array__" in obj:
        name = obj["__array__"]
        if name not in arrays:
            raise RecordError(f"the array `{name}` is missing")
        return arrays[name]
    if "__record__" in obj:
        cls = RECORDS.get(obj["__record__"])
        if cls is None:
            raise RecordError(f"unknown record type {obj['__record__']!r}")
        fields = {k: decode(v, arrays) for k, v in obj.get("fields", {}).items()}
        try:
            return cls(**fields)
        except TypeError as e:
            raise RecordError(f"a {cls.__name__} record does not fit: {e}") from e
    if "__tuple__" in obj:
        return tuple(decode(v, arrays) for v in obj["__tuple__"])
    if "__dict__" in obj:
        return {k: decode(v, arrays) for k, v in obj["__dict__"].items()}
    raise RecordError(f"an unknown encoded object with keys {sorted(obj)}")


def group_info(d: Mapping[str, Any] | GroupInfo) -> GroupInfo:
    """A :class:`GroupInfo` from itself or from the plain dict of an older file."""
    if isinstance(d, GroupInfo):
        return d
    names = {f.name for f in dataclasses.fields(GroupInfo)}
    try:
        return GroupInfo(**{k: v for k, v in d.items() if k in names})
    except TypeError as e:
        raise RecordError(f"a group record does not fit GroupInfo: {e}") from e


class StackedParams(Sequence):
    """Per-setting parameters (leaves ``(seeds, ...)``, ``None`` for a setting without
    any) read from stacked trees, without a tree per setting.

    ``parts`` are ``(rows, tree)`` pairs: ``tree``'s leaves are ``(seeds, len(rows),
    ...)`` and column ``j`` holds the parameters of setting ``rows[j]``. Item ``i`` is
    sliced from its part when asked for (a view, as ``a[:, j]`` gives).
    """

    def __init__(self, n: int, parts: Sequence[tuple[Any, Any]]):
        self.part = np.full(n, -1, np.int64)
        self.column = np.zeros(n, np.int64)
        self.trees = []
        for k, (rows, tree) in enumerate(parts):
            rows = np.asarray(rows, np.int64)
            self.part[rows] = k
            self.column[rows] = np.arange(rows.size)
            self.trees.append(tree)

    def __len__(self) -> int:
        return self.part.size

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        k, j = int(self.part[i]), int(self.column[i])
        if k < 0:
            return None
        return jax.tree_util.tree_map(lambda a: a[:, j], self.trees[k])

    def stacked(self) -> tuple[list[str], dict[str, np.ndarray], np.ndarray]:
        """As :func:`flatten_params`, scattered part by part with array indexing."""
        present = self.part >= 0
        if not self.trees:
            return [], {}, present
        leaves = jax.tree_util.tree_flatten_with_path(self.trees[0])[0]
        paths = [jax.tree_util.keystr(k) for k, _ in leaves]
        stacked = {}
        for j, (path, (_, leaf)) in enumerate(zip(paths, leaves)):
            leaf = np.asarray(leaf)
            out = np.zeros((self.part.size, leaf.shape[0]) + leaf.shape[2:], leaf.dtype)
            for k, tree in enumerate(self.trees):
                out[self.part == k] = np.swapaxes(
                    np.asarray(jax.tree_util.tree_leaves(tree)[j]), 0, 1)[
                    self.column[self.part == k]]
            stacked[path] = out
        return paths, stacked, present


def flatten_params(params: Sequence[Any]) -> tuple[list[str], dict[str, np.ndarray],
                                                    np.ndarray]:
    """Per-setting parameter pytrees (leaves ``(seeds, ...)``; ``None`` for a setting
    without parameters) as ``(paths, {path: (settings, seeds, ...)}, present)``."""
    if isinstance(params, StackedParams):
        return params.stacked()
    present = np.asarray([p is not None for p in params], bool)
    first = next((p for p in params if p is not None), None)
    if first is None:
        return [], {}, present
    leaves = jax.tree_util.tree_flatten_with_path(first)[0]
    paths = [jax.tree_util.keystr(k) for k, _ in leaves]
    stacked = {}
    for j, (path, leaf) in enumerate(zip(paths, (v for _, v in leaves))):
        zero = np.zeros_like(np.asarray(leaf))
        stacked[path] = np.stack([
            np.asarray(jax.tree_util.tree_leaves(p)[j]) if p is not None else zero
            for p in params])
    return paths, stacked, present


def unflatten_params(structure: Any, paths: Sequence[str], stacked: Mapping[str, np.ndarray],
                     index: int) -> Any:
    """Setting ``index``'s parameters (leaves ``(seeds, ...)``) in the tree structure of
    ``structure`` (e.g. ``jax.eval_shape`` of the model's ``init``)."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(structure)
    want = [jax.tree_util.keystr(k) for k, _ in leaves]
    if sorted(want) != sorted(paths):
        raise RecordError(f"the saved parameters have paths {list(paths)[:4]}..., the "
                          f"model's are {want[:4]}...: another model?")
    return jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(structure), [stacked[p][index] for p in want])
