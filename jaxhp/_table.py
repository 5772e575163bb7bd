"""Settings as columns: a validated table of hyperparameter settings, numpy only.

A :class:`SettingsTable` holds ``n`` settings of one :class:`~jaxhp.HParams`
class as one column per field: tunables as arrays of
:func:`~jaxhp._hparams.tunable_dtype`, statics as arrays of their Python values.
It is validated once per field (:func:`validate_columns`, vectorised), knows the
static group of every row, and hands the engine a *batched* setting of any rows
of one group (:meth:`SettingsTable.batch`) without building one ``HParams``
object per row. ``HParams`` objects are made only on request
(:meth:`SettingsTable.setting`, :meth:`SettingsTable.settings`).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import types
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxhp._hparams import (
    AUTO,
    MISSING,
    Field,
    HParams,
    HParamsError,
    as_column,
    auto_buckets,
    column_of,
    did_you_mean,
    factorize,
    is_real,
    item_at,
    pad_alloc,
    pad_label,
    to_tunable,
    tunable_dtype,
    tunable_values,
)

__all__ = ["SettingsTable", "validate_columns"]

_FORMAT = "jaxhp.SettingsTable"


# -------------------------------------------------------------- validation
def _check_class(cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, HParams)) or cls is HParams:
        raise TypeError(f"`cls`={cls!r}: expected an HParams subclass")


def _length(columns: Mapping[str, np.ndarray], n: int | None) -> int:
    lengths = {name: (col.shape[0] if col.ndim else None) for name, col in columns.items()}
    if any(v is None for v in lengths.values()):
        bad = [name for name, v in lengths.items() if v is None]
        raise ValueError(f"columns {bad}: a column holds one value per setting; got a "
                         "0-dimensional array")
    distinct = set(lengths.values()) | ({n} if n is not None else set())
    if len(distinct) > 1:
        raise ValueError(f"columns of different lengths: {lengths}"
                         + (f" (n={n})" if n is not None else ""))
    if not distinct:
        raise ValueError("no columns and no `n`: the number of settings is unknown")
    return distinct.pop()


def _raise(cls: type[HParams], problems: list[str], row: int | None,
           cause: BaseException | None = None) -> None:
    err = HParamsError(cls.__name__, problems)
    err.row = row  # the first offending setting
    err._check_failed = cause is not None  # the class's __check__ raised ``cause``
    raise err from cause


def _field_problems(cls: type[HParams], columns: Mapping[str, np.ndarray]) -> None:
    """Raises the error construction gives for the first bad setting, naming its row."""
    fields = cls.fields()
    unknown = [f"`{name}`: unknown field of {cls.__name__}{did_you_mean(name, fields)}; "
               f"fields are {list(fields)}" for name in columns if name not in fields]
    checks: dict[str, tuple[np.ndarray, str | None]] = {}
    missing: dict[str, str] = {}
    for name, f in fields.items():
        if name in columns:
            checks[name] = f.check_column(columns[name], name)
        elif not f.has_default:
            missing[name] = f"`{name}`: required ({f.rule()}), no value given"
    firsts = {name: int(np.argmax(bad)) for name, (bad, msg) in checks.items()
              if msg is not None}
    if not (unknown or missing or firsts):
        return
    n = next(iter(columns.values())).shape[0] if columns else 0
    # Every setting lacks a required field or has an unknown one: the first is bad.
    row = (0 if n else None) if (unknown or missing) else min(firsts.values())
    problems = list(unknown)
    for name in fields:  # in field order, as construction lists them
        if name in missing:
            problems.append(missing[name])
        elif firsts.get(name, -1) == row:  # its message names that row
            problems.append(checks[name][1])
    _raise(cls, problems, row)


def _canonical(f: Field, col: np.ndarray) -> np.ndarray:
    """A validated column in the table's form: tunables as :func:`tunable_dtype`,
    statics as ``int64``/``float64``/``bool``/``<U``/``object`` arrays of the Python
    values construction stores (integral numbers of integer fields as ints)."""
    if f.is_tunable:
        if col.dtype.kind == "O":  # Python numbers, each converted as construction does
            dt = tunable_dtype()
            return np.array([to_tunable("", f, v)[0] for v in col.tolist()], dt).reshape(-1)
        return tunable_values(col)
    kind = col.dtype.kind
    if kind == "f" and f.integer:  # validated: every value is integral and finite
        if col.size == 0 or float(np.max(np.abs(col))) < 2.0**63:
            return col.astype(np.int64)
        return np.fromiter((int(v) for v in col.tolist()), object, col.shape[0])
    if kind in "iu":
        if kind == "u" and col.size and int(col.max()) >= 2**63:
            return np.fromiter(col.tolist(), object, col.shape[0])
        return col.astype(np.int64)
    if kind == "f":
        return col.astype(np.float64)
    if kind in "bU":
        return col.copy()
    uniques, codes = factorize(col, exact=True)
    if uniques is None:  # unhashable: refused by validation; kept for the message
        return col.copy()
    if f.integer:
        uniques = [int(v) if is_real(v) else v for v in uniques]
    return column_of(uniques)[codes]


def _converted(cls: type[HParams], columns: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Field rules on every column, then the columns in the table's form."""
    cols = {name: as_column(col) for name, col in columns.items()}
    _field_problems(cls, cols)
    fields = cls.fields()
    return {name: _canonical(fields[name], cols[name]) for name in fields if name in cols}


