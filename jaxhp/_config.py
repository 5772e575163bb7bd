"""The configuration file of ``jaxhp sweep``: TOML in, a resolved dict out, checked.

Pure functions in two steps, both before anything compiles:

- :func:`resolve` checks a parsed TOML document (sections, keys, types, ranges,
  the distributions of ``[space]``) and returns the *resolved* configuration:
  a plain dict with every default filled in (JSON-able, what a run records and
  what a re-run is compared with, :func:`differences`);
- :func:`build` turns a resolved configuration into the objects a search takes
  (the model, the data split, the space, the base setting, the key, the search
  arguments), filling in what only the model and data tell (``n_features``,
  ``n_classes``, the metric's declared direction).

Every problem is a :class:`ConfigError` naming the key as ``[section] key =
value`` and the rule.
"""

from __future__ import annotations

import csv
import functools
import importlib
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxhp._hparams import did_you_mean

SECTIONS = ("model", "data", "hparams", "space", "search", "select", "engine")
TOP_KEYS = ("seed",)
METHODS = ("sweep", "halving", "hyperband", "pbt")
SPACE_KINDS = ("grid", "random", "quasirandom")
DISTRIBUTIONS = ("uniform", "loguniform", "intrange", "choice", "fixed")
_REFERENCE = ("linear_regression", "softmax_regression", "mlp_classifier")
_SPACE_OPTIONS = ("kind", "n", "seed", "method", "fields")
_SEARCH_KEYS = {
    "sweep": ("eval_every", "loss_every", "keep_params"),
    "halving": ("min_steps", "eta", "max_steps"),
    "hyperband": ("min_steps", "eta", "max_steps"),
    "pbt": ("steps", "ready_every", "fraction", "perturb", "fields"),
}
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class ConfigError(ValueError):
    """A configuration file that cannot run: names the key, the value and the rule."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        head = "" if len(self.problems) == 1 else f"{len(self.problems)} problems:\n  - "
        super().__init__(head + "\n  - ".join(self.problems))


def toml_value(v: Any) -> str:
    """``v`` written as TOML writes it (for messages: ``{loguniform = [0, 1]}``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if v is None:
        return "(unset)"
    return repr(v)


def _at(section: str | None, key: str, value: Any) -> str:
    where = f"[{section}] " if section else ""
    return f"{where}{key} = {toml_value(value)}"


def read(path: str | Path) -> dict:
    """The TOML document at ``path`` (``tomllib``; ``tomli`` before Python 3.11)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on Python 3.10
        import tomli as tomllib
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


# ----------------------------------------------------------------- checkers
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Section:
    """Reads one section's keys, collecting problems; unknown keys are refused."""

    def __init__(self, name: str | None, table: Any, problems: list[str]):
        self.name, self.problems = name, problems
        if not isinstance(table, Mapping):
            problems.append(f"[{name}] must be a table (a [{name}] section), got "
                            f"{toml_value(table)}")
            table = {}
        self.table = dict(table)
        self.used: set[str] = set()

    def bad(self, key: str, value: Any, rule: str) -> None:
        self.problems.append(f"{_at(self.name, key, value)}: {rule}")

    def get(self, key: str, default: Any = None, *, kind: str = "any", low=None,
            high=None, choices=None, required: bool = False) -> Any:
        self.used.add(key)
        if key not in self.table:
            if required:
                where = f"[{self.name}] " if self.name else ""
                self.problems.append(f"{where}`{key}` is missing: {required}"
                                     if isinstance(required, str) else
                                     f"{where}`{key}` is required")
            return default
        v = self.table[key]
        ok = {"any": lambda x: True, "int": _is_int, "num": _is_num,
              "str": lambda x: isinstance(x, str), "bool": lambda x: isinstance(x, bool),
              "table": lambda x: isinstance(x, Mapping)}[kind](v)
        names = {"int": "an integer", "num": "a finite number", "str": "a string",
                 "bool": "true or false", "table": "a table ({key = value, ...})"}
        if not ok:
            self.bad(key, v, f"must be {names[kind]}")
            return default
        if choices is not None and v not in choices:
            self.bad(key, v, f"must be one of {list(choices)}"
                     f"{did_you_mean(str(v), [str(c) for c in choices])}")
            return default
        if (low is not None and v < low) or (high is not None and v > high):
            rng = f">= {low}" if high is None else f"in [{low}, {high}]"
            self.bad(key, v, f"must be {rng}")
            return default
        return v

    def unknown(self, allowed: tuple[str, ...], why: str = "") -> None:
        for k in self.table:
            if k not in allowed:
                where = f"[{self.name}]" if self.name else "the top level"
                self.problems.append(
                    f"{_at(self.name, k, self.table[k])}: unknown key in {where}"
                    f"{did_you_mean(k, allowed)}{why}; known keys: {list(allowed)}")


def _bytes(s: _Section, key: str) -> int | None:
    s.used.add(key)
    if key not in s.table:
        return None
    v = s.table[key]
    if _is_int(v) and v > 0:
        return v
    if isinstance(v, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]+)\s*", v)
        if m and m.group(2).lower() in _UNITS and float(m.group(1)) > 0:
            return int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    s.bad(key, v, "must be a positive number of bytes per device: an integer or a string "
          "such as \"512MiB\" or \"2GB\"")
    return None


