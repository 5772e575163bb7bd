"""scikit-learn competitors: ``GridSearchCV`` with a predefined train/validation split
(``PredefinedSplit``: one fit per setting, scored on the same validation part),
``n_jobs=-1`` (all cores), ``refit=False``.

- ridge: ``SGDRegressor(penalty="l2", alpha=l2, learning_rate="constant",
  eta0=lr, max_iter=500, tol=None)``: 500 epochs of per-example SGD on the
  same objective (``0.5 * squared error + 0.5 * alpha * |w|^2``).
- mlp: ``MLPClassifier((128, 128), solver="adam", alpha=wd,
  learning_rate_init=lr, batch_size=128)`` for as many epochs as make ~300
  minibatch steps (no early stopping). ``alpha`` is an L2 penalty, not
  decoupled weight decay: the closest scikit-learn has.
"""

from __future__ import annotations

import math
import os
import time
import warnings

import numpy as np

from bench.common import optional


def _estimator(task):
    if task.name == "ridge":
        from sklearn.linear_model import SGDRegressor

        return SGDRegressor(penalty="l2", learning_rate="constant", max_iter=task.steps,
                            tol=None, random_state=0), ("eta0", "alpha"), None
    from sklearn.neural_network import MLPClassifier

    from bench import tasks

    n = task.split.train["x"].shape[0]
    epochs = max(1, round(task.steps / math.ceil(n / tasks.MLP_BATCH)))
    est = MLPClassifier(hidden_layer_sizes=(tasks.MLP_WIDTH,) * tasks.MLP_DEPTH,
                        activation="relu", solver="adam", batch_size=tasks.MLP_BATCH,
                        max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1,
                        early_stopping=False, shuffle=True, random_state=0)
    return est, ("learning_rate_init", "alpha"), epochs


def grid_search(task, n: int, n_timed: int) -> dict:
    """``GridSearchCV`` over the first ``min(n, n_timed)`` settings; per-setting cost
    extrapolated to ``n``."""
    optional("sklearn")
    from sklearn.model_selection import GridSearchCV, PredefinedSplit

    est, (lr_name, b_name), epochs = _estimator(task)
    lr, b = task.arrays(n)
    k = min(n, n_timed)
    grid = [{lr_name: [float(lr[i])], b_name: [float(b[i])]} for i in range(k)]
    tr, va = task.split.train, task.split.val
    x = np.concatenate([tr["x"], va["x"]])
    y = np.concatenate([tr["y"], va["y"]])
    fold = np.r_[np.full(len(tr["x"]), -1), np.zeros(len(va["x"]), int)]
    scoring = "neg_mean_squared_error" if task.name == "ridge" else "accuracy"
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # loky workers: overflow warnings
    search = GridSearchCV(est, grid, cv=PredefinedSplit(fold), scoring=scoring, n_jobs=-1,
                          refit=False, error_score=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Warm the worker pool (process start-up is not the per-setting cost).
        GridSearchCV(est, grid[:2], cv=PredefinedSplit(fold), scoring=scoring, n_jobs=-1,
                     refit=False, error_score=np.nan).fit(x, y)
        t0 = time.perf_counter()
        search.fit(x, y)
        dt = time.perf_counter() - t0
    scores = np.asarray(search.cv_results_["mean_test_score"], np.float64)
    vals = -scores if task.name == "ridge" else scores
    return {"n": n, "n_timed": k, "seconds": dt / k * n, "settings_per_s": k / dt,
            "compile_s": 0.0, "best_val": task.best(vals), "extrapolated": k < n,
            "vals": vals.tolist(), "epochs": epochs if epochs else task.steps,
            "n_jobs": os.cpu_count(), "failed_fits": int(np.sum(~np.isfinite(vals)))}
