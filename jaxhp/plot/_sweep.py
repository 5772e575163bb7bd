"""Figures of a sweep (any result): metric by field, heat map, curves, coordinates."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxhp._result import DIVERGED, FAILED, OK, SweepResult, metric_name
from jaxhp.plot._common import (
    BEST_STYLE,
    best_or_none,
    check_result,
    cmap_for,
    draw_unhealthy,
    edge_fields,
    field_of,
    fmt,
    label_fields,
    metric_label,
    new_axes,
    norm_for,
    numeric,
    off_axis,
    robust_ylim,
    setting_label,
    states,
    varying,
)


def metric_by_field(result: SweepResult, metric: str = "loss", *,
                    fields: Sequence[str] | None = None, mode: str | None = None,
                    spread: str = "minmax", yscale: str | None = None,
                    quantiles: tuple[float, float] = (0.0, 0.9), ax=None) -> list:
    """The validation metric against each hyperparameter: one panel per field.

    Each healthy setting is a point at its mean over seeds with a bar showing the
    seeds' spread (``"minmax"`` or ``"std"``); diverged and failed settings are drawn
    at the top of the panel; the best setting is a star. A log-scale field has a log
    x axis; the worse end of the y axis is cut at ``quantiles[1]`` of the values.

    Args:
      result: a result (any search).
      metric: a validation metric; mode: its direction (default: declared).
      fields: the fields, one panel each (default: every tunable that varies).
      spread: ``"minmax"`` (the range over seeds) or ``"std"`` (± one std).
      yscale: e.g. ``"log"`` for the y axis (default: linear).
      quantiles: the y range kept, as quantiles of the means (the better end is
        never cut; points beyond the worse end are grey triangles at the edge).
      ax: one axes per field (default: a new figure).

    Returns:
      The list of axes, one per field.

    Example:
      >>> jaxhp.plot.metric_by_field(result, "mse", fields=["learning_rate"])
    """
    check_result(result)
    if spread not in ("minmax", "std"):
        raise ValueError(f"`spread`={spread!r}: must be 'minmax' or 'std'")
    values = result.metric(metric).astype(np.float64)
    mean, std = result.aggregate(metric)
    fields = varying(result) if fields is None else list(fields)
    if not fields:
        raise ValueError("no tunable field varies in this result: pass `fields=`")
    best = best_or_none(result, metric, mode)
    mode = best.mode if best is not None else (mode or result.directions.get(
        metric_name(metric), "min"))
    state = states(result, mean)
    ok = state == OK
    if spread == "minmax":
        lo = np.where(ok, mean - np.nanmin(values, axis=1), np.nan)
        hi = np.where(ok, np.nanmax(values, axis=1) - mean, np.nan)
    else:
        lo = hi = std
    axes = new_axes(ax, len(fields))
    from matplotlib.transforms import blended_transform_factory

    for f, a in zip(fields, axes):
        field_of(result, f)
        col = np.asarray(result.table.columns[f])
        try:
            x = col.astype(np.float64)
            ticks = None
        except (TypeError, ValueError):  # a categorical field: one position per value
            ticks = sorted(set(col.tolist()), key=str)
            x = np.asarray([ticks.index(v) for v in col.tolist()], np.float64)
        if yscale:
            a.set_yscale(yscale)
        what = "min-max" if spread == "minmax" else "std"
        a.errorbar(x[ok], mean[ok], yerr=[lo[ok], hi[ok]], fmt="o", ms=3.5, lw=0.8,
                   alpha=0.75, color="tab:blue",
                   label=f"mean over {result.n_seeds} seed(s) (bars: {what})")
        top = blended_transform_factory(a.transData, a.transAxes)
        draw_unhealthy(a, x, np.full(x.shape, 0.98), state, transform=top)
        if best is not None:
            a.scatter([x[best.index]], [best.value], label=f"best ({best.value:.4g})",
                      **BEST_STYLE)
        if ticks is not None:
            a.set_xticks(range(len(ticks)), [str(t) for t in ticks])
        elif field_of(result, f).log:
            a.set_xscale("log")
        a.set(xlabel=f, ylabel=metric_label(result, metric))
        lim = robust_ylim(a, mean[ok], [] if best is None else [best.value], quantiles,
                           mode)
        off_axis(a, x[ok], mean[ok], lim, mode)
        a.legend(fontsize="small")
    return axes


def _edges(centres: np.ndarray, log: bool) -> np.ndarray:
    """Cell edges around sorted centres: midpoints (geometric on a log axis)."""
    c = np.log10(centres) if log else centres
    if c.size == 1:
        e = np.array([c[0] - 0.5, c[0] + 0.5])
    else:
        mid = (c[1:] + c[:-1]) / 2
        e = np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])
    return 10**e if log else e


def heatmap(result: SweepResult, x: str, y: str, metric: str = "loss", *,
            mode: str | None = None, quantiles: tuple[float, float] = (0.02, 0.98),
            log_color: bool = False, cmap: str = "viridis", colorbar: bool = True,
            ax=None):
    """The validation metric over two fields: a heat map for a grid, else a scatter.

    When the settings cover a full grid of ``x`` × ``y`` values the cells are an
    image (a cell whose settings differ in other fields shows the best of them);
    scattered settings (random, quasirandom, adaptive searches) are points coloured
    by their value. The colour limits are the ``quantiles`` of the finite values
    drawn (:func:`robust_limits`): values beyond them take the end colours, so a few
    near-divergent settings do not flatten the map. The colour map is reversed for a
    ``min`` metric, so better is always brighter. Diverged, failed and NaN-metric
    settings are drawn with their own markers and named in the legend (their cells
    are grey); the best setting (:meth:`~jaxhp.SweepResult.best`) is a star, and the
    title warns when it sits on the edge of the space (:func:`edge_fields`), where a
    wider range may hold better settings.

    Args:
      result: a result; x, y: two numeric fields.
      metric, mode: the validation metric and its direction (default: declared).
      quantiles: the colour limits, as quantiles of the finite values.
      log_color: a logarithmic colour scale (positive metrics).
      cmap: a matplotlib colour map name; colorbar: add a colour bar.
      ax: the axes (default: a new figure).

    Returns:
      The axes. Its ``QuadMesh`` (grid) or first ``PathCollection`` (scatter) holds
      the values and the colour limits.

    Example:
      >>> ax = jaxhp.plot.heatmap(result, "l2", "learning_rate", "mse")
      >>> ax.figure.savefig("heatmap.png")
    """
    check_result(result)
    (a,) = new_axes(ax, 1, (6.0, 4.6))
    xs, ys = numeric(result, x), numeric(result, y)
    fx, fy = field_of(result, x), field_of(result, y)
    mean, _ = result.aggregate(metric)
    best = best_or_none(result, metric, mode)
    mode = best.mode if best is not None else (mode or result.directions.get(
        metric_name(metric), "min"))
    state = states(result, mean)
    cm = cmap_for(cmap, mode)
    ux, uy = np.unique(xs), np.unique(ys)
    pairs = {(a_, b_) for a_, b_ in zip(xs.tolist(), ys.tolist())}
    is_grid = ux.size > 1 and uy.size > 1 and len(pairs) == ux.size * uy.size
    if is_grid:
        ix, iy = np.searchsorted(ux, xs), np.searchsorted(uy, ys)
        sign = 1.0 if mode == "min" else -1.0
        cell = np.full((uy.size, ux.size), np.inf)
        np.minimum.at(cell, (iy, ix), np.where(np.isfinite(mean), sign * mean, np.inf))
        cell = np.where(np.isfinite(cell), sign * cell, np.nan)
        norm = norm_for(cell, quantiles, log_color)
        mappable = a.pcolormesh(_edges(ux, fx.log), _edges(uy, fy.log),
                                np.ma.masked_invalid(cell), cmap=cm, norm=norm)
        # an unhealthy setting is marked only where its cell has no healthy value
        shown = ~np.isfinite(cell[iy, ix])
        draw_unhealthy(a, xs[shown], ys[shown], state[shown])
    else:
        ok = np.isfinite(mean)
        norm = norm_for(mean[ok], quantiles, log_color)
        order = np.argsort(mean[ok] if mode == "max" else -mean[ok], kind="stable")
        mappable = a.scatter(xs[ok][order], ys[ok][order], c=mean[ok][order], cmap=cm,
                             norm=norm, s=28, edgecolors="none")
        draw_unhealthy(a, xs, ys, state)
    if fx.log:
        a.set_xscale("log")
    if fy.log:
        a.set_yscale("log")
    title = f"{metric_label(result, metric)} (mean over {result.n_seeds} seed(s))"
    if best is not None:
        a.scatter([xs[best.index]], [ys[best.index]], **BEST_STYLE,
                  label=f"best: {x}={fmt(xs[best.index])}, {y}={fmt(ys[best.index])} "
                        f"({best.value:.4g})")
        edge = edge_fields(result, [x, y], best.index)
        if edge:
            title += f"\nbest on the edge of the space ({', '.join(edge)}): widen the range"
    a.set(xlabel=x, ylabel=y, title=title)
    a.title.set_fontsize("medium")
    if colorbar:
        a.figure.colorbar(mappable, ax=a, extend="both",
                          label=metric_label(result, metric) +
                          f" ({int(quantiles[0] * 100)}-{int(quantiles[1] * 100)}% range)")
    if a.get_legend_handles_labels()[0]:
        a.legend(fontsize="small", loc="best", framealpha=0.8)
    return a


def _curve(result, index: int, metric: str, curve: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values (seeds, points))`` of one setting's curve, padding dropped."""
    if curve == "val":
        result.metric(metric)  # an unknown metric: SelectionError with did-you-mean
        values = result.val_curve[metric_name(metric)]
        g = result.group_of[index]
        steps = np.asarray(result.groups[g].eval_steps if g >= 0 else [], np.float64)
        v = np.asarray(values[index], np.float64)
        if steps.size == 0:
            raise ValueError("this result recorded no validation curve (eval_steps is "
                             "empty): train with eval_every=..., or pass curve='train'")
        return steps, v[:, :steps.size]
    if curve != "train":
        raise ValueError(f"`curve`={curve!r}: must be 'val' or 'train'")
    v = np.asarray(result.loss_curve[index], np.float64)
    n = int(np.sum(np.any(np.isfinite(v), axis=0))) or v.shape[-1]
    steps_total = int(np.asarray(result.table.columns["steps"])[index]) \
        if "steps" in result.table.columns else n
    return (np.arange(1, n + 1) * steps_total / n), v[:, :n]