# ------------------------------------------------------------ distributions
def _distribution(name: str, v: Any, kind: str, where: str) -> tuple[dict | list | None,
                                                                     str | None]:
    """The resolved TOML form of one ``[space]`` entry, or a problem."""
    at = f"[{where}] {name} = {toml_value(v)}"
    if isinstance(v, list):
        if not v:
            return None, f"{at}: an empty list; give at least one value"
        return list(v), None
    if not isinstance(v, Mapping):
        return None, (f"{at}: a bare value; write {{fixed = {toml_value(v)}}}, a list of "
                      "values, or set it in [hparams]")
    dists = [k for k in v if k in DISTRIBUTIONS]
    other = [k for k in v if k not in DISTRIBUTIONS and k != "log"]
    if len(dists) != 1 or other:
        bad = other[0] if other else None
        hint = did_you_mean(bad, DISTRIBUTIONS) if bad else ""
        return None, (f"{at}: must name exactly one distribution of {list(DISTRIBUTIONS)}"
                      f"{hint}, e.g. {{loguniform = [1e-4, 1e-1]}}")
    d = dists[0]
    arg = v[d]
    if "log" in v and d != "intrange":
        return None, f"{at}: `log` applies to intrange only"
    if d in ("uniform", "loguniform", "intrange"):
        if not (isinstance(arg, list) and len(arg) == 2
                and all((_is_int if d == "intrange" else _is_num)(x) for x in arg)):
            what = "integers" if d == "intrange" else "finite numbers"
            return None, f"{at}: {d} takes [low, high], two {what}"
        low, high = arg
        if d == "loguniform" and not 0 < low < high:
            return None, f"{at}: loguniform needs 0 < low < high"
        if d == "uniform" and not low < high:
            return None, f"{at}: uniform needs low < high"
        if d == "intrange":
            log = v.get("log", False)
            if not isinstance(log, bool):
                return None, f"{at}: `log` must be true or false"
            if low > high:
                return None, f"{at}: intrange needs low <= high"
            if log and low < 1:
                return None, f"{at}: intrange with log = true needs low >= 1"
            if kind == "grid":
                return None, (f"{at}: a grid takes explicit values (a list, {{choice = "
                              "[...]}} or {fixed = ...}); sample ranges with kind = "
                              "\"random\" or \"quasirandom\"")
            return {"intrange": [low, high], "log": log}, None
        if kind == "grid":
            return None, (f"{at}: a grid takes explicit values (a list, {{choice = [...]}} "
                          "or {fixed = ...}); sample ranges with kind = \"random\" or "
                          "\"quasirandom\"")
        return {d: [float(low), float(high)]}, None
    if d == "choice":
        if not isinstance(arg, list) or not arg:
            return None, f"{at}: choice takes a non-empty list of values"
        return {"choice": list(arg)}, None
    return {"fixed": arg}, None


