"""Hypergradients: the gradient of a validation objective after training.

A training run is a pure, differentiable function of its tunable
hyperparameters (:func:`jaxhp._train.run_pure`), so the validation objective
after training is too. :func:`hypergradient` differentiates it three ways:

- ``"reverse"``: ``jax.grad`` through the ``lax.scan`` of the training steps
  (Maclaurin et al. 2015; Franceschi et al. 2017), with rematerialisation:
  ``remat=k`` checkpoints every ``k`` steps, so the backward pass stores
  ``steps / k`` carries and recomputes ``k`` steps at a time.
- ``"forward"``: one ``jax.jvp`` per hyperparameter, ``vmap``ped over the
  tangent basis (Franceschi et al. 2017): memory independent of the number of
  steps, cost proportional to the number of hyperparameters.
- ``"implicit"``: the implicit function theorem at the trained parameters
  ``w*`` (Lorraine et al. 2020): ``dF/dz = dF/dz|_w - (d/dz grad_w L)^T H^-1
  grad_w F``, with the inverse-Hessian-vector product solved by conjugate
  gradients or a truncated Neumann series, Hessian-vector products by
  ``jvp`` of ``grad``. Exact only if ``w*`` minimises the training loss.

A stateful model (``has_state=True``, e.g. BatchNorm) works in reverse and
forward modes: its state is carried through the steps like the parameters and
differentiated through (the validation objective reads the final state). The
implicit mode is refused for it: the trained state is a function of the whole
trajectory, not of a stationary point of the training loss.

Coordinates: a field declared ``log=True`` is differentiated with respect to
the *logarithm* of its value (``d F / d log(value) = value * dF/dvalue``);
every other field with respect to its value.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxhp._data import Split, part_size
from jaxhp._hparams import HParams, did_you_mean
from jaxhp._model import Model, loss_fn, metric_names, metrics_fn
from jaxhp._train import LoopConfig, check_key, resolve_loop, run_pure, validate

MODES = ("reverse", "forward", "implicit")
SOLVERS = ("cg", "neumann")
# Metrics that are piecewise constant in the parameters: their gradient is zero.
_PIECEWISE = ("accuracy", "acc", "error_rate", "f1", "precision", "recall", "auc")


class Hypergradient(NamedTuple):
    """The validation objective after training and its hypergradient.

    Attributes:
      value: the objective on the validation part after training (NaN if the
        run diverged).
      grad: ``{field: derivative}``. For a field in ``log_fields`` the
        derivative is with respect to the field's *logarithm*,
        ``d value / d log(hp.field)``; otherwise ``d value / d hp.field``.
        NaN if the run diverged.
      log_fields: the fields differentiated in log space.
      point: ``{field: value}`` of the setting the gradient was taken at.
      info: diagnostics: ``diverged_at`` (``-1`` healthy); in implicit mode
        also ``stationarity`` (norm of the training-loss gradient at the
        trained parameters: the implicit gradient is exact when it is 0) and
        ``solver_residual`` (relative residual of the linear solve).

    Example:
      >>> hg = hypergradient(model, hp, split, key=key, objective="mse")
      >>> hg.grad["l2"] if "l2" in hg.log_fields else None  # d mse / d log(l2)
    """

    value: jax.Array
    grad: dict[str, jax.Array]
    log_fields: tuple[str, ...]
    point: dict[str, jax.Array]
    info: dict[str, jax.Array]

    def natural(self) -> dict[str, jax.Array]:
        """Derivatives with respect to the values themselves (``d value / d hp.field``).

        Example:
          >>> hg.natural()["l2"]  # == hg.grad["l2"] / hp.l2 for a log field
        """
        return {n: g / self.point[n] if n in self.log_fields else g
                for n, g in self.grad.items()}


def check_stateful(model: Model, mode: str) -> None:
    """Refuses the implicit mode for a model with state (the one mode that needs the
    trained parameters to be a stationary point of a loss of the parameters alone)."""
    if mode == "implicit" and model.has_state:
        raise ValueError(
            f"`mode`='implicit' is not available for model {model.name!r}, which has "
            "state (has_state=True, e.g. BatchNorm running statistics): the implicit "
            "function theorem needs the trained parameters to minimise a training loss "
            "of the parameters alone, but the trained state is a function of the whole "
            "training trajectory (a moving average over its minibatches), so there is "
            "no such stationary point. Use mode='reverse' or mode='forward', which "
            "differentiate through the training loop, state included")


# --------------------------------------------------------------- coordinates
def to_coords(hp: HParams, wrt: Sequence[str]) -> dict[str, jax.Array]:
    """The coordinates of ``hp`` that hypergradients use: log for log fields."""
    fields = type(hp).fields()
    return {n: jnp.log(jnp.asarray(getattr(hp, n))) if fields[n].log
            else jnp.asarray(getattr(hp, n)) for n in wrt}


def from_coords(hp: HParams, z: dict[str, jax.Array]) -> HParams:
    """``hp`` with the fields in ``z`` set from their coordinates (traceable)."""
    fields = type(hp).fields()
    leaves, treedef = jax.tree_util.tree_flatten(hp)
    new = []
    for name, leaf in zip(type(hp).tunable_names(), leaves):
        if name in z:
            v = jnp.exp(z[name]) if fields[name].log else z[name]
            new.append(jnp.asarray(v))  # z's dtype: the tunable dtype, from to_coords
        else:
            new.append(leaf)
    # a padded group's per-member sizes follow the tunables: kept
    return jax.tree_util.tree_unflatten(treedef, new + leaves[len(new):])


# ---------------------------------------------------------------- validation
def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"`mode`={mode!r}: must be one of {list(MODES)}"
                         f"{did_you_mean(str(mode), MODES)}. 'reverse' differentiates "
                         "through the training loop (any number of hyperparameters), "
                         "'forward' runs one JVP per hyperparameter (memory independent "
                         "of the steps), 'implicit' uses the implicit function theorem "
                         "at converged parameters")


def resolve_wrt(hp_cls: type[HParams], wrt: str | Sequence[str] | None) -> tuple[str, ...]:
    """Checks ``wrt`` against the class; ``None`` means every continuous tunable field."""
    fields = hp_cls.fields()
    continuous = tuple(n for n in hp_cls.tunable_names()
                       if not fields[n].integer and fields[n].choices is None)
    if wrt is None:
        if not continuous:
            raise ValueError(f"{hp_cls.__name__} has no continuous tunable field to "
                             "differentiate with respect to")
        return continuous
    names = (wrt,) if isinstance(wrt, str) else tuple(wrt)
    if not names:
        raise ValueError("`wrt` is empty: name at least one tunable field, or pass "
                         "None for all of them")
    problems = []
    for n in names:
        if n not in fields:
            problems.append(f"`{n}` is not a field of {hp_cls.__name__}"
                            f"{did_you_mean(n, fields)}; tunable fields are "
                            f"{list(hp_cls.tunable_names())}")
        elif fields[n].is_static:
            problems.append(f"`{n}` is a static field of {hp_cls.__name__}: it is part "
                            "of the program's structure, so it has no gradient; "
                            f"differentiate with respect to tunable fields "
                            f"{list(hp_cls.tunable_names())}, and sweep `{n}`")
        elif n not in continuous:
            problems.append(f"`{n}` is an integer or a choice among values: it has no "
                            "gradient; sweep it instead")
    if len(set(names)) != len(names):
        problems.append(f"`wrt` names a field twice: {list(names)}")
    if problems:
        raise ValueError("`wrt`: " + "; ".join(problems))
    return names


def check_objective(model: Model, hp: HParams, split: Split, objective) -> None:
    """Checks a metric name against the model's validation metrics."""
    if callable(objective):
        return
    if not isinstance(objective, str):
        raise TypeError(f"`objective`={objective!r}: must be a validation metric name "
                        "or a callable(params, val_part, hp) -> scalar (a stateful "
                        "model: callable(params, state, val_part, hp))")
    names = metric_names(model, hp, split.val)
    if objective not in names:
        raise ValueError(f"`objective`={objective!r}: not a validation metric of "
                         f"{model.name}{did_you_mean(objective, names)}; metrics are "
                         f"{names}, or pass a callable(params, val_part, hp)")
    if objective in _PIECEWISE:
        raise ValueError(f"`objective`={objective!r} is piecewise constant in the "
                         "hyperparameters: its gradient is zero almost everywhere. "
                         "Differentiate a smooth surrogate such as 'loss' or 'ce'")