def learning_curves(result: SweepResult, metric: str = "loss", k: int = 3, *,
                    indices: Sequence[int] | None = None, by: str | None = None,
                    mode: str | None = None, curve: str = "val", spread: str = "std",
                    yscale: str | None = None, ax=None):
    """Learning curves of the best ``k`` settings, the seeds' spread as a band.

    Each setting is one colour: its mean curve over seeds and a band of ± one std
    (``spread="std"``) or the seeds' range (``"minmax"``), named in the legend by the
    fields that vary, its rank and its final value. Settings next to each other in a
    grid often train alike; ``by="learning_rate"`` shows the best setting for each of
    the ``k`` best values of that field instead, so the curves differ.

    Args:
      result: a result; metric, mode: the ranking rule (default: declared direction).
      k: how many settings.
      indices: draw these settings instead of the best ``k``.
      by: one setting per value of this field (the best of each), the best ``k`` values.
      curve: ``"val"`` (the validation ``metric`` at each evaluation) or ``"train"``
        (the training loss).
      spread: ``"std"`` or ``"minmax"``; yscale: e.g. ``"log"``.
      ax: the axes (default: a new figure).

    Returns:
      The axes; line ``j`` is the mean curve of the ``j``-th setting drawn.

    Example:
      >>> jaxhp.plot.learning_curves(result, "mse", k=3, by="learning_rate")
    """
    check_result(result)
    if spread not in ("minmax", "std"):
        raise ValueError(f"`spread`={spread!r}: must be 'minmax' or 'std'")
    if k < 1:
        raise ValueError(f"`k`={k}: must be >= 1")
    (a,) = new_axes(ax, 1, (6.0, 4.0))
    rank = result.rank(metric, mode)
    if indices is None:
        if by is None:
            indices = [s.index for s in result.top_k(k, metric, mode)]
        else:
            field_of(result, by)
            col = np.asarray(result.table.columns[by])
            mean, _ = result.aggregate(metric)
            seen, indices = set(), []
            for i in np.argsort(rank, kind="stable"):
                if np.isfinite(mean[i]) and col[i].item() not in seen:
                    seen.add(col[i].item())
                    indices.append(int(i))
                if len(indices) == k:
                    break
    fields = label_fields(result)
    mean_all, _ = result.aggregate(metric)
    for j, i in enumerate(indices):
        steps, v = _curve(result, i, metric, curve)
        with np.errstate(invalid="ignore"):
            m = np.nanmean(v, axis=0) if np.isfinite(v).any() else v[0]
            if spread == "std":
                lo, hi = m - np.nanstd(v, axis=0), m + np.nanstd(v, axis=0)
            else:
                lo, hi = np.nanmin(v, axis=0), np.nanmax(v, axis=0)
        colour = f"C{j % 10}"
        final = f", {mean_all[i]:.4g}" if np.isfinite(mean_all[i]) else ", not selectable"
        a.plot(steps, m, color=colour, lw=1.8,
               label=f"#{rank[i]}: {setting_label(result, i, fields)}{final}")
        if v.shape[0] > 1:
            a.fill_between(steps, lo, hi, color=colour, alpha=0.2, lw=0)
    if yscale:
        a.set_yscale(yscale)
    what = metric_label(result, metric) if curve == "val" else "training loss"
    band = "± std" if spread == "std" else "min-max"
    a.set(xlabel="step", ylabel=what,
          title=f"learning curves (mean over {result.n_seeds} seed(s), band: {band})")
    a.title.set_fontsize("medium")
    a.legend(fontsize="small")
    return a


