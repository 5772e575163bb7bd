"""Figures of the adaptive searches: halving rungs, PBT schedules and lineage, descents."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxhp._hparams import did_you_mean
from jaxhp._search.halving import HalvingResult
from jaxhp._search.pbt import PBTResult
from jaxhp._search.tune import TuneResult
from jaxhp.plot._common import (
    BEST_STYLE,
    DIVERGED_STYLE,
    best_or_none,
    check_result,
    cmap_for,
    field_of,
    metric_label,
    new_axes,
    norm_for,
    off_axis,
    robust_ylim,
    setting_label,
)


def rungs(result: HalvingResult, *, ax=None, yscale: str | None = None,
          quantiles: tuple[float, float] = (0.0, 0.75)):
    """Successive halving or Hyperband: every setting's metric at each rung it reached.

    x is the steps trained (the rungs' budgets, log scale); each setting is a line
    through the validation values (the search's ranking metric) at the rungs it
    trained in. Settings that reached the last rung of their bracket are drawn in
    their bracket's colour, the ones stopped early in thin grey; a diverged setting
    is a red ``x`` at the top of its rung; the best setting is a star.

    Args:
      result: a :class:`~jaxhp.HalvingResult`.
      ax: the axes (default: a new figure); yscale: e.g. ``"log"``.
      quantiles: the y range kept, as quantiles of the rung values (the better end
        and the highlighted settings are never cut; values beyond the worse end are
        grey triangles at the edge).

    Returns:
      The axes. A setting's line has its rung steps as ``xdata`` and its rung
      values (``Rung.value``) as ``ydata``.

    Example:
      >>> jaxhp.plot.rungs(jaxhp.hyperband(model, space, split, key=key, min_steps=10))
    """
    check_result(result, HalvingResult, "a successive halving or Hyperband result")
    from matplotlib.transforms import blended_transform_factory

    (a,) = new_axes(ax, 1, (6.0, 4.2))
    search = result.meta.get("search", {})
    metric, mode = search.get("metric", "loss"), search.get("mode", "min")
    if yscale:
        a.set_yscale(yscale)
    top = blended_transform_factory(a.transData, a.transAxes)
    keys = sorted({(r.bracket if r.bracket is not None else -1, r.group)
                   for r in result.rungs})
    labelled, everything, dead, kept = set(), [], ([], []), []
    for kk, (b, g) in enumerate(keys):
        mine = [r for r in result.rungs if (r.bracket if r.bracket is not None else -1,
                                            r.group) == (b, g)]
        last = mine[-1]
        path: dict[int, tuple[list, list]] = {}
        for r in mine:
            for s, v in zip(np.asarray(r.settings).tolist(), np.asarray(r.value).tolist()):
                path.setdefault(s, ([], []))
                path[s][0].append(r.steps)
                path[s][1].append(v)
                everything.append((r.steps, v))
                if not np.isfinite(v):
                    dead[0].append(r.steps)
                    dead[1].append(0.98)
        finalists = set(np.asarray(last.settings).tolist())
        name = "" if b < 0 else f"bracket {b}"
        if len({k[1] for k in keys}) > 1:
            name = (name + ", " if name else "") + f"group {g}"
        for s, (xs, ys) in path.items():
            if s in finalists:
                kept += ys
                lab = f"reached {last.steps} steps" + (f" ({name})" if name else "")
                a.plot(xs, ys, "o-", color=f"C{kk % 10}", lw=1.8, ms=4, zorder=5,
                       label=None if lab in labelled else lab)
                labelled.add(lab)
            else:
                lab = "stopped early"
                a.plot(xs, ys, "o-", color="gray", lw=0.7, ms=2.5, alpha=0.6,
                       label=None if lab in labelled else lab)
                labelled.add(lab)
    if dead[0]:
        a.scatter(dead[0], dead[1], transform=top, clip_on=False, zorder=8,
                  label=f"diverged ({len(dead[0])} rung entries)", **DIVERGED_STYLE)
    best = best_or_none(result, metric, mode)
    if best is not None:
        a.scatter([result.steps_trained[best.index]], [best.value], **BEST_STYLE,
                  label=f"best: {setting_label(result, best.index)} ({best.value:.4g})")
    budgets = sorted({r.steps for r in result.rungs})
    a.set_xscale("log")
    a.set_xticks(budgets, [str(b) for b in budgets])
    a.minorticks_off()
    lim = robust_ylim(a, [v for _, v in everything],
                       kept + ([] if best is None else [best.value]), quantiles, mode)
    off_axis(a, [x for x, _ in everything], [v for _, v in everything], lim, mode)
    a.set(xlabel="steps trained (rung budget)", ylabel=metric_label(result, metric),
          title=f"{search.get('method', 'successive halving')}: "
                f"{result.meta['search'].get('train_steps', '?')} member steps "
                f"(a full sweep: {search.get('full_sweep_train_steps', '?')})")
    a.title.set_fontsize("medium")
    a.legend(fontsize="small")
    return a


def pbt_schedule(result: PBTResult, fields: Sequence[str] | None = None, *,
                 quantiles: tuple[float, float] = (0.02, 0.98), cmap: str = "viridis",
                 ax=None) -> list:
    """PBT: each member's hyperparameters over time, one panel per field.

    Every slot is a step line through the values it trained with in each interval,
    coloured by its final validation metric (the search's metric); the schedule that
    trained the best slot's final parameters, across copies
    (:meth:`~jaxhp.PBTResult.ancestry`), is a thick black line; ready points are
    dotted. A log field has a log axis.

    Args:
      result: a :class:`~jaxhp.PBTResult`.
      fields: the fields (default: the ones PBT perturbed that changed).
      quantiles, cmap: the colour limits and map.
      ax: one axes per field (default: a new figure).

    Returns:
      The list of axes. In each, line ``i`` (of the first ``n_settings``) is slot
      ``i``'s schedule: ``xdata`` the interval starts and the last step, ``ydata``
      its values (the last one repeated).

    Example:
      >>> jaxhp.plot.pbt_schedule(result, ["learning_rate"])
    """
    check_result(result, PBTResult, "a population-based training result")
    search = result.meta.get("search", {})
    metric, mode = search.get("metric", "loss"), search.get("mode", "min")
    if fields is None:  # the perturbed fields that changed (a field at 0 stays at 0)
        fields = [f for f in (search.get("fields") or list(result.schedule))
                  if f in result.schedule and np.ptp(np.asarray(result.schedule[f])) > 0] \
            or list(result.schedule)[:1]
    fields = list(fields)
    for f in fields:
        if f not in result.schedule:
            raise ValueError(f"`{f}`: no schedule for it"
                             f"{did_you_mean(f, list(result.schedule))}; scheduled fields "
                             f"are {list(result.schedule)}")
    axes = new_axes(ax, len(fields))
    mean, _ = result.aggregate(metric)
    norm = norm_for(mean, quantiles, False)
    cm = cmap_for(cmap, mode)
    x = np.append(np.asarray(result.schedule_steps, np.float64), search.get(
        "steps", result.schedule_steps[-1] + search.get("ready_every", 1)))
    best = best_or_none(result, metric, mode)
    for f, a in zip(fields, axes):
        sch = np.asarray(result.schedule[f], np.float64)
        for i in range(sch.shape[0]):
            colour = cm(norm(mean[i])) if np.isfinite(mean[i]) else "lightgray"
            a.plot(x, np.append(sch[i], sch[i, -1]), drawstyle="steps-post", lw=1.0,
                   color=colour, alpha=0.85)
        if best is not None:
            anc = result.ancestry(best.index)[f]
            a.plot(x, np.append(anc, anc[-1]), drawstyle="steps-post", color="black", lw=2.5,
                   label=f"best slot {best.index}'s ancestry ({best.value:.4g})")
        for s in result.ready_steps:
            a.axvline(s, color="gray", ls=":", lw=0.8)
        if field_of(result, f).log:
            a.set_yscale("log")
        a.set(xlabel="step", ylabel=f, title=f"PBT schedule: {f}")
        a.title.set_fontsize("medium")
        a.legend(fontsize="small")
    from matplotlib.cm import ScalarMappable

    axes[-1].figure.colorbar(ScalarMappable(norm, cm), ax=axes, extend="both",
                             label=f"final {metric_label(result, metric)}")
    return axes


def pbt_lineage(result: PBTResult, *, quantiles: tuple[float, float] = (0.02, 0.98),
                cmap: str = "viridis", ax=None):
    """PBT: who copied whom at each ready point.

    Slots are rows (y), time runs along x. At each ready point a point per slot
    shows its validation metric before exploit (coloured; a red ``x`` when
    diverged), and a line joins every replaced slot to the slot it copied, from the
    source (just before the ready point) to the copy (at it). The chain of slots
    that trained the best final parameters is a thick black path.

    Args:
      result: a :class:`~jaxhp.PBTResult`.
      quantiles, cmap: the colour limits and map of the ready-point values.
      ax: the axes (default: a new figure).

    Returns:
      The axes; its ``LineCollection`` labelled ``"copied ..."`` has one segment
      ``[(ready_step - d, source), (ready_step, slot)]`` per copy.

    Example:
      >>> jaxhp.plot.pbt_lineage(result)
    """
    check_result(result, PBTResult, "a population-based training result")
    from matplotlib.collections import LineCollection

    (a,) = new_axes(ax, 1, (6.5, 0.25 * result.n_settings + 2.5))
    search = result.meta.get("search", {})
    metric, mode = search.get("metric", "loss"), search.get("mode", "min")
    lineage = np.asarray(result.lineage)
    ready = np.asarray(result.ready_steps, np.float64)
    value = np.asarray(result.ready_value, np.float64)
    n = lineage.shape[0]
    d = 0.35 * float(search.get("ready_every", ready[0] if ready.size else 1))
    seg = [[(ready[j] - d, lineage[i, j]), (ready[j], i)]
           for j in range(lineage.shape[1]) for i in range(n) if lineage[i, j] != i]
    steps_end = float(search.get("steps", ready[-1] + d if ready.size else 1))
    for i in range(n):
        a.plot([0, steps_end], [i, i], color="lightgray", lw=0.8, zorder=0)
    if seg:
        a.add_collection(LineCollection(seg, colors="tab:orange", lw=1.3, zorder=3,
                                        label=f"copied (exploit): {len(seg)}"))
    norm = norm_for(value, quantiles, False)
    yy, xx = np.meshgrid(np.arange(n), ready, indexing="ij")
    fin = np.isfinite(value)
    pts = a.scatter(xx[fin], yy[fin], c=value[fin], cmap=cmap_for(cmap, mode), norm=norm, s=30,
                    zorder=4, edgecolors="black", linewidths=0.3)
    if (~fin).any():
        a.scatter(xx[~fin], yy[~fin], zorder=5, label=f"diverged ({int((~fin).sum())})",
                  **DIVERGED_STYLE)
    best = best_or_none(result, metric, mode)
    if best is not None:
        slots = result.ancestry(best.index)["slot"]
        xs = np.append(np.asarray(result.schedule_steps, np.float64), steps_end)
        a.plot(xs, np.append(slots, slots[-1]), drawstyle="steps-post", color="black",
               lw=2.2, zorder=2, label=f"best slot {best.index}'s ancestry")
    a.figure.colorbar(pts, ax=a, extend="both",
                      label=f"{metric_label(result, metric)} at the ready point")
    a.set(xlabel="step", ylabel="slot", xlim=(0, steps_end), ylim=(-0.7, n - 0.3),
          title="PBT lineage: who copied whom")
    a.set_xticks(np.append(ready, steps_end))
    a.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.15), ncol=3,
             frameon=False)
    return a


def trajectories(result: TuneResult, x: str, y: str, *, ax=None):
    """Gradient-based tuning: each start's path over two fields.

    Draw over :func:`heatmap` of a sweep of the same fields to see the paths on the
    landscape. A start is a white circle edged in black, an end a red dot; a start
    whose first evaluation diverged (its objective is NaN at step 0) is a magenta
    ``X`` (named in the legend), visible on any background.

    Args:
      result: a :class:`~jaxhp.TuneResult`; x, y: two tuned fields.
      ax: the axes (default: a new figure).

    Returns:
      The axes; line ``i`` is start ``i``'s path (``trajectory["values"]``).

    Example:
      >>> ax = jaxhp.plot.heatmap(grid, "l2", "learning_rate", "mse")
      >>> jaxhp.plot.trajectories(tuned, "l2", "learning_rate", ax=ax)
    """
    check_result(result, TuneResult, "a gradient-based tuning result")
    (a,) = new_axes(ax, 1, (6.0, 4.6))
    values = result.trajectory["values"]
    for f in (x, y):
        if f not in values:
            raise ValueError(f"`{f}`: not a tuned field{did_you_mean(f, list(values))}; "
                             f"tuned fields are {list(values)}")
    px, py = np.asarray(values[x], np.float64), np.asarray(values[y], np.float64)
    obj = np.asarray(result.trajectory["objective"], np.float64)
    bad = ~np.isfinite(obj[:, 0])
    for i in range(px.shape[0]):
        a.plot(px[i], py[i], "-", color="black" if not bad[i] else "magenta", lw=1.0,
               zorder=6)
    a.scatter(px[~bad, 0], py[~bad, 0], marker="o", s=30, color="white", edgecolors="black",
              zorder=7, label=f"start ({int((~bad).sum())})")
    if bad.any():
        a.scatter(px[bad, 0], py[bad, 0], marker="X", s=70, color="magenta",
                  edgecolors="black", zorder=9, label=f"diverged start ({int(bad.sum())})")
    a.scatter(px[:, -1], py[:, -1], marker="o", s=22, color="tab:red", edgecolors="black",
              linewidths=0.5, zorder=8, label="end")
    log = set(result.trajectory.get("log_fields", ()))
    if x in log:
        a.set_xscale("log")
    if y in log:
        a.set_yscale("log")
    a.set(xlabel=x, ylabel=y)
    a.legend(fontsize="small")
    return a