def resolve_remat(remat, steps: int) -> int | None:
    """``None``/``False``: no checkpointing; ``"auto"``: every ~sqrt(steps) steps."""
    if remat is None or remat is False:
        return None
    if remat == "auto":
        return math.ceil(math.sqrt(steps)) if steps >= 64 else None
    if not isinstance(remat, int) or isinstance(remat, bool) or remat < 1:
        raise ValueError(f"`remat`={remat!r}: must be None, 'auto' or a number of steps "
                         ">= 1 between checkpoints")
    return remat


class Solver(NamedTuple):
    """Settings of the implicit mode's linear solve (static)."""

    method: str = "cg"
    steps: int = 100
    damping: float = 0.0
    neumann_lr: float | None = None


def make_solver(method: str, steps: int, damping: float, neumann_lr) -> Solver:
    if method not in SOLVERS:
        raise ValueError(f"`solver`={method!r}: must be one of {list(SOLVERS)}"
                         f"{did_you_mean(str(method), SOLVERS)}")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"`solver_steps`={steps!r}: must be an integer >= 1")
    if not damping >= 0:
        raise ValueError(f"`damping`={damping!r}: must be >= 0")
    if neumann_lr is not None and not neumann_lr > 0:
        raise ValueError(f"`neumann_lr`={neumann_lr!r}: must be > 0 or None (estimated "
                         "from the largest Hessian eigenvalue)")
    return Solver(method, steps, float(damping), None if neumann_lr is None
                  else float(neumann_lr))


