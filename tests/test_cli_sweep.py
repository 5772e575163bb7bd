"""``jaxhp sweep CONFIG.toml --out DIR``, ``jaxhp show DIR`` and ``jaxhp test DIR``.

In-process through :func:`jaxhp.cli.main` (ridge on diabetes: fast compiles); in a real
process for the console script and for the kill-and-resume check.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import count_compiles

import jaxhp
import jaxhp.cli

ROOT = Path(__file__).resolve().parents[1]

RIDGE = """
seed = 0
[model]
name = "linear_regression"
[data]
dataset = "diabetes"
[hparams]
steps = 40
batch_size = 32
[space]
kind = "grid"
learning_rate = [0.01, 0.03, 0.1]
l2 = [1e-4, 1e-2]
batch_size = [32, 64]
[search]
seeds = 2
eval_every = 10
[select]
metric = "mse"
[engine]
max_chunk = 2
"""


def write(folder: Path, text: str, name: str = "c.toml") -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def run(argv, capsys) -> tuple[int, str, str]:
    rc = jaxhp.cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def plan_numbers(text: str) -> list[tuple[int, ...]]:
    """(settings, chunk, calls, compiles, member steps) per group of a --dry-run table."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 7 and parts[0].isdigit() and parts[1].isdigit():
            rows.append((int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]),
                         int(parts[6].replace(",", ""))))
    return rows


@pytest.fixture(scope="module")
def ridge_run(tmp_path_factory):
    """One finished ridge sweep (two static groups, chunks of 2), shared by the module."""
    folder = tmp_path_factory.mktemp("ridge")
    config = write(folder, RIDGE)
    rc = jaxhp.cli.main(["sweep", str(config), "--out", str(folder / "run"), "--no-progress"])
    assert rc == 0
    return config, folder / "run"