def make_distribution(spec):
    """The jaxhp distribution of a resolved ``[space]`` entry."""
    import jaxhp

    if isinstance(spec, list):
        return jaxhp.choice(spec)
    (d, arg), *rest = [(k, x) for k, x in spec.items() if k != "log"]
    if d == "intrange":
        return jaxhp.intrange(*arg, log=spec.get("log", False))
    if d in ("uniform", "loguniform"):
        return getattr(jaxhp, d)(*arg)
    return jaxhp.choice(arg) if d == "choice" else jaxhp.fixed(arg)


# ------------------------------------------------------------------ resolve
def resolve(doc: Mapping) -> dict:
    """The resolved configuration of a parsed TOML document: every key checked, every
    default filled in. Raises :class:`ConfigError` listing every problem found.

    What depends on the model or the data (its arguments inferred from the data,
    the metric's declared direction, the fields of ``[hparams]`` and ``[space]``)
    is checked and filled in by :func:`build`."""
    problems: list[str] = []
    for k in doc:
        if k not in SECTIONS and k not in TOP_KEYS:
            if isinstance(doc[k], Mapping):
                problems.append(f"[{k}]: unknown section{did_you_mean(k, SECTIONS)}; known "
                                f"sections: {', '.join(f'[{s}]' for s in SECTIONS)}")
            else:
                problems.append(f"{_at(None, k, doc[k])}: unknown top-level key"
                                f"{did_you_mean(k, TOP_KEYS)}; known: {list(TOP_KEYS)} "
                                f"and the sections {', '.join(f'[{s}]' for s in SECTIONS)}")
    top = _Section(None, {k: doc[k] for k in TOP_KEYS if k in doc}, problems)
    out: dict[str, Any] = {"seed": top.get("seed", 0, kind="int", low=0)}
    for name in SECTIONS:
        if name not in doc and name in ("model", "data", "space"):
            problems.append(f"[{name}]: the section is missing; "
                            f"it is required (see examples/digits_mlp.toml)")
    out["model"] = _resolve_model(_Section("model", doc.get("model", {}), problems))
    out["data"] = _resolve_data(_Section("data", doc.get("data", {}), problems), out["seed"])
    hp = doc.get("hparams", {})
    if not isinstance(hp, Mapping):
        problems.append(f"[hparams] must be a table, got {toml_value(hp)}")
        hp = {}
    out["hparams"] = dict(hp)
    out["space"] = _resolve_space(_Section("space", doc.get("space", {}), problems))
    out["search"] = _resolve_search(_Section("search", doc.get("search", {}), problems))
    sel = _Section("select", doc.get("select", {}), problems)
    out["select"] = {"metric": sel.get("metric", "loss", kind="str"),
                     "mode": sel.get("mode", None, kind="str", choices=("min", "max"))}
    sel.unknown(("metric", "mode"))
    out["engine"] = _resolve_engine(_Section("engine", doc.get("engine", {}), problems))
    if problems:
        raise ConfigError(problems)
    return out


def _resolve_model(s: _Section) -> dict:
    name = s.get("name", None, kind="str", choices=_REFERENCE)
    factory = s.get("factory", None, kind="str")
    args = s.get("args", {}, kind="table")
    if ("name" in s.table) == ("factory" in s.table):
        s.problems.append("[model]: give exactly one of `name` (a reference model: "
                          f"{list(_REFERENCE)}) or `factory` (\"package.module:function\" "
                          "returning a jaxhp.Model)")
    if factory is not None and not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", factory):
        s.bad("factory", factory, "must be \"package.module:function\"")
    s.unknown(("name", "factory", "args"))
    return {"name": name, "factory": factory, "args": dict(args)}