# ------------------------------------------------------------------ the maths
def objective_value(model: Model, objective, params, val_part, hp, state=None) -> jax.Array:
    """The objective after training: a metric's value, or ``objective(params, val_part,
    hp)`` (``objective(params, state, val_part, hp)`` for a stateful model)."""
    if callable(objective):
        if model.has_state:
            return jnp.asarray(objective(params, state, val_part, hp))
        return jnp.asarray(objective(params, val_part, hp))
    return metrics_fn(model, params, val_part, hp, state)[objective]


def _tree_vdot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y) for x, y in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _value_fn(model, cfg, objective):
    def f(z, hp, train_part, val_part, key):
        hp = from_coords(hp, z)
        run = run_pure(model, cfg, hp, train_part, val_part, key)
        v = objective_value(model, objective, run.state.params, val_part, hp,
                            run.state.model_state)
        return jnp.where(run.diverged_at < 0, v, jnp.nan), run.diverged_at
    return f


def _nan_if(bad, tree):
    return jax.tree_util.tree_map(lambda g: jnp.where(bad, jnp.nan, g), tree)


def _solve(hvp, b, solver: Solver):
    """Solves ``H x = b`` (pytrees) by CG or a truncated Neumann series."""
    op = (lambda v: jax.tree_util.tree_map(lambda h, x: h + solver.damping * x, hvp(v), v)) \
        if solver.damping else hvp
    if solver.method == "cg":
        x, _ = jax.scipy.sparse.linalg.cg(op, b, maxiter=solver.steps, tol=1e-10)
        return x
    if solver.neumann_lr is not None:
        alpha = jnp.asarray(solver.neumann_lr,
                            jnp.result_type(*jax.tree_util.tree_leaves(b)))
    else:  # 1 / largest eigenvalue, by power iteration from b
        def power(v, _):
            hv = op(v)
            return jax.tree_util.tree_map(lambda x: x / (jnp.sqrt(_tree_vdot(hv, hv))
                                                         + 1e-30), hv), None
        v, _ = jax.lax.scan(power, b, None, length=30)
        alpha = 1.0 / (_tree_vdot(v, op(v)) + 1e-30)

    def term(carry, _):  # p_j = (I - alpha H)^j b, acc = sum_j p_j
        p, acc = carry
        p = jax.tree_util.tree_map(lambda x, h: x - alpha * h, p, op(p))
        return (p, jax.tree_util.tree_map(jnp.add, acc, p)), None

    (_, acc), _ = jax.lax.scan(term, (b, b), None, length=solver.steps)
    return jax.tree_util.tree_map(lambda a: alpha * a, acc)