# ---------------------------------------------------------------- config errors
ERRORS = [
    ("[space]\nkind = 'random'\nn = 4\nlearning_rate = {loguniform = [0, 1]}",
     "[space] learning_rate = {loguniform = [0, 1]}: loguniform needs 0 < low < high"),
    ("[space]\nkind = 'random'\nn = 4\nl2 = {uniform = [1, 0.5]}",
     "[space] l2 = {uniform = [1, 0.5]}: uniform needs low < high"),
    ("[space]\nkind = 'grid'\nlearning_rate = {loguniform = [0.1, 1.0]}",
     "a grid takes explicit values"),
    ("[space]\nkind = 'grid'\nlearning_rate = 0.1",
     "[space] learning_rate = 0.1: a bare value; write {fixed = 0.1}"),
    ("[space]\nkind = 'random'\nlearning_rate = {loguniform = [0.1, 1.0]}",
     "[space] `n` is missing: the number of settings to draw"),
    ("[space]\nkind = 'random'\nn = 4\nlearning_rate = {logunifrom = [0.1, 1.0]}",
     "must name exactly one distribution of ['uniform', 'loguniform', 'intrange', "
     "'choice', 'fixed'] (did you mean `loguniform`?)"),
    ("[space]\nkind = 'grid'\nlearnig_rate = [0.1]",
     "`learnig_rate`: unknown field of LinearHP (did you mean `learning_rate`?)"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[vc]\nfolds = 5",
     "[vc]: unknown section; known sections: [model], [data], [cv], "
     "[hparams], [space], [search], [select], [engine]"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[cv]\nfolds = 1",
     "[cv] folds = 1: must be >= 2"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[cv]\nstratify = true",
     "[cv] stratify = true: stratified folds need class labels"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[cv]\nshuffle = false\n"
     "random_state = 3", "[cv] random_state = 3: only applies with shuffle = true"),
    ("[space]\nkind = 'random'\nn = 9\nlearning_rate = {loguniform = [0.01, 0.1]}\n"
     "[hparams]\nsteps = 90\n[search]\nmethod = 'halving'\nmin_steps = 10\n[cv]\nfolds = 3",
     "[cv]: K-fold cross-validation runs with [search] method = \"sweep\" only, not "
     "\"halving\""),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[serch]\nseeds = 2",
     "[serch]: unknown section (did you mean `search`?)"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nseed = 2",
     "[search] seed = 2: unknown key in [search] (did you mean `seeds`?)"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'halving'",
     "[search] `min_steps` is missing: the steps of the first rung"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'sweep'\n"
     "min_steps = 3", "[search] min_steps = 3: applies to method = \"halving\""),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nhealth = 'end'",
     "[search] health = \"end\": computes no per-step loss: set loss_every = 0 as well"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nhealth = 'never'",
     "[search] health = \"never\": must be one of"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[engine]\nmemory_budget = '12 parsecs'",
     "[engine] memory_budget = \"12 parsecs\": must be a positive number of bytes"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[select]\nmetric = 'mae'",
     "[select] metric = \"mae\": the model returns no such metric (did you mean `mse`?)"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[select]\nmetric = 'mse'\nmode = 'max'",
     "[select] mode = \"max\": the model declares 'mse' as 'min'"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[hparams]\nsteps = 0",
     "[hparams] steps = 0: must be >= 1 (rule: static, in [1, inf), an integer)"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'pbt'\n"
     "ready_every = 50\nsteps = 10", "[search] ready_every = 50: must be at most steps = 10"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'pbt'\n"
     "ready_every = 5\nsteps = 10", "pbt(): a population (a static group) has 1 setting"),
    ("[space]\nkind = 'random'\nn = 5\nlearning_rate = {loguniform = [0.01, 0.1]}\n"
     "[hparams]\nsteps = 90\n[search]\nmethod = 'hyperband'\nmin_steps = 10",
     "hyperband(): the brackets [9, 5, 3] need 17 settings, the space has 5"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'gradient'\n"
     "mode = 'backward'", "[search] mode = \"backward\": must be one of"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nouter_steps = 3",
     "[search] outer_steps = 3: applies to method = \"gradient\""),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'gradient'\n"
     "learning_rate = 0", "[search] learning_rate = 0: must be > 0"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'gradient'\n"
     "wrt = ['learnig_rate']", "did you mean `learning_rate`"),
    ("[space]\nkind = 'grid'\nlearning_rate = [0.1]\n[search]\nmethod = 'gradient'\n"
     "seeds = [0, 1]", "[search] seeds = [0, 1]: method = \"gradient\" takes a number of "
     "seeds"),
]


@pytest.mark.parametrize("body,message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_config_errors_name_key_value_rule_before_compiling(tmp_path, capsys, body,
                                                            message):
    head = "[model]\nname = 'linear_regression'\n[data]\ndataset = 'diabetes'\n"
    config = write(tmp_path, head + body)
    jaxhp.datasets.load("diabetes", key=jax.random.key(0))  # the split's own small ops
    with count_compiles() as compiles:
        rc, out, err = run(["sweep", config, "--out", tmp_path / "run"], capsys)
    assert rc == 2
    assert message in err, err
    assert err.startswith("jaxhp sweep: error: ") and "Traceback" not in err
    assert compiles.count == 0 and not (tmp_path / "run").exists()


def test_several_problems_are_listed_together(tmp_path, capsys):
    config = write(tmp_path, """
        [model]
        name = "linear_regresion"
        [data]
        dataset = "diabetis"
        [space]
        kind = "grid"
        """)
    rc, _, err = run(["sweep", config, "--dry-run"], capsys)
    assert rc == 2 and "2 problems" in err
    assert "[model] name = \"linear_regresion\": must be one of" in err
    assert "(did you mean `linear_regression`?)" in err
    assert "[data] dataset = \"diabetis\": unknown dataset (did you mean `diabetes`?)" in err


def test_not_toml_and_missing_file(tmp_path, capsys):
    rc, _, err = run(["sweep", write(tmp_path, "[model\nname = 1"), "--dry-run"], capsys)
    assert rc == 2 and "not valid TOML" in err
    rc, _, err = run(["sweep", tmp_path / "nope.toml", "--dry-run"], capsys)
    assert rc == 2 and "no such configuration file" in err


