"""One training run: ``init -> lax.scan(step) -> evaluate``, pure and vmappable.

:func:`run_pure` is the run as a pure function of ``(hp, train, val, key)``;
it knows nothing about sweeps, so the sweep engine simply ``vmap``s it. It is
:func:`start` (the initial carry) then :func:`advance` (the scan of steps),
which adaptive searches use to continue a run from its carried state.
:func:`train` is the user-facing, validated, jit-compiled single run.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxhp import _masking
from jaxhp._data import (
    Padded,
    Split,
    batch_from,
    batch_order,
    check_split,
    next_order,
    part_size,
)
from jaxhp._hparams import HParams, padded_size
from jaxhp._member_steps import own_steps, own_windows
from jaxhp._model import (
    Model,
    abstract_batch,
    abstract_init,
    check_model,
    init_fn,
    loss_fn,
    metrics_fn,
    model_loss,
)

# Key derivation: a run's randomness comes from its key only, split by role.
INIT, DATA, NOISE = 0, 1, 2


class TrainState(NamedTuple):
    """The learned state: step count, parameters, optimizer state and model state.

    Attributes:
      step: the number of steps taken.
      params: the trained parameters.
      opt_state: the Optax optimizer's state.
      model_state: the model's non-trained state (BatchNorm running
        statistics) for a model declared ``has_state=True``, else ``None``.

    Example:
      >>> run = jaxhp.train(model, hp, split, key=key)
      >>> run.state.params, run.state.model_state
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any = None


def learned(model: Model, state: TrainState):
    """What a user gets back as a member's trained parameters: ``params``, or the
    pair ``(params, model_state)`` for a stateful model (its one home)."""
    return (state.params, state.model_state) if model.has_state else state.params


def learned_shapes(model: Model, hp: HParams):
    """The shapes of :func:`learned` for setting ``hp`` (``jax.eval_shape``)."""
    params, state = abstract_init(model, hp)
    return (params, state) if model.has_state else params


def split_learned(model: Model, learned_params):
    """The inverse of :func:`learned`: ``(params, model_state)`` (``None`` when stateless)."""
    if model.has_state:
        params, state = learned_params
        return params, state
    return learned_params, None


class Run(NamedTuple):
    """The outcome of one training run (leaves gain a leading axis in a sweep).

    Attributes:
      state: the final :class:`TrainState` (frozen at the last finite state if
        the run diverged); ``state.model_state`` is the trained state of a
        model with ``has_state=True`` (BatchNorm statistics), else ``None``.
      train_loss: the objective on the whole training part at the end.
      val: the validation metrics at the end (a dict of scalars).
      loss_curve: the training loss per step (or per window of ``loss_every``
        steps, averaged); NaN from the step a run diverged. In a group that pads
        ``steps``, a member's curve has the group's length: NaN after its own
        last step (a window straddling it averages the member's steps only).
      val_curve: validation metrics after every ``eval_every`` steps (in a group
        that pads ``steps``: NaN after the member's own last step).
      diverged_at: the step at which the loss or parameters became non-finite,
        ``-1`` for a healthy run (``health="end"``: the run's last step, where a
        non-finite state or final training objective was found).
    """

    state: TrainState
    train_loss: jax.Array
    val: dict
    loss_curve: jax.Array
    val_curve: dict
    diverged_at: jax.Array

    @property
    def status(self) -> str:
        """``"ok"`` or ``"diverged"`` (for one, concrete run)."""
        return "diverged" if int(self.diverged_at) >= 0 else "ok"


class LoopConfig(NamedTuple):
    """Static settings of the training loop (not hyperparameters: no effect on results).

    ``remat``: when set to ``k``, the steps run as blocks of ``k`` steps, each
    under ``jax.checkpoint``: reverse-mode differentiation through the loop
    then stores only the carries at block boundaries and recomputes a block's
    steps during the backward pass (memory ~ ``steps / k + k`` steps' worth
    instead of ``steps``). The forward computation is unchanged.

    ``health``: how divergence is detected (:data:`HEALTH`). ``"step"``: every
    step's loss and new state; a diverging member is frozen at its last finite
    state. ``"end"``: nothing during training (no per-step loss is computed at
    all), the final state and training objective once at the end; needs
    ``loss_every`` off.
    """

    steps: int
    batch_size: int | None
    eval_every: int | None
    loss_every: int | None
    remat: int | None = None
    health: str = "step"