def _resolve_data(s: _Section, seed: int) -> dict:
    dataset = s.get("dataset", None, kind="str")
    path = s.get("path", None, kind="str")
    fractions = s.get("fractions", [0.6, 0.2, 0.2])
    if not (isinstance(fractions, list) and len(fractions) == 3
            and all(_is_num(f) and f > 0 for f in fractions)
            and abs(sum(fractions) - 1) < 1e-6):
        s.bad("fractions", fractions, "must be three positive numbers summing to 1 (train, "
              "validation, test)")
    out = {"dataset": dataset, "path": path,
           "fractions": [float(f) for f in fractions] if isinstance(fractions, list) else
           fractions,
           "split_seed": s.get("split_seed", seed, kind="int", low=0),
           "standardize": s.get("standardize", True, kind="bool")}
    if (dataset is None) == (path is None):
        s.problems.append("[data]: give exactly one of `dataset` (a bundled dataset: "
                          "diabetes, digits, iris, wine, breast_cancer) or `path` (a .csv or "
                          ".npz file)")
        return out
    if dataset is not None:
        from jaxhp.datasets import NAMES

        if dataset not in NAMES:
            s.bad("dataset", dataset, f"unknown dataset{did_you_mean(dataset, NAMES)}; "
                  f"available: {list(NAMES)}")
        s.unknown(("dataset", "fractions", "split_seed", "standardize"),
                  " (x, y, task, stratify and standardize_y are for `path` data)")
        return out
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".npz"):
        s.bad("path", path, "must end in .csv or .npz")
    task = s.get("task", None, kind="str", choices=("classification", "regression"),
                 required="say whether `y` holds class labels (task = \"classification\") "
                          "or numbers (task = \"regression\")")
    if suffix == ".npz":
        x = s.get("x", "x", kind="str")
        y = s.get("y", "y", kind="str")
    else:
        x = s.get("x", None)
        if x is not None and not (isinstance(x, list) and x
                                  and all(isinstance(c, str) for c in x)):
            s.bad("x", x, "must be a list of column names (default: every column but y)")
        y = s.get("y", None, kind="str", required="name the target column")
    out.update(x=x, y=y, task=task,
               stratify=s.get("stratify", task == "classification", kind="bool"),
               standardize_y=s.get("standardize_y", False, kind="bool"))
    if out["stratify"] and task == "regression":
        s.bad("stratify", True, "stratification needs class labels (task = "
              "\"classification\")")
    s.unknown(("dataset", "path", "fractions", "split_seed", "standardize", "x", "y", "task",
               "stratify", "standardize_y"))
    return out


def _resolve_space(s: _Section) -> dict:
    kind = s.get("kind", None, kind="str", choices=SPACE_KINDS,
                 required=f"one of {list(SPACE_KINDS)}")
    out: dict[str, Any] = {"kind": kind}
    if kind in ("random", "quasirandom"):
        out["n"] = s.get("n", None, kind="int", low=1,
                         required="the number of settings to draw")
        out["seed"] = s.get("seed", 0, kind="int", low=0)
        if kind == "quasirandom":
            out["method"] = s.get("method", "sobol", kind="str", choices=("sobol", "halton"))
    for k in ("n", "seed", "method"):
        if k in s.table and k not in out:
            kinds = '"quasirandom"' if k == "method" else '"random" or "quasirandom"'
            s.bad(k, s.table[k], f"applies to kind = {kinds}, not {toml_value(kind)}"
                  if kind else "needs a valid `kind`")
            s.used.add(k)
    entries = {k: v for k, v in s.table.items() if k not in _SPACE_OPTIONS}
    nested = s.get("fields", {}, kind="table")
    for k, v in nested.items():
        if k in entries:
            s.bad(k, v, "given twice (also in [space.fields])")
        entries[k] = v
    fields = {}
    for k, v in entries.items():
        spec, problem = _distribution(k, v, kind or "random", "space")
        if problem:
            s.problems.append(problem)
        else:
            fields[k] = spec
    out["fields"] = fields
    return out