def parallel_coordinates(result: SweepResult, metric: str = "loss", *,
                         fields: Sequence[str] | None = None, mode: str | None = None,
                         quantiles: tuple[float, float] = (0.02, 0.98), cmap: str = "viridis",
                         colorbar: bool = True, ax=None):
    """Every setting as a line across one vertical axis per field, coloured by metric.

    Each field's axis runs from its smallest to its largest value (log-scaled for a
    ``log`` field, so equal ratios are equal distances), labelled at both ends.
    Better settings are drawn on top; diverged and failed settings are grey dashed
    lines named in the legend; the best is a thick black line.

    Args:
      result: a result; metric, mode: the colour's metric and its direction.
      fields: the fields (default: every tunable that varies, then varying statics).
      quantiles: the colour limits (:func:`robust_limits`).
      cmap, colorbar: the colour map and whether to add a colour bar.
      ax: the axes (default: a new figure).

    Returns:
      The axes; its first ``LineCollection`` holds the healthy settings (in drawing
      order, worst first) with their values in ``get_array()``.

    Example:
      >>> jaxhp.plot.parallel_coordinates(result, "accuracy")
    """
    check_result(result)
    from matplotlib.collections import LineCollection

    if fields is None:
        fields = varying(result) + [f for f in varying(result,
                                     result.table.cls.static_names())]
    fields = list(fields)
    if not fields:
        raise ValueError("no field varies in this result: pass `fields=`")
    (a,) = new_axes(ax, 1, (1.6 * len(fields) + 3, 4.0))
    mean, _ = result.aggregate(metric)
    best = best_or_none(result, metric, mode)
    mode = best.mode if best is not None else (mode or result.directions.get(
        metric_name(metric), "min"))
    state = states(result, mean)
    t = np.empty((len(mean), len(fields)))
    for j, f in enumerate(fields):
        v = numeric(result, f)
        if field_of(result, f).log:
            v = np.log10(v)
        lo, hi = v.min(), v.max()
        t[:, j] = (v - lo) / (hi - lo) if hi > lo else 0.5
        raw = numeric(result, f)
        a.text(j, 1.02, fmt(raw.max()), ha="center", va="bottom", fontsize="small")
        a.text(j, -0.02, fmt(raw.min()), ha="center", va="top", fontsize="small")
        a.axvline(j, color="black", lw=0.8)
    xpos = np.arange(len(fields), dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(mean))
    ok = ok[np.argsort(mean[ok] if mode == "max" else -mean[ok], kind="stable")]
    lines = LineCollection([np.column_stack([xpos, t[i]]) for i in ok],
                           cmap=cmap_for(cmap, mode), norm=norm_for(mean[ok], quantiles, False),
                           lw=1.2, alpha=0.8)
    lines.set_array(mean[ok])
    a.add_collection(lines)
    for kind, what in ((DIVERGED, "diverged"), (FAILED, "failed"), ("nan", "NaN metric")):
        rows = np.flatnonzero(state == kind)
        if rows.size:
            a.add_collection(LineCollection(
                [np.column_stack([xpos, t[i]]) for i in rows], colors="gray", lw=0.8,
                linestyles="--", label=f"{what} ({rows.size})",
                zorder=0.5 if kind != FAILED else 0.4))
    if best is not None:
        a.plot(xpos, t[best.index], color="black", lw=3, zorder=9,
               label=f"best ({best.value:.4g})")
    a.set_xticks(xpos, [f + (" (log)" if field_of(result, f).log else "") for f in fields])
    a.set(xlim=(-0.3, len(fields) - 0.7), ylim=(-0.1, 1.1), yticks=[])
    if colorbar:
        a.figure.colorbar(lines, ax=a, extend="both", label=metric_label(result, metric))
    if a.get_legend_handles_labels()[0]:
        a.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0, -0.12), ncol=4,
                 frameon=False)
    return a
