"""Resumable sweeps: each finished chunk is persisted atomically, with a manifest.

A checkpoint folder holds ``manifest.json`` (the sweep's fingerprint and the
list of finished chunks) and one ``chunk-G-C.npz`` + ``.json`` pair per
finished chunk. A chunk file is complete before the manifest names it
(temporary file, fsync, rename), so a sweep killed at any instant resumes from
the chunks the manifest lists. Each chunk records its group, its index, a hash
of the sweep's fingerprint and its arrays' shapes; loading checks all four.

One process at a time: opening a folder takes ``jaxhp.lock`` (created with
``O_CREAT | O_EXCL``, holding the holder's pid, host and start time); a lock of
a dead process on this host is stale and taken over. Only then is the manifest
compared with the sweep (a different fingerprint is refused, listing what
differs) and, only then, are leftover temporary files removed.

A search over several processes (``jax.distributed``) is one writer: the first
process of its mesh opens the folder as above, the others open it read-only
(``writer=False``: no lock, no writes) once it has, see
:func:`jaxhp._hosts.open_checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxhp._io import (
    FORMAT_VERSION,
    FormatError,
    atomic_write_json,
    clean_tmp,
    host_name,
    load_pair,
    pair_paths,
    pid_alive,
    save_pair,
)
from jaxhp._record import RecordError, decode, encode
from jaxhp._table import SettingsTable
from jaxhp._version import versions

MANIFEST = "manifest.json"
LOCK = "jaxhp.lock"
# Lock files this process holds ({path: token}): a lock naming this pid but absent
# here was left by an earlier process that had the same pid (a restarted container).
_HELD: dict[str, str] = {}


class CheckpointMismatch(ValueError):
    """A checkpoint folder belongs to a different sweep; lists the differences."""


class CheckpointLocked(RuntimeError):
    """Another live process is using the checkpoint folder.

    Two sweeps writing one folder would remove each other's temporary files and
    overwrite each other's manifest, so the second one is refused. The message
    names the folder, the holder's pid, host and start time, and how to remove
    the lock if its holder is gone (a lock of a dead process on this host is
    taken over automatically).

    Attributes:
      folder: the checkpoint folder.
      holder: the lock's contents (``pid``, ``host``, ``started``), or ``None``
        if the lock file is unreadable.

    Example:
      >>> try:
      ...     jaxhp.sweep(model, space, split, key=key, checkpoint_dir="ckpt/")
      ... except jaxhp.CheckpointLocked as e:
      ...     print(e.holder["pid"], e.holder["host"])
    """

    def __init__(self, message: str, folder: Path | None = None,
                 holder: dict | None = None):
        super().__init__(message)
        self.folder, self.holder = folder, holder


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


def _as_table(settings) -> SettingsTable:
    return settings if isinstance(settings, SettingsTable) else \
        SettingsTable.from_settings(list(settings))


def _settings_hash(settings) -> str:
    """SHA-256 over the settings' columns (names, dtypes and bytes; object columns as
    JSON): no Python work per setting for numeric columns."""
    table = _as_table(settings)
    h = hashlib.sha256(f"{table.cls.__qualname__}|{len(table)}|".encode())
    for name, col in table.columns.items():
        h.update(f"{name}|{col.dtype.str}|".encode())
        if col.dtype.kind == "O":
            h.update(json.dumps(col.tolist(), default=_default).encode())
        else:
            h.update(np.ascontiguousarray(col).tobytes())
    return h.hexdigest()


def fingerprint(*, space, settings, model_fp, split, seed_ids, key, loop, plan) -> dict:
    """Everything that defines a sweep's numbers, as JSON-comparable values.

    ``settings`` is a :class:`~jaxhp._table.SettingsTable` or a list of settings.
    """
    table = _as_table(settings)

    space_desc = space.to_dict() if hasattr(space, "to_dict") else None
    return _json_roundtrip({
        "space": space_desc,
        "settings_sha256": _settings_hash(settings),
        "n_settings": len(settings),
        "static_values": sorted(json.dumps(st, sort_keys=True, default=_default)
                                for st in table.group_statics),
        "hparams": table.cls.__module__ + "." + table.cls.__qualname__,
        **model_fp,  # "model" (names) and one hash per function: "model.loss", ...
        "data_sha256": data_hash(split),
        "seeds": [int(s) for s in seed_ids],
        "key": np.asarray(jax.random.key_data(key)).tolist(),
        "key_impl": str(jax.random.key_impl(key)),
        **versions(),
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
            why = (" (what the function computes changed: its code, a function it "
                   "calls or a captured constant)" if k.startswith("model.") else "")
            out.append(f"`{k}`: checkpoint has {sa}, this sweep has {sb}{why}")
    return out


def fingerprint_hash(fp: dict) -> str:
    """SHA-256 of a fingerprint's canonical JSON (recorded in every chunk file)."""
    return hashlib.sha256(json.dumps(fp, sort_keys=True, default=_default)
                          .encode()).hexdigest()