def _resolve_search(s: _Section) -> dict:
    method = s.get("method", "sweep", kind="str", choices=METHODS)
    seeds = s.get("seeds", 1)
    if _is_int(seeds):
        if seeds < 1:
            s.bad("seeds", seeds, "must be a positive number of seeds or a list of distinct "
                  "non-negative seed indices")
    elif not (isinstance(seeds, list) and seeds and all(_is_int(x) and x >= 0 for x in seeds)
              and len(set(seeds)) == len(seeds)):
        s.bad("seeds", seeds, "must be a positive number of seeds or a list of distinct "
              "non-negative seed indices")
    out: dict[str, Any] = {"method": method, "seeds": seeds}
    if method == "sweep":
        out["eval_every"] = s.get("eval_every", None, kind="int", low=1)
        out["loss_every"] = s.get("loss_every", 1, kind="int", low=0)
        out["keep_params"] = s.get("keep_params", False, kind="bool")
    elif method in ("halving", "hyperband"):
        out["min_steps"] = s.get("min_steps", None, kind="int", low=1,
                                 required="the steps of the first rung")
        out["eta"] = s.get("eta", 3, kind="int", low=2)
        out["max_steps"] = s.get("max_steps", None, kind="int", low=1)
        if out["max_steps"] is not None and out["min_steps"] is not None \
                and out["min_steps"] > out["max_steps"]:
            s.bad("min_steps", out["min_steps"], f"must not exceed max_steps = "
                  f"{out['max_steps']} (the first rung trains at most as long as the last)")
    elif method == "pbt":
        out["steps"] = s.get("steps", None, kind="int", low=1)
        out["ready_every"] = s.get("ready_every", None, kind="int", low=1,
                                   required="the steps between ready points")
        if out["steps"] is not None and out["ready_every"] is not None \
                and out["ready_every"] > out["steps"]:
            s.bad("ready_every", out["ready_every"], f"must be at most steps = {out['steps']}")
        fraction = s.get("fraction", 0.25, kind="num")
        if not 0 < fraction <= 0.5:
            s.bad("fraction", fraction, "must be in (0, 0.5] (the bottom fraction copies "
                  "the top fraction)")
        out["fraction"] = float(fraction)
        perturb = s.get("perturb", [0.8, 1.25])
        if not (isinstance(perturb, list) and perturb and all(_is_num(p) and p > 0
                                                              for p in perturb)):
            s.bad("perturb", perturb, "must be a list of positive factors, e.g. [0.8, 1.25]")
        out["perturb"] = perturb
        fields = s.get("fields", None)
        if fields is not None and not (isinstance(fields, list)
                                       and all(isinstance(f, str) for f in fields)):
            s.bad("fields", fields, "must be a list of tunable field names")
        out["fields"] = fields
    own = _SEARCH_KEYS.get(method, ())
    for k in s.table:
        for other, keys in _SEARCH_KEYS.items():
            if k in keys and k not in own and other != method and k not in s.used:
                s.bad(k, s.table[k], f"applies to method = {toml_value(other)}, not "
                      f"{toml_value(method)}")
                s.used.add(k)
                break
    s.unknown(("method", "seeds", *own, *(k for keys in _SEARCH_KEYS.values()
                                          for k in keys)))
    return out


def _resolve_engine(s: _Section) -> dict:
    from jaxhp._engine import DEFAULT_MAX_CHUNK

    devices = s.get("devices", "all")
    if not (devices == "all" or (_is_int(devices) and devices >= 1)):
        s.bad("devices", devices, "must be \"all\" or a positive number of local devices")
    chunk = s.get("chunk_size", None)
    if chunk is not None and not (chunk == "all" or (_is_int(chunk) and chunk >= 1)):
        s.bad("chunk_size", chunk, "must be a positive integer or \"all\" (default: sized "
              "from the memory budget)")
    out = {"max_chunk": s.get("max_chunk", DEFAULT_MAX_CHUNK, kind="int", low=1),
           "memory_budget": _bytes(s, "memory_budget"), "devices": devices,
           "chunk_size": chunk}
    s.unknown(("max_chunk", "memory_budget", "devices", "chunk_size"))
    return out


