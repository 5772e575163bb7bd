"""Resumable sweeps: each finished chunk is persisted atomically, with a manifest.

A checkpoint folder holds ``manifest.json`` (the sweep's fingerprint and the
list of finished chunks) and one ``chunk-G-C.npz`` + ``.json`` pair per
finished chunk. A chunk file is complete before the manifest names it
(temporary file, fsync, rename), so a sweep killed at any instant resumes from
the chunks the manifest lists; leftover temporary files are removed.
Resuming with a different fingerprint is refused, listing what differs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxhp._io import (
    FORMAT_VERSION,
    FormatError,
    atomic_write_json,
    clean_tmp,
    load_pair,
    save_pair,
)

MANIFEST = "manifest.json"


class CheckpointMismatch(ValueError):
    """A checkpoint folder belongs to a different sweep; lists the differences."""


def data_hash(split) -> str:
    """SHA-256 over every array of the split (shapes, dtypes and bytes)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(split)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.shape}|{a.dtype}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _json_roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=_default))


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (np.ndarray, tuple)):
        return np.asarray(o).tolist() if isinstance(o, np.ndarray) else list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def fingerprint(*, space, settings, model_fp, split, seed_ids, key, loop, plan) -> dict:
    """Everything that defines a sweep's numbers, as JSON-comparable values."""
    from jaxhp import __version__

    space_desc = space.to_dict() if hasattr(space, "to_dict") else None
    return _json_roundtrip({
        "space": space_desc,
        "settings_sha256": hashlib.sha256(json.dumps(
            [s.to_dict() for s in settings], sort_keys=True,
            default=_default).encode()).hexdigest(),
        "n_settings": len(settings),
        "static_values": sorted({json.dumps(s.statics(), sort_keys=True, default=_default)
                                 for s in settings}),
        "hparams": type(settings[0]).__module__ + "." + type(settings[0]).__qualname__,
        "model": model_fp,
        "data_sha256": data_hash(split),
        "seeds": [int(s) for s in seed_ids],
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "key_impl": str(jax.random.key_impl(key)),
        "jaxhp_version": __version__,
        "jax_version": jax.__version__,
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "loop": loop,
        "chunk_plan": plan,
    })


def _differences(old: dict, new: dict) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        if a != b:
            sa, sb = json.dumps(a, sort_keys=True), json.dumps(b, sort_keys=True)
            if len(sa) > 120 or len(sb) > 120:
                sa, sb = sa[:60] + "...", sb[:60] + "..."
            out.append(f"`{k}`: checkpoint has {sa}, this sweep has {sb}")
    return out


class Checkpoint:
    """A sweep's checkpoint folder (see the module docstring).

    Args:
      folder: the folder (created if absent).
      fp: the sweep's :func:`fingerprint`.
      overwrite: discard an existing checkpoint instead of resuming it.

    Raises:
      CheckpointMismatch: the folder holds another sweep's checkpoint.
      FormatError: the manifest is unreadable or of another format version.
    """

    def __init__(self, folder, fp: dict, *, overwrite: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.removed_tmp = clean_tmp(self.folder)
        self.fp = fp
        path = self.folder / MANIFEST
        self.done: dict[str, str] = {}
        if path.exists() and not overwrite:
            manifest = self._read_manifest(path)
            diff = _differences(manifest["fingerprint"], fp)
            if diff:
                raise CheckpointMismatch(
                    f"cannot resume from {self.folder}: it holds a different sweep:\n"
                    + "\n".join(f"  - {d}" for d in diff)
                    + "\nUse another folder, or pass overwrite=True to start afresh.")
            self.done = dict(manifest["chunks"])
        elif path.exists():
            for p in self.folder.glob("chunk-*"):
                p.unlink()
            path.unlink()
        self._write_manifest()

    @staticmethod
    def _read_manifest(path: Path) -> dict:
        try:
            manifest = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise FormatError(f"{path}: not valid JSON ({e}); the manifest is corrupted") from e
        if not isinstance(manifest, dict) or manifest.get("format") != "sweep-checkpoint":
            raise FormatError(f"{path}: not a jaxhp checkpoint manifest")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise FormatError(f"{path}: checkpoint format version "
                              f"{manifest.get('format_version')!r} is not supported "
                              f"(this jaxhp reads {FORMAT_VERSION}); use overwrite=True")
        return manifest

    def _write_manifest(self) -> None:
        atomic_write_json(self.folder / MANIFEST, {
            "format": "sweep-checkpoint", "format_version": FORMAT_VERSION,
            "fingerprint": self.fp, "chunks": self.done})

    @staticmethod
    def name(group: int, chunk: int) -> str:
        return f"chunk-{group}-{chunk}"

    def has(self, group: int, chunk: int) -> bool:
        return self.name(group, chunk) in self.done

    def save(self, group: int, chunk: int, out) -> None:
        """Persists a chunk's outputs, then lists it in the manifest."""
        name = self.name(group, chunk)
        leaves = jax.tree_util.tree_flatten_with_path(out)[0]
        arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
        save_pair(self.folder / name, arrays, {"group": group, "chunk": chunk}, "chunk")
        self.done[name] = name
        self._write_manifest()

    def load(self, group: int, chunk: int, structure) -> Any:
        """Loads a chunk's outputs into the tree structure of ``structure``."""
        arrays, _ = load_pair(self.folder / self.name(group, chunk), "chunk")
        paths = jax.tree_util.tree_flatten_with_path(structure)
        keys = [jax.tree_util.keystr(p) for p, _ in paths[0]]
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise FormatError(f"{self.folder / self.name(group, chunk)}.npz lacks "
                              f"arrays {missing[:3]}; it was written by another sweep")
        return jax.tree_util.tree_unflatten(paths[1], [arrays[k] for k in keys])
