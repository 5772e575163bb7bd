"""Distributions of one hyperparameter field, for search spaces.

A distribution maps a uniform number ``u`` in ``[0, 1)`` to a value
(:meth:`Distribution.sample_unit`), so random and quasi-random sampling share
the same code. Distributions are small frozen, hashable, JSON-describable
objects, checked against a field's rule by the space that uses them.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxhp._hparams import (
    Field,
    check_static,
    column_of,
    to_tunable,
    tunable_dtype,
)

__all__ = ["Distribution", "SpaceError", "choice", "fixed", "intrange", "loguniform",
           "uniform"]

class SpaceError(ValueError):
    """A malformed search space, or one that does not fit its hyperparameter class.

    ``problems`` holds one message per problem; each names the field, the
    distribution or values, and the field's rule.

    Example:
      >>> try:
      ...     grid(width=[])
      ... except SpaceError as e:
      ...     print(e.problems[0])
      grid(): `width` has an empty list of values; give at least one value
    """

    def __init__(self, problems: str | Sequence[str], header: str = ""):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1 and not header:
            message = self.problems[0]
        else:
            n = len(self.problems)
            lines = "\n".join(f"  - {p}" for p in self.problems)
            message = f"{header}: {n} problem{'s' * (n != 1)}:\n{lines}"
        super().__init__(message)


# ------------------------------------------------------------------ values
def _plain(v: Any, where: str) -> Any:
    """``v`` as a hashable, JSON-describable Python value."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise SpaceError(f"{where}: {v!r} is not a finite number")
        return v
    if isinstance(v, (tuple, list)):
        return tuple(_plain(x, where) for x in v)
    raise SpaceError(f"{where}: {v!r} ({type(v).__name__}) is not a plain value; use "
                     "None, bool, int, float, str or a tuple of them")


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v


def _is_list(v: Any) -> bool:
    return isinstance(v, np.ndarray) or (
        isinstance(v, Sequence) and not isinstance(v, (str, bytes)))