# ---------------------------------------------------------------- dry run and outputs
def test_dry_run_agrees_with_the_run(ridge_run, capsys):
    config, folder = ridge_run
    rc, out, _ = run(["sweep", config, "--dry-run"], capsys)
    assert rc == 0 and "static groups: 2; compiled programs: 2; compiled calls (chunks): 6" \
        in out
    planned = plan_numbers(out)
    result = jaxhp.SweepResult.load(folder / "result")
    real = [(g.n_settings, g.chunk_size, g.n_chunks, g.compiled,
             g.n_settings * result.n_seeds * g.steps) for g in result.groups]
    assert planned == real == [(6, 2, 3, 1, 480), (6, 2, 3, 1, 480)]


def test_outputs_are_written_and_load(ridge_run):
    _, folder = ridge_run
    result = jaxhp.SweepResult.load(folder / "result")
    assert result.n_settings == 12 and result.n_seeds == 2
    sel = result.best("mse")
    with open(folder / "cv_results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and int(rows[sel.index]["rank_test_mse"]) == 1
    np.testing.assert_allclose([float(r["mean_test_mse"]) for r in rows],
                               result.aggregate("mse")[0], rtol=1e-6)
    # the chosen setting's parameters, per seed, equal its solo runs
    best = json.loads((folder / "best_params.json").read_text())["meta"]
    assert best["index"] == sel.index and best["setting"]["learning_rate"] == pytest.approx(
        float(sel.setting.learning_rate))
    with np.load(folder / "best_params.npz", allow_pickle=False) as z:
        saved = dict(z)
    assert sorted(saved) == ["seed0/['b']", "seed0/['w']", "seed1/['b']", "seed1/['w']"]
    model = jaxhp.models.linear_regression(10)
    split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    solo = jaxhp.train(model, sel.setting, split, key=jax.random.fold_in(jax.random.key(0), 1))
    np.testing.assert_allclose(saved["seed1/['w']"], solo.state.params["w"], rtol=1e-5)
    for png in ("metric_by_field.png", "heatmap.png", "learning_curves.png"):
        assert (folder / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (folder / "report.md").read_text()
    assert f"index {sel.index}:" in report and "## Top 5" in report
    assert f"validation mse: {sel.value:.4f}" in report
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"]["args"] == {"n_features": 10}
    assert cfg["search"] == {"method": "sweep", "seeds": 2, "eval_every": 10,
                             "loss_every": 1, "health": "step", "keep_params": False}
    assert cfg["hparams"]["optimizer"] == "sgd" and cfg["select"]["mode"] == "min"
    assert cfg["engine"]["max_chunk"] == 2 and cfg["engine"]["devices"] == "all"


def test_rerun_of_a_finished_run_reports_it(ridge_run, capsys):
    config, folder = ridge_run
    with count_compiles() as compiles:
        rc, out, _ = run(["sweep", config, "--out", folder], capsys)
    assert rc == 0 and "already holds this finished run" in out and compiles.count == 0


def test_changed_config_is_refused_naming_the_difference(ridge_run, tmp_path, capsys):
    _, folder = ridge_run
    changed = write(tmp_path, RIDGE.replace("l2 = [1e-4, 1e-2]", "l2 = [1e-4, 1e-1]")
                    .replace("seeds = 2", "seeds = 3"))
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    rc, _, err = run(["sweep", changed, "--out", copy], capsys)
    assert rc == 2 and "holds a run of another configuration" in err
    assert "[space.fields] l2: [0.0001, 0.01] -> [0.0001, 0.1]" in err
    assert "[search] seeds: 2 -> 3" in err and "--overwrite" in err
    # new tunable values only: the compiled programs are reused
    changed = write(tmp_path, RIDGE.replace("l2 = [1e-4, 1e-2]", "l2 = [1e-4, 1e-1]"))
    rc, out, _ = run(["sweep", changed, "--out", copy, "--no-progress", "--no-plots",
                      "--overwrite"], capsys)
    assert rc == 0
    result = jaxhp.SweepResult.load(copy / "result")
    assert sorted(set(result.table.columns["l2"].tolist())) == pytest.approx([1e-4, 0.1])
    assert result.groups[0].chunks_loaded == 0 and not result.test_reads


# ---------------------------------------------------------------- show and test
def test_show_prints_groups_and_top_k(ridge_run, capsys):
    _, folder = ridge_run
    result = jaxhp.SweepResult.load(folder / "result")
    rc, out, _ = run(["show", folder, "--top", "3"], capsys)
    assert rc == 0 and "static groups" in out and "top 3 settings by validation mse" in out
    ranked = [int(line.split("|")[2]) for line in out.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip() in ("1", "2", "3")
              and "steps=" not in line]
    assert ranked == [s.index for s in result.top_k(3, "mse")]
    rc, out, _ = run(["show", folder, "--metric", "loss", "--all"], capsys)
    assert rc == 0 and "all settings by validation loss" in out
    rc, _, err = run(["show", folder, "--metric", "acuracy"], capsys)
    assert rc == 2 and "acuracy" in err


def test_test_reads_the_test_split_once(ridge_run, tmp_path, capsys):
    _, folder = ridge_run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy)
    rc, out, _ = run(["test", copy], capsys)
    assert rc == 0 and "test: " in out
    result = jaxhp.SweepResult.load(copy / "result")
    assert len(result.test_reads) == 1
    expected = jaxhp.SweepResult.load(folder / "result").evaluate_test(
        "mse", model=jaxhp.models.linear_regression(10),
        split=jaxhp.datasets.load("diabetes", key=jax.random.key(0)))
    assert result.test_reads[0]["metrics"]["mse"] == pytest.approx(expected.metrics["mse"])
    assert f"mse {expected.metrics['mse']:.4f}" in out
    assert json.loads((copy / "test.json").read_text())[0]["index"] == \
        expected.selection.index
    assert "- test (read 1 time(s)" in (copy / "report.md").read_text()
    rc, _, err = run(["test", copy], capsys)
    assert rc == 1 and "already read" in err and "--again" in err
    rc, _, _ = run(["test", copy, "--again"], capsys)
    assert rc == 0 and len(jaxhp.SweepResult.load(copy / "result").test_reads) == 2
    rc, _, err = run(["show", tmp_path / "empty"], capsys)
    assert rc == 2 and "config.json" in err


# ---------------------------------------------------------------- data and models
def test_csv_data_and_an_import_path_model(tmp_path, capsys):
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    names = [f"f{i}" for i in range(10)]
    with open(tmp_path / "diabetes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", *names, "target"])
        for i, (xi, yi) in enumerate(zip(x, y)):
            w.writerow([i, *xi.tolist(), yi])
    (tmp_path / "my_models.py").write_text(textwrap.dedent("""
        import jaxhp

        def ridge(n_features):
            return jaxhp.models.linear_regression(n_features)
        """))
    config = write(tmp_path, f"""
        seed = 3
        [model]
        factory = "my_models:ridge"
        args = {{n_features = 10}}
        [data]
        path = "diabetes.csv"
        x = {names!r}
        y = "target"
        task = "regression"
        standardize_y = true
        fractions = [0.5, 0.25, 0.25]
        [hparams]
        steps = 30
        [space]
        kind = "random"
        n = 4
        learning_rate = {{loguniform = [0.01, 0.3]}}
        [select]
        metric = "mse"
        """)
    rc, out, err = run(["sweep", config, "--out", tmp_path / "run", "--no-progress",
                        "--no-plots"], capsys)
    assert rc == 0, err
    assert not (tmp_path / "run" / "plots").exists()
    result = jaxhp.SweepResult.load(tmp_path / "run" / "result")
    # the same sweep in Python: the file's columns, split and standardised as configured
    data = {"x": x.astype(np.float32), "y": y.astype(np.float32)}
    split = jaxhp.standardize(jaxhp.split_data(data, key=jax.random.key(3),
                                               fractions=(0.5, 0.25, 0.25)), ["x", "y"])
    space = jaxhp.random(4, learning_rate=jaxhp.loguniform(0.01, 0.3))
    direct = jaxhp.sweep(jaxhp.models.linear_regression(10), space, split,
                         key=jax.random.key(3), base=jaxhp.models.LinearHP(steps=30))
    np.testing.assert_allclose(result.val["mse"], direct.val["mse"], rtol=1e-5)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["stratify"] is False and cfg["model"]["factory"] == "my_models:ridge"
    # the same configuration over changed data: the checkpoint's fingerprint refuses it
    text = (tmp_path / "diabetes.csv").read_text().splitlines()
    text[1] = text[1].replace(",", ",9", 1)
    (tmp_path / "diabetes.csv").write_text("\n".join(text) + "\n")
    (tmp_path / "run" / "result.json").unlink()
    rc, _, err = run(["sweep", config, "--out", tmp_path / "run", "--no-progress"], capsys)
    assert rc == 2 and "data" in err and "--overwrite starts afresh" in err
    bad = write(tmp_path, config.read_text().replace('y = "target"', 'y = "targte"'),
                "bad.toml")
    rc, _, err = run(["sweep", bad, "--dry-run"], capsys)
    assert rc == 2 and "[data] y: no column 'targte'" in err and "`target`" in err
    bad = write(tmp_path, config.read_text().replace("my_models:ridge", "my_models:ridg"),
                "bad.toml")
    rc, _, err = run(["sweep", bad, "--dry-run"], capsys)
    assert rc == 2 and "[model] factory = \"my_models:ridg\": module `my_models` has no " \
        "`ridg`" in err


