"""The JAX competitors, written the way a JAX user would write them, and jaxhp.

Hand-written runs compute what jaxhp's default sweep records: the training
loss of every step (the curve) and the final validation metric; the
optimizer is built inside the traced function from traced hyperparameters
(no recompilation per setting). ``variant="val_only"`` drops the curve (XLA
then removes the loss computation: the leanest possible program).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench import tasks


# ----------------------------------------------------------------- ridge
def _ridge_fns(task):
    tr, va = task.split.train, task.split.val
    xtr, ytr = jnp.asarray(tr["x"]), jnp.asarray(tr["y"])
    xv, yv = jnp.asarray(va["x"]), jnp.asarray(va["y"])
    d = xtr.shape[1]

    def loss(p, l2):
        w, b = p
        return 0.5 * jnp.mean((xtr @ w + b - ytr) ** 2) + 0.5 * l2 * jnp.sum(w ** 2)

    def init():
        return (jnp.zeros((d,), jnp.float32), jnp.zeros((), jnp.float32))

    def step(p, lr, l2):
        value, g = jax.value_and_grad(loss)(p, l2)
        return jax.tree_util.tree_map(lambda a, b: a - lr * b, p, g), value

    def val_metric(p):
        w, b = p
        return jnp.mean((xv @ w + b - yv) ** 2)

    def run(lr, l2):
        p, losses = jax.lax.scan(lambda p, _: step(p, lr, l2), init(), None,
                                 length=task.steps)
        return losses, val_metric(p)

    return init, step, val_metric, run


# ------------------------------------------------------------------- mlp
def _mlp_fns(task):
    tr, va = task.split.train, task.split.val
    xtr, ytr = jnp.asarray(tr["x"]), jnp.asarray(tr["y"])
    xv, yv = jnp.asarray(va["x"]), jnp.asarray(va["y"])
    idx_all = jnp.asarray(tasks.mlp_batches())
    p0 = jax.tree_util.tree_map(jnp.asarray, tasks.mlp_init())

    def logits(params, x):
        for layer in params[:-1]:
            x = jax.nn.relu(x @ layer["w"] + layer["b"])
        return x @ params[-1]["w"] + params[-1]["b"]

    def loss(params, idx):
        lg = logits(params, xtr[idx])
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(lg, ytr[idx]))

    def init(lr, wd):
        return p0, optax.adamw(lr, weight_decay=wd).init(p0)

    def step(params, opt_state, idx, lr, wd):
        value, g = jax.value_and_grad(loss)(params, idx)
        updates, opt_state = optax.adamw(lr, weight_decay=wd).update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    def val_metric(params):
        return jnp.mean((jnp.argmax(logits(params, xv), -1) == yv).astype(jnp.float32))

    def run(lr, wd):
        def body(carry, idx):
            params, opt_state = carry
            params, opt_state, value = step(params, opt_state, idx, lr, wd)
            return (params, opt_state), value

        (params, _), losses = jax.lax.scan(body, init(lr, wd), idx_all)
        return losses, val_metric(params)

    return init, step, val_metric, run


def _fns(task):
    return _ridge_fns(task) if task.name == "ridge" else _mlp_fns(task)


def _result(task, n, n_timed, seconds, compile_s, vals, **extra):
    per = seconds / n_timed
    out = {"n": n, "n_timed": n_timed, "seconds": per * n, "settings_per_s": 1.0 / per,
           "compile_s": compile_s, "best_val": task.best(vals),
           "extrapolated": n_timed < n, "vals": np.asarray(vals, np.float64).tolist()}
    out.update(extra)
    return out


# ------------------------------------------------------------ competitors
def step_loop(task, n: int, n_timed: int) -> dict:
    """A Python loop over settings, each a Python loop of a jitted step."""
    init, step, val_metric, _ = _fns(task)
    lr, b = task.arrays(n)
    k = min(n, n_timed)
    if task.name == "ridge":
        jstep = jax.jit(step)
        t0 = time.perf_counter()
        jstep.lower(init(), lr[0], b[0]).compile()
        compile_s = time.perf_counter() - t0
    else:
        jstep = jax.jit(step)
        idx = jnp.asarray(tasks.mlp_batches())
        p, o = init(lr[0], b[0])
        t0 = time.perf_counter()
        jstep.lower(p, o, idx[0], lr[0], b[0]).compile()
        compile_s = time.perf_counter() - t0
    jval = jax.jit(val_metric)

    def one(i):
        losses = []
        if task.name == "ridge":
            p = init()
            for _ in range(task.steps):
                p, value = jstep(p, lr[i], b[i])
                losses.append(value)
        else:
            p, o = init(lr[i], b[i])
            for t in range(task.steps):
                p, o, value = jstep(p, o, idx[t], lr[i], b[i])
                losses.append(value)
        return jax.block_until_ready((jnp.stack(losses), jval(p)))[1]

    one(0)  # warm every cache (stack, val) outside the timing
    t0 = time.perf_counter()
    vals = [float(one(i)) for i in range(k)]
    dt = time.perf_counter() - t0
    return _result(task, n, k, dt, compile_s, vals)


def scan_loop(task, n: int, n_timed: int) -> dict:
    """A Python loop over settings, each one jitted ``lax.scan`` of all steps."""
    *_, run = _fns(task)
    lr, b = task.arrays(n)
    k = min(n, n_timed)
    jrun = jax.jit(run)
    t0 = time.perf_counter()
    jrun.lower(lr[0], b[0]).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(jrun(lr[0], b[0]))
    t0 = time.perf_counter()
    vals = [float(jax.block_until_ready(jrun(lr[i], b[i]))[1]) for i in range(k)]
    dt = time.perf_counter() - t0
    return _result(task, n, k, dt, compile_s, vals)


def single_trainer(task):
    """The jitted single-run trainer ``(lr, b) -> (losses, val)`` (for Optuna)."""
    return jax.jit(_fns(task)[3])


class Prepared:
    """A compiled competitor whose timed call can be interleaved with others'."""

    def __init__(self, call, finish, compile_s, peak_rss):
        self.call, self.finish = call, finish
        self.compile_s, self.peak_rss = compile_s, peak_rss
        self.best, self.out = float("inf"), None

    def time_once(self) -> None:
        t0 = time.perf_counter()
        out = self.call()
        dt = time.perf_counter() - t0
        if dt < self.best:
            self.best, self.out = dt, out