def _real(kind: str, arg: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise SpaceError(f"{kind}(): `{arg}` must be a finite real number, got {v!r}")
    return float(v)


def _below(x: float) -> float:
    """The largest float64 strictly below ``x``."""
    return float(np.nextafter(x, -math.inf))


# ----------------------------------------------------------- distributions
class Distribution(abc.ABC):
    """Base class of the one-field distributions a space draws values from.

    Subclasses are small frozen objects: ``sample_unit(u)`` maps a uniform
    number ``u`` in ``[0, 1)`` to a value, ``to_dict()`` describes them in JSON.

    Example:
      >>> round(loguniform(1e-4, 1.0).sample_unit(0.5), 12)
      0.01
    """

    @abc.abstractmethod
    def sample_unit(self, u: float) -> Any:
        """Maps ``u`` in ``[0, 1)`` to a value (``u`` uniform gives the distribution).

        Example:
          >>> intrange(1, 4).sample_unit(0.99)
          4
        """

    def sample_units(self, u: np.ndarray) -> np.ndarray:
        """:meth:`sample_unit` of every entry of a one-dimensional array, at once.

        Gives exactly ``sample_unit`` element by element (the same floats, bit for
        bit; ints as ``int64``), as a numpy column: ``float64`` for real numbers,
        ``int64`` for integers, the values' own type for choices (``object`` when
        they mix types).

        Example:
          >>> intrange(1, 4).sample_units(np.array([0.0, 0.5, 0.99])).tolist()
          [1, 3, 4]
        """
        u = np.asarray(u, np.float64).reshape(-1)
        return column_of([self.sample_unit(x) for x in u.tolist()])

    def column_for(self, f: Field, u: np.ndarray) -> np.ndarray:
        """The values for unit samples ``u``, as a space gives them to field ``f``
        (:func:`_coerce`, element by element). Read by a space's table."""
        return _coerce_column(f, self.sample_units(u))

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description.

        Example:
          >>> uniform(0, 1).to_dict()
          {'type': 'uniform', 'low': 0.0, 'high': 1.0}
        """

    @abc.abstractmethod
    def problems(self, name: str, f: Field) -> list[str]:
        """What breaks field ``f``'s rules among the values this distribution can give
        to ``name``: one message per problem (none: it fits). Read by a space's check."""


def _range_problems(d: Distribution, name: str, f: Field, ends, what: str) -> list[str]:
    """Checks the extreme values ``ends`` a numeric distribution can produce."""
    rule = f"(rule: {f.rule()})"
    if f.choices is not None:
        return [f"`{name}`: {d!r} draws {what} but the field takes one of "
                f"{list(f.choices)}; use choice([...]) {rule}"]
    if f.integer and what != "integers":
        return [f"`{name}`: {d!r} draws {what} but the field must be an integer; "
                f"use intrange(low, high) or choice([...]) {rule}"]
    out = []
    for label, v in ends:
        dtype = tunable_dtype()
        if f.is_tunable and abs(v) > float(np.finfo(dtype).max):
            out.append(f"`{name}`: {d!r} produces {label}, beyond the {dtype.name} range "
                       f"{rule}")
            continue
        broken = f.check_number(v)
        if broken:
            out.append(f"`{name}`: {d!r} produces {label}, but the value {broken} {rule}")
    return out


def _value_problems(d: Distribution, name: str, f: Field, values) -> list[str]:
    out = []
    for v in values:
        problem = check_static(name, f, v) if f.is_static else to_tunable(name, f, v)[1]
        if problem:
            out.append(f"`{name}`: {d!r} includes a value the field rejects: {problem}")
    return out


@dataclasses.dataclass(frozen=True, repr=False)
class _Uniform(Distribution):
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        kind = self._kind()
        low, high = _real(kind, "low", self.low), _real(kind, "high", self.high)
        if low >= high:
            raise SpaceError(f"{kind}({low!r}, {high!r}): bounds reversed or equal: need "
                             "low < high (use fixed(value) for a single value)")
        if self.log and low <= 0:
            raise SpaceError(f"loguniform({low!r}, {high!r}): the log scale needs low > 0")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    def _kind(self) -> str:
        return "loguniform" if self.log else "uniform"

    def sample_unit(self, u: float) -> float:
        if self.log:
            v = self.low * math.exp(float(u) * math.log(self.high / self.low))
        else:
            v = self.low + float(u) * (self.high - self.low)
        return min(max(v, self.low), _below(self.high))

    def sample_units(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, np.float64).reshape(-1)
        if self.log:
            v = self.low * _exp(u * math.log(self.high / self.low))
        else:
            v = self.low + u * (self.high - self.low)
        return np.minimum(np.maximum(v, self.low), _below(self.high))

    def to_dict(self) -> dict[str, Any]:
        return {"type": self._kind(), "low": self.low, "high": self.high}

    def problems(self, name: str, f: Field) -> list[str]:
        ends = [(f"its low end {self.low!r}", self.low),
                (f"values just below its high end {self.high!r}", _below(self.high))]
        return _range_problems(self, name, f, ends, "real numbers")

    def __repr__(self) -> str:
        return f"{self._kind()}({self.low!r}, {self.high!r})"


@dataclasses.dataclass(frozen=True, repr=False)
class _IntRange(Distribution):
    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        for arg in ("low", "high"):
            v = getattr(self, arg)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise SpaceError(f"intrange(): `{arg}` must be an integer, got {v!r}")
            object.__setattr__(self, arg, int(v))
        if self.low > self.high:
            raise SpaceError(f"intrange({self.low}, {self.high}): bounds reversed: "
                             "need low <= high (both ends are included)")
        if self.log and self.low < 1:
            raise SpaceError(f"intrange({self.low}, {self.high}, log=True): the log "
                             "scale needs low >= 1")

    def sample_unit(self, u: float) -> int:
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high + 1)
            v = math.floor(math.exp(lo + float(u) * (hi - lo)))
        else:
            v = self.low + math.floor(float(u) * (self.high - self.low + 1))
        return int(min(max(v, self.low), self.high))

    def sample_units(self, u: np.ndarray) -> np.ndarray:
        u = np.asarray(u, np.float64).reshape(-1)
        if max(abs(self.low), abs(self.high) + 1) >= 2**53:  # beyond exact float64 ints
            return super().sample_units(u)
        if self.log:
            lo, hi = math.log(self.low), math.log(self.high + 1)
            v = np.floor(_exp(lo + u * (hi - lo)))
        else:
            v = self.low + np.floor(u * float(self.high - self.low + 1))
        return np.minimum(np.maximum(v, self.low), self.high).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "intrange", "low": self.low, "high": self.high, "log": self.log}

    def problems(self, name: str, f: Field) -> list[str]:
        ends = [(f"its low end {self.low!r}", self.low), (f"its high end {self.high!r}",
                                                          self.high)]
        return _range_problems(self, name, f, ends, "integers")

    def __repr__(self) -> str:
        return f"intrange({self.low}, {self.high}{', log=True' * self.log})"


