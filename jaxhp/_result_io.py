"""A result's pair of files: what :meth:`jaxhp.SweepResult.save` writes and
:meth:`jaxhp.SweepResult.load` reads back (plain arrays and JSON, never a pickle).

Below the result class: :func:`write` reads a result's public fields, :func:`read`
returns plain fields, and the class makes the result (of the type the file names).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np

from jaxhp._hparams import HParamsError, class_from_declaration, column_of
from jaxhp._io import (
    RESULT_FORMAT_VERSION,
    RESULT_FORMAT_VERSIONS,
    FormatError,
    load_pair,
    pair_paths,
    save_pair,
)
from jaxhp._record import RecordError, decode, encode, flatten_params
from jaxhp._table import SettingsTable


def write(path, result, params, *, overwrite: bool) -> None:
    """Writes ``result`` to ``path.npz`` + ``path.json`` atomically: its arrays, groups,
    settings, metadata, test evaluations and declared extras (``EXTRAS``), and
    ``params`` (the kept parameters to save, or ``None``).

    Raises:
      FileExistsError: a result of that name exists and ``overwrite`` is false.
    """
    arrays = {"seed_ids": result.seed_ids, "status": result.status,
              "diverged_at": result.diverged_at, "train_loss": result.train_loss,
              "loss_curve": result.loss_curve, "errors": result.errors.astype(str)}
    for k, v in result.val.items():
        arrays[f"val/{k}"] = v
    for k, v in result.val_curve.items():
        arrays[f"val_curve/{k}"] = v
    arrays["group_of"] = result.group_of
    if result.fold_of is not None:
        arrays["cv_fold_of"] = result.fold_of
    extras = {name: encode(getattr(result, name), arrays, f"extra/{name}")
              for name in result.EXTRAS}
    paths = None
    if params is not None:
        paths, stacked, present = flatten_params(params)
        arrays.update({f"params/{p}": v for p, v in stacked.items()})
        arrays["params_present"] = present
    meta = {"result": result.meta, "result_type": type(result).__name__,
            "groups": encode(result.groups, arrays, "groups"),
            "settings": result.table.to_dicts(), "extras": extras, "params": paths,
            "hparams": result.meta.get("hparams"),
            "hparams_declaration": result.table.cls.declaration(),
            "test_reads": result.test_reads}
    save_pair(path, arrays, meta, "sweep-result", overwrite=overwrite,
              version=RESULT_FORMAT_VERSION)


class Saved(NamedTuple):
    """A saved result, read back: the name of its type, its constructor's fields
    (``settings`` a :class:`~jaxhp._table.SettingsTable` of ``hparams``), its
    declared extras, and its saved parameters (``(paths, arrays, present)``, or
    ``None``)."""

    kind: str
    fields: dict[str, Any]
    extras: dict[str, Any]
    params: tuple | None
    file: str


def read(path, hparams: type | None) -> Saved:
    """Reads the pair :func:`write` wrote (see :meth:`jaxhp.SweepResult.load`).

    Raises:
      FormatError: a missing, truncated, tampered or pickled file, or one lacking a
        field (naming the file and the field).
    """
    arrays, meta = load_pair(path, "sweep-result", RESULT_FORMAT_VERSIONS)
    npz, js = pair_paths(path)

    def need(where: dict, name: str, file, kind: type):
        if not isinstance(where, dict) or name not in where:
            raise FormatError(f"{file}: lacks the field `{name}`; the file is damaged "
                              "or was not written by SweepResult.save")
        if not isinstance(where[name], kind):
            raise FormatError(f"{file}: field `{name}` is a {type(where[name]).__name__}, "
                              f"expected a {kind.__name__}")
        return where[name]

    for name in ("seed_ids", "status", "diverged_at", "train_loss", "loss_curve",
                 "errors"):
        need(arrays, name, npz, np.ndarray)
    settings = need(meta, "settings", js, list)
    groups = need(meta, "groups", js, list)
    result_meta = need(meta, "result", js, dict)
    test_reads = meta.get("test_reads", []) if isinstance(meta, dict) else []
    if not isinstance(test_reads, list):
        raise FormatError(f"{js}: field `test_reads` is a {type(test_reads).__name__}, "
                          "expected a list")
    if hparams is None:
        try:
            hparams = class_from_declaration(need(meta, "hparams_declaration", js, dict))
        except ValueError as e:
            raise FormatError(f"{js}: field `hparams_declaration`: {e}") from e
    try:
        names = list(hparams.fields())
        unknown = sorted({k for d in settings for k in d} - set(names))
        if unknown:
            raise ValueError("unknown field(s) " + ", ".join(f"`{k}`" for k in unknown)
                             + f"; its fields are {names}")
        statics = set(hparams.static_names())
        settings = SettingsTable(hparams, {
            n: column_of([_tupled(d.get(n)) for d in settings]) if n in statics
            else [d.get(n) for d in settings]
            for n in names if any(n in d for d in settings)}, n=len(settings))
    except (HParamsError, TypeError, ValueError) as e:
        raise FormatError(f"{js}: a setting does not fit {hparams.__qualname__} "
                          f"(a field renamed or removed since it was saved?): "
                          f"{e}") from e
    val = {k[4:]: v for k, v in arrays.items() if k.startswith("val/")}
    val_curve = {k[10:]: v for k, v in arrays.items() if k.startswith("val_curve/")}
    key = None
    if "key_data" in result_meta:
        key = jax.random.wrap_key_data(np.asarray(result_meta["key_data"], np.uint32),
                                       impl=result_meta.get("key_impl"))
    kind = meta.get("result_type", "SweepResult")
    try:
        groups = decode(groups, arrays)
        extras = {name: decode(v, arrays)
                  for name, v in (meta.get("extras") or {}).items()}
    except RecordError as e:
        raise FormatError(f"{js}: {e}") from e
    fields = dict(settings=settings, seed_ids=arrays["seed_ids"], status=arrays["status"],
                  diverged_at=arrays["diverged_at"], train_loss=arrays["train_loss"],
                  val=val, loss_curve=arrays["loss_curve"], val_curve=val_curve,
                  errors=arrays["errors"], groups=groups, meta=result_meta, key=key,
                  test_reads=test_reads, group_of=arrays.get("group_of"),
                  fold_of=arrays.get("cv_fold_of"))
    paths = meta.get("params")
    params = ((list(paths), {p: arrays[f"params/{p}"] for p in paths},
               arrays["params_present"]) if paths else None)
    return Saved(kind, fields, extras, params, str(js))


def _tupled(v: Any) -> Any:
    """A static value read from JSON: lists back to the tuples they were."""
    return tuple(_tupled(x) for x in v) if isinstance(v, list) else v