def prepare_vmap(task, n: int, variant: str = "curve", devices=None) -> Prepared:
    """A hand-written ``jit(vmap(scan))`` over all ``n`` settings at once.

    With several ``devices``, the settings axis is sharded over them
    (``Mesh`` + ``NamedSharding``); ``n`` is padded to a multiple.
    """
    from bench.common import PeakRSS

    *_, run = _fns(task)
    if variant == "val_only":
        fn = jax.vmap(lambda a, b: run(a, b)[1])
    else:
        fn = jax.vmap(run)
    lr, b = task.arrays(n)
    devices = list(devices or jax.local_devices()[:1])
    if len(devices) > 1:
        from jax.sharding import Mesh, NamedSharding
        from jax.sharding import PartitionSpec as P

        pad = (-n) % len(devices)
        lr, b = np.pad(lr, (0, pad), mode="edge"), np.pad(b, (0, pad), mode="edge")
        pop = NamedSharding(Mesh(np.array(devices), ("pop",)), P("pop"))
        lr, b = jax.device_put(lr, pop), jax.device_put(b, pop)
        jfn = jax.jit(fn, in_shardings=(pop, pop))
    else:
        lr, b = jax.device_put(lr, devices[0]), jax.device_put(b, devices[0])
        jfn = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jfn.lower(lr, b).compile()
    compile_s = time.perf_counter() - t0
    with PeakRSS() as mem:
        jax.block_until_ready(compiled(lr, b))

    def finish(p: Prepared) -> dict:
        out = p.out
        vals = np.asarray(out if variant == "val_only" else out[1])[:n]
        return _result(task, n, n, p.best, compile_s, vals, peak_rss=p.peak_rss,
                       n_devices=len(devices))

    # Timed: the call and the copy of its outputs to the host (where selection happens).
    return Prepared(lambda: jax.device_get(compiled(lr, b)), finish, compile_s, mem.peak)


def prepare_jaxhp(task, n: int, devices=None, **kwargs) -> Prepared:
    """``jaxhp.sweep`` over the task's space; the first (untimed) call compiles.

    Timed: the whole warm ``sweep()`` call (settings from the space, stacking,
    transfers and result building included); also kept: the engine's own
    ``run_seconds`` (the compiled calls only).
    """
    import jaxhp
    from bench.common import PeakRSS

    space = task.space(n)
    kw = dict(key=jax.random.key(0), base=task.base, progress=False, devices=devices)
    kw.update(kwargs)
    with PeakRSS() as mem:
        first = jaxhp.sweep(task.model, space, task.split, **kw)
    runs: list[float] = []

    def call():
        res = jaxhp.sweep(task.model, space, task.split, **kw)
        runs.append(res.run_seconds)
        return res

    def finish(p: Prepared) -> dict:
        res = p.out
        ok = res.setting_status() == "ok"
        vals = np.where(ok, res.metric(task.metric)[:, 0], np.nan)
        g = res.groups[0]
        return _result(task, n, n, p.best, first.compile_seconds, vals,
                       run_seconds=min(runs), engine_settings_per_s=n / min(runs),
                       chunk_size=g.chunk_size, n_chunks=g.n_chunks,
                       compiled_programs=first.compile_count, peak_rss=p.peak_rss,
                       n_devices=res.meta["n_devices"], diverged=int(np.sum(~ok)))

    return Prepared(call, finish, first.compile_seconds, mem.peak)


def interleaved(prepared: dict, reps: int) -> dict:
    """Times every prepared competitor ``reps`` times, round-robin (so that a slow spell
    of the machine hits them all alike); best time of each."""
    for _ in range(max(1, reps)):
        for p in prepared.values():
            p.time_once()
    return {k: dict(p.finish(p), reps=reps) for k, p in prepared.items()}
