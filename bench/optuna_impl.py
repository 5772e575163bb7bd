"""Optuna's TPE sampler driving the jitted single-run trainer (one trial = one setting).

TPE picks its own settings from the same log-uniform ranges (it is a
sequential, adaptive search); its per-trial cost grows with the number of
finished trials, so a rate measured on ``n_timed`` trials and extrapolated to
more is optimistic for Optuna.
"""

from __future__ import annotations

import math
import time

import jax
import numpy as np

from bench.common import optional


def tpe(task, n: int, n_timed: int) -> dict:
    optuna = optional("optuna")
    from bench import jax_impls

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trainer = jax_impls.single_trainer(task)
    lows = {"ridge": ((1e-3, 1.0), (1e-5, 1.0)), "mlp": ((1e-4, 1e-1), (1e-6, 1e-1))}[task.name]
    a, b = task.arrays(1)
    t0 = time.perf_counter()
    trainer.lower(a[0], b[0]).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(trainer(a[0], b[0]))
    sign = 1.0 if task.mode == "min" else -1.0

    def objective(trial):
        lr = trial.suggest_float("lr", *lows[0], log=True)
        other = trial.suggest_float("b", *lows[1], log=True)
        v = float(jax.block_until_ready(trainer(np.float32(lr), np.float32(other)))[1])
        return sign * v if math.isfinite(v) else 1e30

    k = min(n, n_timed)
    study = optuna.create_study(direction="minimize",
                                sampler=optuna.samplers.TPESampler(seed=0))
    t0 = time.perf_counter()
    study.optimize(objective, n_trials=k)
    dt = time.perf_counter() - t0
    vals = [sign * t.value for t in study.trials if t.value is not None and t.value < 1e29]
    return {"n": n, "n_timed": k, "seconds": dt / k * n, "settings_per_s": k / dt,
            "compile_s": compile_s, "best_val": task.best(vals), "extrapolated": k < n,
            "vals": vals, "own_settings": True}
