"""The conventions every figure shares: axes, colours, unhealthy settings, limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxhp._hparams import did_you_mean
from jaxhp._result import DIVERGED, FAILED, OK, SweepResult, metric_name

DIVERGED_STYLE = {"marker": "x", "color": "tab:red", "s": 40, "linewidths": 1.5}
FAILED_STYLE = {"marker": "s", "facecolors": "none", "edgecolors": "dimgray", "s": 36}
NAN_STYLE = {"marker": "D", "facecolors": "none", "edgecolors": "darkorange", "s": 30}
BEST_STYLE = {"marker": "*", "s": 260, "color": "white", "edgecolors": "black",
              "linewidths": 1.2, "zorder": 10}


def pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("jaxhp.plot needs matplotlib: pip install 'jaxhp[plot]'") from e
    return plt


def new_axes(ax, n: int = 1, size=(5.0, 3.8)):
    """``ax`` as a list of ``n`` axes; a new figure of ``n`` panels when ``None``."""
    if ax is None:
        plt = pyplot()
        fig, axes = plt.subplots(1, n, figsize=(size[0] * n, size[1]), squeeze=False)
        return list(axes[0])
    axes = list(np.ravel(ax)) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != n:
        raise ValueError(f"`ax`: {n} axes are needed (one per panel), got {len(axes)}")
    return axes


def check_result(result, cls=SweepResult, what="a jaxhp result"):
    if not isinstance(result, cls):
        raise TypeError(f"`result` must be {what} ({cls.__name__}), got "
                        f"{type(result).__name__}")


def robust_limits(values: Any, quantiles: tuple[float, float] = (0.02, 0.98)
                  ) -> tuple[float, float]:
    """Colour (or axis) limits that a few extreme values cannot stretch.

    Args:
      values: numbers of any shape; NaN and Inf are ignored.
      quantiles: the lower and upper quantile, in ``[0, 1]``.

    Returns:
      ``(lo, hi)``: the quantiles of the finite values (``(0, 1)`` if there are
      none; ``lo == hi`` widened by 1% so a colour scale stays valid).

    Example:
      >>> robust_limits([0.45, 0.46, 0.5, 1e28])  # doctest: +SKIP
      (0.4506, 6.0e26)
    """
    q0, q1 = quantiles
    if not 0 <= q0 < q1 <= 1:
        raise ValueError(f"`quantiles`={quantiles!r}: need 0 <= lo < hi <= 1")
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.quantile(v, [q0, q1]))
    if lo == hi:
        pad = 0.01 * max(abs(lo), 1e-12)
        lo, hi = lo - pad, hi + pad
    return lo, hi


def field_of(result, name: str):
    fields = result.table.cls.fields()
    if name not in fields:
        raise ValueError(f"`{name}`: not a field of {result.table.cls.__name__}"
                         f"{did_you_mean(name, list(fields))}; fields are {list(fields)}")
    return fields[name]


def numeric(result, name: str) -> np.ndarray:
    field_of(result, name)
    col = np.asarray(result.table.columns[name])
    try:
        return col.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}`: its values ({sorted(set(col.tolist()))[:4]}) are not "
                         "numbers; this figure needs a numeric field") from None


def varying(result, names=None) -> list[str]:
    """The fields (default: tunables) whose values differ between settings."""
    names = list(result.table.cls.tunable_names() if names is None else names)
    cols = result.table.columns
    return [n for n in names if len(set(np.asarray(cols[n]).tolist())) > 1]


def label_fields(result) -> list[str]:
    """The fields that tell settings apart: every varying field, statics too."""
    return varying(result, list(result.table.cls.fields())) or \
        list(result.table.cls.tunable_names())[:2]


def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, (float, np.floating)) else str(v)


def setting_label(result, index: int, fields: Sequence[str] | None = None) -> str:
    """``"learning_rate=0.1, l2=0.001"``: setting ``index`` by the fields that vary."""
    fields = label_fields(result) if fields is None else fields
    cols = result.table.columns
    return ", ".join(f"{f}={fmt(np.asarray(cols[f])[index].item())}" for f in fields)


def metric_label(result, metric: str) -> str:
    return f"validation {metric_name(metric)}"


def raw_state(result) -> np.ndarray:
    """Per setting: ok, diverged, failed, or nan (trained but a non-finite metric)."""
    return result.setting_status()


def draw_unhealthy(ax, xs, ys, state, transform=None, extra=None):
    """Draws diverged / failed / NaN-metric points, each named with its count."""
    kw = {} if transform is None else {"transform": transform, "clip_on": False}
    out = {}
    for kind, style, what in ((DIVERGED, DIVERGED_STYLE, "diverged"),
                              (FAILED, FAILED_STYLE, "failed"),
                              ("nan", NAN_STYLE, "NaN metric")):
        sel = state == kind
        if sel.any():
            out[kind] = ax.scatter(np.asarray(xs)[sel], np.asarray(ys)[sel], zorder=8,
                                   label=f"{what} ({int(sel.sum())})", **style, **kw,
                                   **(extra or {}))
    return out


def states(result, mean) -> np.ndarray:
    st = raw_state(result).astype("<U8")
    st[(st == OK) & ~np.isfinite(mean)] = "nan"
    return st


def edge_fields(result, fields: Sequence[str], index: int) -> list[str]:
    """The fields in which setting ``index`` sits on the edge of the space.

    A field is on the edge when the value is (within float32 rounding) the smallest
    or largest value any setting of ``result`` has, or a bound the field declares.
    A field with a single value has no edge.

    Returns:
      ``["learning_rate=max", ...]``: each edge field and the side it is on.

    Example:
      >>> edge_fields(result, ["learning_rate", "l2"], result.best("mse").index)
      ['learning_rate=max']
    """
    out = []
    for f in fields:
        col = numeric(result, f)
        v = col[index]
        lo, hi = np.nanmin(col), np.nanmax(col)
        if lo == hi:
            continue
        dlo, dhi = field_of(result, f).bounds()
        close = lambda a, b: bool(np.isclose(a, b, rtol=1e-6, atol=0.0))
        if close(v, lo) or close(v, dlo):
            out.append(f"{f}=min")
        elif close(v, hi) or close(v, dhi):
            out.append(f"{f}=max")
    return out


def best_or_none(result, metric, mode):
    try:
        return result.best(metric, mode)
    except ValueError as e:  # SelectionError: nothing selectable; draw without a star
        if "no setting can be selected" in str(e):
            return None
        raise


def norm_for(values, quantiles, log):
    from matplotlib.colors import LogNorm, Normalize

    lo, hi = robust_limits(values if not log else np.where(np.asarray(values) > 0, values,
                                                           np.nan), quantiles)
    return LogNorm(lo, hi) if log else Normalize(lo, hi)


def cmap_for(name, mode):
    """The colour map, reversed for ``min`` metrics so better is always brighter."""
    import matplotlib

    cmap = matplotlib.colormaps[name]
    cmap = cmap.reversed() if mode == "min" else cmap
    cmap.set_bad("lightgray")
    return cmap


def robust_ylim(ax, values, keep, quantiles=(0.0, 0.9), mode="min"):
    """Axis limits: the worse end at a quantile of ``values``, the better end and
    ``keep`` never cut. Returns the limits (``None`` when there is nothing to show)."""
    v = np.asarray(values, np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q = quantiles if mode == "min" else (1 - quantiles[1], 1 - quantiles[0])
    lo, hi = robust_limits(v, q)
    lo, hi = (min(lo, v.min()), hi) if mode == "min" else (lo, max(hi, v.max()))
    keep = np.asarray(keep, np.float64).ravel()
    keep = keep[np.isfinite(keep)]
    if keep.size:
        lo, hi = min(lo, keep.min()), max(hi, keep.max())
    if ax.get_yscale() == "log" and lo > 0:
        pad = (hi / lo) ** 0.05
        ax.set_ylim(lo / pad, hi * pad)
    else:
        pad = 0.05 * (hi - lo)
        ax.set_ylim(lo - pad, hi + pad)
    return lo, hi


def off_axis(ax, x, y, limits, mode):
    """Marks the points beyond the worse end of the y axis (a grey triangle at the
    edge), named in the legend with their count."""
    from matplotlib.transforms import blended_transform_factory

    if limits is None:
        return None
    y = np.asarray(y, np.float64)
    off = np.isfinite(y) & ((y > limits[1]) if mode == "min" else (y < limits[0]))
    if not off.any():
        return None
    edge = blended_transform_factory(ax.transData, ax.transAxes)
    return ax.scatter(np.asarray(x)[off], np.full(int(off.sum()), 0.93 if mode == "min"
                                                  else 0.07),
                      marker="^" if mode == "min" else "v", color="gray", s=30,
                      transform=edge, clip_on=False, zorder=7,
                      label=f"worse, off the axis ({int(off.sum())})")