# -------------------------------------------------------------------- build
class Job(NamedTuple):
    """What a resolved configuration runs: the objects a search function takes."""

    config: dict          # the resolved configuration, model and metric filled in
    model: Any
    split: Any
    space: Any
    base: Any
    key: Any
    search: str            # "sweep", "halving", "hyperband" or "pbt"
    kwargs: dict           # the search function's other keyword arguments
    metric: str
    mode: str


@functools.lru_cache(maxsize=16)
def _reference_model_cached(name: str, args: tuple):
    from jaxhp import models

    return getattr(models, name)(**dict(args))


def _reference_model(name: str, **args):
    """A reference model; the same name and arguments give the same ``Model`` object in
    a process, so its compiled programs are reused (a model's identity is part of a
    program's key)."""
    try:
        key = tuple(sorted(args.items()))
        hash(key)
    except TypeError:  # an unhashable argument: build it afresh
        from jaxhp import models

        return getattr(models, name)(**args)
    return _reference_model_cached(name, key)


def _load_model(cfg: dict, x_shape, y, base_dir: Path):
    import jaxhp

    m = dict(cfg["model"])
    args = dict(m["args"])
    if m["name"] is not None:
        fn = functools.partial(_reference_model, m["name"])
        args.setdefault("n_features", int(x_shape[1]) if len(x_shape) == 2 else 0)
        if m["name"] != "linear_regression":
            labels = np.asarray(y)
            n_classes = int(labels.max()) + 1 if labels.size and labels.dtype.kind in "iu" \
                else 0
            args.setdefault("n_classes", n_classes)
        where = f"[model] name = {toml_value(m['name'])}"
    else:
        module, _, attr = m["factory"].partition(":")
        where = f"[model] factory = {toml_value(m['factory'])}"
        sys.path.insert(0, str(base_dir))
        try:
            fn = getattr(importlib.import_module(module), attr)
        except ImportError as e:
            raise ConfigError(f"{where}: cannot import `{module}` ({e}); the folder of the "
                              "configuration file and PYTHONPATH are searched") from None
        except AttributeError:
            raise ConfigError(f"{where}: module `{module}` has no `{attr}`") from None
        finally:
            sys.path.remove(str(base_dir))
    try:
        model = fn(**args)
    except (TypeError, ValueError) as e:  # a bad argument of the model's function
        raise ConfigError(f"{where} with args = {toml_value(args)}: {e}") from None
    if not isinstance(model, jaxhp.Model):
        raise ConfigError(f"{where}: returned a {type(model).__name__}, not a jaxhp.Model")
    if model.hparams is None:
        raise ConfigError(f"{where}: the model declares no `hparams` class; the "
                          "[hparams] and [space] sections need one (jaxhp.Model(..., "
                          "hparams=MyHP))")
    m["args"] = args
    return model, m


def _read_csv(path: Path, x, y, task: str) -> dict:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ConfigError(f"[data] path = {toml_value(str(path))}: the file is empty")
    header, body = [h.strip() for h in rows[0]], [r for r in rows[1:] if r]
    missing = [c for c in ([y] + list(x or [])) if c not in header]
    if missing:
        key = "y" if missing[0] == y else "x"
        raise ConfigError(f"[data] {key}: no column {missing[0]!r} in {path}"
                          f"{did_you_mean(missing[0], header)}; columns: {header}")
    xs = list(x) if x else [c for c in header if c != y]
    cols = {c: header.index(c) for c in [*xs, y]}
    values = np.empty((len(body), len(cols)), np.float64)
    for i, r in enumerate(body):
        for j, (c, at) in enumerate(cols.items()):
            try:
                values[i, j] = float(r[at])
            except (ValueError, IndexError):
                cell = r[at] if at < len(r) else "(missing)"
                raise ConfigError(f"[data] path = {toml_value(str(path))}: row {i + 2}, "
                                  f"column {c!r} holds {cell!r}, not a number") from None
    return {"x": values[:, :-1].astype(np.float32), "y": _target(values[:, -1], task, y, path)}