@dataclasses.dataclass(frozen=True, repr=False)
class Choice(Distribution):
    values: tuple

    def __post_init__(self):
        if not _is_list(self.values):
            raise SpaceError(f"choice({self.values!r}): give a list of values, e.g. "
                             f"choice([{self.values!r}])")
        values = tuple(_plain(v, "choice()") for v in self.values)
        if not values:
            raise SpaceError("choice([]): give at least one value")
        object.__setattr__(self, "values", values)

    def sample_unit(self, u: float) -> Any:
        k = len(self.values)
        return self.values[min(int(float(u) * k), k - 1)]

    def _indices(self, u: np.ndarray) -> np.ndarray:
        k = len(self.values)
        u = np.asarray(u, np.float64).reshape(-1)
        return np.minimum((u * k).astype(np.int64), k - 1)

    def sample_units(self, u: np.ndarray) -> np.ndarray:
        return column_of(self.values)[self._indices(u)]

    def column_for(self, f: Field, u: np.ndarray) -> np.ndarray:
        return value_column(f, self.values)[self._indices(u)]

    def to_dict(self) -> dict[str, Any]:
        return {"type": "choice", "values": [_jsonable(v) for v in self.values]}

    def problems(self, name: str, f: Field) -> list[str]:
        return _value_problems(self, name, f, self.values)

    def __repr__(self) -> str:
        return f"choice({list(self.values)!r})"


@dataclasses.dataclass(frozen=True, repr=False)
class _Fixed(Distribution):
    value: Any

    def __post_init__(self):
        object.__setattr__(self, "value", _plain(self.value, "fixed()"))

    def sample_unit(self, u: float) -> Any:
        return self.value

    def sample_units(self, u: np.ndarray) -> np.ndarray:
        return np.repeat(column_of([self.value]), np.asarray(u).reshape(-1).shape[0])

    def column_for(self, f: Field, u: np.ndarray) -> np.ndarray:
        return np.repeat(value_column(f, [self.value]), np.asarray(u).reshape(-1).shape[0])

    def to_dict(self) -> dict[str, Any]:
        return {"type": "fixed", "value": _jsonable(self.value)}

    def problems(self, name: str, f: Field) -> list[str]:
        return _value_problems(self, name, f, [self.value])

    def __repr__(self) -> str:
        return f"fixed({self.value!r})"


def uniform(low: float, high: float) -> Distribution:
    """Real numbers drawn uniformly from ``[low, high)``.

    Args:
      low, high: finite bounds with ``low < high``.

    Returns:
      A :class:`Distribution` producing Python floats.

    Raises:
      SpaceError: if a bound is not a finite number or ``low >= high``.

    Example:
      >>> space = random(8, momentum=uniform(0.0, 0.99))
    """
    return _Uniform(low, high)


def loguniform(low: float, high: float) -> Distribution:
    """Real numbers whose logarithm is uniform: ``exp(U[log low, log high))``.

    Args:
      low, high: bounds with ``0 < low < high``.

    Returns:
      A :class:`Distribution` producing Python floats; its median is
      ``sqrt(low * high)``.

    Raises:
      SpaceError: if ``low <= 0`` or ``low >= high``.

    Example:
      >>> space = random(64, learning_rate=loguniform(1e-4, 1.0))
    """
    return _Uniform(low, high, log=True)


def intrange(low: int, high: int, *, log: bool = False) -> Distribution:
    """Integers from ``low`` to ``high``, both included.

    Args:
      low, high: integer bounds with ``low <= high``.
      log: draw ``floor(exp(U[log low, log(high + 1))))``, so small values are
        as likely per octave as large ones (needs ``low >= 1``).

    Returns:
      A :class:`Distribution` producing Python ints.

    Raises:
      SpaceError: if a bound is not an integer, ``low > high``, or ``log`` with
        ``low < 1``.

    Example:
      >>> space = random(16, width=intrange(16, 512, log=True))
    """
    return _IntRange(low, high, log)


