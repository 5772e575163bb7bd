"""Hyperparameter classes whose fields declare their kind: static or tunable.

A *static* field is structural (a width, a number of steps, an optimizer
name): it lives in the pytree's aux data, so it is a compile-time constant and
a new value compiles a new program. A *tunable* field is a numeric scalar (a
learning rate, an L2 strength): it is a scalar array leaf of JAX's default
float dtype (float32; float64 with ``jax_enable_x64``, see :func:`tunable_dtype`),
traced under ``jit``, batched under ``vmap`` and differentiable. One setting
holds one number per tunable; a batch of settings is built by :func:`stack`.

The kind is *declared* where the field is declared, never guessed from the
runtime type of a value.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

STATIC = "static"
TUNABLE = "tunable"
MISSING = object()
_PROJECT_BIG = 1e30  # Field.bounds() keeps log-scaled fields within [1/_BIG, _BIG]


def tunable_dtype() -> np.dtype:
    """The dtype of tunable values: JAX's default float dtype, read when called.

    float32, or float64 when ``jax_enable_x64`` is on (``JAX_ENABLE_X64=1``,
    ``jax.config.update("jax_enable_x64", True)`` or ``with jax.enable_x64(True)``).
    Settings take the dtype in force when they are built.
    """
    return np.dtype(jax.dtypes.canonicalize_dtype(np.float64))


class HParamsError(ValueError, TypeError):
    """Invalid hyperparameter values: lists every bad field with its rule.

    It is both a ``ValueError`` and a ``TypeError`` so that callers may catch
    either; ``problems`` holds one message per bad field. Raised for a table of
    settings (``jaxhp._table.validate_columns``), ``row`` is the first bad setting.
    """

    row: int | None = None

    def __init__(self, cls_name: str, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{cls_name}: {n} invalid field{'s' * (n != 1)}:\n{lines}")


@dataclasses.dataclass(frozen=True)
class Field:
    """The declaration of one hyperparameter field: its kind and its rule."""

    kind: str
    default: Any = MISSING
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    log: bool = False
    integer: bool = False
    choices: tuple | None = None
    doc: str = ""
    pad_to: int | str | None = None

    @property
    def is_static(self) -> bool:
        return self.kind == STATIC

    @property
    def is_tunable(self) -> bool:
        return self.kind == TUNABLE

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    def rule(self) -> str:
        """A short human-readable statement of the field's rule."""
        parts = []
        if self.choices is not None:
            parts.append(f"one of {list(self.choices)}")
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else repr(self.low)
            hi = "inf" if self.high is None else repr(self.high)
            lb = "(" if (self.low_open or self.low is None) else "["
            rb = ")" if (self.high_open or self.high is None) else "]"
            parts.append(f"in {lb}{lo}, {hi}{rb}")
        if self.log:
            parts.append("> 0 (log scale)")
        if self.integer:
            parts.append("an integer")
        if self.pad_to is not None:
            parts.append(f"<= {self.pad_to} (padded)" if self.pad_to != AUTO
                         else "padded (auto buckets)")
        kind = "static" if self.is_static else f"tunable {tunable_dtype().name} scalar"
        return f"{kind}" + (", " + ", ".join(parts) if parts else "")

    def check_number(self, v: float) -> str | None:
        """Checks one concrete number against the rule; returns the broken rule."""
        if not math.isfinite(v):
            return "must be finite (got NaN or Inf)"
        if self.integer and v != int(v):
            return "must be an integer"
        if self.low is not None and (v < self.low or (self.low_open and v == self.low)):
            return f"must be {'>' if self.low_open else '>='} {self.low!r}"
        if self.high is not None and (v > self.high or (self.high_open and v == self.high)):
            return f"must be {'<' if self.high_open else '<='} {self.high!r}"
        if self.log and v <= 0:
            return "must be > 0 because the field is log-scaled"
        if isinstance(self.pad_to, int) and v > self.pad_to:
            return (f"must be <= pad_to={self.pad_to} (a padded field: every value shares "
                    f"one program allocated at {self.pad_to})")
        return None

    # ------------------------------------------------- vectorised, on columns
    def bad_numbers(self, x: np.ndarray) -> np.ndarray:
        """:meth:`check_number` on a float64 array: where any rule is broken."""
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(x)
            if self.integer:
                bad |= x != np.trunc(x)
            if self.low is not None:
                bad |= (x < self.low) | ((x == self.low) if self.low_open else False)
            if self.high is not None:
                bad |= (x > self.high) | ((x == self.high) if self.high_open else False)
            if self.log:
                bad |= x <= 0
            if isinstance(self.pad_to, int):
                bad |= x > self.pad_to
        return bad

    def check_column(self, values: Any, name: str = "value") -> tuple[np.ndarray, str | None]:
        """Checks a whole column of values (one per setting) against the rule at once.

        The rules are those construction applies to one value (a tunable is
        converted to :func:`tunable_dtype` first); numeric columns are checked
        with numpy, a static column of other values once per distinct value.

        Args:
          values: a one-dimensional array (or list) with one value per setting.
          name: the field's name, for the message.

        Returns:
          ``(bad, message)``: a boolean mask of the rows that break the rule, and
          the message construction gives for the first of them, naming its row
          (``"`l2`=-1 (setting 17): must be >= 0 (rule: ...)"``), or ``None``.

        Example:
          >>> bad, msg = LinearHP.fields()["l2"].check_column(np.array([0.1, -1.0]), "l2")
          >>> bad.tolist(), msg.split(":")[0]
          ([False, True], '`l2`=-1 (setting 1)')
        """
        arr = as_column(values)
        if arr.ndim == 0:
            raise ValueError(f"`{name}`: a column holds one value per setting; got a "
                             f"0-dimensional array {_short(arr)}")
        n = arr.shape[0]
        if arr.ndim > 1:  # every row is an array: refused like one setting's array
            bad = np.ones(n, bool)
        elif self.is_tunable:
            bad = self._bad_tunable_column(arr, name)
        else:
            bad = self._bad_static_column(arr, name)
        if not bad.any():
            return bad, None
        i = int(np.argmax(bad))
        v = arr[i] if arr.ndim > 1 else item_at(arr, i)
        msg = (check_static(name, self, v, row=i) if self.is_static
               else to_tunable(name, self, v, row=i)[1])
        return bad, msg or f"`{name}`={_short(v)}{_at(i)}: breaks the rule ({self.rule()})"

    def _bad_tunable_column(self, arr: np.ndarray, name: str) -> np.ndarray:
        kind = arr.dtype.kind
        if kind in "iuf":
            x = tunable_values(arr)
            bad = self.bad_numbers(x.astype(np.float64))
            if self.choices is not None:
                bad |= ~np.isin(x, np.asarray(self.choices, x.dtype))
            return bad
        if kind == "O":  # mixed Python values: each one as construction checks it
            return np.fromiter((to_tunable(name, self, v)[1] is not None
                                for v in arr.tolist()), bool, arr.shape[0])
        return np.ones(arr.shape[0], bool)  # bool, str, complex...: never a real number

    def _bad_static_column(self, arr: np.ndarray, name: str) -> np.ndarray:
        if arr.dtype.kind in "iuf" and self.choices is None:
            if self.low is None and self.high is None and not self.integer \
                    and self.pad_to is None:
                return np.zeros(arr.shape[0], bool)
            return self.bad_numbers(arr.astype(np.float64))
        uniques, codes = factorize(arr, exact=True)
        if uniques is None:  # unhashable values: each one as construction checks it
            return np.fromiter((check_static(name, self, v) is not None
                                for v in arr.tolist()), bool, arr.shape[0])
        bad = np.array([check_static(name, self, v) is not None for v in uniques], bool)
        return bad[codes]

    def bounds(self) -> tuple[float, float]:
        """The closed interval values are projected into (:meth:`project`).

        Open bounds are nudged inside by ``1e-6 * max(|bound|, 1)``; a log-scaled
        field is kept within ``[1e-30, 1e30]``; a missing bound is infinite.

        Example:
          >>> LinearHP.fields()["momentum"].bounds()
          (0.0, 0.999999)
        """
        def nudge(b: float, up: bool) -> float:
            step = 1e-6 * max(abs(b), 1.0)
            return b + step if up else b - step

        lo = -math.inf if self.low is None else (
            nudge(self.low, True) if self.low_open else self.low)
        hi = math.inf if self.high is None else (
            nudge(self.high, False) if self.high_open else self.high)
        if self.log:
            lo, hi = max(lo, 1 / _PROJECT_BIG), min(hi, _PROJECT_BIG)
        return float(lo), float(hi)

    def project(self, values: Any) -> np.ndarray:
        """Clips values into the field's range (:meth:`bounds`), as valid tunables.

        Args:
          values: numbers (any shape).

        Returns:
          An array of :func:`tunable_dtype` of the same shape whose finite
          entries pass :meth:`check_number` (rounding that lands on an open
          bound steps back inside); NaN stays NaN.

        Example:
          >>> LinearHP.fields()["momentum"].project([-0.5, 0.5, 2.0]).tolist()
          [0.0, 0.5, 0.9999989867210388]
        """
        if not self.is_tunable:
            raise TypeError("Field.project(): only tunable fields are projected")
        lo, hi = self.bounds()
        dt = tunable_dtype()
        with np.errstate(over="ignore", invalid="ignore"):
            v = np.clip(np.asarray(values, np.float64), lo, hi).astype(dt)
            for _ in range(8):  # rounding may land on an open bound: step inside
                bad = self.bad_numbers(v.astype(np.float64))
                if not bad.any():
                    break
                up = (v <= self.low) if self.low is not None else np.zeros(v.shape, bool)
                toward = np.where(up, dt.type(np.inf), dt.type(-np.inf))
                v = np.where(bad, np.nextafter(v, toward), v).astype(dt)
        return v


