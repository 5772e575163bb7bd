"""Command line: ``jaxhp demo`` runs the whole workflow end to end; ``jaxhp sweep
CONFIG.toml --out DIR`` runs a search described in a file, ``jaxhp show DIR`` prints
it and ``jaxhp test DIR`` reads its test split, once.

Set hyperparameters -> train (one compiled program for the whole population)
-> select on validation -> report on test, once. The configuration is checked by
:mod:`jaxhp._config` and :mod:`jaxhp._job`, the run folder written by :mod:`jaxhp._runs`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxhp
from jaxhp import models


def _ridge_cv(split, alphas):
    from sklearn.linear_model import RidgeCV

    t0 = time.perf_counter()
    reg = RidgeCV(alphas=alphas).fit(split.train["x"], split.train["y"])
    fit_s = time.perf_counter() - t0
    mse = lambda part: float(np.mean((reg.predict(part["x"]) - part["y"]) ** 2))
    return reg, mse(split.val), mse(split.test), fit_s


def demo_diabetes(n_settings: int, seeds: int, steps: int, key: jax.Array) -> dict:
    """Sweeps linear regression (lr x L2) on diabetes and compares with RidgeCV."""
    split = jaxhp.datasets.load("diabetes", key=key)
    model = models.linear_regression(split.train["x"].shape[1])
    space = jaxhp.quasirandom(n_settings, seed=0,
                              learning_rate=jaxhp.loguniform(1e-3, 0.4),
                              l2=jaxhp.loguniform(1e-5, 1.0))
    base = models.LinearHP(steps=steps, batch_size=64)
    result = jaxhp.sweep(model, space, split, key=key, seeds=seeds, base=base,
                         loss_every=10)
    report = result.evaluate_test("mse")
    sel = report.selection
    n = split.sizes[0]
    alphas = np.logspace(-5, 0, 64) * n  # the same l2 range, in scikit-learn's units
    reg, rv, rt, fit_s = _ridge_cv(split, alphas)
    return {"task": "diabetes", "result": result, "report": report,
            "rows": [
                ("jaxhp.sweep", f"lr={float(sel.setting.learning_rate):.3g}, "
                 f"l2={float(sel.setting.l2):.3g}", sel.value, report.metrics["mse"],
                 result.compile_seconds, result.run_seconds),
                ("sklearn RidgeCV", f"l2={reg.alpha_ / n:.3g} (alpha={reg.alpha_:.3g})",
                 rv, rt, 0.0, fit_s)],
            "metric": "mse"}


def demo_digits(n_settings: int, seeds: int, steps: int, key: jax.Array) -> dict:
    """Sweeps the MLP classifier (lr x weight decay x dropout) on digits."""
    split = jaxhp.datasets.load("digits", key=key)
    model = models.mlp_classifier(64, 10)
    space = jaxhp.quasirandom(n_settings, seed=0,
                              learning_rate=jaxhp.loguniform(1e-4, 1e-1),
                              weight_decay=jaxhp.loguniform(1e-6, 1e-1),
                              dropout=jaxhp.uniform(0.0, 0.5))
    result = jaxhp.sweep(model, space, split, key=key, seeds=seeds,
                         base=models.MLPHP(steps=steps), loss_every=10)
    report = result.evaluate_test("accuracy")
    s = report.selection.setting
    return {"task": "digits", "result": result, "report": report,
            "rows": [("jaxhp.sweep", f"lr={float(s.learning_rate):.3g}, "
                      f"wd={float(s.weight_decay):.3g}, dropout={float(s.dropout):.2f}",
                      report.selection.value, report.metrics["accuracy"],
                      result.compile_seconds, result.run_seconds)],
            "metric": "accuracy"}


def _print(out: dict, n_settings: int, seeds: int) -> None:
    result, metric = out["result"], out["metric"]
    print(f"\njaxhp demo: {out['task']}: {n_settings} settings x {seeds} seeds "
          f"= {n_settings * seeds} models, {result.compile_count} compiled program(s), "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s)")
    print(f"{int(np.sum(result.setting_status() != 'ok'))} settings diverged "
          "(never selected)\n")
    head = f"{'method':<16} {'chosen setting':<44} {'val ' + metric:>10} " \
           f"{'test ' + metric:>10} {'compile s':>9} {'train s':>8} {'settings/s':>10}"
    print(head)
    print("-" * len(head))
    for name, setting, val, test, comp, run in out["rows"]:
        rate = f"{n_settings / run:,.0f}" if name == "jaxhp.sweep" else "-"
        print(f"{name:<16} {setting:<44} {val:>10.4f} {test:>10.4f} {comp:>9.2f} "
              f"{run:>8.2f} {rate:>10}")
    print("\nSelected on validation; the test split was read once, for the chosen "
          "setting.")


def _positive_int(text: str) -> int:
    """An argparse type: an integer >= 1, else a usage error naming the value."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is not allowed: must be at least 1")
    return v


