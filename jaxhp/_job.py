"""``jaxhp sweep``'s resolved configuration turned into what a search takes: the job.

:func:`build` loads the data (a bundled dataset, a ``.csv`` or ``.npz`` file, split and
standardised as configured), builds the model (a reference model, or a factory named
by import path), the base setting and the space, and checks the metric against the
model's declared directions, all before anything compiles. Every problem is a
:class:`jaxhp._config.ConfigError` naming the key.
"""

from __future__ import annotations

import csv
import functools
import importlib
import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from jaxhp._config import ConfigError, at, toml_value
from jaxhp._hparams import did_you_mean


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


def _plain(v: Any) -> Any:
    """A default as the configuration writes it: a float32 tunable by its shortest
    decimal (``0.001``, not ``0.0010000000474974513``), tuples as lists."""
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(str(np.float32(v))) if np.float32(v) == v else float(v)
    return v.item() if isinstance(v, np.generic) else v


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
        for j, (c, col) in enumerate(cols.items()):
            try:
                values[i, j] = float(r[col])
            except (ValueError, IndexError):
                cell = r[col] if col < len(r) else "(missing)"
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
    return f"{at('hparams', m.group(1), given[m.group(1)])}: {m.group(2)}"


def _gradient_args(search: dict, metric: str, cfg: dict) -> dict:
    """``tune_gradient``'s arguments from ``[search] method = "gradient"``: the objective is
    the ``[select]`` metric (declared lower-is-better), Adam steps the tuned fields."""
    import optax

    if cfg["select"]["mode"] == "max":
        raise ConfigError(f"{at('select', 'metric', metric)}: method = \"gradient\" "
                          f"minimises its objective, and the model declares {metric!r} "
                          "'max'; select a metric to minimise (e.g. \"loss\")")
    seeds = cfg["search"]["seeds"]
    if not isinstance(seeds, int):
        raise ConfigError(f"{at('search', 'seeds', seeds)}: method = \"gradient\" takes a "
                          "number of seeds (its objective is the mean over seeds 0..n-1)")
    return {"steps": search["outer_steps"], "wrt": search["wrt"], "mode": search["mode"],
            "keep": search["keep"], "optimizer": optax.adam(search["learning_rate"]),
            "objective": metric}


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
        raise ConfigError(f"{at('select', 'metric', sel['metric'])}: the model returns no "
                          f"such metric{did_you_mean(metric, names)}; its metrics: {names}")
    declared = dict(model.directions).get(metric, "min" if metric == "loss" else None)
    mode = sel["mode"]
    if declared is None and mode is None:
        raise ConfigError(f"{at('select', 'metric', metric)}: the model declares no "
                          f"direction for {metric!r}; add mode = \"min\" or \"max\" to "
                          "[select]")
    if declared is not None and mode is not None and mode != declared:
        better = "higher" if declared == "max" else "lower"
        raise ConfigError(f"{at('select', 'mode', mode)}: the model declares {metric!r} "
                          f"as {declared!r} (better {better}); remove `mode` or set it to "
                          "the declared direction")
    cfg["select"] = {"metric": metric, "mode": mode or declared}
    search = dict(cfg["search"])
    if search["method"] == "pbt" and search["fields"] is not None:
        tunables = cls.tunable_names()
        for f in search["fields"]:
            if f not in tunables:
                raise ConfigError(f"{at('search', 'fields', search['fields'])}: `{f}` is "
                                  f"not a tunable field of {cls.__name__}"
                                  f"{did_you_mean(f, tunables)}; tunables: {list(tunables)}")
    eng = cfg["engine"]
    devices = None  # "all": every device of every process (jax.distributed)
    if eng["devices"] != "all":
        devices = jax.local_devices()
        if eng["devices"] > len(devices):
            raise ConfigError(f"{at('engine', 'devices', eng['devices'])}: only "
                              f"{len(devices)} local device(s) ({devices[0].platform})")
        devices = devices[:eng["devices"]]
    if cfg.get("cv") is not None:
        cv = cfg["cv"]
        try:
            split = jaxhp.kfold(split, cv["folds"], shuffle=cv["shuffle"],
                                random_state=cv["random_state"],
                                stratify="y" if cv["stratify"] else None)
        except ValueError as e:
            raise ConfigError(f"{at('cv', 'folds', cv['folds'])}: {e}") from None
    kwargs = {"seeds": search["seeds"], "base": base, "devices": devices,
              "chunk_size": eng["chunk_size"], "memory_budget": eng["memory_budget"],
              "max_chunk": eng["max_chunk"]}
    method = search.pop("method")
    search.pop("seeds")
    if method == "sweep":
        kwargs.update(search, select=(metric, cfg["select"]["mode"]))
    elif method == "gradient":
        kwargs.update(_gradient_args(search, metric, cfg))
    else:
        kwargs.update(search, metric=metric, mode=cfg["select"]["mode"])
    return Job(cfg, model, split, space, base, jax.random.key(cfg["seed"]), method, kwargs,
               metric, cfg["select"]["mode"])
