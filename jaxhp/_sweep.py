"""The sweep engine: settings -> static groups -> chunks -> vmap(train) -> result.

Settings are grouped by their static part (one compiled program per group).
Within a group the tunable leaves are stacked and crossed with the seeds; the
program is ``vmap`` over seeds of ``vmap`` over settings of the pure training
run. Keys depend on the seed index only (common random numbers), so a
member's result does not depend on its chunk or its batch-mates, and the
minibatch of a step is shared by all settings of a seed: XLA computes their
first layer as one wide matrix product.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxhp._checkpoint import Checkpoint, fingerprint
from jaxhp._data import DataError, Split, check_split
from jaxhp._hparams import HParams, HParamsError, stack
from jaxhp._io import FormatError
from jaxhp._model import Model, ModelError, metrics_fn, model_fingerprint
from jaxhp._result import SweepResult, resolve_direction
from jaxhp._train import (
    LoopConfig,
    check_key,
    eval_steps,
    resolve_loop,
    run_pure,
    validate,
)

DEFAULT_MEMORY_BUDGET = 512 * 2**20
# On a CPU, automatic chunks also keep their estimated working set (member_bytes x
# members) near the caches: the MLP of bench/ (0.9 MB per member) ran 2-2.5x faster
# in chunks of 32-64 settings than of 256, where the Adam state streams from memory.
DEFAULT_CACHE_BUDGET = 64 * 2**20
# Settings per automatic chunk. On a 2-core CPU, ridge (265 examples) ran fastest
# at 512-1,024 settings per chunk: the (chunk, n_train) temporaries of a step stay
# in the cores' L2 caches; 2,048 was 8-14% slower (bench/, max_chunk sweep).
DEFAULT_MAX_CHUNK = 512


def settings_from(space, model: Model, base: HParams | None,
                  caller: str = "sweep") -> list[HParams]:
    """The settings of a space, a list of settings, or a (batched) setting."""
    if isinstance(space, HParams):
        space = [space[i] for i in range(len(space))] if space.batch_shape else [space]
    if isinstance(space, (list, tuple)):
        settings = list(space)
        for i, s in enumerate(settings):
            if not isinstance(s, HParams) or s.batch_shape:
                raise TypeError(f"{caller}(): settings[{i}] must be one HParams setting, "
                                f"got {s!r}")
        return settings
    if not hasattr(space, "settings"):
        raise TypeError(f"{caller}(): expected a search space, a list of HParams or a "
                        f"batched HParams, got {type(space).__name__}")
    cls = type(base) if base is not None else model.hparams
    if cls is None:
        raise ValueError(f"{caller}(): the model has no `hparams` class; pass "
                         "`base=YourHParams(...)` or a list of settings")
    return space.settings(cls, base=base)


def _check_args(seeds, chunk_size, memory_budget) -> np.ndarray:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        if seeds <= 0:
            raise ValueError(f"`seeds`={seeds}: must be a positive number of seeds")
        seed_ids = np.arange(int(seeds))
    else:
        seed_ids = np.asarray(seeds)
        if seed_ids.ndim != 1 or seed_ids.size == 0 or seed_ids.dtype.kind not in "iu" \
                or np.any(seed_ids < 0) or len(set(seed_ids.tolist())) != seed_ids.size:
            raise ValueError(f"`seeds`={seeds!r}: must be a positive int or a list of "
                             "distinct non-negative seed indices")
    if chunk_size is not None and chunk_size != "all":
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) \
                or chunk_size <= 0:
            raise ValueError(f"`chunk_size`={chunk_size!r}: must be a positive integer, "
                             "'all' or None (sized from the memory budget)")
    if memory_budget is not None and (
            not isinstance(memory_budget, (int, np.integer)) or isinstance(memory_budget, bool)
            or memory_budget <= 0):
        raise ValueError(f"`memory_budget`={memory_budget!r}: must be a positive integer "
                         "number of bytes per device (e.g. 2 * 2**30 for 2 GiB) or None")
    return seed_ids.astype(np.uint32)


class _GroupFailed(Exception):
    """A static group whose model functions failed during validation."""


def group_settings(settings: Sequence[HParams]) -> list[list[int]]:
    """Indices of the settings, grouped by static part, in order of first appearance."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault((type(s), s.static_key()), []).append(i)
    return list(groups.values())