def _add_run_commands(sub) -> None:
    sweep = sub.add_parser(
        "sweep", help="run the search a TOML configuration describes; results, figures "
        "and a report go to --out DIR (a re-run resumes there)",
        description="Runs the search described in CONFIG.toml (model, data, hyperparameter "
        "space, search, metric; see examples/ in the repository) and writes the result, "
        "cv_results.csv, the chosen setting's parameters, figures and report.md to DIR. "
        "Running the same command again resumes from DIR's checkpoint.")
    sweep.add_argument("config", help="the configuration file (TOML)")
    sweep.add_argument("--out", metavar="DIR",
                       help="the run folder (required unless --dry-run)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="print the plan (static groups, compiles, chunks, memory per "
                       "device, member steps) and train nothing")
    sweep.add_argument("--overwrite", action="store_true",
                       help="discard what DIR holds (another configuration's run, a "
                       "finished result) and start afresh")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--no-plots", action="store_true",
                       help="write no figures (they need matplotlib: jaxhp[plot])")
    show = sub.add_parser("show", help="print a run's groups and its best settings",
                          description="Prints the run in DIR: its chosen setting, static "
                          "groups and top settings on validation.")
    show.add_argument("dir", help="a run folder written by jaxhp sweep")
    show.add_argument("--top", type=_positive_int, default=10,
                      help="settings to list (default 10)")
    show.add_argument("--metric", default=None,
                      help="rank by this validation metric (default: the configured one)")
    show.add_argument("--all", action="store_true", help="list every setting")
    test = sub.add_parser("test", help="evaluate the chosen setting on the test split, once",
                          description="Evaluates the setting chosen on validation on the "
                          "test split, once, and records it in DIR; a second test is "
                          "refused unless --again.")
    test.add_argument("dir", help="a run folder written by jaxhp sweep")
    test.add_argument("--again", action="store_true",
                      help="read the test split again (it then no longer estimates the "
                      "error of a setting chosen without it)")


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"jaxhp {command}: error: {message}", file=sys.stderr)
    return code


def _load_job(config_path: str):
    from jaxhp import _config, _job

    doc = _config.read(config_path)
    return _job.build(_config.resolve(doc), Path(config_path).resolve().parent)


