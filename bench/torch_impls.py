"""PyTorch competitors: a sequential loop (``torch.optim``), and ``torch.func`` model
ensembling (``stack_module_state`` + ``vmap``) with the optimizer step written as a
pure function inside the ``vmap`` (SGD for ridge, AdamW for the MLP).

Same data, initialisation (the MLP starts from the hand-written JAX runs'
parameters), minibatch order, steps and settings as the JAX competitors;
float32; eager mode (no ``torch.compile``).
"""

from __future__ import annotations

import copy
import time

import numpy as np

from bench import tasks
from bench.common import optional


def _setup(task, device):
    torch = optional("torch")
    tr, va = task.split.train, task.split.val
    t = lambda a: torch.as_tensor(np.asarray(a)).to(device)
    xtr, ytr, xv, yv = t(tr["x"]), t(tr["y"]), t(va["x"]), t(va["y"])
    if task.name == "mlp":
        ytr, yv = ytr.long(), yv.long()
    return torch, xtr, ytr, xv, yv


def _base_model(torch, task, device):
    nn = torch.nn
    d = task.split.train["x"].shape[1]
    if task.name == "ridge":
        m = nn.Linear(d, 1)
        with torch.no_grad():
            m.weight.zero_()
            m.bias.zero_()
        return m.to(device)
    init = tasks.mlp_init()
    layers = []
    for i, p in enumerate(init):
        lin = nn.Linear(*p["w"].shape)
        with torch.no_grad():
            lin.weight.copy_(torch.as_tensor(p["w"].T))
            lin.bias.copy_(torch.as_tensor(p["b"]))
        layers.append(lin)
        if i < len(init) - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(device)


def _pick_threads(torch, probe) -> int:
    """The faster intra-op thread count (1 or all cores) for a short untimed probe.

    Eager PyTorch on tiny tensors runs an OpenMP barrier per op; when another
    process holds a core, those barriers stall for a scheduler time slice, so one
    thread can beat two by 10-100x. Both are tried; the faster is kept.
    """
    import os

    probe()  # warm-up: first calls pay one-off costs
    best, best_t = None, float("inf")
    for th in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(th)
        t0 = time.perf_counter()
        probe()
        dt = time.perf_counter() - t0
        if dt < best_t:
            best, best_t = th, dt
    torch.set_num_threads(best)
    return best


def _sync(torch, device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def loop(task, n: int, n_timed: int, device: str = "cpu") -> dict:
    """A Python loop over settings, each a standard PyTorch training loop."""
    torch, xtr, ytr, xv, yv = _setup(task, device)
    lr, b = task.arrays(n)
    k = min(n, n_timed)
    base = _base_model(torch, task, device)
    idx = torch.as_tensor(tasks.mlp_batches()).long().to(device) if task.name == "mlp" else None
    ce = torch.nn.functional.cross_entropy

    def one(i, steps=task.steps):
        model = copy.deepcopy(base)
        if task.name == "ridge":
            opt = torch.optim.SGD(model.parameters(), lr=float(lr[i]))
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=float(lr[i]),
                                    weight_decay=float(b[i]))
        losses = []
        for s in range(steps):
            opt.zero_grad(set_to_none=True)
            if task.name == "ridge":
                r = model(xtr).squeeze(-1) - ytr
                loss = 0.5 * torch.mean(r * r) + 0.5 * float(b[i]) * torch.sum(
                    model.weight * model.weight)
            else:
                j = idx[s]
                loss = ce(model(xtr[j]), ytr[j])
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        with torch.no_grad():
            torch.stack(losses)
            if task.name == "ridge":
                v = torch.mean((model(xv).squeeze(-1) - yv) ** 2)
            else:
                v = (model(xv).argmax(-1) == yv).float().mean()
        _sync(torch, device)
        return float(v)

    threads = _pick_threads(torch, lambda: one(0, 30)) if device == "cpu" else None
    one(0)
    t0 = time.perf_counter()
    vals = [one(i) for i in range(k)]
    dt = time.perf_counter() - t0
    return {"n": n, "n_timed": k, "seconds": dt / k * n, "settings_per_s": k / dt,
            "compile_s": 0.0, "best_val": task.best(vals), "extrapolated": k < n,
            "vals": vals, "device": str(device), "threads": threads}


