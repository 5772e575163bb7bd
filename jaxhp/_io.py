"""Plain-array persistence: atomic writes, ``.npz`` + ``.json``, never pickle.

Every file is written to a temporary name in the same folder, flushed,
fsynced and renamed over the target, so a reader sees the old file or the new
one, never half of one. A results pair is ``NAME.npz`` (arrays, loaded with
``allow_pickle=False``) plus ``NAME.json`` (metadata, written last, holding
the format version and the SHA-256 of the ``.npz``): a truncated or tampered
array file is refused by its checksum. The suffixes are appended to the name,
never substituted for its last dotted part, so ``runs/sweep_lr0.1`` and
``runs/sweep_lr0.3`` are two pairs.

Temporary files are named ``.jaxhp-tmp-PID@HOST~...``: the process that writes
one is known, so a cleanup removes only its own and those of dead processes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
# Results (``SweepResult.save``) are at version 2: their metadata records a fingerprint
# of the data (``meta["result"]["data"]``), which ``SweepResult.merge`` compares.
# Version 1 results still load (without it, they cannot be merged).
RESULT_FORMAT_VERSION = 2
RESULT_FORMAT_VERSIONS = (1, 2)
TMP_PREFIX = ".jaxhp-tmp-"
PAIR_SUFFIXES = (".npz", ".json")
_TMP_OWNER = re.compile(re.escape(TMP_PREFIX) + r"(\d+)@([^~]*)~")


class FormatError(ValueError):
    """A results or checkpoint file is unreadable, tampered or of another version."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON atomically (sorted keys, so equal objects give equal bytes)."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True,
                                        default=_json_default).encode())


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """The bytes of an ``.npz`` of plain arrays (object arrays refused)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype.kind == "O":
            raise TypeError(f"array `{k}` has dtype object; only plain arrays are saved")
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pair_paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    """``(stem.npz, stem.json)``: suffixes appended, never replacing a dotted part.

    A name already ending in ``.npz`` or ``.json`` has exactly that suffix
    stripped first: ``runs/x``, ``runs/x.npz`` and ``runs/x.json`` are one pair;
    ``runs/sweep_lr0.1`` gives ``runs/sweep_lr0.1.npz``.
    """
    text = os.fspath(stem)
    for suffix in PAIR_SUFFIXES:
        if text.endswith(suffix) and len(Path(text).name) > len(suffix):
            text = text[:-len(suffix)]
            break
    return Path(text + ".npz"), Path(text + ".json")


def save_pair(stem: str | os.PathLike, arrays: dict[str, np.ndarray],
              meta: dict[str, Any], kind: str, *,
              overwrite: bool = False, version: int = FORMAT_VERSION) -> tuple[Path, Path]:
    """Saves ``stem.npz`` then ``stem.json`` (with ``version`` and checksum), atomically.

    Raises:
      FileExistsError: either file exists and ``overwrite`` is false.
    """
    npz, js = pair_paths(stem)
    if not overwrite:
        for p in (npz, js):
            if p.exists():
                raise FileExistsError(f"{p} already exists; pass overwrite=True to "
                                      "replace it, or save under another name")
    data = npz_bytes(arrays)
    atomic_write_bytes(npz, data)
    atomic_write_json(js, {"format": kind, "format_version": version,
                           "npz_sha256": sha256(data), "meta": meta})
    return npz, js


def load_pair(stem: str | os.PathLike, kind: str,
              versions: tuple[int, ...] = (FORMAT_VERSION,)) -> tuple[dict[str, np.ndarray],
                                                                     dict]:
    """Loads a pair written by :func:`save_pair`, checking its version (one of
    ``versions``) and checksum.

    Raises:
      FormatError: naming the file and the problem.
    """
    npz, js = pair_paths(stem)
    for p in (npz, js):
        if not p.exists():
            raise FormatError(f"{p}: file not found")
    try:
        header = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{js}: not valid JSON ({e}); the file is truncated or "
                          "corrupted") from e
    if not isinstance(header, dict) or header.get("format") != kind:
        raise FormatError(f"{js}: not a jaxhp {kind} file")
    version = header.get("format_version")
    if version not in versions:
        reads = " or ".join(str(v) for v in versions)
        raise FormatError(f"{js}: format version {version!r} is not supported by this "
                          f"jaxhp (reads version {reads}); re-run the sweep "
                          "or load it with the jaxhp that wrote it")
    data = npz.read_bytes()
    if sha256(data) != header.get("npz_sha256"):
        raise FormatError(f"{npz}: checksum mismatch: the array file is truncated, "
                          f"tampered or does not belong to {js.name}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise FormatError(f"{npz}: holds a pickled object, refused ({e})") from e
    return arrays, header["meta"]


def host_name() -> str:
    """This machine's host name (as recorded in locks and temporary file names)."""
    return socket.gethostname()


def _tmp_prefix() -> str:
    host = re.sub(r"[^A-Za-z0-9._-]", "_", host_name())
    return f"{TMP_PREFIX}{os.getpid()}@{host}~"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except OverflowError:
        return False
    return True


def clean_tmp(folder: str | os.PathLike) -> list[Path]:
    """Removes leftover temporary files of killed writes; returns what it removed.

    Only files of this process, of a dead process on this host, or of an older
    jaxhp that did not name its writer: a live writer's file, or one written on
    another host, is left alone. Call it while holding the folder's lock.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    me, host = os.getpid(), re.sub(r"[^A-Za-z0-9._-]", "_", host_name())
    for p in folder.glob(TMP_PREFIX + "*"):
        owner = _TMP_OWNER.match(p.name)
        if owner is not None:
            pid = int(owner.group(1))
            if owner.group(2) != host or (pid != me and pid_alive(pid)):
                continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed
