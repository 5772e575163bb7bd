"""Search spaces: which hyperparameter settings a sweep trains.

A space is a finite, ordered list of settings: :func:`grid`, :func:`random`,
:func:`quasirandom` (over the distributions of ``_distributions.py``), combined
with ``*`` (product) and ``+`` (concatenation). Spaces are immutable and
JSON-describable (``to_dict``), and are checked against a hyperparameter class
(``validate``) before anything runs.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import itertools
import math
import numbers
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxhp import _qmc
from jaxhp._distributions import Choice, as_axis, value_column
from jaxhp._distributions import Distribution as Distribution
from jaxhp._distributions import SpaceError as SpaceError
from jaxhp._distributions import choice as choice
from jaxhp._distributions import fixed as fixed
from jaxhp._distributions import intrange as intrange
from jaxhp._distributions import loguniform as loguniform
from jaxhp._distributions import uniform as uniform
from jaxhp._hparams import Field, HParams, HParamsError, did_you_mean, item_at
from jaxhp._table import SettingsTable, concat_columns, constant_column, fill_value

__all__ = ["Distribution", "Space", "SpaceError", "choice", "fixed", "grid", "intrange",
           "loguniform", "quasirandom", "random", "uniform"]

_METHODS = ("sobol", "halton")


class Space(abc.ABC):
    """Base class of search spaces: a finite, ordered, immutable list of settings.

    Build spaces with :func:`grid`, :func:`random` and :func:`quasirandom`;
    ``a * b`` crosses every setting of ``a`` with every setting of ``b`` (their
    fields must be disjoint), ``a + b`` lists the settings of ``a`` then ``b``.

    Example:
      >>> space = grid(optimizer=["sgd", "adam"]) * random(8, l2=loguniform(1e-6, 1))
      >>> len(space), space.fields
      (16, ('optimizer', 'l2'))
      >>> hps = space.settings(LinearHP)
    """

    @property
    @abc.abstractmethod
    def fields(self) -> tuple[str, ...]:
        """The names of the fields the space sets, in order.

        Example:
          >>> grid(width=[64], depth=[1, 2]).fields
          ('width', 'depth')
        """

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def _assignments(self) -> list[dict[str, Any]]:
        """The settings as ``{field: value}`` dicts, in order."""

    def _columns(self, fields: dict[str, Field], fill: dict[str, Any]) -> dict[str, np.ndarray]:
        """The values of the fields the space sets, one column each, as the settings
        take them (:func:`~jaxhp._distributions._coerce`); ``fill`` holds the value of
        every field a part of a concatenation leaves unset.

        This default goes through :meth:`_assignments` (one dict per setting); the
        spaces of this module override it with vectorised code.
        """
        rows = self._assignments()
        return {name: value_column(fields[name], [a.get(name, fill[name]) for a in rows])
                for name in self.fields}

    @abc.abstractmethod
    def _parts(self) -> list[tuple[str, Distribution]]:
        """Every ``(field, distribution)`` pair the space uses."""

    def _branches(self) -> set[frozenset[str]]:
        """The distinct sets of fields its settings assign."""
        return {frozenset(self.fields)}

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable, stable description (equal spaces give equal dicts).

        Example:
          >>> grid(width=[64, 128]).to_dict()
          {'type': 'grid', 'axes': [{'field': 'width', 'type': 'choice', 'values': [64, 128]}]}
        """

    @abc.abstractmethod
    def describe(self) -> str:
        """A one-line description that reads like the code building the space.

        Example:
          >>> (grid(width=[64, 128]) * random(4, l2=loguniform(1e-6, 1.0))).describe()
          'grid(width=[64, 128]) * random(4, seed=0, l2=loguniform(1e-06, 1.0))'
        """

    def __repr__(self) -> str:
        return self.describe()

    def __mul__(self, other: Space) -> Space:
        if not isinstance(other, Space):
            return NotImplemented
        return _Product(_flat(self, _Product, "factors") + _flat(other, _Product, "factors"))

    def __add__(self, other: Space) -> Space:
        if not isinstance(other, Space):
            return NotImplemented
        return _Concat(_flat(self, _Concat, "parts") + _flat(other, _Concat, "parts"))

    def validate(self, hp_cls: type[HParams], base: HParams | None = None) -> None:
        """Checks the space against a hyperparameter class, before anything runs.

        Args:
          hp_cls: the :class:`~jaxhp.HParams` subclass the settings will be.
          base: the instance that supplies unset fields (see :meth:`settings`).

        Raises:
          SpaceError: listing every unknown field (with a did-you-mean hint),
            range or value outside its field's rule, real-valued distribution
            over an integer or choice field, and required field left unset.
          TypeError: if ``hp_cls`` is not an HParams class or ``base`` not one
            of its instances.

        Example:
          >>> grid(learning_rat=[0.1]).validate(LinearHP)
          Traceback (most recent call last):
          SpaceError: ... unknown field of LinearHP (did you mean `learning_rate`?) ...
        """
        _check_target(hp_cls, base)
        fields = hp_cls.fields()
        problems = []
        for name, d in self._parts():
            if name not in fields:
                problems.append(f"`{name}`: unknown field of {hp_cls.__name__}"
                                f"{did_you_mean(name, fields)}; fields are {list(fields)}")
            else:
                problems.extend(d.problems(name, fields[name]))
        if base is None:
            required = [n for n, f in fields.items() if not f.has_default]
            for branch in sorted(self._branches(), key=sorted):
                missing = [n for n in required if n not in branch]
                if missing:
                    problems.append(f"required field(s) {missing} of {hp_cls.__name__} are "
                                    "not set by the space and no base was given")
        if problems:
            raise SpaceError(list(dict.fromkeys(problems)),
                             header=f"{self.describe()} over {hp_cls.__name__}")

    def settings(self, hp_cls: type[HParams], base: HParams | None = None) -> list[HParams]:
        """Every setting of the space, as validated instances of ``hp_cls``.

        Args:
          hp_cls: an :class:`~jaxhp.HParams` subclass.
          base: an instance of ``hp_cls`` whose values fill the fields the space
            does not set; by default, the class defaults fill them.

        Returns:
          ``len(self)`` instances in the space's order. Integer fields hold
          Python ints, string choices stay strings, tunables are 0-d arrays of
          :func:`~jaxhp._hparams.tunable_dtype` (float32; float64 under x64).

        Raises:
          SpaceError: if :meth:`validate` fails or a setting breaks a cross-field
            check of ``hp_cls``.

        Example:
          >>> hps = grid(width=[64, 128]).settings(MLPHP, base=MLPHP(depth=3))
          >>> [(h.width, h.depth) for h in hps]
          [(64, 3), (128, 3)]
        """
        return self.table(hp_cls, base).settings()

    def table(self, hp_cls: type[HParams], base: HParams | None = None) -> SettingsTable:
        """Every setting of the space as columns, without one object per setting.

        The same settings as :meth:`settings` (``table(...).settings() ==
        settings(...)``, bit for bit): values are drawn for all settings at once,
        validated once per field, and grouped by their static part.

        Args:
          hp_cls: an :class:`~jaxhp.HParams` subclass.
          base: an instance of ``hp_cls`` whose values fill the fields the space
            does not set; by default, the class defaults fill them.

        Returns:
          A :class:`~jaxhp.SettingsTable` of ``len(self)`` rows in the
          space's order.

        Raises:
          SpaceError: as :meth:`settings`.

        Example:
          >>> table = grid(width=[64, 128]).table(MLPHP, base=MLPHP(depth=3))
          >>> table.columns["width"].tolist(), table.n_groups
          ([64, 128], 2)
        """
        self.validate(hp_cls, base)
        fields = hp_cls.fields()
        fill = {name: fill_value(hp_cls, name, base) for name in fields}
        columns = self._columns(fields, fill)
        try:
            return SettingsTable(hp_cls, columns, base=base, n=len(self))
        except HParamsError as e:
            row = getattr(e, "row", None)
            if row is None:
                raise SpaceError(f"{self.describe()} over {hp_cls.__name__}: {e}") from e
            values = {name: item_at(columns[name], row) for name in self.fields}
            cause = e.__cause__ if getattr(e, "_check_failed", False) else e
            raise SpaceError(f"setting {row} of {self.describe()} ({values}) is "
                             f"invalid: {cause}") from cause


