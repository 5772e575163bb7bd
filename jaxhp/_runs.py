"""The output folder of ``jaxhp sweep``: what is written there, read back and shown.

A run folder ``DIR`` holds ``config.json`` (the resolved configuration, every
default filled in), ``checkpoint/`` (the search's checkpoint: a re-run resumes
from it), ``result.npz`` + ``result.json`` (the result, :meth:`SweepResult.save`),
``cv_results.csv``, ``best_params.npz`` + ``.json`` (the selected setting's
trained parameters per seed, plain arrays), ``plots/*.png`` (with matplotlib),
``report.md``, and after ``jaxhp test`` the test read in the result and in
``test.json``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import jax
import numpy as np

from jaxhp._io import atomic_write_bytes, atomic_write_json, save_pair
from jaxhp._result import SweepResult

CONFIG, CHECKPOINT, RESULT = "config.json", "checkpoint", "result"
OUTPUTS = ("result.npz", "result.json", "cv_results.csv", "best_params.npz",
           "best_params.json", "report.md", "test.json", "plots")
SEARCH_NAMES = {"sweep": "sweep", "halving": "successive_halving", "hyperband": "hyperband",
                "pbt": "pbt", "gradient": "tune_gradient"}


def search_function(search: str):
    """The jaxhp function of a ``[search] method``."""
    import jaxhp

    return getattr(jaxhp, SEARCH_NAMES[search])


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


def _statics(statics: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in statics.items()) or "-"


def _folds(k: int) -> str:
    return f" x {k} folds" if k > 1 else ""


def format_plan(plan, config_name: str = "") -> str:
    """The ``--dry-run`` text of a :class:`jaxhp._search.plan.Plan`."""
    lines = [f"jaxhp sweep {config_name} --dry-run: nothing is trained".rstrip(),
             f"search: {SEARCH_NAMES[plan.search]}, {plan.n_settings} settings x "
             f"{plan.n_seeds} seeds{_folds(plan.n_folds)} = "
             f"{plan.n_settings * plan.n_seeds * plan.n_folds} members, "
             f"{plan.n_devices} {jax.local_devices()[0].platform} device(s)",
             f"static groups: {len(plan.groups)}; compiled programs: {plan.compiles}; "
             f"compiled calls (chunks): {plan.calls}; member steps: {plan.member_steps:,}; "
             f"estimated memory per device: {mib(plan.device_bytes)}", ""]
    head = (f"{'group':>5}  {'settings':>8}  {'chunk':>5}  {'calls':>5}  {'compiles':>8}  "
            f"{'MiB/device':>10}  {'member steps':>12}  statics")
    lines += [head, "-" * len(head)]
    for gi, g in enumerate(plan.groups):
        lines.append(f"{gi:>5}  {g.n_settings:>8}  {g.chunk_size:>5}  {g.calls:>5}  "
                     f"{g.compiles:>8}  {g.device_bytes / 2**20:>10.2f}  "
                     f"{g.member_steps:>12,}  {_statics(g.statics)}")
    return "\n".join(lines)


# ------------------------------------------------------------------ outputs
def write_cv_results(result: SweepResult, path: Path) -> None:
    """``cv_results()`` as CSV (the ``params`` column left out: the fields are there)."""
    cv = result.cv_results()
    keys = [k for k in cv if k != "params"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(keys + ["status"])
    status = result.setting_status()
    for i in range(result.n_settings):
        row = []
        for k in keys:
            col = cv[k]
            masked = np.ma.isMaskedArray(col) and np.ma.getmaskarray(col)[i]
            v = "" if masked else np.asarray(col)[i]
            row.append(v.item() if isinstance(v, np.generic) else v)
        w.writerow(row + [str(status[i])])
    atomic_write_bytes(path, buf.getvalue().encode())


def _flat_params(tree, prefix: str) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def write_best_params(result: SweepResult, metric: str, mode: str, folder: Path) -> None:
    """The selected setting's trained parameters, one set per seed, as plain arrays
    (``seed<id>/<path>``; never pickled) with the setting in the JSON."""
    sel = result.best(metric, mode)
    arrays = {}
    for s, sid in enumerate(np.asarray(result.seed_ids).tolist()):
        arrays.update(_flat_params(result.params(sel.index, s), f"seed{sid}/"))
    save_pair(folder / "best_params", arrays,
              {"index": int(sel.index), "metric": sel.metric, "mode": sel.mode,
               "val": float(sel.value), "setting": result.setting(sel.index).to_dict(),
               "seed_ids": [int(x) for x in np.asarray(result.seed_ids)]},
              "best-params", overwrite=True)


def write_plots(result: SweepResult, search: str, metric: str, folder: Path) -> list[str]:
    """PNG figures of the result (none without matplotlib). Figures are made without
    pyplot (``matplotlib.figure.Figure``, drawn by Agg), so no backend is chosen for
    the process. Returns the files written."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return []
    import jaxhp.plot

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        atomic_write_bytes(folder / name, buf.getvalue())
        written.append(name)

    cols = result.table.columns
    tunables = [n for n in result.table.cls.tunable_names()
                if len(np.unique(np.asarray(cols[n]))) > 1]
    if search in ("halving", "hyperband"):
        fig = Figure(figsize=(7, 4.5))
        jaxhp.plot.rungs(result, ax=fig.add_subplot())
        save(fig, "rungs.png")
    if search == "pbt":
        fields = [n for n in result.schedule if len(np.unique(result.schedule[n])) > 1] \
            or list(result.schedule)[:1]
        fig = Figure(figsize=(5 * len(fields), 3.8))
        jaxhp.plot.pbt_schedule(result, fields, ax=list(fig.subplots(1, len(fields),
                                                                     squeeze=False)[0]))
        save(fig, "pbt_schedule.png")
        fig = Figure(figsize=(7, 4.5))
        jaxhp.plot.pbt_lineage(result, ax=fig.add_subplot())
        save(fig, "pbt_lineage.png")
    if search == "gradient" and len(result.trajectory["values"]) >= 2:
        x, y = list(result.trajectory["values"])[:2]  # each start's path, two tuned fields
        fig = Figure(figsize=(6, 4.6))
        jaxhp.plot.trajectories(result, x, y, ax=fig.add_subplot())
        save(fig, "trajectories.png")
    if tunables and search == "sweep":
        fig = Figure(figsize=(5 * len(tunables), 3.8))
        jaxhp.plot.metric_by_field(result, metric, fields=tunables,
                                   ax=list(fig.subplots(1, len(tunables), squeeze=False)[0]))
        save(fig, "metric_by_field.png")
    if len(tunables) >= 2 and search == "sweep":
        fig = Figure(figsize=(6, 4.5))
        jaxhp.plot.heatmap(result, tunables[0], tunables[1], metric, ax=fig.add_subplot())
        save(fig, "heatmap.png")
    if search == "sweep":
        evals = max((len(g.eval_steps) for g in result.groups), default=0)
        curve = "val" if evals > 1 else "train"
        if curve == "val" or np.isfinite(result.loss_curve).any():
            fig = Figure(figsize=(7, 4.5))
            jaxhp.plot.learning_curves(result, metric, k=3, curve=curve,
                                       ax=fig.add_subplot())
            save(fig, "learning_curves.png")
    return written


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    return str(v)