def _check_rule_args(kind, default, low, high, log, integer, choices) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"{kind}(): bounds reversed: low={low!r} > high={high!r}")
    if log and low is not None and low < 0:
        raise ValueError(f"{kind}(): log=True needs low >= 0, got low={low!r}")
    if choices is not None and len(choices) == 0:
        raise ValueError(f"{kind}(): choices must not be empty")


def static(
    default: Any = MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    choices: Sequence | None = None,
    doc: str = "",
    pad_to: int | str | None = None,
) -> Any:
    """Declares a static (structural) field: part of the compile key.

    Args:
      default: the default value (a hashable Python value: int, float, str,
        bool, None or a tuple). Omit it to make the field required.
      low, high: optional numeric bounds; ``low_open``/``high_open`` make
        them strict.
      integer: the value must be an integer.
      choices: the allowed values.
      doc: a one-line description.
      pad_to: makes an integer size (a width) *padded*: settings that differ
        only in padded fields share one compiled program whose arrays are
        allocated at the largest size, each member masking the units beyond
        its own value. An int: every value (at most ``pad_to``) shares one
        program allocated at ``pad_to``. ``"auto"``: the distinct values are
        bucketed (:func:`auto_buckets`), each bucket allocated at its largest
        value. Needs ``integer=True`` and ``low >= 1``; ``None`` (default): an
        ordinary static field. Inside a padded program the field is a traced
        int32 scalar; :func:`padded_size` gives the allocation and
        :func:`unit_mask` the mask of real units.

    Returns:
      A field declaration, to be assigned in an :class:`HParams` subclass.

    Example:
      >>> class MLP(HParams):
      ...     width: int = static(128, low=1, integer=True)
      ...     heads: int = static(8, low=1, integer=True, pad_to=16)  # 1..16: one program
    """
    _check_rule_args("static", default, low, high, False, integer, choices)
    _check_pad_to(default, low, integer, choices, pad_to)
    return Field(STATIC, default, low, high, low_open, high_open, False, integer,
                 None if choices is None else tuple(choices), doc, pad_to)