def test_halving_and_pbt_configs_plan_what_they_run(tmp_path, capsys):
    head = """
        [model]
        name = "linear_regression"
        [data]
        dataset = "diabetes"
        [hparams]
        steps = 60
        batch_size = 32
        [space]
        kind = "quasirandom"
        n = 9
        learning_rate = {loguniform = [0.003, 0.3]}
        [select]
        metric = "mse"
        [engine]
        chunk_size = 2
        """
    for search, extra in (("halving", "min_steps = 20\neta = 3"),
                          ("pbt", "ready_every = 20")):
        # another batch size for each: its programs are its own (the plan counts the
        # compiles of a fresh process)
        body = head.replace("batch_size = 32", f"batch_size = {32 if search == 'pbt' else 16}")
        config = write(tmp_path, body + f"[search]\nmethod = '{search}'\n{extra}\n",
                       f"{search}.toml")
        rc, out, _ = run(["sweep", config, "--dry-run"], capsys)
        assert rc == 0
        (settings, chunk, calls, compiles, member_steps), = plan_numbers(out)
        rc, _, err = run(["sweep", config, "--out", tmp_path / search, "--no-progress"],
                         capsys)
        assert rc == 0, err
        result = jaxhp.SweepResult.load(tmp_path / search / "result")
        g, = result.groups
        assert (settings, chunk, calls, compiles) == (result.n_settings, g.chunk_size,
                                                      g.n_chunks, g.compiled)
        assert member_steps == result.meta["search"]["train_steps"]
        plots = sorted(p.name for p in (tmp_path / search / "plots").iterdir())
        assert plots == (["rungs.png"] if search == "halving"
                         else ["pbt_lineage.png", "pbt_schedule.png"])
    assert isinstance(jaxhp.SweepResult.load(tmp_path / "pbt" / "result"), jaxhp.PBTResult)