def value_and_grad_fn(model: Model, cfg: LoopConfig, objective, mode: str,
                      solver: Solver | None = None) -> Callable:
    """``f(z, hp, train_part, val_part, key) -> (value, grad, info)``, pure and vmappable.

    ``z`` is a dict of coordinates (see :func:`to_coords`); ``grad`` has its
    structure. Internal building block of :func:`hypergradient` and
    :func:`jaxhp._search.tune.tune_gradient`.
    """
    f = _value_fn(model, cfg, objective)
    solver = Solver() if solver is None else solver

    if mode == "reverse":
        def reverse(z, hp, train_part, val_part, key):
            (v, dead), g = jax.value_and_grad(f, has_aux=True)(z, hp, train_part,
                                                               val_part, key)
            return v, _nan_if(dead >= 0, g), {"diverged_at": dead}
        return reverse

    if mode == "forward":
        def forward(z, hp, train_part, val_part, key):
            names = sorted(z)
            basis = {n: jnp.eye(len(names), dtype=jnp.asarray(z[n]).dtype)[i]
                     for i, n in enumerate(names)}
            fz = lambda z: f(z, hp, train_part, val_part, key)
            v, dv, dead = jax.vmap(lambda t: jax.jvp(fz, (z,), (t,), has_aux=True))(basis)
            g = {n: dv[i] for i, n in enumerate(names)}
            return v[0], _nan_if(dead[0] >= 0, g), {"diverged_at": dead[0]}
        return forward

    if mode != "implicit":
        check_mode(mode)
    check_stateful(model, mode)

    def implicit(z, hp, train_part, val_part, key):
        run = run_pure(model, cfg, from_coords(hp, z), train_part, val_part, key)
        w = jax.lax.stop_gradient(run.state.params)
        outer = lambda w, z: objective_value(model, objective, w, val_part, from_coords(hp, z))
        v, (gw, gz) = jax.value_and_grad(outer, argnums=(0, 1))(w, z)
        train_grad = lambda w, z: jax.grad(
            lambda w: loss_fn(model, w, train_part, from_coords(hp, z))[0])(w)
        hvp = lambda u: jax.jvp(lambda w: train_grad(w, z), (w,), (u,))[1]
        q = _solve(hvp, gw, solver)
        mixed = jax.grad(lambda z: _tree_vdot(q, train_grad(w, z)))(z)
        g = jax.tree_util.tree_map(lambda a, b: a - b, gz, mixed)
        r = jax.tree_util.tree_map(jnp.subtract, hvp(q), gw)
        tg = train_grad(w, z)
        info = {"diverged_at": run.diverged_at,
                "stationarity": jnp.sqrt(_tree_vdot(tg, tg)),
                "solver_residual": jnp.sqrt(_tree_vdot(r, r) / (_tree_vdot(gw, gw)
                                                                 + 1e-30))}
        bad = run.diverged_at >= 0
        return jnp.where(bad, jnp.nan, v), _nan_if(bad, g), info
    return implicit


@functools.partial(jax.jit, static_argnames=("model", "cfg", "objective", "mode", "solver"))
def _hypergradient_jit(model, cfg, objective, mode, solver, z, hp, train_part, val_part,
                       key):
    return value_and_grad_fn(model, cfg, objective, mode, solver)(z, hp, train_part,
                                                                   val_part, key)