def _target(y: np.ndarray, task: str, name: str, path: Path) -> np.ndarray:
    if task == "regression":
        return np.asarray(y, np.float32)
    if not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or np.any(y < 0):
        raise ConfigError(f"[data] y = {toml_value(name)}: task = \"classification\" needs "
                          f"integer class labels 0, 1, ... in {path}")
    return np.asarray(y, np.int32)


def _load_data(d: dict, base_dir: Path):
    import jax

    import jaxhp

    key = jax.random.key(d["split_seed"])
    if d["dataset"] is not None:
        return jaxhp.datasets.load(d["dataset"], key=key, fractions=d["fractions"],
                                   standardize_x=d["standardize"])
    path = Path(d["path"])
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise ConfigError(f"[data] path = {toml_value(d['path'])}: no such file ({path})")
    if path.suffix.lower() == ".csv":
        data = _read_csv(path, d["x"], d["y"], d["task"])
    else:
        with np.load(path, allow_pickle=False) as z:
            for k in ("x", "y"):
                if d[k] not in z.files:
                    raise ConfigError(f"[data] {k} = {toml_value(d[k])}: no array of that "
                                      f"name in {path}{did_you_mean(d[k], z.files)}; "
                                      f"arrays: {z.files}")
            x = np.asarray(z[d["x"]], np.float32)
            data = {"x": x.reshape(len(x), -1) if x.ndim != 2 else x,
                    "y": _target(np.asarray(z[d["y"]]).ravel(), d["task"], d["y"], path)}
    try:
        split = jaxhp.split_data(data, key=key, fractions=d["fractions"],
                                 stratify="y" if d["stratify"] else None)
    except ValueError as e:
        raise ConfigError(f"[data] path = {toml_value(d['path'])}: {e}") from None
    keys = (["x"] if d["standardize"] else []) + (["y"] if d["standardize_y"] else [])
    return jaxhp.standardize(split, keys) if keys else split


def _space(sp: dict):
    import jaxhp

    dists = {k: make_distribution(v) for k, v in sp["fields"].items()}
    if sp["kind"] == "grid":
        return jaxhp.grid(dists)
    if sp["kind"] == "random":
        return jaxhp.random(sp["n"], dists, seed=sp["seed"])
    return jaxhp.quasirandom(sp["n"], dists, seed=sp["seed"], method=sp["method"])


def _hparams_problem(problem: str, given: dict, cls_name: str) -> str:
    """An ``HParamsError`` problem (```name`=value: rule``) as ``[hparams] name = value:
    rule``, the value as the file wrote it."""
    m = re.match(r"`(\w+)`(?:=[^:]*)?: (.*)", problem, re.S)
    if m is None or m.group(1) not in given:
        return f"[hparams]: {cls_name}: {problem}"
    return f"{_at('hparams', m.group(1), given[m.group(1)])}: {m.group(2)}"


