"""Command line: ``jaxhp demo`` runs the whole workflow end to end.

Set hyperparameters -> train (one compiled program for the whole population)
-> select on validation -> report on test, once.
"""

from __future__ import annotations

import argparse
import sys
import time

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
    args = parser.parse_args(argv)
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