def choice(values: Sequence) -> Distribution:
    """One of a list of values, each equally likely.

    Args:
      values: a non-empty list of plain values (numbers, strings, bools, None
        or tuples of them).

    Returns:
      A :class:`Distribution` producing the values themselves.

    Raises:
      SpaceError: if ``values`` is empty, a string, or holds other objects.

    Example:
      >>> space = random(16, optimizer=choice(["sgd", "adam"]))
    """
    return Choice(values)


def fixed(value: Any) -> Distribution:
    """Always the same value.

    Args:
      value: a plain value (number, string, bool, None or a tuple of them).

    Returns:
      A :class:`Distribution` producing ``value``.

    Example:
      >>> space = grid(learning_rate=[0.1, 0.01]) * grid(steps=fixed(200))
    """
    return _Fixed(value)


# ------------------------------------------------------- used by spaces
def as_axis(kind: str, name: str, v: Any) -> Distribution:
    """A distribution from a field's argument: a list means :func:`choice`."""
    if isinstance(v, (Choice, _Fixed)) or (isinstance(v, Distribution) and kind != "grid"):
        return v
    if isinstance(v, Distribution):
        raise SpaceError(f"grid(): `{name}`={v!r} is not a list of values; a grid takes "
                         "explicit values (a list, choice or fixed); sample distributions "
                         "with random() or quasirandom()")
    if not _is_list(v):
        raise SpaceError(f"{kind}(): `{name}`={v!r}: give a list of values (e.g. "
                         f"{name}=[{v!r}]) or a distribution (uniform, loguniform, "
                         "intrange, choice, fixed)")
    if len(v) == 0:
        raise SpaceError(f"{kind}(): `{name}` has an empty list of values; give at least "
                         "one value")
    return Choice(tuple(v))


def _coerce(f: Field, v: Any) -> Any:
    """Integral numbers for integer static fields; floats for tunables that stay valid
    once rounded to :func:`~jaxhp._hparams.tunable_dtype`."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return v
    if f.is_static:
        return int(v) if f.integer and float(v).is_integer() else v
    dt = tunable_dtype().type
    x = dt(v)
    if f.check_number(float(x)) is None or f.check_number(float(v)) is not None:
        return float(x)
    # Rounding to the tunable dtype reached an open bound the exact value respects:
    # step back in.
    return float(np.nextafter(x, dt(-np.inf if float(x) > v else np.inf)))


def _exp(x: np.ndarray) -> np.ndarray:
    """``math.exp`` of every entry: the same bits as :meth:`Distribution.sample_unit`.

    ``np.exp`` is faster but is not ``math.exp``: its SIMD kernels round
    differently from the C library in the last bit (4% of float64 values on an
    AVX-512 CPU) and depend on the CPU, so a space would draw other values on
    another machine.
    """
    return np.fromiter(map(math.exp, x.tolist()), np.float64, x.shape[0])


def value_column(f: Field, values: Sequence) -> np.ndarray:
    """Explicit values (a choice, a grid axis) as a column for field ``f``, each one
    through :func:`_coerce`: tunables of :func:`~jaxhp._hparams.tunable_dtype`."""
    coerced = [_coerce(f, v) for v in values]
    if f.is_tunable and all(isinstance(v, float) for v in coerced):
        return np.array(coerced, tunable_dtype())
    return column_of(coerced)


def _coerce_column(f: Field, col: np.ndarray) -> np.ndarray:
    """:func:`_coerce` of every entry of a column, vectorised for numeric columns."""
    if col.dtype.kind not in "iuf":
        return value_column(f, col.tolist())
    if f.is_static:
        if f.integer and col.dtype.kind == "f":
            whole = np.isfinite(col) & (col == np.floor(col)) & (np.abs(col) < 2.0**63)
            if whole.all():
                return col.astype(np.int64)
            return column_of([int(v) if w else v for v, w in zip(col.tolist(), whole)])
        return col
    dt = tunable_dtype()
    v = col.astype(np.float64)  # ints: as numpy converts a Python int, through float64
    with np.errstate(over="ignore", invalid="ignore"):
        x = v.astype(dt)
    back = x.astype(np.float64)
    fix = f.bad_numbers(back) & ~f.bad_numbers(v)
    if fix.any():
        # Rounding to the tunable dtype reached an open bound the exact value respects:
        # step back in.
        toward = np.where(back[fix] > v[fix], dt.type(-np.inf), dt.type(np.inf))
        x[fix] = np.nextafter(x[fix], toward)
    return x