AUTO = "auto"
# pad_to="auto": a value joins a bucket when it is at least this fraction of the
# bucket's allocation (its largest value), so no member computes more than 1/AUTO_RATIO
# times its own width (1/AUTO_RATIO**2 in a width x width layer).
AUTO_RATIO = 0.5


def _check_pad_to(default, low, integer, choices, pad_to) -> None:
    if pad_to is None:
        return
    rule = ("pad_to is an int (the allocation every value shares) or 'auto' (values "
            "bucketed automatically)")
    if isinstance(pad_to, str):
        if pad_to != AUTO:
            raise ValueError(f"static(): `pad_to`={pad_to!r}: {rule}")
    elif isinstance(pad_to, bool) or not isinstance(pad_to, numbers.Integral) or pad_to < 1:
        raise ValueError(f"static(): `pad_to`={pad_to!r}: {rule}, an int must be >= 1")
    why = "only an integer size field with low >= 1 (a width, a count) can be padded"
    if not integer:
        raise ValueError(f"static(): `pad_to`={pad_to!r} needs integer=True: {why}")
    if low is None or low < 1:
        raise ValueError(f"static(): `pad_to`={pad_to!r} needs low >= 1, got low={low!r}: "
                         f"{why}")
    if choices is not None:
        raise ValueError(f"static(): `pad_to`={pad_to!r} with `choices`: {why}; give "
                         "low/high bounds instead of choices")
    if isinstance(pad_to, numbers.Integral) and pad_to < low:
        raise ValueError(f"static(): `pad_to`={pad_to!r} is below low={low!r}")
    if default is None:
        raise ValueError(f"static(): `pad_to`={pad_to!r} with default None: {why}")
    if isinstance(pad_to, numbers.Integral) and is_real(default) and default > pad_to:
        raise ValueError(f"static(): default {default!r} exceeds `pad_to`={pad_to!r}")


_PAD_LABEL = re.compile(r"^padded to (\d+)$")


def pad_label(size: int) -> str:
    """How a padded field appears in a static key and a group's statics:
    ``"padded to 256"`` (hashable and plain JSON)."""
    return f"padded to {int(size)}"


def pad_alloc(value: Any) -> int | None:
    """The allocation a :func:`pad_label` names, or ``None`` for any other value."""
    if isinstance(value, str):
        m = _PAD_LABEL.match(value)
        if m:
            return int(m.group(1))
    return None


def auto_buckets(values: Sequence[int], ratio: float = AUTO_RATIO) -> dict[int, int]:
    """``pad_to="auto"``: each distinct value's bucket allocation.

    The values are taken from the largest down; the largest opens a bucket
    allocated at itself, and each next value joins the open bucket when it is at
    least ``ratio`` times the bucket's allocation, else opens a new one.

    Example:
      >>> auto_buckets([16, 32, 48, 64, 256])
      {256: 256, 64: 64, 48: 64, 32: 64, 16: 16}
    """
    out: dict[int, int] = {}
    alloc = None
    for v in sorted(set(int(x) for x in values), reverse=True):
        if alloc is None or v < ratio * alloc:
            alloc = v
        out[v] = alloc
    return out