HEALTH = ("step", "end")


def eval_steps(cfg: LoopConfig) -> np.ndarray:
    """The steps after which ``val_curve`` entries are recorded."""
    if not cfg.eval_every:
        return np.zeros((0,), np.int32)
    return np.arange(1, cfg.steps // cfg.eval_every + 1, dtype=np.int32) * cfg.eval_every


SUSPECT = -2  # ``diverged_at`` of a member an unchecked run cannot vouch for (run_pure)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]
    return functools.reduce(jnp.logical_and, leaves, jnp.asarray(True))


def mark_at_end(state: TrainState, dead_at: jax.Array, objective: jax.Array,
                last_step) -> jax.Array:
    """``dead_at`` of a ``health="end"`` run: ``last_step`` for a member (not already
    dead) whose final state (parameters, model state) or final training objective
    is not finite."""
    ok = _all_finite(state.params) & _all_finite(state.model_state) & jnp.isfinite(objective)
    return jnp.where((dead_at < 0) & ~ok, jnp.asarray(last_step, jnp.int32), dead_at)


def mark_suspect(state: TrainState, dead_at: jax.Array) -> jax.Array:
    """``dead_at`` after steps that checked the loss only (``make_step(checked=False)``):
    ``SUSPECT`` where the state (parameters, model state) is not finite."""
    finite = _all_finite(state.params) & _all_finite(state.model_state)
    return jnp.where(finite, dead_at, SUSPECT)


def _downsample(losses: jax.Array, every: int | None, stop=None) -> jax.Array:
    """Windows of ``every`` steps averaged (``stop``: a member's own step count in a
    group that pads ``steps``, see :func:`jaxhp._member_steps.own_windows`)."""
    if not every:
        return jnp.zeros((0,), losses.dtype)
    if every == 1:
        return losses  # entries from `stop` on are NaN already (make_step)
    if stop is not None:
        return own_windows(losses, every, stop)
    n = losses.shape[0]
    pad = (-n) % every
    padded = jnp.concatenate([losses, jnp.full((pad,), jnp.nan, losses.dtype)])
    full = jnp.mean(padded.reshape(-1, every), axis=1)
    if pad == 0:
        return full
    # The last, partial window averages its real steps only (not the padding);
    # a NaN from divergence must stay NaN, so no nanmean here.
    return full.at[-1].set(jnp.mean(losses[n - (every - pad):]))


def _remat_scan(step, carry, start, length: int, k: int):
    """``lax.scan(step)`` over ``length`` steps in checkpointed blocks of ``k`` steps."""
    n, rem = divmod(length, k)

    @jax.checkpoint
    def chunk(carry, s):
        return jax.lax.scan(step, carry, s + jnp.arange(k, dtype=jnp.int32))

    carry, ys = jax.lax.scan(chunk, carry, start + k * jnp.arange(n, dtype=jnp.int32))
    ys = None if ys is None else ys.reshape(-1)  # None: the step outputs nothing
    if rem:
        tail_steps = start + n * k + jnp.arange(rem, dtype=jnp.int32)
        carry, tail = jax.lax.scan(step, carry, tail_steps)
        ys = None if tail is None else jnp.concatenate([ys, tail])
    return carry, ys


def rowwise_mean(fn, part):
    """``fn(part)`` (a pytree of scalars) for a plain part; for a :class:`Padded` part,
    the mean over its real rows of ``fn`` of each row alone (a one-row batch), so no
    padded row counts. Equal to ``fn`` of the real rows for a mean over rows (a
    per-example-separable loss or metric)."""
    if not isinstance(part, Padded):
        return fn(part)
    n = part_size(part.data)
    out = jax.vmap(lambda row: fn(jax.tree_util.tree_map(lambda a: a[None], row)))(part.data)
    real = jnp.arange(n) < part.count

    def mean(v):
        dtype = v.dtype if jnp.issubdtype(v.dtype, jnp.floating) else jnp.float32
        return (jnp.sum(jnp.where(real, v, 0).astype(dtype)) / part.count.astype(dtype))

    return jax.tree_util.tree_map(mean, out)


def start(model: Model, hp: HParams, key: jax.Array):
    """The carry of a run before its first step: ``(TrainState, dead_at=-1)`` (pure)."""
    params, model_state = init_fn(model, jax.random.fold_in(key, INIT), hp)
    params = _masking.apply(_masking.masks(model, hp, params), params)  # padded: zeros
    state = TrainState(jnp.asarray(0, jnp.int32), params, model.optimizer(hp).init(params),
                       model_state)
    return state, jnp.asarray(-1, jnp.int32)


class Stepper(NamedTuple):
    """A run's training step and what its loop carries besides the run's own carry.

    ``step(((state, dead_at), order), t) -> (((state, dead_at), order), loss)``;
    ``order`` is the row order of step ``t``'s epoch (``None``: full batches),
    renewed at the first step of each epoch (:func:`jaxhp._data.next_order`), and
    ``order0(t0)`` is the order a loop starting at step ``t0`` begins with.
    :func:`_steps` and :func:`jaxhp._population.advance` thread it.
    """

    step: Any
    order0: Any


def make_step(model: Model, cfg: LoopConfig, hp: HParams, train_part, key: jax.Array,
              want_loss: bool = True, checked: bool = True, fresh: bool = False) -> Stepper:
    """The training step (pure; a :class:`Stepper`: ``step`` and its loop's ``order0``).

    Step ``t`` draws its minibatch and noise from ``key`` and ``t`` only (its
    epoch's row order is carried from step to step and sorted once per epoch:
    the same batches as :func:`jaxhp.sample_batch` of step ``t``). A
    stateful model's state is threaded through the steps (the loss's new state).
    A member whose loss, parameters or model state become non-finite is frozen
    at its last finite state (parameters, optimizer state and model state),
    ``dead_at`` records the step and later losses are NaN. In a group that pads
    ``steps`` (:func:`own_steps`), a member is frozen the same way from its own
    step count on: steps ``t >= hp.steps`` change nothing (state, health) and
    output NaN.
    ``want_loss=False``: the step outputs ``None`` instead of the loss (no
    per-step output at all; the loss is still computed, for the health check).

    ``checked=False`` (see :func:`run_pure`): the health check reads the loss
    only (a scalar per member), not the parameters nor the model state, and a
    member is frozen at its first non-finite loss. Where that loss came from
    finite parameters, this is the checked step's outcome.

    ``cfg.health == "end"``: the step checks nothing and computes the gradient
    only (the loss value is never formed, so XLA drops what only it needs); a
    member stops only after its own steps (a padded group) or when it was
    found dead before this segment. Its health is judged once, at the end
    (:func:`mark_at_end`). ``fresh``: no member is dead before these steps (a
    whole run from its start), so an unpadded step updates every member as the
    hand-written step would, without a select.
    """
    data_key, noise_key = (jax.random.fold_in(key, i) for i in (DATA, NOISE))
    opt = model.optimizer(hp)
    stop = own_steps(hp)
    at_end = cfg.health == "end"
    if at_end and want_loss:
        raise ValueError("health='end' computes no per-step loss: use loss_every=0")

    def grad(fn, params, has_aux):
        """``(loss, aux), grads`` (``loss`` ``None`` when the health check is at the end)."""
        if at_end:
            out = jax.grad(fn, has_aux=has_aux)(params)
            return (None, out[1]) if has_aux else None, out[0] if has_aux else out
        return jax.value_and_grad(fn, has_aux=has_aux)(params)

    def step(carry, t):
        (state, dead_at), order = carry
        order = next_order(train_part, data_key, t, cfg.batch_size, order)
        batch = batch_from(train_part, order, t, cfg.batch_size)
        k = jax.random.fold_in(noise_key, t)
        if model.has_state:
            (loss, (_, model_state)), grads = grad(
                lambda p: model_loss(model, p, state.model_state, batch, hp, k),
                state.params, True)
        elif isinstance(batch, Padded):  # the full batch of a padded fold: real rows only
            loss, grads = grad(lambda p: rowwise_mean(
                lambda b: loss_fn(model, p, b, hp, k)[0], batch), state.params, False)
            model_state = None
        else:  # the stateless step, exactly as before model state existed
            (loss, _), grads = grad(
                lambda p: loss_fn(model, p, batch, hp, k), state.params, True)
            model_state = None
        mask = _masking.masks(model, hp, state.params)  # padded group: its padded entries
        grads = _masking.apply(mask, grads)
        updates, opt_state = opt.update(grads, state.opt_state, state.params)
        updates = _masking.apply(mask, updates)
        new = TrainState(state.step + 1, optax.apply_updates(state.params, updates),
                         opt_state, model_state)
        if at_end:  # no check: the member moves on while live, whatever its values
            live = None if fresh else dead_at < 0
            if stop is not None:
                live = t < stop if live is None else live & (t < stop)
            if live is not None:
                new = jax.tree_util.tree_map(lambda a, b: jnp.where(live, a, b), new, state)
            return ((new, dead_at), order), None
        live = dead_at < 0  # healthy, and (padded steps) before the member's own end
        if stop is not None:
            live = live & (t < stop)
        ok = jnp.isfinite(loss)
        if checked:  # (unchecked: the state once, at the end of the run)
            ok = ok & _all_finite(new.params)
            if model.has_state:
                ok = ok & _all_finite(model_state)
        keep = live & ok
        state = jax.tree_util.tree_map(lambda a, b: jnp.where(keep, a, b), new, state)
        dead_at = jnp.where(live & ~ok, t, dead_at)
        return ((state, dead_at), order), (jnp.where(keep, loss, jnp.nan) if want_loss
                                           else None)

    return Stepper(step, lambda t0: batch_order(train_part, data_key, t0, cfg.batch_size))


def _steps(stepper: Stepper, carry, start_step, length: int, remat: int | None = None):
    """``lax.scan`` of a :class:`Stepper`'s step over steps ``start_step .. start_step +
    length - 1``, from and to the run's carry (the epoch order is the loop's own)."""
    inner = (carry, stepper.order0(start_step))
    if remat and remat < length:
        inner, ys = _remat_scan(stepper.step, inner, start_step, length, remat)
    else:
        inner, ys = jax.lax.scan(stepper.step, inner,
                                 start_step + jnp.arange(length, dtype=jnp.int32))
    return inner[0], ys


def advance(model: Model, cfg: LoopConfig, hp: HParams, carry, train_part, key: jax.Array,
            start_step, n_steps: int):
    """Continues a run from its carry by steps ``start_step .. start_step + n_steps - 1``.

    Pure. Step ``t`` draws its minibatch and noise from ``key`` and ``t`` only,
    so ``k`` steps then ``k`` more equal ``2k`` steps bit for bit. Only
    ``cfg.batch_size`` and ``cfg.remat`` are read. Returns ``(carry, losses)``.
    """
    step = make_step(model, cfg, hp, train_part, key)
    return _steps(step, carry, start_step, n_steps, cfg.remat)


def run_pure(model: Model, cfg: LoopConfig, hp: HParams, train_part, val_part,
             key: jax.Array, checked: bool = True) -> Run:
    """One training run as a pure function (no validation; see :func:`train`).

    ``checked=False``: the run whose steps check the loss only (:func:`make_step`;
    the per-step check of the parameters is a reduction over all of them, up to a
    tenth of the bench's ridge and MLP runs on a CPU: ``bench/bench_program.py``).
    ``cfg.health == "end"``: no step checks anything (nor computes the loss); a
    member whose final state or training objective is non-finite has ``diverged_at``
    at its last step, and its state is what the steps left (not frozen).
    ``checked`` does not apply (this check is exact: no suspects).

    The state is checked once, at the end: a member whose final (or frozen)
    parameters or model state are non-finite is *suspect*, ``diverged_at ==
    SUSPECT``, and its outputs mean nothing: the caller runs it again checked
    (:func:`jaxhp._population.suspects`). Every other member had finite
    parameters at every step its loss was finite, so both runs kept the same
    updates and froze at the same step: the same computation. (A state can only
    turn non-finite and back to finite through an operation that discards
    NaN/Inf on the parameters themselves, a ``where`` or clip, with finite
    losses meanwhile; such a member would count as healthy here.) Divergence
    usually shows in the loss first (it grows faster than the parameters), so
    suspects are rare.
    """
    # loss_every 0/None: the steps output nothing (no (steps,) buffer per member)
    step = make_step(model, cfg, hp, train_part, key, want_loss=bool(cfg.loss_every),
                     checked=checked, fresh=True)

    def evaluate(state):
        return rowwise_mean(lambda b: metrics_fn(model, state.params, b, hp, state.model_state),
                            val_part)

    carry = start(model, hp, key)
    if cfg.eval_every:
        every = cfg.eval_every
        n_blocks, rem = divmod(cfg.steps, every)

        def outer(carry, b):
            carry, losses = _steps(step, carry, b * every, every, cfg.remat)
            return carry, (losses, evaluate(carry[0]))

        carry, (losses, val_curve) = jax.lax.scan(
            outer, carry, jnp.arange(n_blocks, dtype=jnp.int32))
        losses = None if losses is None else losses.reshape(-1)
        if rem:
            carry, tail = _steps(step, carry, n_blocks * every, rem, cfg.remat)
            losses = None if tail is None else jnp.concatenate([losses, tail])
    else:  # no curve: evaluate once, at the end
        carry, losses = _steps(step, carry, 0, cfg.steps, cfg.remat)
        val_curve = jax.tree_util.tree_map(
            lambda v: jnp.zeros((0,), v.dtype), jax.eval_shape(evaluate, carry[0]))
    stop = own_steps(hp)
    if stop is not None:  # evaluations after the member's own last step: NaN
        at = jnp.asarray(eval_steps(cfg))
        val_curve = jax.tree_util.tree_map(
            lambda v: jnp.where(at <= stop, v, jnp.nan), val_curve)
    state, dead_at = carry
    at_end = cfg.health == "end"
    if not checked and not at_end:  # the state, once: non-finite -> suspect
        dead_at = mark_suspect(state, dead_at)
    train_loss = rowwise_mean(
        lambda b: loss_fn(model, state.params, b, hp, state=state.model_state)[0], train_part)
    if at_end:  # the one health check of the run (no suspects: nothing to run again)
        dead_at = mark_at_end(state, dead_at, train_loss,
                              (cfg.steps if stop is None else stop) - 1)
    if losses is None:
        losses = jnp.zeros((0,), train_loss.dtype)
    return Run(state, train_loss, evaluate(state),
               _downsample(losses, cfg.loss_every, stop), val_curve, dead_at)


def resolve_loop(hp: HParams, n_train: int, eval_every: int | None,
                 loss_every: int | None, health: str = "step") -> LoopConfig:
    """Reads ``steps``/``batch_size`` from the hyperparameters and checks the loop."""
    check_health(health, loss_every)
    names = type(hp).fields()
    if "steps" not in names or not names["steps"].is_static:
        raise ValueError(f"{type(hp).__name__} needs a static `steps` field "
                         "(jaxhp.static(...)): the number of training steps")
    # padded (a per-member int32 leaf): the loop runs the group's allocation, each
    # member stopping after its own steps (make_step); check_member_steps checks those
    steps = hp.steps if own_steps(hp) is None else padded_size(hp, "steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"`steps`={steps!r}: must be an integer >= 1")
    batch_size = getattr(hp, "batch_size", None)
    if "batch_size" in names and not names["batch_size"].is_static:
        raise ValueError("`batch_size` must be a static field")
    if batch_size is not None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size`={batch_size!r}: must be an integer >= 1 or None")
        if batch_size > n_train:
            raise ValueError(f"`batch_size`={batch_size} is larger than the training "
                             f"set ({n_train} examples); use at most {n_train}, or "
                             "None for full-batch training")
    for name, v in (("eval_every", eval_every), ("loss_every", loss_every)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"`{name}`={v!r}: must be a non-negative integer or None")
    if eval_every and eval_every > steps:
        raise ValueError(f"`eval_every`={eval_every} exceeds `steps`={steps}")
    return LoopConfig(steps, batch_size, eval_every or None, loss_every or None,
                      health=health)


def check_health(health, loss_every) -> None:
    """Refuses an unknown ``health`` or ``health="end"`` with a loss curve, naming both."""
    if not isinstance(health, str) or health not in HEALTH:
        raise ValueError(f"`health`={health!r}: must be one of {', '.join(map(repr, HEALTH))}"
                         " ('step': every step's loss and state, diverging members frozen "
                         "at their last finite state; 'end': the final state only)")
    if health == "end" and loss_every:
        raise ValueError(f"`health`='end' with `loss_every`={loss_every!r}: 'end' computes "
                         "no per-step loss, so there is no loss curve to record; pass "
                         "loss_every=0 (with a loss curve the per-step check is nearly free: "
                         "keep health='step')")


def validate(model: Model, hp: HParams, split: Split, data_checked: bool = False) -> None:
    """Checks data and model functions once per (model, statics, shapes).

    ``data_checked``: the caller has already checked this split (``check_split``
    and the model's data check), e.g. once for all the static groups of a search.
    """
    if not isinstance(hp, HParams):
        raise TypeError(f"hp must be a jaxhp.HParams instance, got {type(hp).__name__}")
    if model.hparams is not None and not isinstance(hp, model.hparams):
        raise TypeError(f"the setting is a {type(hp).__qualname__}, but model "
                        f"{model.name!r} takes {model.hparams.__qualname__}: build the "
                        f"settings from {model.hparams.__qualname__} (or its subclass)")
    if not data_checked:
        check_split(split)
        check_model_data(model, split)
    one = hp[0] if hp.batch_shape else hp
    _masking.check_padding(model, one)
    batch = abstract_batch(split.train)
    key = (model, jax.tree_util.tree_structure(one),
           tuple(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
               lambda s: (s.shape, str(s.dtype)), batch))))
    if key not in _VALIDATED:
        check_model(model, one, batch)
        _VALIDATED.add(key)


_VALIDATED: set = set()


def check_key(key, name: str = "key") -> jax.Array:
    """``key`` as one typed PRNG key; anything else is refused, naming the argument.

    A typed key (``jax.random.key(0)``) is returned as is; a legacy raw key
    (``jax.random.PRNGKey(0)``, ``uint32[2]``) is wrapped with
    ``jax.random.wrap_key_data``, which draws the same numbers.

    Raises:
      TypeError: an int, a float array, a batch of keys or any other value.
    """
    if isinstance(key, jax.core.Tracer):
        return key
    dtype = getattr(key, "dtype", None)
    shape = getattr(key, "shape", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise TypeError(f"`{name}`: expected one PRNG key, got a batch of keys of shape "
                            f"{shape}; pass a single key such as jax.random.key(0)")
        return key
    if dtype is not None and np.dtype(dtype) == np.uint32 and shape == (2,):
        return jax.random.wrap_key_data(key)
    got = type(key).__name__ + ("" if shape is None else f" of shape {shape}, dtype {dtype}")
    hint = ""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        hint = f"; a seed is not a key: use {name}=jax.random.key({int(key)})"
    raise TypeError(f"`{name}`={_short_repr(key)}: expected a JAX PRNG key such as "
                    f"jax.random.key(0), got {got}{hint}")


def _short_repr(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def check_model_data(model: Model, split: Split) -> None:
    """Runs the model's own data checks (``model.check_data``) on every part."""
    if model.check_data is not None:
        for name in ("train", "val", "test"):
            model.check_data(getattr(split, name), name)


@functools.partial(jax.jit, static_argnames=("model", "cfg"))
def _train_jit(model, cfg, hp, train_part, val_part, key):
    return run_pure(model, cfg, hp, train_part, val_part, key)


def train(
    model: Model,
    hp: HParams,
    split: Split,
    *,
    key: jax.Array,
    eval_every: int | None = None,
    loss_every: int | None = 1,
    health: str = "step",
) -> Run:
    """Trains one setting: one jit-compiled ``init -> scan(step)`` program.

    The Optax optimizer is built inside the traced function from ``hp``, so a
    new value of a tunable field reuses the compiled program; a new static
    value compiles a new one. The test part of ``split`` is never read.

    Args:
      model: the model's functions (:class:`Model`).
      hp: one hyperparameter setting; ``hp.steps`` (static) sets the number
        of steps and ``hp.batch_size`` (static, optional) the minibatch size.
      split: the data; only ``train`` and ``val`` are used.
      key: a PRNG key; initialisation, minibatch order and dropout derive
        from it (``fold_in(key, 0/1/2)``).
      eval_every: record validation metrics every this many steps.
      loss_every: record the training loss averaged over windows of this many
        steps (1: every step; 0 or None: no curve).
      health: how divergence is detected. ``"step"`` (default): every step's
        loss and new state; a diverging run is frozen at its last finite state.
        ``"end"``: once, after the last step (the final state and training
        objective); no step computes the loss (the bench's ridge runs 1.47x
        faster), and a diverged run keeps its non-finite state. A loss that
        turned NaN/Inf while the state stayed finite goes unnoticed. Needs
        ``loss_every=0``.

    Returns:
      A :class:`Run`. A run whose loss becomes NaN/Inf is frozen at its last
      finite state and reported with ``diverged_at``, not raised (``health="end"``:
      ``diverged_at`` is the last step, the state is not frozen). A stateful
      model's (``has_state=True``) final state is ``run.state.model_state``,
      and validation and ``train_loss`` are evaluated with it.

    Raises:
      HParamsError, DataError, ModelError, ValueError: before anything compiles.

    Example:
      >>> run = train(model, model.hparams(learning_rate=0.1), split,
      ...             key=jax.random.key(0))
      >>> run.val["mse"]
    """
    key = check_key(key)
    validate(model, hp, split)
    if hp.batch_shape:
        raise ValueError(f"train() takes one setting, got a batch of shape "
                         f"{hp.batch_shape}; use jaxhp.sweep for many")
    cfg = resolve_loop(hp, part_size(split.train), eval_every, loss_every, health)
    return _train_jit(model, cfg, hp, split.train, split.val, key)


@functools.partial(jax.jit, static_argnames=("model",))
def _evaluate_jit(model, params, hp, part, state):
    return metrics_fn(model, params, part, hp, state)


def check_state(model: Model, hp: HParams, state, caller: str = "evaluate") -> None:
    """Refuses a missing, superfluous or misshapen ``state`` for ``model`` (before
    anything compiles)."""
    if not model.has_state:
        if state is not None:
            raise ValueError(f"{caller}(): `state` was given, but model {model.name!r} "
                             "has no state (has_state=False); drop `state=`")
        return
    if state is None:
        raise ValueError(
            f"{caller}(): model {model.name!r} has state (has_state=True, e.g. BatchNorm "
            "running statistics), and evaluation uses it: pass `state=`, e.g. "
            "`state=run.state.model_state`, or `params, state = result.params(i)`")
    want = abstract_init(model, hp)[1]
    got_def, want_def = (jax.tree_util.tree_structure(t) for t in (state, want))
    if got_def != want_def:
        raise ValueError(f"{caller}(): `state` has the structure {got_def}, model "
                         f"{model.name!r} has a state of structure {want_def} (is it "
                         "another model's state, or the (params, state) pair?)")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(want)[0],
                            jax.tree_util.tree_leaves(state)):
        if tuple(np.shape(b)) != tuple(a.shape):
            raise ValueError(f"{caller}(): `state{jax.tree_util.keystr(path)}` has shape "
                             f"{tuple(np.shape(b))}, the model's state has {tuple(a.shape)}")


def evaluate(model: Model, params, hp: HParams, part, *, state=None) -> dict[str, jax.Array]:
    """The model's metrics (``loss`` included) on any part of the data.

    The model's data check (``model.check_data``) runs on ``part`` first,
    naming it ``part`` (e.g. ``part["y"]``).

    Args:
      model: the model's functions.
      params: trained parameters (e.g. ``run.state.params``).
      hp: the setting.
      part: the data (e.g. ``split.test``).
      state: the model's state, required for a model declared
        ``has_state=True`` (e.g. ``run.state.model_state``: BatchNorm running
        statistics), and refused for a stateless one.

    Raises:
      DataError: ``part`` does not fit the model (before anything compiles).
      ValueError: ``state`` is missing for a stateful model, given for a
        stateless one, or of another structure or shape than the model's.

    Example:
      >>> evaluate(model, run.state.params, hp, split.val)["mse"]
      >>> evaluate(bn_model, run.state.params, hp, split.val,
      ...          state=run.state.model_state)["accuracy"]
    """
    check_state(model, hp, state)
    if model.check_data is not None:
        model.check_data(part, "part")
    return _evaluate_jit(model, params, hp, part, state)


def n_params(params) -> int:
    """The number of scalars in a parameter pytree."""
    return int(sum(math.prod(np.shape(x)) for x in jax.tree_util.tree_leaves(params)))