def hypergradient(
    model: Model,
    hp: HParams,
    split: Split,
    *,
    key: jax.Array,
    wrt: str | Sequence[str] | None = None,
    objective: str | Callable = "loss",
    mode: str = "reverse",
    remat: int | str | None = "auto",
    solver: str = "cg",
    solver_steps: int = 100,
    damping: float = 0.0,
    neumann_lr: float | None = None,
) -> Hypergradient:
    """The validation objective after training, and its gradient w.r.t. hyperparameters.

    Trains ``hp`` exactly as :func:`jaxhp.train` does with the same ``key``
    (``hp.steps`` steps, minibatches, dropout and all), evaluates
    ``objective`` on the validation part, and differentiates that number with
    respect to the tunable fields in ``wrt``, through the whole run. The
    optimizer is built from the traced hyperparameters, so learning rate,
    momentum, L2 and weight decay are all differentiable.

    Args:
      model: the model's functions.
      hp: one hyperparameter setting.
      split: the data; ``train`` and ``val`` are read, never ``test``.
      key: the run's PRNG key (as in :func:`jaxhp.train`).
      wrt: a tunable field name or names; default every continuous tunable field.
      objective: a validation metric name (lower is better: ``"loss"``,
        ``"mse"``, ``"ce"``), or ``callable(params, val_part, hp) -> scalar``
        (for a model with ``has_state=True``: ``callable(params, state,
        val_part, hp)``, given the trained state).
      mode: ``"reverse"`` (grad through the training loop), ``"forward"``
        (one JVP per field, vmapped) or ``"implicit"`` (implicit function
        theorem at the trained parameters, for the model's loss on the whole
        training part without dropout; needs a run trained to convergence,
        see ``info["stationarity"]``; fields acting only through the
        optimizer, such as the learning rate, get 0). Forward mode through
        Adam is NaN if a gradient coordinate is exactly 0 at some step
        (``d sqrt(v)/dv`` is infinite at 0, times a zero tangent); an Adam
        built with ``eps_root=1e-30`` avoids it.
      remat: reverse mode's checkpointing: ``k`` stores the carry every ``k``
        steps and recomputes in between (memory ~ ``steps/k + k`` steps
        instead of ``steps``, ~1 extra forward pass); ``"auto"``: ``k =
        ceil(sqrt(steps))`` from 64 steps on; ``None``: store every step.
      solver, solver_steps, damping, neumann_lr: implicit mode's linear solve
        ``(H + damping I) x = b``: ``"cg"`` (conjugate gradients, at most
        ``solver_steps`` iterations; ``H`` must be positive definite: add
        ``damping`` for a non-convex loss) or ``"neumann"`` (``solver_steps`` terms
        of ``neumann_lr * sum_j (I - neumann_lr H)^j b``; ``neumann_lr``
        defaults to 1 / the largest eigenvalue, by power iteration).

    Returns:
      A :class:`Hypergradient`: ``value``, ``grad`` (for ``log=True`` fields
      with respect to the logarithm of the value; see
      :meth:`Hypergradient.natural`), ``log_fields``, ``point``, ``info``.

    Raises:
      ValueError: unknown or static field in ``wrt``, bad ``mode``, unknown
        metric, ``mode="implicit"`` for a model with state; plus the checks of
        :func:`jaxhp.train`.

    Example:
      >>> model = jaxhp.models.linear_regression(10)
      >>> hp = jaxhp.models.LinearHP(learning_rate=0.1, l2=1e-2, steps=200)
      >>> hg = hypergradient(model, hp, split, key=jax.random.key(0),
      ...                    wrt=("learning_rate", "l2"), objective="mse")
      >>> hg.value, hg.grad["l2"]  # d mse / d log(l2)
    """
    check_mode(mode)
    check_stateful(model, mode)
    key = check_key(key)
    validate(model, hp, split)
    if hp.batch_shape:
        raise ValueError(f"hypergradient() takes one setting, got a batch of shape "
                         f"{hp.batch_shape}; use tune_gradient for many starts")
    names = resolve_wrt(type(hp), wrt)
    check_objective(model, hp, split, objective)
    cfg = resolve_loop(hp, part_size(split.train), None, None)
    if mode == "reverse":
        cfg = cfg._replace(remat=resolve_remat(remat, cfg.steps))
    else:
        resolve_remat(remat, cfg.steps)
    slv = make_solver(solver, solver_steps, damping, neumann_lr)
    z = to_coords(hp, names)
    v, g, info = _hypergradient_jit(model, cfg, objective, mode, slv, z, hp, split.train,
                                    split.val, key)
    fields = type(hp).fields()
    return Hypergradient(v, {n: g[n] for n in names},
                         tuple(n for n in names if fields[n].log),
                         {n: jnp.asarray(getattr(hp, n)) for n in names}, info)