def tunable(
    default: Any = MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    log: bool = False,
    integer: bool = False,
    choices: Sequence[float] | None = None,
    doc: str = "",
) -> Any:
    """Declares a tunable (numeric) field: a traced scalar leaf of :func:`tunable_dtype`.

    Args:
      default: the default value, a real number. Omit it to make the field
        required.
      low, high: optional bounds; ``low_open``/``high_open`` make them strict.
      log: the field is positive and naturally searched on a log scale
        (hypergradients are taken with respect to its logarithm).
      integer: the value must be integral.
      choices: the allowed values.
      doc: a one-line description.

    Returns:
      A field declaration, to be assigned in an :class:`HParams` subclass.

    Example:
      >>> class Ridge(HParams):
      ...     learning_rate: float = tunable(0.1, low=0, low_open=True, log=True)
    """
    _check_rule_args("tunable", default, low, high, log, integer, choices)
    return Field(TUNABLE, default, low, high, low_open, high_open, log, integer,
                 None if choices is None else tuple(float(c) for c in choices), doc)


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _short(v) -> str:
    if isinstance(v, jax.Array) and not _is_tracer(v):
        v = np.asarray(v)
    if isinstance(v, np.generic) or (isinstance(v, np.ndarray) and v.ndim == 0):
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, np.ndarray):
        return np.array2string(v, precision=4, threshold=6)
    return repr(v)


def is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _at(row: int | None) -> str:
    """`` (setting 17)`` after a value that came from row 17 of a column; else nothing."""
    return "" if row is None else f" (setting {row})"


def check_static(name: str, f: Field, v: Any, row: int | None = None) -> str | None:
    at = _at(row)
    if isinstance(v, (np.ndarray, jax.Array)) or _is_tracer(v):
        return (f"`{name}`={_short(v)}{at}: a static field takes a plain Python value "
                f"(int, float, str, bool, tuple), not an array")
    try:
        hash(v)
    except TypeError:
        return f"`{name}`={v!r}{at}: a static field must be hashable (got {type(v).__name__})"
    if f.choices is not None:
        if v not in f.choices:
            return f"`{name}`={v!r}{at}: must be one of {list(f.choices)}"
        return None
    if v is None and f.default is None:
        return None
    if f.low is not None or f.high is not None or f.integer:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return f"`{name}`={v!r}{at}: must be a number ({f.rule()})"
        broken = f.check_number(float(v))
        if broken:
            return f"`{name}`={v!r}{at}: {broken} (rule: {f.rule()})"
    return None


def _not_one_number(name: str, v: Any, shape: tuple, row: int | None = None) -> str:
    return (f"`{name}`={_short(v)}{_at(row)}: a tunable field takes one number per setting, "
            f"got an array of shape {shape}; use jaxhp.stack([...]) for a batch")


def to_tunable(name: str, f: Field, v: Any, row: int | None = None) -> tuple[Any, str | None]:
    """Converts one tunable value to a 0-d array of :func:`tunable_dtype` and checks it.

    One setting takes one number per tunable (a Python or NumPy number, a 0-d
    array); an array of any other shape is refused: batches are built by
    :func:`stack`, never by construction. ``row`` (a column's row the value
    came from) is named in the message.
    """
    at = _at(row)
    dtype = tunable_dtype()
    if (type(v) is float or type(v) is int) and f.choices is None and abs(v) < 1e38:
        arr = np.array(v, dtype)  # the common case: one plain, in-range number
        if f.check_number(float(arr)) is None:
            return arr, None  # a broken rule is reported by the general path below
    if _is_tracer(v):
        if v.shape != ():
            return v, _not_one_number(name, v, tuple(v.shape), row)
        return v, None
    if isinstance(v, (str, bytes)) or isinstance(v, bool) or v is None:
        return v, (f"`{name}`={v!r}{at}: a tunable field takes a real number, "
                   f"got {type(v).__name__} ({f.rule()})")
    try:
        arr = np.asarray(v)
    except Exception:  # noqa: BLE001 - any failure means "not a number"
        return v, f"`{name}`={v!r}{at}: not convertible to a number"
    if arr.dtype.kind not in "iuf":
        return v, (f"`{name}`={v!r}{at}: a tunable field takes a real number, "
                   f"got dtype {arr.dtype}")
    if arr.shape != ():
        return v, _not_one_number(name, arr, arr.shape, row)
    with np.errstate(over="ignore"):  # beyond the dtype's range: inf, reported below
        arr = arr.astype(dtype)
    broken = f.check_number(float(arr))
    if broken:
        return arr, f"`{name}`={_short(float(arr))}{at}: {broken} (rule: {f.rule()})"
    if f.choices is not None and not np.isin(arr, np.asarray(f.choices, dtype)):
        return arr, f"`{name}`={_short(arr)}{at}: must be one of {list(f.choices)}"
    return arr, None


# ------------------------------------------------------------------ columns
def item_at(arr: np.ndarray, i: int) -> Any:
    """Row ``i`` of a column as a plain Python value (``numpy`` scalars converted)."""
    return arr[i:i + 1].tolist()[0]


def column_of(values: Sequence) -> np.ndarray:
    """A one-dimensional column of Python values: ``int64``, ``float64``, ``bool`` or
    ``<U`` strings when every value has that one type, ``object`` otherwise (None
    mixed with ints, tuples, ints beyond int64...), so that ``.tolist()`` gives the
    values back with their types."""
    values = list(values)
    types = set(map(type, values))
    if len(types) == 1:
        t = next(iter(types))
        if t is bool:
            return np.array(values, bool)
        if t is int:
            try:
                return np.array(values, np.int64)
            except OverflowError:
                pass
        elif t is float:
            return np.array(values, np.float64)
        elif t is str and not any(v.endswith("\0") for v in values):  # numpy strips NULs
            return np.array(values, str)
    return np.fromiter(values, object, len(values))


