"""jaxhp.plot: what each figure draws (the data on its artists), headless.

The results are tiny ridge runs on diabetes, built once per module. Where a test needs
a landscape it controls (a best inside the space or on its edge, a failed setting), it
replaces the validation metric of a real result (``_with``): the figure must draw
whatever the result holds.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

import jaxhp
import jaxhp.plot
from jaxhp import models

matplotlib = pytest.importorskip("matplotlib")

MODEL = models.linear_regression(10)
LRS = [1e-3, 1e-2, 0.05, 0.2, 5.0]  # 5.0 diverges
L2S = [1e-5, 1e-3, 1e-1, 1.0]


@pytest.fixture(scope="module", autouse=True)
def agg():
    """Headless: the Agg backend, set here in the test, never by the library."""
    old = matplotlib.get_backend()
    matplotlib.use("Agg")
    yield
    matplotlib.use(old)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture(scope="module")
def grid(diabetes):
    return jaxhp.sweep(MODEL, jaxhp.grid(learning_rate=LRS, l2=L2S), diabetes,
                       key=jax.random.key(1), seeds=2, base=models.LinearHP(steps=40),
                       eval_every=10, progress=False)


@pytest.fixture(scope="module")
def scattered(diabetes):
    space = jaxhp.random(14, seed=3, learning_rate=jaxhp.loguniform(1e-3, 0.3),
                         l2=jaxhp.loguniform(1e-5, 1.0)) + \
        jaxhp.grid(learning_rate=[6.0], l2=[1e-2])
    return jaxhp.sweep(MODEL, space, diabetes, key=jax.random.key(1), seeds=2,
                       base=models.LinearHP(steps=40), progress=False)


@pytest.fixture(scope="module")
def halving(diabetes):
    space = jaxhp.random(9, seed=0, learning_rate=jaxhp.loguniform(1e-3, 1.0),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    return jaxhp.successive_halving(MODEL, space, diabetes, key=jax.random.key(1),
                                    min_steps=10, max_steps=90, metric="mse",
                                    progress=False)


@pytest.fixture(scope="module")
def pbt(diabetes):
    space = jaxhp.random(6, seed=0, learning_rate=jaxhp.loguniform(1e-3, 1.0),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    return jaxhp.pbt(MODEL, space, diabetes, key=jax.random.key(1), steps=40,
                     ready_every=10, metric="mse", progress=False)


def _with(result, mse=None, failed=()):
    """A copy of ``result`` whose validation MSE is ``mse`` (per setting, every seed),
    and whose settings ``failed`` are marked failed (their metrics NaN)."""
    val = {k: v.copy() for k, v in result.val.items()}
    status = result.status.copy()
    if mse is not None:
        val["mse"] = np.repeat(np.asarray(mse, np.float32)[:, None], result.n_seeds, 1)
        status[:] = "ok"
    for i in failed:
        status[i] = "failed"
        for v in val.values():
            v[i] = np.nan
    return jaxhp.SweepResult(
        settings=result.table, seed_ids=result.seed_ids, status=status,
        diverged_at=np.where(status == "diverged", result.diverged_at, -1),
        train_loss=result.train_loss, val=val, loss_curve=result.loss_curve,
        val_curve=result.val_curve, errors=result.errors, groups=result.groups,
        meta=result.meta, group_of=result.group_of)


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def _col(result, name):
    return np.asarray(result.table.columns[name], np.float64)


# ------------------------------------------------------------------- extras
def test_importing_jaxhp_or_jaxhp_plot_does_not_import_matplotlib():
    code = ("import sys, jaxhp, jaxhp.plot; "
            "print([m for m in sys.modules if m.split('.')[0] == 'matplotlib'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_missing_matplotlib_names_the_plot_extra(grid, monkeypatch):
    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install 'jaxhp\[plot\]'"):
        jaxhp.plot.heatmap(grid, "l2", "learning_rate", "mse")


def test_the_library_never_chooses_a_backend():
    root = pathlib.Path(jaxhp.__file__).parent
    bad = [str(p) for p in root.rglob("*.py")
           if re.search(r"matplotlib\.use\(|MPLBACKEND|pyplot\.switch_backend",
                        p.read_text())]
    assert not bad


def test_robust_limits_are_quantiles_of_finite_values():
    v = np.array([0.4, 0.5, 0.6, 0.7, np.nan, np.inf, 1e28] + [0.55] * 50)
    finite = v[np.isfinite(v)]
    assert jaxhp.plot.robust_limits(v) == tuple(np.quantile(finite, [0.02, 0.98]))
    assert jaxhp.plot.robust_limits(v, (0.0, 1.0)) == (0.4, 1e28)
    assert jaxhp.plot.robust_limits([np.nan]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="quantiles"):
        jaxhp.plot.robust_limits(v, (0.9, 0.1))


# ----------------------------------------------------------- metric by field
def test_metric_by_field_draws_mean_and_seed_range(grid):
    axes = jaxhp.plot.metric_by_field(grid, "mse")
    assert [a.get_xlabel() for a in axes] == ["learning_rate", "l2"]  # the varying ones
    mean, _ = grid.aggregate("mse")
    ok = np.isfinite(mean)
    v = grid.val["mse"].astype(np.float64)
    for a, f in zip(axes, ["learning_rate", "l2"]):
        assert a.get_xscale() == "log"  # both fields are declared log=True
        bars = a.containers[0]
        line = bars.lines[0]
        np.testing.assert_allclose(line.get_xdata(), _col(grid, f)[ok])
        np.testing.assert_allclose(line.get_ydata(), mean[ok])
        seg = bars.lines[2][0].get_segments()  # one vertical bar per setting: min to max
        np.testing.assert_allclose([s[0][1] for s in seg], v[ok].min(axis=1), rtol=1e-6)
        np.testing.assert_allclose([s[1][1] for s in seg], v[ok].max(axis=1), rtol=1e-6)
        labels = _legend(a)
        assert f"diverged ({int((~ok).sum())})" in labels
        assert any(t.startswith("best") for t in labels)


def test_metric_by_field_std_one_field_and_given_axes(grid):
    import matplotlib.pyplot as plt

    _, ax = plt.subplots()
    (a,) = jaxhp.plot.metric_by_field(grid, "mse", fields=["l2"], spread="std", ax=ax)
    assert a is ax
    mean, std = grid.aggregate("mse")
    ok = np.isfinite(mean)
    seg = a.containers[0].lines[2][0].get_segments()
    np.testing.assert_allclose([s[1][1] - s[0][1] for s in seg], 2 * std[ok], rtol=1e-5)
    with pytest.raises(ValueError, match="did you mean `learning_rate`"):
        jaxhp.plot.metric_by_field(grid, "mse", fields=["learning_rte"])


# ------------------------------------------------------------------ heat map
def test_heatmap_of_a_grid_is_an_image_with_robust_colour_limits(grid):
    ax = jaxhp.plot.heatmap(grid, "l2", "learning_rate", "mse")
    mesh = next(c for c in ax.collections if isinstance(c, matplotlib.collections.QuadMesh))
    mean, _ = grid.aggregate("mse")
    expected = mean.reshape(len(LRS), len(L2S))  # grid order: learning_rate outer
    img = mesh.get_array().reshape(len(LRS), len(L2S))
    np.testing.assert_allclose(np.ma.filled(img, np.nan), expected, rtol=1e-6)
    assert np.array_equal(np.ma.getmaskarray(img), ~np.isfinite(expected))
    assert mesh.get_clim() == pytest.approx(
        tuple(np.quantile(expected[np.isfinite(expected)], [0.02, 0.98])))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = _legend(ax)
    assert f"diverged ({len(L2S)})" in labels  # the row of learning rate 5
    best = grid.best("mse")
    star = next(c for c in ax.collections if (c.get_label() or "").startswith("best"))
    np.testing.assert_allclose(star.get_offsets()[0], [_col(grid, "l2")[best.index],
                                                      _col(grid, "learning_rate")[best.index]])
    assert any(t.startswith("best: l2=") for t in labels)


def _bowl(result, lr0, l20):
    x, y = np.log10(_col(result, "learning_rate")), np.log10(_col(result, "l2"))
    return 0.4 + (x - np.log10(lr0)) ** 2 + (y - np.log10(l20)) ** 2


@pytest.mark.parametrize(("lr0", "l20", "edge"), [
    (0.05, 1e-3, None),                  # inside
    (1e-3, 1e-3, "learning_rate=min"),    # the smallest learning rate
    (0.05, 1.0, "l2=max"),               # the largest l2
])
def test_heatmap_warns_exactly_when_the_best_is_on_the_edge(grid, lr0, l20, edge):
    r = _with(grid, mse=_bowl(grid, lr0, l20))
    ax = jaxhp.plot.heatmap(r, "l2", "learning_rate", "mse")
    title = ax.get_title()
    if edge is None:
        assert "edge" not in title
    else:
        assert "best on the edge" in title and edge in title


def test_edge_fields_also_reads_declared_bounds(grid):
    assert jaxhp.plot.edge_fields(grid, ["learning_rate"], 0) == ["learning_rate=min"]
    # a field that does not vary has no edge, even at a declared bound (momentum 0)
    assert jaxhp.plot.edge_fields(grid, ["momentum"], 0) == []
    r = _with(grid, mse=_bowl(grid, 0.05, 1e-3))
    inside = r.best("mse").index
    assert jaxhp.plot.edge_fields(r, ["learning_rate", "l2"], inside) == []


def test_heatmap_marks_failed_settings_and_follows_the_direction(grid):
    mse = _bowl(grid, 0.05, 1e-3)
    r = _with(grid, mse=mse, failed=[0, 1])
    ax = jaxhp.plot.heatmap(r, "l2", "learning_rate", "mse")
    assert "failed (2)" in _legend(ax)
    failed = next(c for c in ax.collections if c.get_label() == "failed (2)")
    np.testing.assert_allclose(failed.get_offsets(), np.column_stack(
        [_col(grid, "l2")[:2], _col(grid, "learning_rate")[:2]]))
    # the same values declared "max": the best is now the largest
    ax = jaxhp.plot.heatmap(r, "l2", "learning_rate", "mse", mode="max")
    star = next(c for c in ax.collections if (c.get_label() or "").startswith("best"))
    i = int(np.nanargmax(np.where(np.arange(len(mse)) >= 2, mse, np.nan)))
    np.testing.assert_allclose(star.get_offsets()[0],
                               [_col(grid, "l2")[i], _col(grid, "learning_rate")[i]])


def test_heatmap_cell_shows_the_best_over_the_other_fields(diabetes):
    r = jaxhp.sweep(MODEL, jaxhp.grid(learning_rate=[0.01, 0.1], l2=[1e-4, 1e-2],
                                      momentum=[0.0, 0.5]), diabetes, key=jax.random.key(1),
                    base=models.LinearHP(steps=40), progress=False)
    ax = jaxhp.plot.heatmap(r, "l2", "learning_rate", "mse")
    mesh = next(c for c in ax.collections if isinstance(c, matplotlib.collections.QuadMesh))
    mean, _ = r.aggregate("mse")
    best_of_two = mean.reshape(2, 2, 2).min(axis=2)  # learning_rate, l2, momentum (inner)
    np.testing.assert_allclose(mesh.get_array().reshape(2, 2), best_of_two, rtol=1e-6)


def test_heatmap_names_settings_with_a_nan_metric(grid):
    mse = _bowl(grid, 0.05, 1e-3)
    mse[[3, 7, 9]] = np.nan
    ax = jaxhp.plot.heatmap(_with(grid, mse=mse), "l2", "learning_rate", "mse")
    assert "NaN metric (3)" in _legend(ax)


def test_heatmap_of_scattered_settings_is_a_coloured_scatter(scattered):
    ax = jaxhp.plot.heatmap(scattered, "learning_rate", "l2", "mse", log_color=True)
    mean, _ = scattered.aggregate("mse")
    ok = np.isfinite(mean)
    assert not any(isinstance(c, matplotlib.collections.QuadMesh) for c in ax.collections)
    pts = ax.collections[0]
    order = np.argsort(-mean[ok], kind="stable")  # worst first, the best on top
    np.testing.assert_allclose(pts.get_offsets(), np.column_stack(
        [_col(scattered, "learning_rate")[ok][order], _col(scattered, "l2")[ok][order]]))
    np.testing.assert_allclose(pts.get_array(), mean[ok][order])
    assert isinstance(pts.norm, matplotlib.colors.LogNorm)
    assert pts.get_clim() == pytest.approx(tuple(np.quantile(mean[ok], [0.02, 0.98])))
    assert "diverged (1)" in _legend(ax)


# ------------------------------------------------------------ learning curves
def test_learning_curves_of_the_top_k_with_seed_bands(grid):
    ax = jaxhp.plot.learning_curves(grid, "mse", k=3)
    top = grid.top_k(3, "mse")
    steps = grid.groups[0].eval_steps
    assert len(ax.lines) == 3
    for line, sel in zip(ax.lines, top):
        np.testing.assert_allclose(line.get_xdata(), steps)
        np.testing.assert_allclose(line.get_ydata(),
                                   grid.val_curve["mse"][sel.index].mean(axis=0), rtol=1e-6)
    assert len({line.get_color() for line in ax.lines}) == 3
    bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    assert len(bands) == 3  # two seeds: a band each
    labels = _legend(ax)
    for t, sel in zip(labels, top):
        assert f"learning_rate={float(sel.setting.learning_rate):.3g}" in t
        assert f"l2={float(sel.setting.l2):.3g}" in t


def test_learning_curves_by_field_are_distinct_settings(grid):
    ax = jaxhp.plot.learning_curves(grid, "mse", k=3, by="learning_rate", spread="minmax")
    rank = grid.rank("mse")
    mean, _ = grid.aggregate("mse")
    lr = _col(grid, "learning_rate")
    chosen, seen = [], set()
    for i in np.argsort(rank, kind="stable"):
        if np.isfinite(mean[i]) and lr[i] not in seen:
            seen.add(lr[i])
            chosen.append(i)
    for line, i in zip(ax.lines, chosen[:3]):
        np.testing.assert_allclose(line.get_ydata(),
                                   grid.val_curve["mse"][i].mean(axis=0), rtol=1e-6)
    assert len({lr[i] for i in chosen[:3]}) == 3


def test_learning_curves_of_given_settings_and_training_loss(grid):
    ax = jaxhp.plot.learning_curves(grid, indices=[0, 5], curve="train")
    np.testing.assert_allclose(ax.lines[1].get_ydata(), grid.loss_curve[5].mean(axis=0),
                               rtol=1e-6)
    np.testing.assert_allclose(ax.lines[1].get_xdata(), np.arange(1, 41))


# ------------------------------------------------------ parallel coordinates
def test_parallel_coordinates_normalise_log_fields(grid):
    ax = jaxhp.plot.parallel_coordinates(grid, "mse")
    mean, _ = grid.aggregate("mse")
    ok = np.flatnonzero(np.isfinite(mean))
    ok = ok[np.argsort(-mean[ok], kind="stable")]  # worst first: the best on top
    lines = ax.collections[0]
    lr, l2 = np.log10(_col(grid, "learning_rate")), np.log10(_col(grid, "l2"))
    t_lr = (lr - lr.min()) / np.ptp(lr)
    t_l2 = (l2 - l2.min()) / np.ptp(l2)
    segs = lines.get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segs], np.column_stack([t_lr, t_l2])[ok])
    np.testing.assert_allclose(lines.get_array(), mean[ok])
    assert lines.get_clim() == pytest.approx(tuple(np.quantile(mean[ok], [0.02, 0.98])))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["learning_rate (log)", "l2 (log)"]
    labels = _legend(ax)
    assert f"diverged ({len(L2S)})" in labels and any(t.startswith("best") for t in labels)
    best = grid.best("mse").index
    np.testing.assert_allclose(ax.lines[-1].get_ydata(), [t_lr[best], t_l2[best]])


# ----------------------------------------------------------- adaptive searches
def test_rungs_draw_every_setting_over_its_rungs(halving):
    ax = jaxhp.plot.rungs(halving)
    assert ax.get_xscale() == "log"
    last = halving.rungs[-1]
    lines = [ln for ln in ax.lines if ln.get_linewidth() > 1.5]  # the highlighted ones
    assert len(lines) == len(last.settings)
    for line, s in zip(lines, last.settings):
        xs = [r.steps for r in halving.rungs if s in r.settings]
        ys = [r.value[list(r.settings).index(s)] for r in halving.rungs if s in r.settings]
        np.testing.assert_allclose(line.get_xdata(), xs)
        np.testing.assert_allclose(line.get_ydata(), ys)
    n_all = len(halving.rungs[0].settings)
    assert len(ax.lines) == n_all  # one line per setting
    assert any(t.startswith("reached 90 steps") for t in _legend(ax))
    assert any(t.startswith("best") for t in _legend(ax))
    assert str(halving.meta["search"]["train_steps"]) in ax.get_title()


def test_rungs_of_hyperband_name_each_bracket(diabetes):
    space = jaxhp.random(17, seed=0, learning_rate=jaxhp.loguniform(1e-3, 1.0),
                         l2=jaxhp.loguniform(1e-5, 1.0))
    hb = jaxhp.hyperband(MODEL, space, diabetes, key=jax.random.key(1), min_steps=10,
                         max_steps=90, metric="mse", progress=False)
    ax = jaxhp.plot.rungs(hb)
    brackets = sorted({r.bracket for r in hb.rungs})
    labels = _legend(ax)
    for b in brackets:
        assert f"reached 90 steps (bracket {b})" in labels
    assert len(ax.lines) == sum(len(r.settings) for r in hb.rungs if r.rung == 0)


def test_rungs_refuses_a_sweep(grid):
    with pytest.raises(TypeError, match="HalvingResult"):
        jaxhp.plot.rungs(grid)


def test_pbt_schedule_draws_each_slot_and_the_best_ancestry(pbt):
    axes = jaxhp.plot.pbt_schedule(pbt, ["learning_rate", "l2"])
    for a, f in zip(axes, ["learning_rate", "l2"]):
        assert a.get_yscale() == "log"
        sch = pbt.schedule[f]
        for i in range(pbt.n_settings):
            np.testing.assert_allclose(a.lines[i].get_ydata(), np.append(sch[i], sch[i, -1]))
            np.testing.assert_allclose(a.lines[i].get_xdata(), [0, 10, 20, 30, 40])
        anc = pbt.ancestry(pbt.best("mse").index)[f]
        np.testing.assert_allclose(a.lines[pbt.n_settings].get_ydata(),
                                   np.append(anc, anc[-1]))


def test_pbt_lineage_draws_every_copy(pbt):
    ax = jaxhp.plot.pbt_lineage(pbt)
    copies = next(c for c in ax.collections if (c.get_label() or "").startswith("copied"))
    expected = sorted((float(pbt.ready_steps[j]), int(pbt.lineage[i, j]), i)
                      for j in range(pbt.lineage.shape[1]) for i in range(pbt.n_settings)
                      if pbt.lineage[i, j] != i)
    got = sorted((float(s[1][0]), int(s[0][1]), int(s[1][1])) for s in copies.get_segments())
    assert got == expected and len(got) > 0
    assert f"copied (exploit): {len(expected)}" in _legend(ax)


def test_trajectories_show_diverged_starts(diabetes):
    starts = [models.LinearHP(learning_rate=a, l2=b, steps=20)
              for a, b in [(0.05, 1e-3), (0.2, 1e-2), (50.0, 1e-3)]]  # the last diverges
    tuned = jaxhp.tune_gradient(MODEL, starts, diabetes, key=jax.random.key(0),
                                wrt=("learning_rate", "l2"), objective="mse", steps=2,
                                optimizer=optax.adam(0.1))
    ax = jaxhp.plot.trajectories(tuned, "l2", "learning_rate")
    values = tuned.trajectory["values"]
    for i, line in enumerate(ax.lines):
        np.testing.assert_allclose(line.get_xdata(), values["l2"][i])
        np.testing.assert_allclose(line.get_ydata(), values["learning_rate"][i])
    assert "diverged start (1)" in _legend(ax)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"


# The README's Plots block runs as a script in tests/test_readme.py (it asserts its files).