def _sweep(args) -> int:
    from jaxhp import _config, _runs
    from jaxhp._search.plan import plan_search

    if args.out is None and not args.dry_run:
        return _fail("sweep", "--out DIR is required (the run folder), unless --dry-run")
    try:
        job = _load_job(args.config)
        plan = plan_search(job.model, job.space, job.split, search=job.search, **job.kwargs)
    except (ValueError, TypeError) as e:  # ConfigError and jaxhp's input errors
        return _fail("sweep", f"{args.config}: {e}")
    if args.dry_run:
        print(_runs.format_plan(plan, args.config))
        return 0
    out = Path(args.out)
    if (out / _runs.CONFIG).exists() and not args.overwrite:
        diffs = _config.differences(_runs.read_config(out), job.config)
        if diffs:
            lines = "\n".join(f"  {_config.key_name(k)}: {_config.toml_value(a)} -> "
                              f"{_config.toml_value(b)}" for k, a, b in diffs)
            return _fail("sweep", f"{out} holds a run of another configuration "
                         f"({out / _runs.CONFIG}); it differs in:\n{lines}\nrun with "
                         "--overwrite to discard that run, or choose another --out")
        if (out / "result.json").exists():
            print(f"{out} already holds this finished run (--overwrite reruns it):")
            print("\n".join(_runs.summary(_load_result(out), job.search, job.metric,
                                          job.mode)))
            return 0
    if args.overwrite:
        for name in _runs.OUTPUTS:
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _runs.write_config(job.config, out)
    folds = f" x {plan.n_folds} folds" if plan.n_folds > 1 else ""
    print(f"jaxhp sweep {args.config}: {plan.n_settings} settings x {plan.n_seeds} seeds"
          f"{folds}, "
          f"{len(plan.groups)} static group(s), {plan.compiles} program(s) to compile, "
          f"{plan.calls} compiled call(s); checkpoints in {out / _runs.CHECKPOINT}",
          flush=True)
    if (out / _runs.CHECKPOINT / "manifest.json").exists() and not args.overwrite:
        print(f"resuming: what {out / _runs.CHECKPOINT} holds is read, not recomputed",
              flush=True)
    progress = False if args.no_progress else _tqdm_or_none()
    t0 = time.perf_counter()
    try:
        result = _runs.search_function(job.search)(
            job.model, job.space, job.split, key=job.key, progress=progress,
            checkpoint_dir=out / _runs.CHECKPOINT, overwrite=args.overwrite, **job.kwargs)
    except KeyboardInterrupt:
        print(f"jaxhp sweep: interrupted; run the same command to resume from {out}",
              file=sys.stderr)
        return 130
    except jaxhp.CheckpointMismatch as e:
        return _fail("sweep", f"{e}\n(jaxhp sweep: --overwrite starts afresh)")
    except (ValueError, TypeError) as e:  # input the search refused before compiling
        if not (out / _runs.CHECKPOINT / "manifest.json").exists():
            (out / _runs.CONFIG).unlink(missing_ok=True)  # nothing ran: nothing to resume
        return _fail("sweep", str(e))
    except jaxhp.CheckpointLocked as e:
        return _fail("sweep", str(e), 1)
    plots = _runs.write_outputs(result, job.search, job.metric, job.mode, out,
                                plots=not args.no_plots)
    print("\n".join(_runs.summary(result, job.search, job.metric, job.mode)))
    print(f"wall {time.perf_counter() - t0:.1f} s; wrote {out}: result.npz/.json, "
          f"cv_results.csv, best_params.npz, report.md"
          + (f", plots/ ({', '.join(plots)})" if plots else "" if args.no_plots else
             " (no plots: pip install 'jaxhp[plot]')"))
    return 0


def _tqdm_or_none():
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return None
    return True


def _load_result(out: Path):
    from jaxhp import _runs

    if not (out / "result.json").exists():
        raise FileNotFoundError(f"{out} holds no finished run (no result.json); run "
                                "`jaxhp sweep CONFIG --out DIR` first")
    return jaxhp.SweepResult.load(out / _runs.RESULT)