def func_ensemble(task, n: int, n_timed: int | None = None, device: str = "cpu") -> dict:
    """``torch.func`` ensembling: ``vmap`` of a functional training step over stacked models."""
    torch, xtr, ytr, xv, yv = _setup(task, device)
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    k = n if n_timed is None else min(n, n_timed)
    lr_all, b_all = task.arrays(n)
    lr = torch.as_tensor(lr_all[:k]).to(device)
    b = torch.as_tensor(b_all[:k]).to(device)
    base = _base_model(torch, task, device)
    t_setup = time.perf_counter()
    params, _ = stack_module_state([copy.deepcopy(base) for _ in range(k)])
    params = {name: p.detach() for name, p in params.items()}
    setup_s = time.perf_counter() - t_setup
    meta = copy.deepcopy(base).to("meta")
    ce = torch.nn.functional.cross_entropy

    if task.name == "ridge":
        def loss_fn(p, l2):
            r = functional_call(meta, p, (xtr,)).squeeze(-1) - ytr
            return 0.5 * torch.mean(r * r) + 0.5 * l2 * torch.sum(p["weight"] ** 2)

        def step(p, lr_, l2):
            g, value = grad_and_value(loss_fn)(p, l2)
            return {name: p[name] - lr_ * g[name] for name in p}, value

        vstep = vmap(step, in_dims=(0, 0, 0))

        def val_fn(p):
            return torch.mean((functional_call(meta, p, (xv,)).squeeze(-1) - yv) ** 2)

        def train(steps=task.steps):
            p, losses = params, []
            for _ in range(steps):
                p, value = vstep(p, lr, b)
                losses.append(value)
            return p, torch.stack(losses)
    else:
        idx = torch.as_tensor(tasks.mlp_batches()).long().to(device)
        b1, b2, eps = 0.9, 0.999, 1e-8

        def loss_fn(p, x, y):
            return ce(functional_call(meta, p, (x,)), y)

        def step(p, m, v, lr_, wd, x, y, c1, c2):
            g, value = grad_and_value(loss_fn)(p, x, y)
            new_p, new_m, new_v = {}, {}, {}
            for name in p:
                new_m[name] = b1 * m[name] + (1 - b1) * g[name]
                new_v[name] = b2 * v[name] + (1 - b2) * g[name] * g[name]
                upd = (new_m[name] / c1) / (torch.sqrt(new_v[name] / c2) + eps)
                new_p[name] = p[name] - lr_ * (upd + wd * p[name])
            return new_p, new_m, new_v, value

        vstep = vmap(step, in_dims=(0, 0, 0, 0, 0, None, None, None, None))

        def val_fn(p):
            return (functional_call(meta, p, (xv,)).argmax(-1) == yv).float().mean()

        def train(steps=task.steps):
            p = params
            m = {name: torch.zeros_like(x) for name, x in p.items()}
            v = {name: torch.zeros_like(x) for name, x in p.items()}
            losses = []
            for s in range(steps):
                t = s + 1
                j = idx[s]
                p, m, v, value = vstep(p, m, v, lr, b, xtr[j], ytr[j],
                                       1 - b1 ** t, 1 - b2 ** t)
                losses.append(value)
            return p, torch.stack(losses)

    threads = None
    if device == "cpu":
        with torch.no_grad():
            threads = _pick_threads(torch, lambda: train(10))
    t0 = time.perf_counter()
    with torch.no_grad():
        p, _ = train()
        vals = vmap(val_fn)(p)
    _sync(torch, device)
    dt = time.perf_counter() - t0
    vals = vals.cpu().numpy().tolist()
    return {"n": n, "n_timed": k, "seconds": dt / k * n, "settings_per_s": k / dt,
            "compile_s": 0.0, "setup_s": setup_s, "best_val": task.best(vals),
            "extrapolated": k < n, "vals": vals, "device": str(device), "threads": threads}