def test_gradient_config_plans_what_it_runs(tmp_path, capsys):
    """``method = "gradient"``: tune_gradient from the space's settings, the [select]
    metric as the objective; the dry run's numbers are the run's."""
    config = write(tmp_path, """
        [model]
        name = "linear_regression"
        [data]
        dataset = "diabetes"
        [hparams]
        steps = 30
        batch_size = 48
        [space]
        kind = "quasirandom"
        n = 5
        learning_rate = {loguniform = [0.003, 0.3]}
        l2 = {loguniform = [1e-4, 1.0]}
        [search]
        method = "gradient"
        seeds = 2
        outer_steps = 3
        wrt = ["learning_rate", "l2"]
        learning_rate = 0.2
        [select]
        metric = "mse"
        [engine]
        chunk_size = 2
        """, "gradient.toml")
    rc, out, _ = run(["sweep", config, "--dry-run"], capsys)
    assert rc == 0 and "search: tune_gradient, 5 settings x 2 seeds" in out
    (settings, chunk, calls, compiles, member_steps), = plan_numbers(out)
    rc, out, err = run(["sweep", config, "--out", tmp_path / "run", "--no-progress"], capsys)
    assert rc == 0, err
    result = jaxhp.SweepResult.load(tmp_path / "run" / "result")
    assert isinstance(result, jaxhp.TuneResult)
    g, = result.groups
    assert (settings, chunk, calls, compiles) == (5, 2, 3, 1) == (
        result.n_settings, g.chunk_size, g.n_chunks, g.compiled)
    assert member_steps == result.meta["search"]["train_steps"] == 5 * 2 * 4 * 30
    assert result.trajectory["objective"].shape == (5, 4)
    assert sorted(p.name for p in (tmp_path / "run" / "plots").iterdir()) == \
        ["trajectories.png"]
    assert result.meta["search"]["objective"] == "mse" and "tune_gradient" in out
    # each row is its start's last point, as the descent evaluated it (Adam at 0.2 moved it)
    np.testing.assert_allclose(result.trajectory["objective"][:, -1],
                               result.val["mse"].mean(axis=1), rtol=1e-6)
    assert not np.allclose(result.trajectory["values"]["l2"][:, 0],
                           result.trajectory["values"]["l2"][:, -1])
    rc, out, err = run(["show", tmp_path / "run"], capsys)
    assert rc == 0 and "search: tune_gradient" in out, err
    rc, out, err = run(["test", tmp_path / "run"], capsys)
    assert rc == 0 and "mse" in out, err