def as_column(values: Any) -> np.ndarray:
    """``values`` as an array: an array as it is, a list through :func:`column_of`."""
    if isinstance(values, np.ndarray):
        return values
    if isinstance(values, jax.Array):
        return np.asarray(values)
    return column_of(values)


def tunable_values(arr: np.ndarray) -> np.ndarray:
    """A numeric column converted to :func:`tunable_dtype` (a new array)."""
    with np.errstate(over="ignore", invalid="ignore"):  # out of range: inf, refused
        return arr.astype(tunable_dtype())


def factorize(arr: np.ndarray, exact: bool = False) -> tuple[list | None, np.ndarray | None]:
    """The distinct values of a column (as Python values, in no particular order) and
    each row's index into them; ``(None, None)`` if some value is unhashable.

    Values are told apart as ``==`` does (so ``1``, ``1.0`` and ``True`` are one
    value, as in a ``static_key()``), or, with ``exact``, also by their type.
    """
    n = arr.shape[0]
    if n == 0:
        return [], np.zeros(0, np.int64)
    if arr.dtype.kind != "O":
        if bool(np.all(arr == arr[0])):  # the common case: one value (NaN: not here)
            return [item_at(arr, 0)], np.zeros(n, np.int64)
        uniques, codes = np.unique(arr, return_inverse=True)
        return uniques.tolist(), codes.reshape(-1).astype(np.int64)
    values = arr.tolist()
    first = values[0]
    try:
        if values.count(first) == n and (
                not exact or first is None or len(set(map(type, values))) == 1):
            hash(first)
            return [first], np.zeros(n, np.int64)
        keys: list = values
        if exact and len(set(map(type, values)) & {bool, int, float, complex}) > 1:
            keys = list(zip(map(type, values), values))  # True == 1 == 1.0: type too
        index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    except (TypeError, ValueError):  # unhashable, or an array compared with ==
        return None, None
    codes = np.fromiter(map(index.__getitem__, keys), np.int64, n)
    uniques = [k[1] for k in index] if keys is not values else list(index)
    return uniques, codes


def did_you_mean(name: str, options: Sequence[str]) -> str:
    """Returns a ' (did you mean `x`?)' hint, or an empty string."""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