def _cross(parts: list[tuple[int, dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """Columns of the cartesian product of parts ``(length, columns)``, the last part
    varying fastest (``itertools.product``'s order)."""
    n = math.prod(k for k, _ in parts)
    out = {}
    after = n
    for k, cols in parts:
        after //= k
        before = n // (after * k)
        for name, col in cols.items():
            out[name] = np.tile(np.repeat(col, after), before)
    return out


def _flat(space: Space, cls: type, attr: str) -> tuple[Space, ...]:
    return getattr(space, attr) if isinstance(space, cls) else (space,)


def _check_target(hp_cls: Any, base: Any) -> None:
    if not (isinstance(hp_cls, type) and issubclass(hp_cls, HParams)):
        raise TypeError(f"`hp_cls`={hp_cls!r}: expected an HParams subclass")
    if base is not None:
        if type(base) is not hp_cls:
            raise TypeError(f"`base`: expected a {hp_cls.__name__}, got "
                            f"{type(base).__name__}")
        if base.batch_shape:
            raise SpaceError(f"`base` is a batched {hp_cls.__name__} {base.batch_shape}; "
                             "give one setting")


def _axes_dict(axes) -> list[dict[str, Any]]:
    return [{"field": name, **d.to_dict()} for name, d in axes]


def _axes_repr(axes, grid_style: bool = False) -> str:
    def one(d):
        return repr(list(d.values)) if grid_style and isinstance(d, Choice) else repr(d)
    return ", ".join(f"{name}={one(d)}" for name, d in axes)


class _Leaf(Space):
    """A space over ``axes``: ``(field, distribution)`` pairs."""

    axes: tuple[tuple[str, Distribution], ...]

    @property
    def fields(self):
        return tuple(name for name, _ in self.axes)

    def _parts(self):
        return list(self.axes)


@dataclasses.dataclass(frozen=True, repr=False)
class _Grid(_Leaf):
    axes: tuple[tuple[str, Distribution], ...]

    def __len__(self):
        return math.prod(len(_grid_values(d)) for _, d in self.axes)

    def _assignments(self):
        values = [_grid_values(d) for _, d in self.axes]
        combos = itertools.product(*values)
        return [dict(zip(self.fields, combo, strict=True)) for combo in combos]

    def _columns(self, fields, fill):
        axes = [value_column(fields[name], _grid_values(d)) for name, d in self.axes]
        return _cross([(len(col), {name: col}) for (name, _), col in zip(self.axes, axes)])

    def to_dict(self):
        return {"type": "grid", "axes": _axes_dict(self.axes)}

    def describe(self):
        return f"grid({_axes_repr(self.axes, grid_style=True)})"


def _grid_values(d: Distribution) -> tuple:
    return d.values if isinstance(d, Choice) else (d.value,)


@dataclasses.dataclass(frozen=True, repr=False)
class _Sampled(_Leaf):
    n: int
    seed: int
    axes: tuple[tuple[str, Distribution], ...]
    method: str | None = None  # None: i.i.d. random; else "sobol" or "halton"

    def __len__(self):
        return self.n

    def _units(self) -> np.ndarray:
        """The ``(n, fields)`` uniform numbers the values are mapped from."""
        if self.method == "sobol":
            return _qmc.sobol(self.n, len(self.axes), self.seed)
        if self.method == "halton":
            return _qmc.halton(self.n, len(self.axes), self.seed)
        # One stream per field name: adding a field leaves the others' draws alone.
        cols = [np.random.default_rng([self.seed, zlib.crc32(name.encode())]).random(self.n)
                for name, _ in self.axes]
        return np.stack(cols, axis=1) if cols else np.zeros((self.n, 0))

    def _assignments(self):
        return [{name: d.sample_unit(u) for (name, d), u in zip(self.axes, row, strict=True)}
                for row in self._units()]

    def _columns(self, fields, fill):
        units = self._units()
        return {name: d.column_for(fields[name], units[:, j])
                for j, (name, d) in enumerate(self.axes)}

    def to_dict(self):
        out = {"type": "quasirandom" if self.method else "random", "n": self.n,
               "seed": self.seed}
        if self.method:
            out["method"] = self.method
        return {**out, "axes": _axes_dict(self.axes)}

    def describe(self):
        head = f"{self.n}, seed={self.seed}"
        if self.method:
            head += f", method={self.method!r}"
        body = _axes_repr(self.axes)
        return f"{'quasirandom' if self.method else 'random'}({head}{', ' * bool(body)}{body})"


@dataclasses.dataclass(frozen=True, repr=False)
class _Product(Space):
    factors: tuple[Space, ...]

    def __post_init__(self):
        counts = collections.Counter(n for space in self.factors for n in space.fields)
        overlap = [n for n, c in counts.items() if c > 1]
        if overlap:
            raise SpaceError(f"product of spaces that both set {overlap}: the factors of "
                             "`a * b` must set disjoint fields (use `a + b` to concatenate)")

    @property
    def fields(self):
        return tuple(n for space in self.factors for n in space.fields)

    def __len__(self):
        return math.prod(len(space) for space in self.factors)

    def _assignments(self):
        lists = [space._assignments() for space in self.factors]
        return [{k: v for a in combo for k, v in a.items()}
                for combo in itertools.product(*lists)]

    def _columns(self, fields, fill):
        return _cross([(len(s), s._columns(fields, fill)) for s in self.factors])

    def _parts(self):
        return [p for space in self.factors for p in space._parts()]

    def _branches(self):
        return {frozenset().union(*combo)
                for combo in itertools.product(*(s._branches() for s in self.factors))}

    def to_dict(self):
        return {"type": "product", "factors": [s.to_dict() for s in self.factors]}

    def describe(self):
        return " * ".join(f"({s.describe()})" if isinstance(s, _Concat) else s.describe()
                          for s in self.factors)


@dataclasses.dataclass(frozen=True, repr=False)
class _Concat(Space):
    parts: tuple[Space, ...]

    @property
    def fields(self):
        return tuple(dict.fromkeys(n for space in self.parts for n in space.fields))

    def __len__(self):
        return sum(len(space) for space in self.parts)

    def _assignments(self):
        return [a for space in self.parts for a in space._assignments()]

    def _columns(self, fields, fill):
        parts = [(len(s), s._columns(fields, fill)) for s in self.parts]
        # A field a part does not set takes the base's value or the default there
        # (validate() has refused a required field some part leaves unset).
        return {name: concat_columns([cols[name] if name in cols
                                       else constant_column(fields[name], fill[name], k)
                                       for k, cols in parts])
                for name in self.fields}

    def _parts(self):
        return [p for space in self.parts for p in space._parts()]

    def _branches(self):
        return set().union(*(s._branches() for s in self.parts))

    def to_dict(self):
        return {"type": "concat", "parts": [s.to_dict() for s in self.parts]}

    def describe(self):
        return " + ".join(s.describe() for s in self.parts)


def _count(kind: str, arg: str, v: Any, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low:
        raise SpaceError(f"{kind}(): `{arg}` must be an integer >= {low}, got {v!r}")
    return int(v)


def _merge(kind: str, mapping: Mapping | None, kwargs: dict) -> dict:
    both = set(mapping or {}) & set(kwargs)
    if both:
        raise SpaceError(f"{kind}(): fields {sorted(both)} given twice")
    return {**(mapping or {}), **kwargs}


def grid(axes: Mapping[str, Any] | None = None, /, **values: Any) -> Space:
    """The cartesian product of explicit values per field.

    Args:
      axes: optional ``{field: values}`` mapping, merged with the keyword
        arguments.
      **values: ``field=[v1, v2, ...]`` (or a :func:`choice` / :func:`fixed`).

    Returns:
      A :class:`Space` of ``prod(len(values))`` settings; the last field varies
      fastest. ``grid()`` is the single setting of the base or defaults.

    Raises:
      SpaceError: for an empty list, a bare value or a continuous distribution.

    Example:
      >>> space = grid(width=[64, 128], optimizer=["sgd", "adam"])
      >>> [(h.width, h.optimizer) for h in space.settings(MLPHP)][:2]
      [(64, 'sgd'), (64, 'adam')]
    """
    merged = _merge("grid", axes, values)
    return _Grid(tuple((name, as_axis("grid", name, v)) for name, v in merged.items()))


def random(n: int, dists: Mapping[str, Any] | None = None, /, *, seed: int = 0,
           **kwargs: Any) -> Space:
    """``n`` settings drawn independently, reproducibly from ``seed``.

    Args:
      n: the number of settings.
      dists: optional ``{field: distribution}`` mapping (for fields named like
        an argument, e.g. ``seed``); merged with the keyword arguments.
      seed: a non-negative integer; each field draws from its own numpy
        generator seeded by ``(seed, field name)``.
      **kwargs: ``field=distribution``; a plain list means :func:`choice`.

    Returns:
      A :class:`Space` of ``n`` settings.

    Example:
      >>> space = random(32, seed=1, learning_rate=loguniform(1e-4, 1),
      ...                optimizer=["sgd", "adam"])
    """
    return _sampled("random", n, seed, None, dists, kwargs)


def quasirandom(n: int, dists: Mapping[str, Any] | None = None, /, *, seed: int = 0,
                method: str = "sobol", **kwargs: Any) -> Space:
    """``n`` settings from a scrambled low-discrepancy sequence: they fill the space
    more evenly than random draws.

    Args:
      n: the number of settings (Sobol is most even at powers of two).
      dists: optional ``{field: distribution}`` mapping; merged with kwargs.
      seed: a non-negative integer choosing the scramble.
      method: ``"sobol"`` (affine-scrambled, base 2) or ``"halton"`` (random
        digit permutations, prime bases). The i-th field given is dimension i.
      **kwargs: ``field=distribution``; a plain list means :func:`choice`.

    Returns:
      A :class:`Space` of ``n`` settings.

    Example:
      >>> space = quasirandom(256, learning_rate=loguniform(1e-4, 1), l2=loguniform(1e-6, 1))
    """
    if method not in _METHODS:
        raise SpaceError(f"quasirandom(): `method`={method!r}: must be one of {list(_METHODS)}")
    return _sampled("quasirandom", n, seed, method, dists, kwargs)


def _sampled(kind, n, seed, method, dists, kwargs) -> Space:
    merged = _merge(kind, dists, kwargs)
    axes = tuple((name, as_axis(kind, name, v)) for name, v in merged.items())
    return _Sampled(_count(kind, "n", n, 1), _count(kind, "seed", seed, 0), axes, method)