def _row_values(cls: type[HParams], columns: Mapping[str, np.ndarray], n: int):
    """Per row: the statics tuple and the tunable leaves (new 0-d arrays), lazily."""
    stat = [columns[name].tolist() for name in cls.static_names()]
    tun = [map(np.array, columns[name]) for name in cls.tunable_names()]
    auxes = zip(*stat) if stat else itertools.repeat((), n)
    leaves = zip(*tun) if tun else itertools.repeat((), n)
    for i, aux, row in zip(range(n), auxes, leaves):
        yield i, aux, list(row)


def _check_rows(cls: type[HParams], columns: Mapping[str, np.ndarray], n: int) -> None:
    """The class's cross-field ``__check__``, per row (only if the class overrides it)."""
    if cls.__check__ is HParams.__check__:
        return
    for i, aux, leaves in _row_values(cls, columns, n):
        try:
            cls._tree_unflatten(aux, leaves).__check__()
        except (ValueError, TypeError) as e:
            _raise(cls, [f"setting {i}: {e}"], i, cause=e)


def validate_columns(cls: type[HParams], columns: Mapping[str, Any]) -> None:
    """Checks columns of settings against ``cls``'s field rules, one numpy pass per field.

    The rules are those of ``cls(**values)`` (unknown fields, required fields,
    each field's rule, then the class's cross-field ``__check__``); the error is
    the one constructing the first bad setting raises, with its row named.

    Args:
      cls: an :class:`~jaxhp.HParams` subclass.
      columns: ``{field: values}``, one one-dimensional array (or list) per field
        given, all of one length; fields left out take their defaults.

    Raises:
      HParamsError: listing every bad field of the first bad setting, e.g.
        ``"`l2`=-1 (setting 17): must be > 0 (rule: ...)"``; its ``row``
        attribute is that setting (``None`` when every setting is bad: unknown or
        missing required fields).
      ValueError: if the columns differ in length.

    Example:
      >>> validate_columns(LinearHP, {"l2": np.array([0.1, -1.0])})
      Traceback (most recent call last):
      HParamsError: LinearHP: 1 invalid field: ...
    """
    _check_class(cls)
    cols = {name: as_column(col) for name, col in columns.items()}
    n = _length(cols, None) if cols else 0
    _check_rows(cls, _converted(cls, _filled(cls, cols, None, n)), n)


def fill_value(cls: type[HParams], name: str, base: HParams | None) -> Any:
    """The value a setting that does not set ``name`` takes: ``base``'s, or the default."""
    if base is not None:
        return getattr(base, name)
    return cls.fields()[name].default


def constant_column(f: Field, value: Any, n: int) -> np.ndarray:
    """A column of ``n`` copies of one value (a tunable converted as construction does)."""
    if f.is_tunable:
        arr, problem = to_tunable("", f, value)
        if problem is None and isinstance(arr, np.ndarray):
            return np.full(n, arr, arr.dtype)
    return np.repeat(column_of([value]), n)


def _filled(cls: type[HParams], columns: Mapping[str, np.ndarray], base: HParams | None,
            n: int) -> dict[str, np.ndarray]:
    """``columns`` with every field the class has a value for, in field order (then
    any unknown column, for the error)."""
    out = {}
    for name, f in cls.fields().items():
        if name in columns:
            out[name] = columns[name]
        else:
            value = fill_value(cls, name, base)
            if value is not MISSING:
                out[name] = constant_column(f, value, n)
    return {**out, **{k: v for k, v in columns.items() if k not in out}}