# ---------------------------------------------------------------- real processes
def _env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), os.environ.get("PYTHONPATH", "")])}


def test_console_script_dry_run():
    """The ``jaxhp`` script where it is installed (``pip install -e .``), else the entry
    point pyproject.toml declares for it, called as the installed script calls it."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: the tomli dependency
        import tomli as tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["jaxhp"] == "jaxhp.cli:main"
    script = shutil.which("jaxhp", path=str(Path(sys.executable).parent))
    command = [script] if script else [
        sys.executable, "-c", "import sys; from jaxhp.cli import main; sys.exit(main())"]
    out = subprocess.run([*command, "sweep", str(ROOT / "examples" / "diabetes_ridge.toml"),
                          "--dry-run"], capture_output=True, text=True, timeout=300,
                         env=_env(), check=True).stdout
    assert "search: sweep, 25 settings x 3 seeds = 75 members" in out
    assert "compiled calls (chunks): 1; member steps: 22,500" in out
    helptext = subprocess.run([*command, "--help"], capture_output=True, text=True,
                              timeout=120, env=_env(), check=True).stdout
    assert all(c in helptext for c in ("demo", "sweep", "show", "test"))


KILL = """
seed = 1
[model]
name = "linear_regression"
[data]
dataset = "diabetes"
[hparams]
steps = 4000
batch_size = 64
[space]
kind = "grid"
learning_rate = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128]
[search]
seeds = 2
loss_every = 100
[select]
metric = "mse"
[engine]
max_chunk = 1
"""


@pytest.mark.slow
def test_kill_and_rerun_is_bit_identical_to_an_uninterrupted_run(tmp_path, capsys):
    config = write(tmp_path, KILL)
    folder = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "jaxhp", "sweep", str(config), "--out",
                             str(folder), "--no-progress", "--no-plots"], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = folder / "checkpoint" / "manifest.json"

    def listed() -> int:  # chunks the manifest names: a chunk file it does not list yet
        # (the run was killed between the two atomic writes) is recomputed, not loaded
        return len(json.loads(manifest.read_text())["chunks"]) if manifest.exists() else 0

    deadline = time.time() + 240
    while not listed():
        assert proc.poll() is None and time.time() < deadline, "no chunk was checkpointed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = listed()
    assert proc.returncode == -signal.SIGKILL and 1 <= done < 8  # killed part-way
    assert not (folder / "result.json").exists()
    rc, out, err = run(["sweep", config, "--out", folder, "--no-progress", "--no-plots"],
                       capsys)
    assert rc == 0, err
    assert "resuming: what" in out
    rc, _, err = run(["sweep", config, "--out", tmp_path / "whole", "--no-progress",
                      "--no-plots"], capsys)
    assert rc == 0, err
    resumed = jaxhp.SweepResult.load(folder / "result")
    whole = jaxhp.SweepResult.load(tmp_path / "whole" / "result")
    assert resumed.groups[0].chunks_loaded == done and whole.groups[0].chunks_loaded == 0
    for name in ("train_loss", "loss_curve", "diverged_at"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
    np.testing.assert_array_equal(resumed.val["mse"], whole.val["mse"])
    a = np.load(folder / "best_params.npz", allow_pickle=False)
    b = np.load(tmp_path / "whole" / "best_params.npz", allow_pickle=False)
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])


def test_hparams_errors_name_each_key(tmp_path, capsys):
    config = write(tmp_path, """
        [model]
        name = "linear_regression"
        [data]
        dataset = "diabetes"
        [hparams]
        step = 10
        optimizer = "lbfgs"
        [space]
        kind = "grid"
        """)
    rc, _, err = run(["sweep", config, "--dry-run"], capsys)
    assert rc == 2 and "2 problems" in err
    assert "[hparams] step = 10: unknown field of LinearHP (did you mean `steps`?)" in err
    assert """[hparams] optimizer = "lbfgs": must be one of ['sgd', 'adam', 'adamw']""" in err


def test_readme_error_example_and_options(tmp_path, capsys):
    head = "[model]\nname = 'linear_regression'\n[data]\ndataset = 'diabetes'\n"
    config = write(tmp_path, head + "[space]\nkind = 'random'\nn = 8\nlearning_rate = "
                   "{loguniform = [0, 1]}\n[serch]\nmethod = 'halving'\n")
    rc, _, err = run(["sweep", config, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and err.endswith(
        "2 problems:\n  - [serch]: unknown section (did you mean `search`?); known sections: "
        "[model], [data], [cv], [hparams], [space], [search], [select], [engine]\n  - [space] "
        "learning_rate = {loguniform = [0, 1]}: loguniform needs 0 < low < high\n")
    # a field named like an option of [space] goes in [space.fields]; a memory budget in
    # bytes or with a unit; a device count
    grid = head + "[space]\nkind = 'grid'\n[space.fields]\nl2 = [1e-4, 1e-3, 1e-2, 1e-1]\n"
    rc, out, _ = run(["sweep", write(tmp_path, grid), "--dry-run"], capsys)
    assert rc == 0 and plan_numbers(out)[0][:3] == (4, 4, 1)
    budget = grid + "[engine]\nmemory_budget = '3KiB'\n"
    rc, out, _ = run(["sweep", write(tmp_path, budget), "--dry-run"], capsys)
    small = plan_numbers(out)[0]
    rc2, out2, _ = run(["sweep", write(tmp_path, grid + "[engine]\nmemory_budget = 3072\n"),
                        "--dry-run"], capsys)
    assert rc == rc2 == 0 and small == plan_numbers(out2)[0] and small[1] < 4
    many = grid + f"[engine]\ndevices = {jax.local_device_count() + 1}\n"
    rc, _, err = run(["sweep", write(tmp_path, many), "--dry-run"], capsys)
    assert rc == 2 and f"only {jax.local_device_count()} local device(s)" in err


def test_npz_data(tmp_path, capsys):
    split = jaxhp.datasets.load("iris", key=jax.random.key(0))
    x = np.concatenate([split.train["x"], split.val["x"], split.test["x"]])
    y = np.concatenate([split.train["y"], split.val["y"], split.test["y"]])
    np.savez(tmp_path / "iris.npz", features=x, labels=y)
    body = """
        [model]
        name = "softmax_regression"
        [data]
        path = "iris.npz"
        x = "features"
        y = "labels"
        task = "classification"
        [space]
        kind = "grid"
        l2 = [1e-3, 1e-2]
        [select]
        metric = "accuracy"
        """
    rc, out, err = run(["sweep", write(tmp_path, body), "--dry-run"], capsys)
    assert rc == 0, err
    assert "search: sweep, 2 settings x 1 seeds" in out
    rc, _, err = run(["sweep", write(tmp_path, body.replace('"labels"', '"label"')),
                      "--dry-run"], capsys)
    assert rc == 2 and "[data] y = \"label\": no array of that name" in err
    assert "(did you mean `labels`?)" in err
    # gradient tuning minimises: a metric declared 'max' is refused before compiling
    gradient = body.replace("[select]", "[search]\nmethod = 'gradient'\n[select]")
    with count_compiles() as compiles:
        rc, _, err = run(["sweep", write(tmp_path, gradient), "--dry-run"], capsys)
    assert rc == 2 and compiles.count == 0
    assert "[select] metric = \"accuracy\": method = \"gradient\" minimises" in err


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "examples").glob("*.toml")))
def test_every_shipped_example_plans(name, capsys):
    """Each example config is valid and plans (a dry run compiles nothing)."""
    with count_compiles() as compiles:
        rc, out, err = run(["sweep", ROOT / "examples" / name, "--dry-run"], capsys)
    assert rc == 0, err
    assert "nothing is trained" in out and compiles.count == 0


def test_readme_shows_the_shipped_example():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From the shell: `jaxhp sweep CONFIG.toml`")[1]
    block = section.split("```toml\n")[1].split("```")[0]
    assert block.strip() in (ROOT / "examples" / "digits_mlp.toml").read_text()


def test_cv_section_cross_validates_as_jaxhp_kfold(tmp_path, capsys):
    """``[cv]``: the sweep trains settings x seeds x folds (one program), equal to
    ``jaxhp.sweep`` on ``jaxhp.kfold`` of the same split; the test is read after a refit."""
    text = RIDGE.replace("[hparams]", "[cv]\nfolds = 3\nrandom_state = 7\n[hparams]") \
        .replace("batch_size = [32, 64]\n", "").replace("eval_every = 10\n", "")
    config = write(tmp_path, text)
    rc, out, _ = run(["sweep", config, "--dry-run"], capsys)
    assert rc == 0 and "6 settings x 2 seeds x 3 folds = 36 members" in out
    assert plan_numbers(out) == [(6, 2, 3, 1, 6 * 2 * 3 * 40)]
    rc, out, _ = run(["sweep", config, "--out", tmp_path / "run", "--no-progress"], capsys)
    assert rc == 0 and "mean over 3 folds of the mean over 2 seed(s)" in out
    result = jaxhp.SweepResult.load(tmp_path / "run" / "result")
    assert result.n_folds == 3 and result.n_seeds == 2
    split = jaxhp.datasets.load("diabetes", key=jax.random.key(0))
    folds = jaxhp.kfold(split, 3, shuffle=True, random_state=7)
    ref = jaxhp.sweep(jaxhp.models.linear_regression(10),
                      jaxhp.grid(learning_rate=[0.01, 0.03, 0.1], l2=[1e-4, 1e-2]), folds,
                      key=jax.random.key(0), seeds=2,
                      base=jaxhp.models.LinearHP(steps=40, batch_size=32), progress=False,
                      max_chunk=2)
    np.testing.assert_allclose(result.val["mse"], ref.val["mse"], rtol=1e-5)
    with open(tmp_path / "run" / "cv_results.csv") as f:
        header = next(csv.reader(f))
    assert [h for h in header if h.endswith("_test_mse")] == [
        "split0_test_mse", "split1_test_mse", "split2_test_mse", "mean_test_mse",
        "std_test_mse", "rank_test_mse"]
    rc, out, _ = run(["test", tmp_path / "run"], capsys)
    assert rc == 0 and "refit on all the cross-validation data" in out
    assert result.best("mse").index == ref.best("mse").index