def _show(args) -> int:
    from jaxhp import _runs

    out = Path(args.dir)
    try:
        cfg = _runs.read_config(out)
        result = _load_result(out)
    except (OSError, ValueError) as e:
        return _fail("show", str(e))
    metric = args.metric or cfg["select"]["metric"]
    mode = cfg["select"]["mode"] if args.metric is None else None
    try:
        lines = _runs.summary(result, cfg["search"]["method"], metric, mode)
        top = _runs.top_table(result, metric, mode, result.n_settings if args.all
                              else args.top)
    except ValueError as e:  # an unknown metric, an undeclared direction
        return _fail("show", str(e))
    print(f"{out}:")
    print("\n".join(lines))
    for t in result.test_reads:
        print(f"test, read {t['time']}: " + ", ".join(f"{k} {v:.4f}"
                                                       for k, v in t["metrics"].items()))
    print("\nstatic groups\n" + _runs.groups_table(result))
    print(f"\n{'all' if args.all else 'top ' + str(args.top)} settings by validation "
          f"{metric}\n{top}")
    return 0


def _test(args) -> int:
    from jaxhp import _job, _runs

    out = Path(args.dir)
    try:
        cfg = _runs.read_config(out)
        result = _load_result(out)
        job = _job.build(cfg, Path.cwd())
    except (OSError, ValueError) as e:
        return _fail("test", str(e))
    if result.test_reads and not args.again:
        first = result.test_reads[0]
        return _fail("test", f"the test split of {out} was already read ({first['time']}: "
                     + ", ".join(f"{k} {v:.4f}" for k, v in first["metrics"].items())
                     + "); a second look turns it into a validation set. Pass --again if "
                     "you really mean it", 1)
    report = result.evaluate_test(job.metric, job.mode, model=job.model, split=job.split,
                                  allow_repeat=args.again)
    result.save(out / _runs.RESULT, overwrite=True)
    from jaxhp._io import atomic_write_json

    atomic_write_json(out / "test.json", result.test_reads)
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    _runs.write_report(result, job.search, job.metric, job.mode, out, plots)
    sel = report.selection
    print(f"{out}: setting {sel.index} (best mean validation {sel.metric}: {sel.value:.4f})")
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in report.metrics.items())
          + (" (refit on all the cross-validation data; " if result.n_folds > 1 else " (")
          + f"mean over {result.n_seeds} seed(s); read {len(result.test_reads)} "
          "time(s), recorded in result.json and test.json)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxhp`` console script."""
    parser = argparse.ArgumentParser(
        prog="jaxhp", description="jaxhp: train many models at once and choose their "
        "hyperparameters on a validation split, then report the chosen setting once on "
        "the test split.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="sweep hyperparameters on a bundled dataset, select on validation, "
        "report on test once",
        description="Trains every hyperparameter setting of a quasi-random space with "
        "several seeds as one compiled program, selects the setting with the best mean "
        "validation score and evaluates it once on the test split.")
    demo.add_argument("--task", choices=("diabetes", "digits"), default="diabetes",
                      help="diabetes: ridge regression (learning rate x L2), compared with "
                      "scikit-learn's RidgeCV; digits: an MLP classifier (learning rate x "
                      "weight decay x dropout)")
    demo.add_argument("--settings", type=_positive_int, default=None,
                      help="hyperparameter settings to try (default 1024 for diabetes, 32 "
                      "for digits)")
    demo.add_argument("--seeds", type=_positive_int, default=3,
                      help="random seeds per setting: the score of a setting is its mean "
                      "over the seeds (default 3)")
    demo.add_argument("--steps", type=_positive_int, default=None,
                      help="training steps per model (default 500 diabetes, 300 digits)")
    demo.add_argument("--seed", type=int, default=0,
                      help="base random seed of the data split and the training keys")
    _add_run_commands(sub)
    args = parser.parse_args(argv)
    if args.command != "demo":
        return {"sweep": _sweep, "show": _show, "test": _test}[args.command](args)
    key = jax.random.key(args.seed)
    if args.task == "diabetes":
        n = 1024 if args.settings is None else args.settings
        out = demo_diabetes(n, args.seeds, args.steps or 500, key)
    else:
        n = 32 if args.settings is None else args.settings
        out = demo_digits(n, args.seeds, args.steps or 300, key)
    _print(out, n, args.seeds)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