# -------------------------------------------------------------------- groups
def _grouping(cls: type[HParams], columns: Mapping[str, np.ndarray],
              n: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Group ids (by first appearance) and each group's statics, from the static columns.

    Rows share a group when their statics are equal as ``static_key()`` compares
    them (``==``), a padded field (``static(..., pad_to=...)``) compared by its
    allocation (:func:`padded_keys`): rows that differ only in padded values of one
    allocation share a group, whose statics name it (``"padded to 256"``).
    """
    names = cls.static_names()
    if n == 0:
        return np.zeros(0, np.int64), []
    columns = {**columns, **padded_keys(cls, columns)}
    combined = np.zeros(n, np.int64)
    radix = 1
    for name in names:
        uniques, codes = factorize(columns[name])
        k = len(uniques)
        if k > 1:
            if radix * k < 2**62:
                combined = combined * k + codes
                radix *= k
            else:  # too many combinations for one int64: unique rows instead
                stacked = np.stack([combined, codes], axis=1)
                _, combined = np.unique(stacked, axis=0, return_inverse=True)
                combined = combined.reshape(-1).astype(np.int64)
                radix = int(combined.max()) + 1
    if radix == 1:
        groups, firsts = np.zeros(n, np.int64), np.zeros(1, np.int64)
    else:
        _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        groups, firsts = rank[inverse.reshape(-1)], first[order]
    statics = [{name: item_at(columns[name], int(r)) for name in names} for r in firsts]
    return groups, statics


def padded_keys(cls: type[HParams], columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The grouping key of every padded field: its allocation's :func:`pad_label`.

    ``pad_to=N``: every row is allocated at ``N``. ``pad_to="auto"``: the field's
    distinct values are bucketed (:func:`~jaxhp._hparams.auto_buckets`); a bucket
    holding one distinct value is not padded (the row keeps its value: an ordinary
    static group, no masking).
    """
    out = {}
    for name, f in cls.fields().items():
        if f.pad_to is None or name not in columns:
            continue
        col = columns[name]
        if f.pad_to != AUTO:
            out[name] = np.full(col.shape[0], pad_label(f.pad_to), object)
            continue
        values = col.tolist()
        buckets = auto_buckets(values)
        members: dict[int, set] = {}
        for v, alloc in buckets.items():
            members.setdefault(alloc, set()).add(v)
        out[name] = column_of([pad_label(buckets[v]) if len(members[buckets[v]]) > 1
                               else v for v in values])
    return out


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


# --------------------------------------------------------------------- table
class SettingsTable:
    """``n`` settings of one :class:`~jaxhp.HParams` class, as one column per field.

    Immutable. Build one from a space (:meth:`jaxhp.Space.table`), from columns
    (``SettingsTable(cls, {field: values})``, validated once per field), or from
    settings (:meth:`from_settings`).

    Attributes:
      cls: the :class:`~jaxhp.HParams` subclass.
      columns: ``{field: array}`` in field order, each of length ``n``: tunables of
        :func:`~jaxhp._hparams.tunable_dtype`, statics as ``int64``, ``float64``,
        ``bool`` or ``<U`` arrays when every value has that type, ``object``
        otherwise (None with ints, tuples). Read-only.
      groups: the static group of each row (``int64``), numbered in order of first
        appearance; one compiled program per group.
      group_statics: per group, the statics dict (``HParams.statics()``) of its rows.

    Example:
      >>> table = (grid(optimizer=["sgd", "adam"]) * quasirandom(4, l2=loguniform(1e-6, 1))
      ...          ).table(LinearHP)
      >>> len(table), table.n_groups, table.rows(1).tolist()
      (8, 2, [4, 5, 6, 7])
      >>> table.batch(table.rows(1)).optimizer, table.batch(table.rows(1)).l2.shape
      ('adam', (4,))
    """

    __slots__ = ("_cls", "_columns", "_groups", "_group_statics", "_n", "_order")

    def __init__(self, cls: type[HParams], columns: Mapping[str, Any], *,
                 base: HParams | None = None, n: int | None = None):
        """Validates columns (one numpy pass per field) into a table.

        Args:
          cls: an :class:`~jaxhp.HParams` subclass.
          columns: ``{field: values}``: one-dimensional arrays (or lists), one value
            per setting. Fields left out take ``base``'s value, or the default.
          base: an instance of ``cls`` whose values fill the fields not given.
          n: the number of settings (needed only when no column is given).

        Raises:
          HParamsError: as :func:`validate_columns` (the first bad setting's fields).
          ValueError: columns of different lengths.
        """
        _check_class(cls)
        if base is not None and (type(base) is not cls or base.batch_shape):
            raise TypeError(f"`base`: expected one {cls.__name__} setting, got {base!r}")
        cols = {name: as_column(col) for name, col in columns.items()}
        n = _length(cols, n)
        converted = _converted(cls, _filled(cls, cols, base, n))
        _check_rows(cls, converted, n)
        groups, statics = _grouping(cls, converted, n)
        self._init(cls, converted, groups, statics, n)

    def _init(self, cls, columns, groups, statics, n) -> None:
        set_ = object.__setattr__
        set_(self, "_cls", cls)
        set_(self, "_columns", types.MappingProxyType(
            {name: _readonly(columns[name]) for name in cls.fields()}))
        set_(self, "_groups", _readonly(groups))
        set_(self, "_group_statics", statics)
        set_(self, "_n", n)
        set_(self, "_order", None)

    @classmethod
    def _trusted(cls_, cls, columns, n, groups=None, statics=None) -> SettingsTable:
        """A table of columns already in the table's form and validated."""
        obj = object.__new__(cls_)
        if groups is None:
            groups, statics = _grouping(cls, columns, n)
        obj._init(cls, dict(columns), groups, statics, n)
        return obj

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError("SettingsTable is immutable")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError("SettingsTable is immutable")

    # ------------------------------------------------------------- record
    @property
    def cls(self) -> type[HParams]:
        """The :class:`~jaxhp.HParams` subclass of every row."""
        return self._cls

    @property
    def columns(self) -> Mapping[str, np.ndarray]:
        """``{field: column}`` in field order (read-only arrays of length ``n``)."""
        return self._columns

    @property
    def groups(self) -> np.ndarray:
        """Each row's static group (``int64``), numbered in order of first appearance."""
        return self._groups

    @property
    def group_statics(self) -> list[dict[str, Any]]:
        """Per group, the statics dict ``{name: value}`` its settings share."""
        return self._group_statics

    def __len__(self) -> int:
        return self._n

    @property
    def n_groups(self) -> int:
        """The number of static groups (compiled programs)."""
        return len(self._group_statics)

    def rows(self, group_id: int) -> np.ndarray:
        """The rows (ascending ``int64`` indices) of one static group."""
        g = int(group_id)
        if not 0 <= g < self.n_groups:
            raise IndexError(f"group {group_id} of a table with {self.n_groups} groups")
        if self._order is None:
            order = np.argsort(self._groups, kind="stable")
            starts = np.concatenate([[0], np.cumsum(np.bincount(self._groups,
                                                                minlength=self.n_groups))])
            object.__setattr__(self, "_order", (_readonly(order), starts))
        order, starts = self._order
        return order[starts[g]:starts[g + 1]]

    def _rows(self, rows: Any) -> np.ndarray:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            if rows.shape != (self._n,):
                raise IndexError(f"a boolean mask of shape {rows.shape} for {self._n} rows")
            return np.flatnonzero(rows)
        if rows.ndim != 1 or (rows.size and rows.dtype.kind not in "iu"):
            raise IndexError(f"rows must be a one-dimensional array of row indices (or a "
                             f"boolean mask), got {rows!r}")
        rows = rows.astype(np.int64)
        if rows.size and (rows.min() < -self._n or rows.max() >= self._n):
            raise IndexError(f"row index out of range for a table of {self._n} settings")
        return rows

    def tunables(self, rows: Any = None) -> dict[str, np.ndarray]:
        """The tunable columns ``{name: array}``, of every row or of ``rows``."""
        names = self._cls.tunable_names()
        if rows is None:
            return {name: self._columns[name] for name in names}
        idx = self._rows(rows)
        return {name: self._columns[name][idx] for name in names}

    def batch(self, rows: Any) -> HParams:
        """A batched setting of some rows of one static group, as :func:`jaxhp.stack`
        of their settings would give, built straight from the columns.

        Args:
          rows: row indices (or a boolean mask), all of one static group.

        Returns:
          An instance of ``cls`` whose tunable leaves have shape ``(len(rows),)``
          and whose statics are the group's.

        Raises:
          ValueError: if ``rows`` is empty or spans several static groups.
        """
        idx = self._rows(rows)
        if idx.size == 0:
            raise ValueError("batch(): no rows to batch")
        g = self._groups[idx]
        if (g != g[0]).any():
            j = int(np.argmax(g != g[0]))
            a, b = self._group_statics[g[0]], self._group_statics[g[j]]
            diff = [f"`{n}`: {a[n]!r} vs {b[n]!r}" for n in a if a[n] != b[n]]
            raise ValueError(f"batch(): row {int(idx[j])} differs from row {int(idx[0])} in "
                             f"static fields ({'; '.join(diff)}); batch the rows of one "
                             "group (rows(group_id))")
        statics = self._group_statics[g[0]]
        aux = tuple(statics[name] for name in self._cls.static_names())
        leaves = [self._columns[name][idx] for name in self._cls.tunable_names()]
        # a padded field of a padded group: one int32 value per member (after the tunables)
        leaves += [self._columns[name][idx].astype(np.int32)
                   for name, f in self._cls.fields().items()
                   if f.pad_to is not None and pad_alloc(statics[name]) is not None]
        return self._cls._tree_unflatten(aux, leaves)

    # ------------------------------------------------------------ settings
    def _values(self, i: int) -> dict[str, Any]:
        tunable = self._cls.tunable_names()
        return {name: col[i] if name in tunable else item_at(col, i)
                for name, col in self._columns.items()}

    def setting(self, i: int) -> HParams:
        """Row ``i`` as a validated instance (``cls(**values)``)."""
        i = int(i)
        if not -self._n <= i < self._n:
            raise IndexError(f"setting {i} of a table of {self._n} settings")
        return self._cls(**self._values(i % self._n))

    def settings(self) -> list[HParams]:
        """Every row as an instance, in order (equal to :meth:`setting` of each row)."""
        cls = self._cls
        if cls.__init__ is not HParams.__init__:
            return [self.setting(i) for i in range(self._n)]
        # The table is validated: the pytree constructor makes the same instances.
        unflatten = cls._tree_unflatten
        return [unflatten(aux, leaves)
                for _, aux, leaves in _row_values(cls, self._columns, self._n)]

    def to_dicts(self) -> list[dict[str, Any]]:
        """Every row as ``{field: Python value}`` (as ``HParams.to_dict()``)."""
        names = list(self._columns)
        lists = [col.tolist() for col in self._columns.values()]
        return [dict(zip(names, row)) for row in zip(*lists)]

    # -------------------------------------------------------- new tables
    def take(self, rows: Any) -> SettingsTable:
        """A table of some rows (indices or a boolean mask), in the order given."""
        idx = self._rows(rows)
        cols = {name: col[idx] for name, col in self._columns.items()}
        old = self._groups[idx]
        if idx.size == 0:
            return SettingsTable._trusted(self._cls, cols, 0, np.zeros(0, np.int64), [])
        uniq, first, inverse = np.unique(old, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order))
        statics = [self._group_statics[int(uniq[k])] for k in order]
        return SettingsTable._trusted(self._cls, cols, idx.size, rank[inverse.reshape(-1)],
                                      statics)

    @classmethod
    def concat(cls_, tables: Sequence[SettingsTable]) -> SettingsTable:
        """The rows of several tables of one class, one after the other."""
        tables = list(tables)
        if not tables:
            raise ValueError("concat(): no tables")
        cls = tables[0].cls
        for k, t in enumerate(tables):
            if not isinstance(t, SettingsTable) or t.cls is not cls:
                raise ValueError(f"concat(): table {k} is not a table of {cls.__name__}")
        dt = tunable_dtype()
        cols = {name: concat_columns([t.columns[name] for t in tables])
                for name in cls.fields()}
        if any(cols[name].dtype != dt for name in cls.tunable_names()):
            return SettingsTable(cls, cols)  # another tunable dtype: convert, validate
        index: dict[tuple, int] = {}
        statics, parts = [], []
        for t in tables:  # groups of earlier tables first: still first-appearance order
            ids = []
            for s in t.group_statics:
                key = tuple(s.values())
                if key not in index:
                    index[key] = len(index)
                    statics.append(s)
                ids.append(index[key])
            parts.append(np.asarray(ids, np.int64)[t.groups] if len(t) else t.groups)
        return SettingsTable._trusted(cls, cols, sum(len(t) for t in tables),
                                      np.concatenate(parts), statics)

    @classmethod
    def from_settings(cls_, settings: Sequence[HParams] | HParams,
                      cls: type[HParams] | None = None) -> SettingsTable:
        """A table of a list of settings (one loop over them), validated.

        Args:
          settings: unbatched instances of one class, or a batched setting
            (a :func:`jaxhp.stack`, one batch axis).
          cls: their class; needed only for an empty list.
        """
        if isinstance(settings, HParams):
            if len(settings.batch_shape) != 1:
                raise ValueError(f"from_settings(): a batched setting with one batch axis, "
                                 f"got batch shape {settings.batch_shape}")
            cols = {**{n: np.asarray(v) for n, v in settings.tunables().items()},
                    **{n: np.repeat(column_of([v]), len(settings))
                       for n, v in settings.statics().items()}}
            return SettingsTable(type(settings), cols, n=len(settings))
        settings = list(settings)
        if cls is None:
            if not settings:
                raise ValueError("from_settings(): no settings and no `cls`")
            cls = type(settings[0])
        _check_class(cls)
        for i, s in enumerate(settings):
            if type(s) is not cls:
                raise TypeError(f"from_settings(): settings[{i}] is a {type(s).__name__}, "
                                f"not a {cls.__name__}")
            if s.batch_shape:
                raise TypeError(f"from_settings(): settings[{i}] is batched "
                                f"{s.batch_shape}; give one setting per entry")
        dt = tunable_dtype()
        cols: dict[str, np.ndarray] = {}
        for name in cls.fields():
            values = [getattr(s, name) for s in settings]
            if name in cls.tunable_names():
                cols[name] = (np.stack([np.asarray(v, dt) for v in values]) if values
                              else np.zeros(0, dt))
            else:
                cols[name] = column_of(values)
        return SettingsTable(cls, cols, n=len(settings))

    # --------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """A plain-JSON description (columns as lists), for :meth:`from_json`."""
        return {"format": _FORMAT, "version": 1, "class": self._cls.__name__,
                "tunable_dtype": tunable_dtype().name, "n": self._n,
                "columns": {name: _jsonable(col.tolist())
                            for name, col in self._columns.items()}}

    @classmethod
    def from_json(cls_, data: Mapping[str, Any] | str,
                  cls: type[HParams]) -> SettingsTable:
        """The table :meth:`to_json` described (a dict or its JSON text), validated.

        Raises:
          ValueError: if ``data`` is not such a description, or of another class.
        """
        _check_class(cls)
        if isinstance(data, str):
            data = json.loads(data)
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(f"from_json(): not a {_FORMAT} description")
        if data.get("class") != cls.__name__:
            raise ValueError(f"from_json(): a table of {data.get('class')!r}, not of "
                             f"{cls.__name__}")
        columns = data.get("columns")
        if not isinstance(columns, Mapping):
            raise ValueError("from_json(): no `columns`")
        dt = tunable_dtype()
        cols = {}
        for name, values in columns.items():
            if name in cls.tunable_names():
                cols[name] = np.asarray(values, np.float64).astype(dt).reshape(-1)
            else:
                cols[name] = column_of([_tupled(v) for v in values])
        return SettingsTable(cls, cols, n=int(data.get("n", 0)))

    # -------------------------------------------------------------- misc
    def __eq__(self, other) -> bool:
        if not isinstance(other, SettingsTable):
            return NotImplemented
        if other.cls is not self.cls or len(other) != len(self):
            return False
        for name, col in self._columns.items():
            o = other.columns[name]
            if name in self._cls.tunable_names():
                if o.dtype != col.dtype or not np.array_equal(o, col):
                    return False
            elif [(type(v), v) for v in o.tolist()] != [(type(v), v) for v in col.tolist()]:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"SettingsTable({self._cls.__name__}: {self._n} settings, {self.n_groups} "
                f"static group{'s' * (self.n_groups != 1)})")


def concat_columns(pieces: Sequence[np.ndarray]) -> np.ndarray:
    """Columns one after the other; mixed types become an ``object`` column."""
    pieces = list(pieces)
    kinds = {p.dtype.kind for p in pieces}
    if len({p.dtype for p in pieces}) == 1 or kinds == {"U"}:
        return np.concatenate(pieces)
    return np.concatenate([p.astype(object) for p in pieces])


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        raise ValueError(f"to_json(): a static value {v!r} is not valid JSON")
    return v


def _tupled(v: Any) -> Any:
    return tuple(_tupled(x) for x in v) if isinstance(v, list) else v