class HParams:
    """Base class of hyperparameter settings.

    Subclass it and declare each field with :func:`static` or :func:`tunable`.
    Instances are immutable, validated at construction, comparable, and JAX
    pytrees: tunable fields are array leaves of :func:`tunable_dtype` (float32,
    float64 under ``jax_enable_x64``), static fields are aux data. Construction
    takes one number per tunable field; :func:`stack` builds batches.

    Example:
      >>> class Ridge(HParams):
      ...     learning_rate: float = tunable(0.1, low=0, low_open=True, log=True)
      ...     l2: float = tunable(1e-3, low=0)
      ...     steps: int = static(500, low=1, integer=True)
      >>> hp = Ridge(learning_rate=0.05)
      >>> hp.replace(steps=100).steps
      100
    """

    _fields: ClassVar[dict[str, Field]] = {}
    _static_names: ClassVar[tuple[str, ...]] = ()
    _tunable_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        fields: dict[str, Field] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, "_fields", {}))
        for name in inspect.get_annotations(cls):
            value = cls.__dict__.get(name, MISSING)
            if not isinstance(value, Field):
                raise TypeError(
                    f"{cls.__name__}.{name}: every field must be declared with "
                    f"jaxhp.static(...) or jaxhp.tunable(...); got {value!r}. "
                    "The kind is declared, never guessed from the value's type.")
            if name.startswith("_") or name in ("replace", "fields"):
                raise TypeError(f"{cls.__name__}.{name}: reserved field name")
            fields[name] = value
        for name, value in list(cls.__dict__.items()):
            if isinstance(value, Field):
                fields[name] = value  # also an un-annotated override of a base field
                delattr(cls, name)
        cls._fields = fields
        cls._static_names = tuple(n for n, f in fields.items() if f.is_static)
        cls._tunable_names = tuple(n for n, f in fields.items() if f.is_tunable)
        jax.tree_util.register_pytree_with_keys(
            cls, cls._tree_flatten_with_keys, cls._tree_unflatten, cls._tree_flatten)

    # ----------------------------------------------------------- construction
    def __init__(self, **values: Any):
        cls = type(self)
        problems = []
        for name in values:
            if name not in cls._fields:
                problems.append(f"`{name}`: unknown field of {cls.__name__}"
                                f"{did_you_mean(name, cls._fields)}; "
                                f"fields are {list(cls._fields)}")
        for name, f in cls._fields.items():
            v = values.get(name, f.default)
            if v is MISSING:
                problems.append(f"`{name}`: required ({f.rule()}), no value given")
                continue
            if f.is_static:
                problem = check_static(name, f, v)
                if problem is None and f.integer and is_real(v):
                    v = int(v)  # 5.0 or np.int64(5) -> 5: shapes and range() need an int
            else:
                v, problem = to_tunable(name, f, v)
            if problem:
                problems.append(problem)
            object.__setattr__(self, name, v)
        if problems:
            raise HParamsError(cls.__name__, problems)
        self._check_shapes()
        self.__check__()

    def __check__(self) -> None:
        """Override to check invariants across fields; raise ``ValueError``."""

    def _check_shapes(self) -> None:
        shapes = {np.shape(getattr(self, n)) for n in self._tunable_names
                  if not _is_tracer(getattr(self, n))}
        if len(shapes) > 1:
            raise HParamsError(type(self).__name__, [
                f"tunable fields have different shapes {sorted(shapes)}; "
                "a batched setting needs one shape for every tunable"])

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(
            f"{type(self).__name__} is immutable; use .replace({name}=...)")

    def __delattr__(self, name):
        raise dataclasses.FrozenInstanceError(f"{type(self).__name__} is immutable")

    # ---------------------------------------------------------------- pytree
    def _tree_flatten(self):
        pads = _pads_of(self)
        if not pads:
            return ([getattr(self, n) for n in self._tunable_names],
                    tuple(getattr(self, n) for n in self._static_names))
        # A padded field of a padded group: its per-member value is a leaf (after the
        # tunables), its allocation is static (the aux data names it, pad_label()).
        children = [getattr(self, n) for n in self._tunable_names]
        children += [getattr(self, n) for n in self._static_names if n in pads]
        aux = tuple(pad_label(pads[n]) if n in pads else getattr(self, n)
                    for n in self._static_names)
        return children, aux

    def _tree_flatten_with_keys(self):
        children, aux = self._tree_flatten()
        names = list(self._tunable_names) + [n for n in self._static_names
                                             if n in _pads_of(self)]
        keys = [jax.tree_util.GetAttrKey(n) for n in names]
        return list(zip(keys, children)), aux

    @classmethod
    def _tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        pads = {}
        for n, v in zip(cls._static_names, aux):
            alloc = pad_alloc(v) if cls._fields[n].pad_to is not None else None
            if alloc is None:
                object.__setattr__(obj, n, v)
            else:
                pads[n] = alloc
        children = list(children)
        k = len(cls._tunable_names)
        for n, v in zip(cls._tunable_names, children[:k]):
            object.__setattr__(obj, n, v)
        if pads:
            for n, v in zip([n for n in cls._static_names if n in pads], children[k:]):
                object.__setattr__(obj, n, v)
            object.__setattr__(obj, "_pads", pads)
        return obj

    # ----------------------------------------------------------------- views
    @classmethod
    def fields(cls) -> dict[str, Field]:
        """The field declarations, in order."""
        return dict(cls._fields)

    @classmethod
    def static_names(cls) -> tuple[str, ...]:
        """Names of the static fields, in order."""
        return cls._static_names

    @classmethod
    def tunable_names(cls) -> tuple[str, ...]:
        """Names of the tunable fields, in order."""
        return cls._tunable_names

    def statics(self) -> dict[str, Any]:
        """The static part, as a dict (a padded field of a padded group: its
        allocation's label, ``"padded to 256"``)."""
        return dict(zip(self._static_names, self.static_key()))

    def tunables(self) -> dict[str, Any]:
        """The tunable part, as a dict of arrays (of :func:`tunable_dtype`)."""
        return {n: getattr(self, n) for n in self._tunable_names}

    def static_key(self) -> tuple:
        """A hashable key of the static part: settings with equal keys share a program."""
        return self._tree_flatten()[1]

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The shape of the tunable leaves: ``()`` for one setting."""
        leaves = self._tree_flatten()[0]
        if not leaves:
            return ()
        return tuple(np.shape(leaves[0]))

    def __len__(self) -> int:
        shape = self.batch_shape
        if not shape:
            raise TypeError(f"len() of an unbatched {type(self).__name__}")
        return shape[0]

    def __getitem__(self, index) -> HParams:
        if not self.batch_shape:
            raise TypeError(f"{type(self).__name__} is not batched; nothing to index")
        return jax.tree_util.tree_map(
            lambda x: x[index] if _is_tracer(x) else np.asarray(np.asarray(x)[index]), self)

    def replace(self, **changes: Any) -> HParams:
        """Returns a copy with some fields changed, validated like construction.

        On a batched setting (from :func:`stack`) each setting of the batch is
        rebuilt and validated on its own, then the batch is stacked again: a
        tunable change is one number (the same for every setting) or an array
        of the batch's shape (one number per setting).

        Example:
          >>> hp.replace(learning_rate=0.3)
          >>> batch.replace(l2=1e-2)  # every setting of the batch
        """
        if _pads_of(self):
            raise TypeError(f"replace() on a {type(self).__name__} of a padded group "
                            f"(fields {sorted(_pads_of(self))} are per-member arrays): "
                            "replace settings before they are batched")
        shape = self.batch_shape
        if shape:
            return self._replace_batched(shape, changes)
        values = {n: getattr(self, n) for n in self._fields}
        values.update(changes)
        return type(self)(**values)

    def _replace_batched(self, shape: tuple[int, ...], changes: dict) -> HParams:
        cls = type(self)
        tunables = {n: getattr(self, n) for n in self._tunable_names}
        for n, v in changes.items():
            if n in tunables:
                if _is_tracer(v) or np.shape(v) not in ((), shape):
                    raise HParamsError(cls.__name__, [
                        f"`{n}`={_short(v)}: a batch of shape {shape} takes one number "
                        f"(for every setting) or an array of shape {shape} (one per "
                        f"setting), got shape {tuple(np.shape(v))}"])
                tunables[n] = np.broadcast_to(np.asarray(v), shape)
        if any(_is_tracer(v) for v in tunables.values()):
            raise TypeError(f"replace() on a traced batch of {cls.__name__} settings "
                            "cannot validate each setting; call it outside jit, or on "
                            "one setting inside vmap")
        statics = {n: changes.get(n, getattr(self, n)) for n in self._static_names}
        unknown = {n: v for n, v in changes.items() if n not in self._fields}
        out = []
        for idx in np.ndindex(*shape):
            values = {**statics, **unknown, **{n: np.asarray(v)[idx]
                                               for n, v in tunables.items()}}
            try:
                out.append(cls(**values))
            except HParamsError as e:
                where = idx if len(idx) > 1 else idx[0]
                raise HParamsError(cls.__name__, [f"setting {where} of the batch: {p}"
                                                  for p in e.problems]) from None
        return jax.tree_util.tree_map(lambda x: x.reshape(shape + x.shape[1:]), stack(out))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (floats for tunables of one setting), for JSON."""
        out = {}
        pads = _pads_of(self)
        for n in self._fields:
            v = getattr(self, n)
            if (n in self._tunable_names or n in pads) and not _is_tracer(v):
                v = np.asarray(v).tolist()
            out[n] = v
        return out

    @classmethod
    def declaration(cls) -> dict[str, Any]:
        """The class's field declarations as plain JSON (what a saved result records,
        so that loading it rebuilds settings of the same declared fields)."""
        fields = []  # a list: the fields' order is the pytree's leaf order
        for name, f in cls._fields.items():
            d = {k: v for k, v in dataclasses.asdict(f).items()
                 if k != "default" and v != _FIELD_DEFAULTS[k]}
            if f.has_default:
                d["default"] = _plain(f.default)
            if f.choices is not None:
                d["choices"] = _plain(list(f.choices))
            fields.append({"name": name, "kind": f.kind, **d})
        return {"class": cls.__qualname__, "module": cls.__module__, "fields": fields}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HParams:
        """Builds a validated instance from :meth:`to_dict`'s output."""
        d = dict(d)
        for n in cls._static_names:
            if isinstance(d.get(n), list):
                d[n] = tuple(d[n])
        return cls(**d)

    def __repr__(self) -> str:
        shape = self.batch_shape
        head = type(self).__name__ + (f"[{', '.join(map(str, shape))}]" if shape else "")
        body = ", ".join(f"{n}={_short(getattr(self, n))}" for n in self._fields)
        return f"{head}({body})"

    def __eq__(self, other) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        if self.static_key() != other.static_key():
            return False
        for a, b in zip(self._tree_flatten()[0], other._tree_flatten()[0]):
            if _is_tracer(a) or _is_tracer(b):
                if a is not b:
                    return False
            elif not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
        return True

    def __hash__(self) -> int:
        vals = []
        for v in self._tree_flatten()[0]:
            # + 0.0 maps -0.0 to 0.0: they compare equal, so they must hash equal.
            vals.append(id(v) if _is_tracer(v) else (np.asarray(v) + np.float32(0)).tobytes())
        return hash((type(self).__name__, self.static_key(), tuple(vals)))