def top_table(result: SweepResult, metric: str, mode: str | None, k: int) -> str:
    """A markdown table of the best ``k`` settings (mean and std of ``metric`` over seeds)."""
    tops = result.top_k(k, metric, mode)
    mean, std = result.aggregate(metric)
    cols = result.table.columns
    fields = [n for n in result.table.cls.fields()
              if len({str(x) for x in np.asarray(cols[n]).tolist()}) > 1] or \
        list(result.table.cls.tunable_names())[:3]
    head = ["rank", "index", f"val {tops[0].metric if tops else metric}", "std", *fields]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r, sel in enumerate(tops, 1):
        row = [str(r), str(sel.index), f"{mean[sel.index]:.4f}", f"{std[sel.index]:.4f}",
               *(_fmt(np.asarray(cols[f])[sel.index]) for f in fields)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def groups_table(result: SweepResult) -> str:
    head = ["group", "statics", "settings", "chunk size", "chunks", "compiled",
            "compile s", "run s", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for gi, g in enumerate(result.groups):
        lines.append("| " + " | ".join([
            str(gi), _statics(g.statics), str(g.n_settings), str(g.chunk_size),
            str(g.n_chunks), str(g.compiled), f"{g.compile_s:.2f}", f"{g.run_s:.2f}",
            "failed: " + g.error if g.error else "ok"]) + " |")
    return "\n".join(lines)


def summary(result: SweepResult, search: str, metric: str, mode: str) -> list[str]:
    sel = result.best(metric, mode)
    mean, std = result.aggregate(metric)
    setting = result.setting(sel.index).to_dict()
    st = result.setting_status()
    return [
        f"search: {SEARCH_NAMES[search]}, {result.n_settings} settings x {result.n_seeds} "
        f"seeds{_folds(result.n_folds)}, {len(result.groups)} static group(s), "
        f"{result.compile_count} compiled "
        f"program(s); {int(np.sum(st != 'ok'))} setting(s) diverged or failed",
        f"compile {result.compile_seconds:.2f} s, run {result.run_seconds:.2f} s (this "
        "process; chunks read from the checkpoint cost neither)",
        f"chosen setting (best mean validation {sel.metric}, {sel.mode}): index "
        f"{sel.index}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in setting.items()),
        f"validation {sel.metric}: {mean[sel.index]:.4f} (mean over "
        + (f"{result.n_folds} folds of the mean over {result.n_seeds} seed(s); std over "
           "folds" if result.n_folds > 1 else f"{result.n_seeds} seed(s); std")
        + f" {std[sel.index]:.4f})"]


def write_report(result: SweepResult, search: str, metric: str, mode: str, folder: Path,
                 plots: list[str], top: int = 5) -> None:
    lines = [f"# jaxhp sweep: {folder.name}", "", *(f"- {x}" for x in
                                                    summary(result, search, metric, mode))]
    if result.test_reads:
        t = result.test_reads[-1]
        lines.append("- test (read " + str(len(result.test_reads)) + " time(s), last "
                     f"{t['time']}): " + ", ".join(f"{k} {v:.4f}"
                                                   for k, v in t["metrics"].items()))
    else:
        lines.append(f"- test: not read yet; `jaxhp test {folder}` reads it once")
    lines += ["", "## Static groups", "", groups_table(result), "",
              f"## Top {top} (validation)", "", top_table(result, metric, mode, top), ""]
    if plots:
        lines += ["## Figures", ""] + [f"![{p}](plots/{p})" for p in plots] + [""]
    atomic_write_bytes(folder / "report.md", "\n".join(lines).encode())


def write_outputs(result: SweepResult, search: str, metric: str, mode: str,
                  folder: Path, plots: bool = True) -> list[str]:
    """Every output of a finished run (the result first: the rest derives from it)."""
    result.save(folder / RESULT, overwrite=True)
    write_cv_results(result, folder / "cv_results.csv")
    write_best_params(result, metric, mode, folder)
    plots = write_plots(result, search, metric, folder / "plots") if plots else []
    write_report(result, search, metric, mode, folder, plots)
    return plots


def write_config(cfg: dict, folder: Path) -> None:
    atomic_write_json(folder / CONFIG, cfg)


def read_config(folder: Path) -> dict:
    with open(folder / CONFIG) as f:
        return json.load(f)
