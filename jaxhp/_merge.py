"""``SweepResult.merge``: one result from sweeps split by hand (per static group, per slice).

The parts must be the same experiment: the same data (the fingerprint each result
records in ``meta["data"]``), key, seeds, model and hyperparameter class, the same
metrics, and no setting in two parts. Rows are concatenated in the order of the
parts; a static group that several parts ran becomes one group, its counts and
seconds summed. Everything a part recorded is kept: curves (padded with NaN to
the longest), kept parameters, test evaluations (whose ``index`` is renumbered).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

import jax
import numpy as np

from jaxhp._record import GroupInfo, StackedParams
from jaxhp._result import SweepResult, trained_from
from jaxhp._table import SettingsTable


def _refuse(what: str, i: int, a, b, hint: str) -> None:
    sa, sb = json.dumps(a, sort_keys=True, default=str), json.dumps(b, sort_keys=True,
                                                                    default=str)
    if len(sa) > 160 or len(sb) > 160:
        sa, sb = sa[:80] + "...", sb[:80] + "..."
    raise ValueError(f"merge(): results[0] and results[{i}] differ in {what}: {sa} != {sb}; "
                     f"{hint}")


def _data_fingerprint(r: SweepResult, i: int) -> dict:
    fp = r.meta.get("data")
    if not isinstance(fp, dict):
        raise ValueError(
            f"merge(): results[{i}] records no fingerprint of its data (meta['data']): it "
            "was saved by a jaxhp before result format 2, which still loads but cannot be "
            "merged, since nothing shows that it trained on the same data; re-run it")
    return fp


def _checked(results: Sequence[SweepResult]) -> None:
    """Refuses parts that are not the same experiment, naming what differs."""
    if not results:
        raise ValueError("merge(): no results to merge")
    for i, r in enumerate(results):
        if type(r) is not SweepResult:
            raise TypeError(f"merge(): results[{i}] is a {type(r).__name__}; merge() combines "
                            "sweeps (SweepResult): an adaptive search's records (rungs, "
                            "schedules) belong to its own run")
    first = results[0]
    fp0 = _data_fingerprint(first, 0)
    for i, r in enumerate(results[1:], 1):
        fp = _data_fingerprint(r, i)
        for part in ("train", "val"):
            if fp.get(part) != fp0.get(part):
                _refuse(f"the shapes of their {part} data", i, fp0.get(part), fp.get(part),
                        "they trained on different data")
        if fp.get("sha256") != fp0.get("sha256"):
            _refuse("the contents of their data (SHA-256 of train and val)", i,
                    fp0.get("sha256"), fp.get("sha256"),
                    "they trained on different data of the same shapes (another split, "
                    "shuffle or preprocessing?)")
        checks = [
            ("key", lambda x: [x.meta.get("key_impl"), x.meta.get("key_data")],
             "pass the same `key=` to every part"),
            ("seeds", lambda x: np.asarray(x.seed_ids).tolist(),
             "pass the same `seeds=` to every part"),
            ("model", lambda x: [x.meta.get("model"), x.meta.get("directions")],
             "they trained different models"),
            ("hyperparameter class", lambda x: x.table.cls.__qualname__,
             "their settings are of different HParams classes"),
            ("hyperparameter declaration", lambda x: x.table.cls.declaration(),
             "their HParams classes declare other fields or rules"),
            ("validation metrics", lambda x: sorted(x.val), "they trained different models"),
        ]
        for what, get, hint in checks:
            if get(r) != get(first):
                _refuse(what, i, get(first), get(r), hint)
    seen: dict[tuple, int] = {}
    for i, r in enumerate(results):
        cols = [r.table.columns[name].tolist() for name in r.table.columns]
        mine = set(zip(*cols)) if cols else set()
        for row in mine:
            j = seen.setdefault(row, i)
            if j != i:
                setting = dict(zip(r.table.columns, row))
                raise ValueError(f"merge(): the setting {setting} is in results[{j}] and "
                                 f"results[{i}]; which one's numbers to keep is ambiguous: "
                                 "merge parts that split the settings without overlap")


def _pad(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenated along the settings, the last axis padded with NaN to the longest."""
    t = max(a.shape[-1] for a in arrays)
    return np.concatenate([np.pad(a.astype(np.float32), [(0, 0)] * (a.ndim - 1)
                                  + [(0, t - a.shape[-1])], constant_values=np.nan)
                           for a in arrays])


