"""The configuration file of ``jaxhp sweep``: TOML in, a resolved dict out, checked.

Pure functions, before anything compiles: :func:`resolve` checks a parsed TOML
document (sections, keys, types, ranges, the distributions of ``[space]``) and returns
the *resolved* configuration: a plain dict with every default filled in (JSON-able,
what a run records and what a re-run is compared with, :func:`differences`).
:func:`jaxhp._job.build` then turns it into the objects a search takes, filling in what
only the model and data tell (``n_features``, ``n_classes``, the metric's direction).

Every problem is a :class:`ConfigError` naming the key as ``[section] key =
value`` and the rule.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jaxhp._hparams import did_you_mean

SECTIONS = ("model", "data", "cv", "hparams", "space", "search", "select", "engine")
TOP_KEYS = ("seed",)
METHODS = ("sweep", "halving", "hyperband", "pbt", "gradient")
SPACE_KINDS = ("grid", "random", "quasirandom")
DISTRIBUTIONS = ("uniform", "loguniform", "intrange", "choice", "fixed")
_REFERENCE = ("linear_regression", "softmax_regression", "mlp_classifier")
_SPACE_OPTIONS = ("kind", "n", "seed", "method", "fields")
_SEARCH_KEYS = {
    "sweep": ("eval_every", "loss_every", "health", "keep_params"),
    "halving": ("min_steps", "eta", "max_steps"),
    "hyperband": ("min_steps", "eta", "max_steps"),
    "pbt": ("steps", "ready_every", "fraction", "perturb", "fields"),
    "gradient": ("outer_steps", "wrt", "mode", "keep", "learning_rate"),
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


def at(section: str | None, key: str, value: Any) -> str:
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
        self.problems.append(f"{at(self.name, key, value)}: {rule}")

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
                    f"{at(self.name, k, self.table[k])}: unknown key in {where}"
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
                problems.append(f"{at(None, k, doc[k])}: unknown top-level key"
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
    out["cv"] = (_resolve_cv(_Section("cv", doc["cv"], problems), out["data"])
                 if "cv" in doc else None)
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
    if out["cv"] is not None and out["search"]["method"] != "sweep":
        problems.append(f"[cv]: K-fold cross-validation runs with [search] method = "
                        f"\"sweep\" only, not {toml_value(out['search']['method'])}")
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


def _resolve_cv(s: _Section, data: dict) -> dict:
    """``[cv]``: K-fold cross-validation of the pooled train + validation parts
    (:func:`jaxhp.kfold`); the test part stays apart."""
    from jaxhp.datasets import NAMES, n_classes

    folds = s.get("folds", 5, kind="int", low=2)
    shuffle = s.get("shuffle", True, kind="bool")
    random_state = s.get("random_state", data.get("split_seed", 0) if shuffle else None,
                         kind="int", low=0)
    if random_state is not None and not shuffle:
        s.bad("random_state", random_state, "only applies with shuffle = true (as in "
              "scikit-learn's KFold)")
    if data.get("dataset") in NAMES:
        labels = n_classes(data["dataset"]) > 0
    else:
        labels = data.get("task") == "classification"
    stratify = s.get("stratify", labels, kind="bool")
    if stratify and not labels:
        s.bad("stratify", True, "stratified folds need class labels (a classification "
              "dataset or task = \"classification\")")
    s.unknown(("folds", "shuffle", "random_state", "stratify"))
    return {"folds": folds, "shuffle": shuffle, "random_state": random_state,
            "stratify": bool(stratify and labels)}


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
        out["health"] = s.get("health", "step", kind="str", choices=("step", "end"))
        if out["health"] == "end" and out["loss_every"]:
            s.bad("health", "end", "computes no per-step loss: set loss_every = 0 as well")
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
    elif method == "gradient":
        out["outer_steps"] = s.get("outer_steps", 30, kind="int", low=1)
        wrt = s.get("wrt", None)
        if wrt is not None and not (isinstance(wrt, list) and wrt
                                    and all(isinstance(f, str) for f in wrt)):
            s.bad("wrt", wrt, "must be a list of tunable field names (default: every "
                  "continuous tunable field)")
        out["wrt"] = wrt
        out["mode"] = s.get("mode", "reverse", kind="str",
                            choices=("reverse", "forward", "implicit"))
        out["keep"] = s.get("keep", "final", kind="str", choices=("final", "best"))
        lr = s.get("learning_rate", 0.1, kind="num")
        if not lr > 0:
            s.bad("learning_rate", lr, "must be > 0 (the step of Adam on the tuned "
                  "fields' coordinates: ~10% per step at 0.1 for a log-scaled field)")
        out["learning_rate"] = float(lr)
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