def stack(settings: Sequence[HParams]) -> HParams:
    """Stacks settings that share their static part into one batched setting.

    Args:
      settings: instances of one :class:`HParams` class with equal static fields.

    Returns:
      An instance whose tunable leaves have a leading axis of ``len(settings)``.

    Raises:
      ValueError: if ``settings`` is empty, mixes classes or static values.

    Example:
      >>> batch = stack([Ridge(learning_rate=0.1), Ridge(learning_rate=0.2)])
      >>> len(batch)
      2
    """
    settings = list(settings)
    if not settings:
        raise ValueError("stack(): no settings to stack")
    first = settings[0]
    for i, s in enumerate(settings[1:], 1):
        if type(s) is not type(first):
            raise ValueError(f"stack(): setting {i} is a {type(s).__name__}, "
                             f"setting 0 a {type(first).__name__}")
        if s.static_key() != first.static_key():
            diff = [f"`{n}`: {getattr(first, n)!r} vs {getattr(s, n)!r}"
                    for n in first.static_names() if getattr(first, n) != getattr(s, n)]
            raise ValueError(f"stack(): setting {i} differs from setting 0 in static "
                             f"fields ({'; '.join(diff)}); group settings by "
                             "static_key() first")
    return jax.tree_util.tree_map(
        lambda *xs: np.stack([np.asarray(x, _leaf_dtype(x)) for x in xs]), *settings)