def build(cfg: dict, base_dir: str | Path = ".") -> Job:
    """The objects a resolved configuration runs, checked against the model and data
    before anything compiles. Paths (data, a factory's module) are relative to
    ``base_dir``, the configuration file's folder.

    Returns a :class:`Job` whose ``config`` is ``cfg`` with what the model and data
    tell filled in (the model's arguments, the metric's declared direction)."""
    import jax

    import jaxhp
    from jaxhp._model import metric_names

    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    base_dir = Path(cfg.get("base_dir") or base_dir).resolve()
    cfg["base_dir"] = str(base_dir)
    split = _load_data(cfg["data"], base_dir)
    model, cfg["model"] = _load_model(cfg, np.shape(split.train["x"]), split.train["y"],
                                      base_dir)
    cls = model.hparams
    try:
        base = cls(**cfg["hparams"])
    except jaxhp.HParamsError as e:
        raise ConfigError([_hparams_problem(p, cfg["hparams"], cls.__name__)
                           for p in e.problems]) from None
    cfg["hparams"] = {k: cfg["hparams"].get(k, _plain(v)) for k, v in base.to_dict().items()}
    space = _space(cfg["space"])
    try:
        space.validate(cls, base)
    except (jaxhp.SpaceError, jaxhp.HParamsError) as e:
        raise ConfigError(f"[space]: {e}") from None
    # the metric, validated against what the model returns and its declared directions
    sel = cfg["select"]
    try:
        names = metric_names(model, base, split.val)
    except Exception as e:  # noqa: BLE001 - a user model failing on the data
        raise ConfigError(f"[model]: evaluating the model's metrics on the data failed: "
                          f"{type(e).__name__}: {e}") from None
    metric = sel["metric"][4:] if sel["metric"].startswith("val_") else sel["metric"]
    if metric not in names:
        raise ConfigError(f"{_at('select', 'metric', sel['metric'])}: the model returns no "
                          f"such metric{did_you_mean(metric, names)}; its metrics: {names}")
    declared = dict(model.directions).get(metric, "min" if metric == "loss" else None)
    mode = sel["mode"]
    if declared is None and mode is None:
        raise ConfigError(f"{_at('select', 'metric', metric)}: the model declares no "
                          f"direction for {metric!r}; add mode = \"min\" or \"max\" to "
                          "[select]")
    if declared is not None and mode is not None and mode != declared:
        better = "higher" if declared == "max" else "lower"
        raise ConfigError(f"{_at('select', 'mode', mode)}: the model declares {metric!r} "
                          f"as {declared!r} (better {better}); remove `mode` or set it to "
                          "the declared direction")
    cfg["select"] = {"metric": metric, "mode": mode or declared}
    search = dict(cfg["search"])
    if search["method"] == "pbt" and search["fields"] is not None:
        tunables = cls.tunable_names()
        for f in search["fields"]:
            if f not in tunables:
                raise ConfigError(f"{_at('search', 'fields', search['fields'])}: `{f}` is "
                                  f"not a tunable field of {cls.__name__}"
                                  f"{did_you_mean(f, tunables)}; tunables: {list(tunables)}")
    eng = cfg["engine"]
    devices = jax.local_devices()
    if eng["devices"] != "all":
        if eng["devices"] > len(devices):
            raise ConfigError(f"{_at('engine', 'devices', eng['devices'])}: only "
                              f"{len(devices)} local device(s) ({devices[0].platform})")
        devices = devices[:eng["devices"]]
    kwargs = {"seeds": search["seeds"], "base": base, "devices": devices,
              "chunk_size": eng["chunk_size"], "memory_budget": eng["memory_budget"],
              "max_chunk": eng["max_chunk"]}
    method = search.pop("method")
    search.pop("seeds")
    if method == "sweep":
        kwargs.update(search, select=(metric, cfg["select"]["mode"]))
    else:
        kwargs.update(search, metric=metric, mode=cfg["select"]["mode"])
    return Job(cfg, model, split, space, base, jax.random.key(cfg["seed"]), method, kwargs,
               metric, cfg["select"]["mode"])


def _plain(v: Any) -> Any:
    """A default as the configuration writes it: a float32 tunable by its shortest
    decimal (``0.001``, not ``0.0010000000474974513``), tuples as lists."""
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(str(np.float32(v))) if np.float32(v) == v else float(v)
    return v.item() if isinstance(v, np.generic) else v


def differences(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """``(key, old value, new value)`` for every key where two resolved configurations
    differ (``[section] key``; nested tables dotted). ``base_dir`` (the folder that
    relative paths are read from) is not compared: the files themselves are, by the
    checkpoint's fingerprint."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for k in list(old) + [k for k in new if k not in old]:
            if not path and k == "base_dir":
                continue
            sub = f"{path}.{k}" if path else k
            out += differences(old.get(k, _MISSING), new.get(k, _MISSING), sub)
        return out
    if old != new:
        return [(path, old, new)]
    return []


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


_MISSING = _Missing()


def key_name(path: str) -> str:
    """``space.fields.learning_rate`` as ``[space.fields] learning_rate``."""
    head, _, last = path.rpartition(".")
    return f"[{head}] {last}" if head else last