def member_bytes(model: Model, hp: HParams, cfg: LoopConfig, n_val_metrics: int,
                 keep_params: bool) -> int:
    """Estimated device bytes of one population member (state, temporaries, curves)."""
    params = jax.eval_shape(model.init, jax.random.key(0), hp)
    opt_state = jax.eval_shape(model.optimizer(hp).init, params)
    nbytes = lambda t: sum(math.prod(x.shape) * x.dtype.itemsize
                           for x in jax.tree_util.tree_leaves(t))
    p, o = nbytes(params), nbytes(opt_state)
    n_loss = 0 if not cfg.loss_every else math.ceil(cfg.steps / cfg.loss_every)
    n_eval = len(eval_steps(cfg)) * n_val_metrics
    # params, grads, updates, new params and the select copies, plus opt state twice
    state = 5 * p + 2 * o + (p + o if keep_params else 0)
    return int(state + 4 * (n_loss + n_eval + n_val_metrics + 2))


def plan_chunks(n_settings: int, n_seeds: int, per_member: int, n_devices: int,
                chunk_size, memory_budget: int | None,
                max_chunk: int = DEFAULT_MAX_CHUNK) -> int:
    """Settings per chunk: from an explicit size, or the memory budget (a device multiple).

    Automatic chunks are capped, per device, by ``max_chunk`` and the budget (on a CPU, also by
    :data:`DEFAULT_CACHE_BUDGET` unless a budget is given), then evened out so that
    the last chunk carries little padding.
    """
    if chunk_size == "all":
        c = n_settings
    elif chunk_size is not None:
        c = min(int(chunk_size), n_settings)
    else:
        budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else memory_budget
        if memory_budget is None and jax.default_backend() == "cpu":
            budget = min(budget, DEFAULT_CACHE_BUDGET)
        # max_chunk and the budgets hold per device: each device (a core on a CPU)
        # computes its share of the chunk in its own cache and memory
        c = max(1, min(n_settings, max_chunk * n_devices,
                       n_devices * budget // max(1, per_member * n_seeds)))
        c = math.ceil(n_settings / math.ceil(n_settings / c))  # equal chunks
    return int(math.ceil(c / n_devices) * n_devices)


@functools.lru_cache(maxsize=64)
def _population_fn(model: Model, cfg: LoopConfig, keep_params: bool):
    def one(hp, train_part, val_part, key):
        run = run_pure(model, cfg, hp, train_part, val_part, key)
        return run if keep_params else run._replace(state=None)

    over_settings = jax.vmap(one, in_axes=(0, None, None, None))

    def population(hp, train_part, val_part, base_key, seed_ids):
        keys = jax.vmap(lambda s: jax.random.fold_in(base_key, s))(seed_ids)
        return jax.vmap(over_settings, in_axes=(None, None, None, 0))(
            hp, train_part, val_part, keys)

    return population


_COMPILED: dict = {}


def _compiled(model, cfg, keep_params, args, mesh):
    """Compiles (once per model, loop, shapes and devices) the population program."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    signature = tuple((np.shape(a), str(a.dtype) if hasattr(a, "dtype")
                       else type(a).__name__) for a in leaves)
    key = (model, cfg, keep_params, treedef, signature,
           None if mesh is None else tuple(d.id for d in mesh.devices.flat))
    if key in _COMPILED:
        return _COMPILED[key], 0.0
    fn = _population_fn(model, cfg, keep_params)
    t0 = time.perf_counter()
    if mesh is None:
        compiled = jax.jit(fn).lower(*args).compile()
    else:
        pop, rep = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
        in_sh = (jax.tree_util.tree_map(lambda _: pop, args[0]),
                 jax.tree_util.tree_map(lambda _: rep, args[1]),
                 jax.tree_util.tree_map(lambda _: rep, args[2]), rep, rep)
        compiled = jax.jit(fn, in_shardings=in_sh).lower(*args).compile()
    dt = time.perf_counter() - t0
    _COMPILED[key] = compiled
    return compiled, dt


def _pad(hp: HParams, size: int) -> HParams:
    n = len(hp)
    if n == size:
        return hp
    return jax.tree_util.tree_map(
        lambda x: np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)]), hp)


def _progress(total: int, progress) -> Any:
    if progress is False:
        return None
    if progress is None and not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        if progress is None:
            return None
        raise ImportError("progress=True needs tqdm: pip install 'jaxhp[progress]'") from e
    return tqdm(total=total, desc="jaxhp sweep", unit="chunk")


def sweep(
    model: Model,
    space: Any,
    split: Split,
    *,
    key: jax.Array,
    seeds: int | Sequence[int] = 1,
    base: HParams | None = None,
    eval_every: int | None = None,
    loss_every: int | None = 1,
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
    max_chunk: int = DEFAULT_MAX_CHUNK,
    devices: Sequence[jax.Device] | None = None,
    keep_params: bool = False,
    on_error: str = "record",
    progress: bool | None = None,
    select: tuple[str, str | None] = ("loss", None),
    checkpoint_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> SweepResult:
    """Trains every setting of a space with every seed: one program per static group.

    Args:
      model: the model's functions.
      space: a search space (``jaxhp.grid``, ``jaxhp.random``, ...) or a list
        of :class:`~jaxhp.HParams` settings.
      split: the data; training reads ``train``, selection ``val``; the test
        part is only read by :meth:`SweepResult.evaluate_test`.
      key: base PRNG key. Member ``(setting, seed s)`` trains with
        ``fold_in(key, s)``: exactly what ``jaxhp.train(..., key=fold_in(key, s))``
        uses, whatever the chunking or ordering.
      seeds: the number of seeds (``0..seeds-1``) or a list of seed indices.
      base: the setting whose values fill the fields the space leaves unset
        (default: the model's hyperparameter class defaults).
      eval_every, loss_every: curve resolution, as in :func:`jaxhp.train`.
      chunk_size: settings per compiled call (each with all seeds); ``None``
        sizes it from ``memory_budget`` (capped at ``max_chunk``), ``"all"``
        runs a group in one call. The last chunk is padded (no recompile).
      memory_budget: bytes of memory a chunk may use on each device (estimate).
      max_chunk: the largest automatic chunk per device (smaller chunks stay in
        cache); a chunk spans ``max_chunk * len(devices)`` settings at most.
      devices: devices to shard the population over (default: all local).
      keep_params: keep every member's trained parameters (host memory!).
      on_error: ``"record"`` marks a failing static group ``failed`` with its
        message and runs the others; ``"raise"`` re-raises.
      progress: a tqdm bar over chunks (``None``: only on a terminal).
      select: ``(metric, mode)`` shown as best-so-far in the progress bar.
      checkpoint_dir: persist every finished chunk there (atomically, with a
        manifest); running the same sweep again skips the finished chunks and
        gives bit-identical results. A changed sweep (space, seeds, data,
        model, key, versions, chunk plan) is refused, listing what differs.
      overwrite: discard an existing checkpoint in ``checkpoint_dir``.

    Returns:
      A :class:`~jaxhp.SweepResult`.

    Raises:
      HParamsError, SpaceError, DataError, ModelError, ValueError: bad input,
      before anything compiles. CheckpointMismatch: resuming a different sweep.
      CheckpointLocked: another live process is using ``checkpoint_dir``.
      KeyboardInterrupt: re-raised after the finished chunks are saved.

    Example:
      >>> space = jaxhp.random(1024, learning_rate=jaxhp.loguniform(1e-3, 1),
      ...                      l2=jaxhp.loguniform(1e-5, 1))
      >>> result = jaxhp.sweep(model, space, split, key=jax.random.key(0), seeds=3)
      >>> result.best("mse").setting
    """
    if on_error not in ("record", "raise"):
        raise ValueError(f"`on_error`={on_error!r}: must be 'record' or 'raise'")
    seed_ids = _check_args(seeds, chunk_size, memory_budget)
    key = check_key(key)
    if isinstance(max_chunk, bool) or not isinstance(max_chunk, (int, np.integer)) \
            or max_chunk < 1:
        raise ValueError(f"`max_chunk`={max_chunk!r}: must be a positive integer (the "
                         "largest automatic chunk per device)")
    if not (isinstance(select, (tuple, list)) and len(select) == 2):
        raise ValueError(f"`select`={select!r}: must be a (metric, mode) pair, e.g. "
                         "('accuracy', None); mode None uses the model's declared direction")
    select = (select[0], resolve_direction(model.directions, *select))
    settings = settings_from(space, model, base)
    if not settings:
        raise ValueError("sweep(): the space has no settings")
    n_train = check_split(split)[0]
    groups = group_settings(settings)
    cfgs, failures, errors = [], {}, []
    for gi, idx in enumerate(groups):  # validate everything before anything compiles
        cfgs.append(resolve_loop(settings[idx[0]], n_train, eval_every, loss_every))
        try:
            validate(model, settings[idx[0]], split)
        except (ModelError, DataError, HParamsError):
            raise
        except Exception as e:  # noqa: BLE001 - a user function failed for this group
            if on_error == "raise":
                raise
            failures[gi] = f"{type(e).__name__}: {e}"
            errors.append(e)
    devices = list(jax.local_devices() if devices is None else devices)
    mesh = Mesh(np.array(devices), ("pop",)) if len(devices) > 1 else None
    healthy = [idx[0] for gi, idx in enumerate(groups) if gi not in failures]
    n_metrics = 0 if not healthy else len(jax.eval_shape(
        lambda p, h: metrics_fn(model, p, split.val, h),
        jax.eval_shape(model.init, jax.random.key(0), settings[healthy[0]]),
        settings[healthy[0]]))

    plans = []
    for gi, (idx, cfg) in enumerate(zip(groups, cfgs)):
        if gi in failures:
            plans.append((idx, cfg, 1, 0))
            continue
        per = member_bytes(model, settings[idx[0]], cfg, n_metrics, keep_params)
        c = plan_chunks(len(idx), len(seed_ids), per, len(devices), chunk_size,
                        memory_budget, max_chunk)
        plans.append((idx, cfg, c, math.ceil(len(idx) / c)))
    bar = _progress(sum(p[3] for p in plans), progress)  # before the lock: it may raise
    ckpt = None
    if checkpoint_dir is not None:
        loop = {"eval_every": eval_every, "loss_every": loss_every,
                "keep_params": keep_params}
        plan = [[len(p[0]), p[2], p[3]] for p in plans]
        try:
            ckpt = Checkpoint(checkpoint_dir, fingerprint(
                space=space, settings=settings,
                model_fp=model_fingerprint(model, [settings[i] for i in healthy],
                                           split.train),
                split=split, seed_ids=seed_ids, key=key, loop=loop, plan=plan),
                overwrite=overwrite)
        except BaseException:
            if bar is not None:
                bar.close()
            raise
    builder = SweepResult.builder(settings, seed_ids, model=model, split=split, key=key,
                                  devices=devices)
    seed_arr = jax.device_put(seed_ids)
    try:
        for gi, (idx, cfg, c, n_chunks) in enumerate(plans):
            info = {"statics": settings[idx[0]].statics(), "n_settings": len(idx),
                    "chunk_size": c, "n_chunks": n_chunks, "compile_s": 0.0,
                    "run_s": 0.0, "error": None, "eval_steps": eval_steps(cfg).tolist(),
                    "steps": cfg.steps, "compiled": 0, "chunks_computed": 0,
                    "chunks_loaded": 0}
            try:
                if gi in failures:
                    raise _GroupFailed(failures[gi])
                _run_group(model, cfg, keep_params, settings, idx, c, split, key,
                           seed_arr, mesh, info, builder, bar, select, gi, ckpt)
            except KeyboardInterrupt:
                if ckpt is not None:
                    print(f"jaxhp: interrupted; {len(ckpt.done)} finished chunk(s) are "
                          f"saved in {ckpt.folder}; run the same sweep to resume",
                          file=sys.stderr)
                raise
            except (FormatError, OSError):  # the checkpoint's fault, not the group's
                raise
            except Exception as e:  # noqa: BLE001 - the failure policy
                if on_error == "raise":
                    raise
                msg = str(e) if isinstance(e, _GroupFailed) else f"{type(e).__name__}: {e}"
                if not isinstance(e, _GroupFailed):
                    errors.append(e)
                builder.fail(idx, msg)
                info["error"] = msg
            builder.groups.append(info)
    finally:
        if bar is not None:
            bar.close()
        if ckpt is not None:  # release the folder's lock, whatever happened
            ckpt.close()
    _report_failures(builder.groups, errors)
    return builder.build()


class SweepWarning(UserWarning):
    """Some static groups of a sweep failed; the others' results are kept."""


def _report_failures(groups: list[dict], errors: list[BaseException]) -> None:
    """Warns when some static groups failed (quoting the first error); raises the first
    error when every group failed, since no result is then left to select from."""
    failed = [g for g in groups if g["error"]]
    if not failed:
        return
    if len(failed) == len(groups) and errors:
        raise errors[0]
    statics = ", ".join(f"{k}={v!r}" for k, v in failed[0]["statics"].items())
    warnings.warn(
        f"{len(failed)} of {len(groups)} static group(s) of the sweep failed and are "
        f"marked 'failed' in the result (never selected); the first ({statics}): "
        f"{failed[0]['error']}. All messages: result.errors; on_error='raise' stops at "
        "the first.", SweepWarning, stacklevel=3)


def _run_group(model, cfg, keep_params, settings, idx, c, split, key, seed_arr, mesh,
               info, builder, bar, select, gi, ckpt):
    group_hp = stack([settings[i] for i in idx])
    n = len(idx)
    shared = (split.train, split.val, key, seed_arr)
    if mesh is not None:
        pop, rep = NamedSharding(mesh, P("pop")), NamedSharding(mesh, P())
        shared = jax.device_put(shared, rep)
    structure = None
    for ci, start in enumerate(range(0, n, c)):
        chunk = _pad(group_hp[start:start + c], c)
        args = (chunk if mesh is None else jax.device_put(chunk, pop), *shared)
        if ckpt is not None and ckpt.has(gi, ci):
            if structure is None:  # equal shapes in every chunk: trace once per group
                structure = jax.eval_shape(_population_fn(model, cfg, keep_params), *args)
            out = ckpt.load(gi, ci, structure)
            info["chunks_loaded"] += 1
        else:
            compiled, dt = _compiled(model, cfg, keep_params, args, mesh)
            info["compile_s"] += dt
            info["compiled"] += int(dt > 0)
            t0 = time.perf_counter()
            out = jax.device_get(jax.block_until_ready(compiled(*args)))
            info["run_s"] += time.perf_counter() - t0
            info["chunks_computed"] += 1
            if ckpt is not None:
                ckpt.save(gi, ci, out)
        m = min(c, n - start)
        builder.add(idx[start:start + m], out, m)
        if bar is not None:
            bar.update(1)
            best = builder.best_so_far(*select)
            if best is not None:
                bar.set_postfix({f"best {select[0]}": f"{best:.4g}"})