def _leaf_dtype(x) -> np.dtype:
    """A leaf's dtype in a stack: int32 for a padded field's values, else tunable."""
    return np.dtype(np.int32) if np.asarray(x).dtype.kind in "iu" else tunable_dtype()


def _pads_of(hp: HParams) -> dict[str, int]:
    """``{field: allocation}`` of the fields padded in ``hp`` (empty: none)."""
    return hp.__dict__.get("_pads", {})


def padded_size(hp: HParams, name: str) -> int:
    """The static allocation of a size field: in a padded group (a field declared
    ``static(..., pad_to=...)``), the size its arrays are allocated at; otherwise the
    field's own value.

    Args:
      hp: a setting (inside a model function: the member's, possibly traced).
      name: an integer static field.

    Returns:
      A Python int, usable as a shape.

    Raises:
      ValueError: ``name`` is not an integer static field of ``hp``.

    Example:
      >>> w = jax.random.normal(key, (jaxhp.padded_size(hp, "width"), n_in))
    """
    f = _size_field(hp, name, "padded_size")
    pads = _pads_of(hp)
    if name in pads:
        return pads[name]
    v = getattr(hp, name)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ValueError(f"padded_size(): `{name}`={v!r} is not an integer size "
                         f"({f.rule()})")
    return int(v)


def unit_mask(hp: HParams, name: str, dtype: Any = bool) -> jax.Array:
    """Which of the :func:`padded_size` units of a size field are real: the array
    ``arange(padded_size(hp, name)) < getattr(hp, name)`` (all ones when not padded).

    Args:
      hp: a setting (the member's, inside a model function).
      name: an integer static field.
      dtype: the mask's dtype (``bool``, or a float dtype to multiply with).

    Returns:
      An array of shape ``(padded_size(hp, name),)`` (with the batch's leading axes
      for a batched ``hp``).

    Example:
      >>> h = jnp.where(jaxhp.unit_mask(hp, "width"), jax.nn.relu(x @ w), 0.0)
    """
    import jax.numpy as jnp

    size = padded_size(hp, name)
    value = jnp.asarray(getattr(hp, name))
    return (jnp.arange(size) < value[..., None]).astype(dtype)


def _size_field(hp: Any, name: str, caller: str) -> Field:
    if not isinstance(hp, HParams):
        raise TypeError(f"{caller}(): `hp` must be an HParams setting, got "
                        f"{type(hp).__name__}")
    f = type(hp).fields().get(name)
    if f is None or not f.is_static or not f.integer:
        raise ValueError(f"{caller}(): `{name}` is not an integer static field of "
                         f"{type(hp).__name__}{did_you_mean(name, type(hp).fields())}")
    return f


def padded_fields(hp: HParams) -> dict[str, int]:
    """``{field: allocation}`` of the fields that are per member in ``hp`` (a setting of
    a padded group); empty otherwise."""
    return dict(_pads_of(hp))


def is_padded(hp: HParams) -> bool:
    """Whether ``hp`` belongs to a padded group (some padded field is per member)."""
    return bool(_pads_of(hp))


_FIELD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Field)}


def _plain(v: Any) -> Any:
    """A declared value as JSON (tuples as lists)."""
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


def _tupled_value(v: Any) -> Any:
    return tuple(_tupled_value(x) for x in v) if isinstance(v, list) else v


def class_from_declaration(decl: Mapping[str, Any]) -> type[HParams]:
    """The ``HParams`` class a :meth:`HParams.declaration` describes.

    The recorded class itself when its module is already imported (nothing is
    imported, so no code runs) and its declaration is unchanged; otherwise a
    class rebuilt from the declaration: same name, fields, kinds, rules and
    defaults (its instances validate like the original's).

    Raises:
      ValueError: a declaration that is not one.
    """
    import sys

    try:
        name, module, fields = decl["class"], decl["module"], decl["fields"]
        if not (isinstance(name, str) and isinstance(fields, list)
                and all(isinstance(f, Mapping) and isinstance(f.get("name"), str)
                        for f in fields)):
            raise TypeError
    except (KeyError, TypeError) as e:
        raise ValueError(f"not an HParams declaration: {decl!r}") from e
    found: Any = sys.modules.get(module)
    for part in name.split("."):
        found = getattr(found, part, None)
    if (isinstance(found, type) and issubclass(found, HParams)
            and found.declaration()["fields"] == fields):
        return found
    attrs: dict[str, Any] = {"__annotations__": {}, "__module__": module,
                             "__doc__": f"{name}, rebuilt from a saved declaration."}
    for spec in fields:
        spec = dict(spec)
        field_name = spec.pop("name")
        if spec.get("kind") not in (STATIC, TUNABLE):
            raise ValueError(f"declaration of {name}.{field_name}: unknown kind "
                             f"{spec.get('kind')!r}")
        if "default" in spec:
            spec["default"] = _tupled_value(spec["default"])
        if spec.get("choices") is not None:
            spec["choices"] = tuple(_tupled_value(c) for c in spec["choices"])
        attrs["__annotations__"][field_name] = Any
        attrs[field_name] = Field(**spec)
    rebuilt = type(name.rsplit(".", 1)[-1], (HParams,), attrs)
    rebuilt.__qualname__ = name
    return rebuilt