def _merged_groups(results: Sequence[SweepResult]) -> tuple[list[GroupInfo], np.ndarray]:
    """One group per static part (in order of first appearance) and each row's group."""
    groups: list[GroupInfo] = []
    index: dict[str, int] = {}
    group_of = []
    for i, r in enumerate(results):
        mapping = np.full(len(r.groups) + 1, -1, np.int64)  # [-1] stays -1
        for gi, g in enumerate(r.groups):
            name = json.dumps(g.statics, sort_keys=True, default=str)
            if name not in index:
                index[name] = len(groups)
                groups.append(dataclasses.replace(g, statics=dict(g.statics),
                                                  chunk_trials=list(g.chunk_trials),
                                                  eval_steps=list(g.eval_steps)))
            else:
                m = groups[index[name]]
                if list(g.eval_steps) != list(m.eval_steps) or g.steps != m.steps:
                    raise ValueError(
                        f"merge(): static group {g.statics} trained {g.steps} steps, "
                        f"evaluated at steps {list(g.eval_steps)} in results[{i}], and "
                        f"{m.steps} steps at {list(m.eval_steps)} in an earlier part: "
                        "they ran with different `eval_every` or `loss_every`")
                if g.health != m.health:
                    raise ValueError(
                        f"merge(): static group {g.statics} detected divergence with "
                        f"health={g.health!r} in results[{i}] and health={m.health!r} in an "
                        "earlier part: their diverged settings mean different things; "
                        "merge results of the same `health`")
                m.n_settings += g.n_settings
                m.chunk_size = max(m.chunk_size, g.chunk_size)
                m.n_chunks += g.n_chunks
                m.chunk_trials += list(g.chunk_trials)
                m.compile_s += g.compile_s
                m.run_s += g.run_s
                m.compiled += g.compiled
                m.chunks_computed += g.chunks_computed
                m.chunks_loaded += g.chunks_loaded
                m.rechecked += g.rechecked
                m.error = m.error or g.error
            mapping[gi] = index[name]
        group_of.append(mapping[np.asarray(r.group_of, np.int64)])
    return groups, np.concatenate(group_of)


def _merged_params(results: Sequence[SweepResult], offsets: np.ndarray, n: int):
    parts = []
    for r, off in zip(results, offsets):
        kept = trained_from(r).params
        if kept is None:
            continue
        if isinstance(kept, StackedParams):
            for k, tree in enumerate(kept.trees):
                rows = np.flatnonzero(kept.part == k)
                order = np.empty(rows.size, np.int64)
                order[kept.column[rows]] = rows
                parts.append((order + off, tree))
        else:  # one tree (leaves (seeds, ...)) or None per setting
            for j, tree in enumerate(kept):
                if tree is not None:
                    parts.append((np.array([off + j]),
                                  jax.tree_util.tree_map(lambda a: np.asarray(a)[:, None],
                                                         tree)))
    return StackedParams(n, parts) if parts else None


def merge(results: Sequence[SweepResult]) -> SweepResult:
    """See :meth:`jaxhp.SweepResult.merge`."""
    results = list(results)
    _checked(results)
    first = results[0]
    sizes = np.array([r.n_settings for r in results], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    n = int(sizes.sum())
    cls = first.table.cls
    table = SettingsTable(cls, {name: np.concatenate([r.table.columns[name] for r in results])
                                for name in first.table.columns}, n=n)
    groups, group_of = _merged_groups(results)
    test_reads = [dict(t, index=int(t["index"]) + int(off), merged_from=i)
                  for i, (r, off) in enumerate(zip(results, offsets)) for t in r.test_reads]
    meta = dict(first.meta, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                merged=[{k: r.meta.get(k) for k in ("created", "n_devices", "n_processes",
                                                    "platform", "device_kind",
                                                    "jaxhp_version", "jax_version")}
                        | {"n_settings": r.n_settings} for r in results])
    models = [trained_from(r).model for r in results]
    return SweepResult(
        settings=table, seed_ids=np.asarray(first.seed_ids),
        status=np.concatenate([r.status for r in results]),
        diverged_at=np.concatenate([r.diverged_at for r in results]),
        train_loss=np.concatenate([r.train_loss for r in results]),
        val={k: np.concatenate([r.val[k] for r in results]) for k in first.val},
        loss_curve=_pad([r.loss_curve for r in results]),
        val_curve={k: _pad([r.val_curve[k] for r in results]) for k in first.val_curve},
        errors=np.concatenate([np.asarray(r.errors).astype(str) for r in results]),
        groups=groups, meta=meta, params=_merged_params(results, offsets, n),
        model=models[0] if all(m is not None for m in models) else None,
        split=trained_from(first).split, key=trained_from(first).key, test_reads=test_reads,
        group_of=group_of, fold_of=first.fold_of)
