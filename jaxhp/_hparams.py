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
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import jax
import numpy as np

STATIC = "static"
TUNABLE = "tunable"
_MISSING = object()


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
    either; ``problems`` holds one message per bad field.
    """

    def __init__(self, cls_name: str, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{cls_name}: {n} invalid field{'s' * (n != 1)}:\n{lines}")


@dataclasses.dataclass(frozen=True)
class Field:
    """The declaration of one hyperparameter field: its kind and its rule."""

    kind: str
    default: Any = _MISSING
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    log: bool = False
    integer: bool = False
    choices: tuple | None = None
    doc: str = ""

    @property
    def is_static(self) -> bool:
        return self.kind == STATIC

    @property
    def is_tunable(self) -> bool:
        return self.kind == TUNABLE

    @property
    def has_default(self) -> bool:
        return self.default is not _MISSING

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
        return None


def _check_rule_args(kind, default, low, high, log, integer, choices) -> None:
    if low is not None and high is not None and low > high:
        raise ValueError(f"{kind}(): bounds reversed: low={low!r} > high={high!r}")
    if log and low is not None and low < 0:
        raise ValueError(f"{kind}(): log=True needs low >= 0, got low={low!r}")
    if choices is not None and len(choices) == 0:
        raise ValueError(f"{kind}(): choices must not be empty")


def static(
    default: Any = _MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
    choices: Sequence | None = None,
    doc: str = "",
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

    Returns:
      A field declaration, to be assigned in an :class:`HParams` subclass.

    Example:
      >>> class MLP(HParams):
      ...     width: int = static(128, low=1, integer=True)
    """
    _check_rule_args("static", default, low, high, False, integer, choices)
    return Field(STATIC, default, low, high, low_open, high_open, False, integer,
                 None if choices is None else tuple(choices), doc)


def tunable(
    default: Any = _MISSING,
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


def _is_real(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _check_static(name: str, f: Field, v: Any) -> str | None:
    if isinstance(v, (np.ndarray, jax.Array)) or _is_tracer(v):
        return (f"`{name}`={_short(v)}: a static field takes a plain Python value "
                f"(int, float, str, bool, tuple), not an array")
    try:
        hash(v)
    except TypeError:
        return f"`{name}`={v!r}: a static field must be hashable (got {type(v).__name__})"
    if f.choices is not None:
        if v not in f.choices:
            return f"`{name}`={v!r}: must be one of {list(f.choices)}"
        return None
    if v is None and f.default is None:
        return None
    if f.low is not None or f.high is not None or f.integer:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            return f"`{name}`={v!r}: must be a number ({f.rule()})"
        broken = f.check_number(float(v))
        if broken:
            return f"`{name}`={v!r}: {broken} (rule: {f.rule()})"
    return None


def _not_one_number(name: str, v: Any, shape: tuple) -> str:
    return (f"`{name}`={_short(v)}: a tunable field takes one number per setting, got an "
            f"array of shape {shape}; use jaxhp.stack([...]) for a batch")


def _to_tunable(name: str, f: Field, v: Any) -> tuple[Any, str | None]:
    """Converts one tunable value to a 0-d array of :func:`tunable_dtype` and checks it.

    One setting takes one number per tunable (a Python or NumPy number, a 0-d
    array); an array of any other shape is refused: batches are built by
    :func:`stack`, never by construction.
    """
    dtype = tunable_dtype()
    if (type(v) is float or type(v) is int) and f.choices is None and abs(v) < 1e38:
        arr = np.array(v, dtype)  # the common case: one plain, in-range number
        if f.check_number(float(arr)) is None:
            return arr, None  # a broken rule is reported by the general path below
    if _is_tracer(v):
        if v.shape != ():
            return v, _not_one_number(name, v, tuple(v.shape))
        return v, None
    if isinstance(v, (str, bytes)) or isinstance(v, bool) or v is None:
        return v, (f"`{name}`={v!r}: a tunable field takes a real number, "
                   f"got {type(v).__name__} ({f.rule()})")
    try:
        arr = np.asarray(v)
    except Exception:  # noqa: BLE001 - any failure means "not a number"
        return v, f"`{name}`={v!r}: not convertible to a number"
    if arr.dtype.kind not in "iuf":
        return v, (f"`{name}`={v!r}: a tunable field takes a real number, "
                   f"got dtype {arr.dtype}")
    if arr.shape != ():
        return v, _not_one_number(name, arr, arr.shape)
    arr = arr.astype(dtype)
    broken = f.check_number(float(arr))
    if broken:
        return arr, f"`{name}`={_short(float(arr))}: {broken} (rule: {f.rule()})"
    if f.choices is not None and not np.isin(arr, np.asarray(f.choices, dtype)):
        return arr, f"`{name}`={_short(arr)}: must be one of {list(f.choices)}"
    return arr, None


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
            value = cls.__dict__.get(name, _MISSING)
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
            if v is _MISSING:
                problems.append(f"`{name}`: required ({f.rule()}), no value given")
                continue
            if f.is_static:
                problem = _check_static(name, f, v)
                if problem is None and f.integer and _is_real(v):
                    v = int(v)  # 5.0 or np.int64(5) -> 5: shapes and range() need an int
            else:
                v, problem = _to_tunable(name, f, v)
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
        return ([getattr(self, n) for n in self._tunable_names],
                tuple(getattr(self, n) for n in self._static_names))

    def _tree_flatten_with_keys(self):
        children, aux = self._tree_flatten()
        keys = [jax.tree_util.GetAttrKey(n) for n in self._tunable_names]
        return list(zip(keys, children)), aux

    @classmethod
    def _tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        for n, v in zip(cls._static_names, aux):
            object.__setattr__(obj, n, v)
        for n, v in zip(cls._tunable_names, children):
            object.__setattr__(obj, n, v)
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
        """The static part, as a dict."""
        return {n: getattr(self, n) for n in self._static_names}

    def tunables(self) -> dict[str, Any]:
        """The tunable part, as a dict of arrays (of :func:`tunable_dtype`)."""
        return {n: getattr(self, n) for n in self._tunable_names}

    def static_key(self) -> tuple:
        """A hashable key of the static part: settings with equal keys share a program."""
        return tuple(getattr(self, n) for n in self._static_names)

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The shape of the tunable leaves: ``()`` for one setting."""
        if not self._tunable_names:
            return ()
        return tuple(np.shape(getattr(self, self._tunable_names[0])))

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
        for n in self._fields:
            v = getattr(self, n)
            if n in self._tunable_names and not _is_tracer(v):
                v = np.asarray(v).tolist()
            out[n] = v
        return out

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
        for n in self._tunable_names:
            a, b = getattr(self, n), getattr(other, n)
            if _is_tracer(a) or _is_tracer(b):
                if a is not b:
                    return False
            elif not np.array_equal(np.asarray(a), np.asarray(b)):
                return False
        return True

    def __hash__(self) -> int:
        vals = []
        for n in self._tunable_names:
            v = getattr(self, n)
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
        lambda *xs: np.stack([np.asarray(x, tunable_dtype()) for x in xs]), *settings)