def _read_lock(path: Path, attempts: int = 40) -> tuple[dict | None, str | None]:
    """The lock's contents and text; ``(None, None)`` if it vanished.

    A holder writes its JSON right after creating the file, so an empty or
    partial file is read again for a moment before it counts as unreadable
    (``({}, text)``).
    """
    text = ""
    for _ in range(attempts):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None, None
        try:
            holder = json.loads(text)
        except ValueError:
            time.sleep(0.05)
            continue
        if isinstance(holder, dict):
            return holder, text
        break
    return {}, text


def _lock_key(path: Path) -> str:
    return os.path.realpath(path)


def _is_stale(path: Path, holder: dict) -> bool:
    pid = holder.get("pid")
    if holder.get("host") != host_name() or not isinstance(pid, int):
        return False
    if pid == os.getpid():  # ours only if this process took it
        return _lock_key(path) not in _HELD
    return not pid_alive(pid)


def _take_over(path: Path, stale_text: str) -> None:
    """Removes a stale lock, unless another process replaced it meanwhile."""
    aside = path.with_name(f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process took it over first
        return
    try:
        if aside.read_text() != stale_text:  # a live lock taken meanwhile: put it back
            try:
                os.link(aside, path)
            except FileExistsError:  # pragma: no cover - a third process took it
                pass
    finally:
        aside.unlink(missing_ok=True)


def _locked_error(folder: Path, path: Path, holder: dict) -> CheckpointLocked:
    if not holder:
        return CheckpointLocked(
            f"checkpoint folder {folder} is locked: {path} exists but is unreadable. If "
            f"no sweep is using the folder, delete {path} and run again.", folder, None)
    pid, host = holder.get("pid"), holder.get("host")
    started = holder.get("started", "?")
    if host == host_name():
        gone = "if that process is not a jaxhp sweep (a reused pid)"
    else:
        gone = (f"this host ({host_name()!r}) cannot tell whether it is still alive: "
                f"if no sweep is running on {host!r} any more")
    return CheckpointLocked(
        f"checkpoint folder {folder} is in use by another sweep: pid {pid} on host "
        f"{host!r} (since {started}) holds {path}. Wait for it to finish or use another "
        f"folder; {gone}, delete {path} and run again.", folder, holder)


def acquire_lock(folder: Path) -> str:
    """Takes ``folder/jaxhp.lock``; returns this holder's token.

    Raises:
      CheckpointLocked: a live process (or one on another host) holds it.
    """
    path = folder / LOCK
    token = uuid.uuid4().hex
    me = {"pid": os.getpid(), "host": host_name(),
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "token": token}
    for _ in range(20):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder, text = _read_lock(path)
            if holder is None:  # released meanwhile: try again
                continue
            if not holder or not _is_stale(path, holder):
                raise _locked_error(folder, path, holder) from None
            _take_over(path, text)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        _HELD[_lock_key(path)] = token
        return token
    holder, _ = _read_lock(path)
    raise _locked_error(folder, path, holder or {})


def release_lock(path: Path, token: str) -> None:
    """Removes the lock file if it is still this holder's (by token)."""
    if _HELD.get(_lock_key(path)) == token:
        del _HELD[_lock_key(path)]
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(holder, dict) and holder.get("token") == token:
        path.unlink(missing_ok=True)


class Checkpoint:
    """A sweep's checkpoint folder (see the module docstring), locked while open.

    Close it (or use it as a context manager) to release the lock; the lock is
    also released when the object is collected or the interpreter exits.

    Args:
      folder: the folder (created if absent).
      fp: the sweep's :func:`fingerprint`.
      overwrite: discard an existing checkpoint instead of resuming it.
      writer: ``False`` opens it read-only, for a process of a multi-process
        search that is not the writer (see :func:`jaxhp._hosts.open_checkpoint`):
        no lock, no cleanup, the manifest read (once the writer has opened the
        folder) and compared; :meth:`save` and :meth:`save_state` only record
        the names, so the process's view stays the writer's.

    Raises:
      CheckpointLocked: another live process has the folder open.
      CheckpointMismatch: the folder holds another sweep's checkpoint.
      FormatError: the manifest is unreadable or of another format version.
    """

    def __init__(self, folder, fp: dict, *, overwrite: bool = False, writer: bool = True):
        self.folder, self.writer = Path(folder), writer
        if not writer:
            self._release = lambda: None
            self.fp, self.fp_sha256, self.removed_tmp = fp, fingerprint_hash(fp), []
            path = self.folder / MANIFEST
            self.done = {}
            if path.exists():
                self._check(self._read_manifest(path))
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / LOCK
        self._release = weakref.finalize(self, release_lock, lock,
                                         acquire_lock(self.folder))
        try:
            self.fp = fp
            self.fp_sha256 = fingerprint_hash(fp)
            path = self.folder / MANIFEST
            self.done: dict[str, str] = {}
            if path.exists() and not overwrite:  # compare before removing anything
                self._check(self._read_manifest(path))
            self.removed_tmp = clean_tmp(self.folder)
            if overwrite:
                for p in [*self.folder.glob("chunk-*"), *self.folder.glob("state-*")]:
                    p.unlink()
                path.unlink(missing_ok=True)
            self._write_manifest()
        except BaseException:
            self.close()
            raise

    def _check(self, manifest: dict) -> None:
        """Takes the finished chunks of a manifest of this very sweep; refuses another's."""
        diff = _differences(manifest["fingerprint"], self.fp)
        if diff:
            raise CheckpointMismatch(
                f"cannot resume from {self.folder}: it holds a different sweep:\n"
                + "\n".join(f"  - {d}" for d in diff)
                + "\nUse another folder, or pass overwrite=True to start afresh.")
        self.done = dict(manifest["chunks"])

    def close(self) -> None:
        """Releases the folder's lock (idempotent)."""
        self._release()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        for field in ("fingerprint", "chunks"):
            if not isinstance(manifest.get(field), dict):
                raise FormatError(f"{path}: lacks the field `{field}`; the manifest is "
                                  "damaged: use overwrite=True to start afresh")
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
        """Persists a chunk's outputs, then lists it in the manifest (a reader only
        lists it)."""
        name = self.name(group, chunk)
        if not self.writer:
            self.done[name] = name
            return
        leaves = jax.tree_util.tree_flatten_with_path(out)[0]
        arrays = {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}
        meta = {"group": group, "chunk": chunk, "sweep_sha256": self.fp_sha256,
                "shapes": {k: list(v.shape) for k, v in arrays.items()}}
        # a chunk file the manifest does not list yet (a killed run wrote it) is replaced
        save_pair(self.folder / name, arrays, meta, "chunk", overwrite=True)
        self.done[name] = name
        self._write_manifest()

    def load(self, group: int, chunk: int, structure) -> Any:
        """Loads a chunk's outputs into the tree structure of ``structure``.

        Raises:
          FormatError: naming the file, if it is unreadable, records another
            group, chunk or sweep, or holds arrays of other names or shapes.
        """
        npz, js = pair_paths(self.folder / self.name(group, chunk))
        arrays, meta = load_pair(self.folder / self.name(group, chunk), "chunk")
        meta = meta if isinstance(meta, dict) else {}
        where = (meta.get("group"), meta.get("chunk"))
        if where != (group, chunk):
            raise FormatError(f"{js}: holds chunk {where[1]!r} of group {where[0]!r}, "
                              f"not chunk {chunk} of group {group}: the file was copied "
                              "or renamed; delete it (it is then recomputed) or use "
                              "overwrite=True")
        if meta.get("sweep_sha256") != self.fp_sha256:
            raise FormatError(f"{js}: written by another sweep (its fingerprint hash "
                              f"{str(meta.get('sweep_sha256'))[:12]}... is not this "
                              f"sweep's {self.fp_sha256[:12]}...); delete it (it is then "
                              "recomputed) or use overwrite=True")
        paths = jax.tree_util.tree_flatten_with_path(structure)
        expected = {jax.tree_util.keystr(p): tuple(leaf.shape) for p, leaf in paths[0]}
        missing = [k for k in expected if k not in arrays]
        extra = [k for k in arrays if k not in expected]
        if missing or extra:
            raise FormatError(f"{npz}: lacks arrays {missing[:3]} or holds unexpected "
                              f"arrays {extra[:3]}; it was written by another sweep")
        recorded = meta.get("shapes")
        for k, shape in expected.items():
            got = tuple(arrays[k].shape)
            rec = recorded.get(k) if isinstance(recorded, dict) else None
            if got != shape or rec is None or tuple(rec) != shape:
                raise FormatError(f"{npz}: array `{k}` has shape {got} (recorded "
                                  f"{rec}), this sweep expects {shape}; the file does not "
                                  "belong to this sweep or chunk")
        return jax.tree_util.tree_unflatten(paths[1], [arrays[k] for k in expected])


    # ------------------------------------------------ states of adaptive searches
    @staticmethod
    def state_name(group: int, step: int) -> str:
        return f"state-{group}-{step}"

    def save_state(self, group: int, step: int, state: Any) -> None:
        """Persists a search's state after its ``step``-th segment of static group
        ``group`` (plain arrays and JSON, see :func:`jaxhp._record.encode`), lists it
        in the manifest, then removes the group's older states."""
        name = self.state_name(group, step)
        if not self.writer:
            self.done = {k: v for k, v in self.done.items()
                         if not k.startswith(f"state-{group}-")}
            self.done[name] = name
            return
        arrays: dict[str, np.ndarray] = {}
        body = encode(state, arrays, "state")
        meta = {"group": group, "step": step, "sweep_sha256": self.fp_sha256, "state": body}
        save_pair(self.folder / name, arrays, meta, "search-state", overwrite=True)
        old = [k for k in self.done if k.startswith(f"state-{group}-") and k != name]
        self.done[name] = name
        for k in old:
            del self.done[k]
        self._write_manifest()
        for k in old:  # listed no more: safe to delete
            for path in pair_paths(self.folder / k):
                path.unlink(missing_ok=True)

    def latest_state(self, group: int) -> tuple[int, Any] | None:
        """``(step, state)`` of the group's last saved state, or None.

        Raises:
          FormatError: naming the file, if it records another group, step or search.
        """
        steps = [int(k.rsplit("-", 1)[1]) for k in self.done
                 if k.startswith(f"state-{group}-")]
        if not steps:
            return None
        step = max(steps)
        stem = self.folder / self.state_name(group, step)
        _, js = pair_paths(stem)
        arrays, meta = load_pair(stem, "search-state")
        meta = meta if isinstance(meta, dict) else {}
        if (meta.get("group"), meta.get("step")) != (group, step) or \
                meta.get("sweep_sha256") != self.fp_sha256:
            raise FormatError(f"{js}: holds the state of another group, step or search; "
                              "delete it (it is then recomputed) or use overwrite=True")
        try:
            return step, decode(meta.get("state"), arrays)
        except RecordError as e:
            raise FormatError(f"{js}: {e}") from e
