"""The host side of every search: validate, group, plan, shard, compile, time.

A search (:mod:`jaxhp._search.sweep`, :mod:`jaxhp._search.halving`, ...) is a policy; the
mechanism it runs on lives here, once:

- the arguments are validated once (:func:`check_seeds`, :func:`check_chunking`,
  :func:`jaxhp._train.check_key`), before anything compiles;
- settings are columns grouped by their static part (:func:`table_from`), and each
  group's population is cut into chunks sized to a memory budget
  (:func:`member_bytes`, :func:`plan_chunks`);
- a chunk's population axis is padded to a multiple of the devices and sharded
  over all of them (:func:`mesh_for`, :func:`put`, :func:`pad_axis`);
- programs are compiled through ONE bounded cache (:data:`CACHE`), keyed by the
  program's name (the model's identity and the static part), the argument
  shapes and the devices;
- progress bars and the failure report (:func:`report_failures`);
- the ``on_chunk`` callback of every search (:class:`ChunkReporter`): each
  finished chunk is reported from this one place.
"""

from __future__ import annotations

import collections
import contextlib
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxhp import _population as population
from jaxhp._data import DataError
from jaxhp._hosts import (
    CPU_CACHE_BUDGET,
    CPU_MAX_CHUNK,
    CPU_MEMORY_BUDGET,
    check_devices,
    chunk_defaults,
    global_put,
    spans_processes,
)
from jaxhp._hparams import HParams, HParamsError, padded_fields
from jaxhp._io import FormatError
from jaxhp._model import Model, ModelError, abstract_init, metric_names
from jaxhp._record import ChunkRecord, GroupInfo
from jaxhp._table import SettingsTable, constant_column
from jaxhp._train import LoopConfig, Run, check_model_data, eval_steps, validate

# The CPU's measured defaults (see jaxhp._hosts, which also sizes GPU and TPU chunks)
DEFAULT_MEMORY_BUDGET = CPU_MEMORY_BUDGET
DEFAULT_CACHE_BUDGET = CPU_CACHE_BUDGET
DEFAULT_MAX_CHUNK = CPU_MAX_CHUNK


def table_from(space, model: Model, base: HParams | None,
               caller: str = "sweep") -> SettingsTable:
    """The settings of a space (or a list of settings, or a batched setting) as columns.

    A space yields its table directly (:meth:`jaxhp.Space.table`, validated once
    per field, no ``HParams`` object per setting); a list of settings is
    turned into one.
    """
    if isinstance(space, SettingsTable):
        return space
    if isinstance(space, HParams):
        return SettingsTable.from_settings(space if space.batch_shape else [space])
    if isinstance(space, (list, tuple)):
        for i, s in enumerate(space):
            if not isinstance(s, HParams) or s.batch_shape:
                raise TypeError(f"{caller}(): settings[{i}] must be one HParams setting, "
                                f"got {s!r}")
        if not space:
            raise ValueError(f"{caller}(): the space has no settings")
        return SettingsTable.from_settings(list(space))
    if not hasattr(space, "table"):
        raise TypeError(f"{caller}(): expected a search space, a list of HParams or a "
                        f"batched HParams, got {type(space).__name__}")
    cls = type(base) if base is not None else model.hparams
    if cls is None:
        raise ValueError(f"{caller}(): the model has no `hparams` class; pass "
                         "`base=YourHParams(...)` or a list of settings")
    return space.table(cls, base=base)


def check_seeds(seeds) -> np.ndarray:
    """The seed indices (``uint32``) of ``seeds``: a count or a list of distinct indices."""
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
    return seed_ids.astype(np.uint32)


def check_chunking(chunk_size, memory_budget, max_chunk) -> None:
    """Refuses a bad ``chunk_size``, ``memory_budget`` or ``max_chunk``, naming it."""
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
    if max_chunk is not None and (
            isinstance(max_chunk, bool) or not isinstance(max_chunk, (int, np.integer))
            or max_chunk < 1):
        raise ValueError(f"`max_chunk`={max_chunk!r}: must be a positive integer (the "
                         "largest automatic chunk per device) or None (the backend's "
                         "default, jaxhp.chunk_defaults())")


class GroupFailed(Exception):
    """A static group whose model functions failed during validation."""


def member_bytes(model: Model, hp: HParams, cfg: LoopConfig, n_val_metrics: int,
                 keep_params: bool) -> int:
    """Estimated device bytes of one population member (state, temporaries, curves)."""
    p, o, m = _state_bytes(model, hp)
    n_loss = 0 if not cfg.loss_every else math.ceil(cfg.steps / cfg.loss_every)
    n_eval = len(eval_steps(cfg)) * n_val_metrics
    # params, grads, updates, new params and the select copies, opt state twice, and the
    # model state (BatchNorm statistics) three times: carried, new, selected
    state = 5 * p + 2 * o + 3 * m + (p + o + m if keep_params else 0)
    return int(state + 4 * (n_loss + n_eval + n_val_metrics + 2))


_SHAPES: collections.OrderedDict = collections.OrderedDict()


def _shape_cached(key, compute):
    """A small bounded cache of abstract (``eval_shape``) facts about a model."""
    if key in _SHAPES:
        _SHAPES.move_to_end(key)
        return _SHAPES[key]
    value = _SHAPES[key] = compute()
    while len(_SHAPES) > 256:
        _SHAPES.popitem(last=False)
    return value


def _state_bytes(model: Model, hp: HParams) -> tuple[int, int, int]:
    return _shape_cached(("state", model, jax.tree_util.tree_structure(hp)),
                         lambda: _state_bytes_uncached(model, hp))


def count_metrics(model: Model, hp: HParams, part) -> int:
    """The number of validation metrics the model returns (``loss`` included)."""
    shapes = tuple((np.shape(a), str(np.asarray(a).dtype) if not hasattr(a, "dtype")
                    else str(a.dtype)) for a in jax.tree_util.tree_leaves(part))
    return _shape_cached(
        ("metrics", model, jax.tree_util.tree_structure(hp), shapes),
        lambda: len(metric_names(model, hp, part)))


def _state_bytes_uncached(model: Model, hp: HParams) -> tuple[int, int, int]:
    """Bytes of a member's parameters, optimizer state and model state (0 if none)."""
    params, model_state = abstract_init(model, hp)
    opt_state = jax.eval_shape(model.optimizer(hp).init, params)
    nbytes = lambda t: sum(math.prod(x.shape) * x.dtype.itemsize
                           for x in jax.tree_util.tree_leaves(t))
    return nbytes(params), nbytes(opt_state), nbytes(model_state)


def shapes_of(split) -> tuple:
    """The shapes and dtypes of the training and validation data (part of a program's
    identity where the program itself is not at hand)."""
    return tuple((np.shape(a), str(getattr(a, "dtype", ""))) for part in (split.train,
                                                                         split.val)
                 for a in jax.tree_util.tree_leaves(part))


def chunk_cap(n_settings: int, n_seeds: int, per_member: int, n_devices: int,
              memory_budget: int | None, max_chunk: int | None) -> int:
    """The largest chunk a measured chunk policy may try: the memory budget's limit
    (not the CPU cache budget, a constant tuned on one machine), and ``max_chunk``
    per device when the caller set it (``None``: the backend's default, not a cap)."""
    budget = chunk_defaults().memory_budget if memory_budget is None else memory_budget
    c = n_devices * budget // max(1, per_member * n_seeds)
    if max_chunk is not None:
        c = min(c, max_chunk * n_devices)
    return int(max(n_devices, min(c, n_settings)))


def plan_chunks(n_settings: int, n_seeds: int, per_member: int, n_devices: int,
                chunk_size, memory_budget: int | None,
                max_chunk: int | None = None) -> int:
    """Settings per chunk: from an explicit size, or the memory budget (a device multiple).

    Automatic chunks are capped, per device, by ``max_chunk`` and the budget (on a CPU, also by
    the cache budget unless a budget is given), then evened out so that the last chunk
    carries little padding. ``None`` takes the backend's default
    (:func:`jaxhp._hosts.chunk_defaults`).
    """
    if chunk_size == "all":
        c = n_settings
    elif chunk_size is not None:
        c = min(int(chunk_size), n_settings)
    else:
        defaults = chunk_defaults()
        max_chunk = defaults.max_chunk if max_chunk is None else max_chunk
        budget = defaults.memory_budget if memory_budget is None else memory_budget
        if memory_budget is None and defaults.cache_budget is not None:
            budget = min(budget, defaults.cache_budget)
        # max_chunk and the budgets hold per device: each device (a core on a CPU)
        # computes its share of the chunk in its own cache and memory
        c = max(1, min(n_settings, max_chunk * n_devices,
                       n_devices * budget // max(1, per_member * n_seeds)))
        c = math.ceil(n_settings / math.ceil(n_settings / c))  # equal chunks
    return int(math.ceil(c / n_devices) * n_devices)


class ChunkPolicy:
    """A group's chunk size measured on this machine, from the planned one.

    :func:`plan_chunks` sizes automatic chunks from constants (caps tuned on
    one CPU). On another machine the best size differs by 10-15%, so the first
    chunks measure it: the planned size ``c`` runs first; if the group is big
    enough that trying other sizes pays for compiling them (their expected gain,
    :data:`TUNE_GAIN` of the remaining run time, exceeds the compile time the
    first chunk showed, per candidate), the next chunks try ``c / 2`` and
    ``2 c`` (multiples of the devices, within ``cap``), and the rest of the
    group runs at the size with the lowest measured time per setting (compile
    excluded; a candidate must beat ``c`` by :data:`TUNE_MARGIN` to replace it).

    Results do not depend on the chunking (every member trains alone: tested),
    so tuning only moves the speed. The choice is reproducible: it is kept
    per ``key`` for the process (:data:`CHUNK_CHOICES`), so a later sweep of
    the same group reuses it without measuring, and :attr:`record` holds the
    sizes tried, their seconds per setting and the choice, for the group's
    info; passing the chosen size as ``chunk_size=`` replays the plan.

    Use: ``size = policy.next(remaining)`` before each chunk (the chunk is
    ``size`` settings, padded if fewer remain), then ``policy.observe(size,
    compile_s, run_s, n_real)`` after it.
    """

    def __init__(self, planned: int, n_settings: int, n_devices: int, cap: int,
                 key: Any = None, tune: bool = True):
        self.planned, self.n, self.d, self.cap, self.key = planned, n_settings, n_devices, \
            max(cap, planned), key
        self.trials: dict[int, float] = {}  # size -> best seconds per setting
        self.compile_s = 0.0
        self.pending: list[int] = []
        self.chosen: int | None = planned  # an explicit or checkpointed plan is kept
        if tune:
            self.chosen = CHUNK_CHOICES.get(key) if key is not None else None
            if self.chosen is not None:
                CHUNK_CHOICES.move_to_end(key)
        self.done = 0

    def _round(self, c: float) -> int:
        return int(max(self.d, min(self.cap, math.ceil(c / self.d) * self.d)))

    def candidates(self) -> list[int]:
        """The sizes worth trying after the planned one (distinct, at most the group)."""
        out = []
        for c in (self._round(self.planned / 2), self._round(self.planned * 2)):
            c = min(c, self._round(self.n))
            if c != self.planned and c not in out and c < self.n:
                out.append(c)
        return out

    def next(self, remaining: int) -> int:
        """The size of the next chunk."""
        if self.chosen is not None:
            return self.chosen
        if not self.trials:
            return self.planned
        if self.pending:
            c = self.pending[0]
            if c <= remaining:  # a trial is only worth a full chunk
                return c
            self.pending.clear()
        return self._choose()

    def observe(self, size: int, compile_s: float, run_s: float, n_real: int) -> None:
        """Records a chunk of ``size`` settings (``n_real`` of them real) that ran in
        ``run_s`` seconds after ``compile_s`` seconds of compilation (0 if cached)."""
        self.done += n_real
        if self.chosen is not None:
            return
        per = run_s / max(1, size)  # padding costs like real settings
        self.trials[size] = min(per, self.trials.get(size, math.inf))
        self.compile_s = max(self.compile_s, compile_s)
        if self.pending and self.pending[0] == size:
            self.pending.pop(0)
        if len(self.trials) == 1:
            remaining_s = per * (self.n - self.done)
            tries = self.candidates()
            if tries and TUNE_GAIN * remaining_s > len(tries) * max(self.compile_s, 1e-3):
                self.pending = tries
            else:
                self._choose()
        elif not self.pending:
            self._choose()

    def _choose(self) -> int:
        base = self.trials.get(self.planned, math.inf)
        best = min(self.trials, key=lambda c: (self.trials[c], c != self.planned))
        if self.trials[best] > base * (1 - TUNE_MARGIN):
            best = self.planned
        self.chosen = best
        if self.key is not None:
            CHUNK_CHOICES[self.key] = best
            while len(CHUNK_CHOICES) > 256:
                CHUNK_CHOICES.popitem(last=False)
        return best

    @property
    def record(self) -> dict:
        """What was measured and chosen (seconds per setting by size), for the group info."""
        return {"planned": self.planned, "chosen": self.chosen,
                "trials": {int(c): float(s) for c, s in sorted(self.trials.items())}}


# A candidate chunk size replaces the planned one when it is this much faster per setting;
# smaller differences are within the run-to-run noise of a shared CPU.
TUNE_MARGIN = 0.05
# Trying other sizes is worth it when this fraction of the group's remaining run time
# exceeds the compilation the trials cost (one program per tried size).
TUNE_GAIN = 0.10
# Chosen chunk sizes by program key, for the process (reused: no re-measuring, same plan).
CHUNK_CHOICES: collections.OrderedDict = collections.OrderedDict()


def mesh_for(devices: Sequence[jax.Device] | None) -> tuple[list, Mesh | None]:
    """The devices (default: all of them, of every process after
    ``jax.distributed.initialize()``) and a 1-D ``("pop",)`` mesh over them
    (``None`` for one device). A plain ``Mesh`` has Auto axes, which ``jit`` of
    ``vmap`` shards without annotations inside the program."""
    devices = list(jax.devices() if devices is None else devices)
    check_devices(devices)
    return devices, (Mesh(np.array(devices), ("pop",)) if len(devices) > 1 else None)


POP = P("pop")           # settings on the first axis: hp columns
MEMBERS = P(None, "pop")  # (seeds, settings, ...): carries and per-member outputs
SHARED = P()              # replicated: the data, keys, start and stop steps


def put(tree, mesh: Mesh | None, spec: P = SHARED):
    """``tree`` on the device(s): sharded by ``spec`` over ``mesh``, or on the default
    device when there is no mesh. A mesh over several processes takes the whole host
    value, the same on every process, and each process feeds its own devices' shards."""
    if mesh is None:
        return jax.device_put(tree)
    if spans_processes(mesh):
        return global_put(tree, NamedSharding(mesh, spec))
    return jax.device_put(tree, NamedSharding(mesh, spec))


def pad_axis(tree, size: int, axis: int = 0):
    """Pads every leaf to ``size`` along ``axis`` by repeating its last entry (the
    padding members train like a real one and are dropped; no NaN, no recompile)."""

    def one(x):
        x = np.asarray(x)
        n = x.shape[axis]
        if n == size:
            return x
        last = np.take(x, [n - 1], axis=axis)
        return np.concatenate([x, np.repeat(last, size - n, axis=axis)], axis=axis)

    return jax.tree_util.tree_map(one, tree)


class CompileCache:
    """A bounded LRU cache of compiled programs (the engine's only compile cache).

    Keyed by the program's name (a hashable tuple naming the program, the
    model, its static part and loop), the arguments' tree structure, shapes
    and dtypes, and the devices. At most ``maxsize`` programs are kept; the
    least recently used one is dropped first.
    """

    def __init__(self, maxsize: int = 64):
        self.maxsize = maxsize
        self._programs: collections.OrderedDict = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._programs)

    def clear(self) -> None:
        self._programs.clear()

    def get(self, name: tuple, fn: Callable, args: tuple, mesh: Mesh | None = None,
            specs: tuple | None = None) -> tuple[Any, float]:
        """``jit(fn)`` compiled for ``args`` and the seconds it took (0.0 if cached).

        ``specs`` gives a ``PartitionSpec`` per argument (applied to all its
        leaves) when the population is sharded over ``mesh``. Over a mesh of
        several processes the outputs are replicated (gathered inside the
        program), so that every process reads the whole result.
        """
        leaves, treedef = jax.tree_util.tree_flatten(args)
        signature = tuple((np.shape(a), str(getattr(a, "dtype", type(a).__name__)))
                          for a in leaves)
        key = (name, treedef, signature,
               None if mesh is None else tuple(d.id for d in mesh.devices.flat))
        if key in self._programs:
            self._programs.move_to_end(key)
            return self._programs[key], 0.0
        t0 = time.perf_counter()
        if mesh is None:
            compiled = jax.jit(fn).lower(*args).compile()
        else:
            in_sh = tuple(jax.tree_util.tree_map(lambda _, s=s: NamedSharding(mesh, s), a)
                          for a, s in zip(args, specs))
            out_sh = NamedSharding(mesh, SHARED) if spans_processes(mesh) else None
            compiled = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh) \
                .lower(*args).compile()
        seconds = time.perf_counter() - t0
        self._programs[key] = compiled
        while len(self._programs) > self.maxsize:
            self._programs.popitem(last=False)
        return compiled, seconds


CACHE = CompileCache()


def new_group_info(statics: dict, n_settings: int, chunk_size: int, n_chunks: int,
                   steps: int, eval_steps_: list) -> GroupInfo:
    """The record of one static group in a result, the same fields for every search."""
    return GroupInfo(statics=statics, n_settings=n_settings, chunk_size=chunk_size,
                     n_chunks=n_chunks, steps=steps, eval_steps=list(eval_steps_))


def progress_bar(total: int, progress, desc: str = "jaxhp sweep", unit: str = "chunk") -> Any:
    """A tqdm bar (``progress=None``: only on a terminal; ``True`` needs tqdm)."""
    if progress is False or jax.process_index() != 0:  # one bar for several processes
        return None
    if progress is None and not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        if progress is None:
            return None
        raise ImportError("progress=True needs tqdm: pip install 'jaxhp[progress]'") from e
    return tqdm(total=total, desc=desc, unit=unit)


class SweepWarning(UserWarning):
    """Some static groups of a sweep failed; the others' results are kept."""


class CallbackError(RuntimeError):
    """A search's ``on_chunk`` callback raised; the original error is its ``__cause__``.

    The search stops (the failure policy never records a callback's error as
    the group's); chunks (or rungs, ready points) already checkpointed stay
    valid, and the same call resumes from them.
    """


class ChunkReporter:
    """Calls a search's ``on_chunk`` with each finished chunk (its one home).

    Both the sweep's chunk loop and :meth:`Runner.run` (the adaptive searches)
    report through :meth:`report`, which builds the :class:`~jaxhp.ChunkRecord`
    and turns an exception of the callback into :class:`CallbackError`.
    """

    def __init__(self, on_chunk: Callable[[ChunkRecord], Any] | None, search: str,
                 seed_ids: np.ndarray):
        if on_chunk is not None and not callable(on_chunk):
            raise TypeError(f"`on_chunk`={on_chunk!r}: must be a callable taking one "
                            "jaxhp.ChunkRecord, or None")
        self.fn, self.search = on_chunk, search
        self.seed_ids = np.asarray(seed_ids, np.int64)
        self.folder: str | None = None  # the checkpoint folder, named in errors

    def __bool__(self) -> bool:
        return self.fn is not None

    def report(self, *, group: int, chunk: int, step: int, rows, settings: dict,
               val: dict, train_loss, diverged_at, loaded: bool = False) -> None:
        """Reports ``m`` settings: ``val``, ``train_loss``, ``diverged_at`` have
        leaves ``(seeds, >= m)`` as the programs return them (padding dropped here)."""
        if self.fn is None:
            return
        rows = np.asarray(rows, np.int64)
        m = rows.size
        record = ChunkRecord(
            search=self.search, group=int(group), chunk=int(chunk), step=int(step),
            rows=rows, settings={k: np.asarray(v)[:m] for k, v in settings.items()},
            seed_ids=self.seed_ids,
            val={k: np.asarray(v)[:, :m].T for k, v in val.items()},
            train_loss=np.asarray(train_loss)[:, :m].T,
            diverged_at=np.asarray(diverged_at, np.int64)[:, :m].T, loaded=bool(loaded))
        try:
            self.fn(record)
        except Exception as e:
            saved = (f"; what is checkpointed in {self.folder} stays valid and the same "
                     "call resumes from it") if self.folder else ""
            raise CallbackError(
                f"on_chunk raised {type(e).__name__}: {e} (chunk {chunk} of static group "
                f"{group} of {self.search}, step {step}); the {self.search} stopped"
                f"{saved}") from e


def settings_columns(hp: HParams, rows) -> dict[str, np.ndarray]:
    """``{field: column}`` of rows ``rows`` of a batched setting (its statics repeated,
    typed as a settings table types them)."""
    idx = np.asarray(rows, np.int64)
    per_member = set(type(hp).tunable_names())  # and the padded fields of a padded group
    per_member |= set(padded_fields(hp))
    return {name: np.asarray(getattr(hp, name))[idx] if name in per_member
            else constant_column(f, getattr(hp, name), idx.size)
            for name, f in type(hp).fields().items()}


def report_failures(groups: list[dict], errors: list[BaseException]) -> None:
    """Warns when some static groups failed (quoting the first error); raises the first
    error when every group failed, since no result is then left to select from."""
    failed = [g for g in groups if g.error]
    if not failed:
        return
    if len(failed) == len(groups) and errors:
        raise errors[0]
    statics = ", ".join(f"{k}={v!r}" for k, v in failed[0].statics.items())
    warnings.warn(
        f"{len(failed)} of {len(groups)} static group(s) of the sweep failed and are "
        f"marked 'failed' in the result (never selected); the first ({statics}): "
        f"{failed[0].error}. All messages: result.errors; on_error='raise' stops at "
        "the first.", SweepWarning, stacklevel=3)




def validate_groups(model: Model, firsts: Sequence[HParams], split,
                    on_error: str) -> tuple[dict[int, str], list[BaseException]]:
    """Checks the model and data once per static group (``firsts[g]``: one setting of
    group ``g``), before anything compiles.

    Bad input (``ModelError``, ``DataError``, ``HParamsError``) is raised; any
    other error of a user function is recorded for its group under
    ``on_error="record"`` (returned as ``{group: message}`` and the exceptions).
    """
    failures: dict[int, str] = {}
    errors: list[BaseException] = []
    check_model_data(model, split)  # once for every group (the search ran check_split)
    for gi, first in enumerate(firsts):
        try:
            validate(model, first, split, data_checked=True)
        except (ModelError, DataError, HParamsError):
            raise
        except Exception as e:  # noqa: BLE001 - a user function failed for this group
            if on_error == "raise":
                raise
            failures[gi] = f"{type(e).__name__}: {e}"
            errors.append(e)
    return failures, errors


@contextlib.contextmanager
def failure_policy(info: GroupInfo, on_error: str, errors: list, ckpt,
                   resume_hint: Callable[[], str]):
    """The failure policy around one static group of any search (its one home).

    An error of the group's own computation is re-raised under
    ``on_error="raise"``; under ``"record"`` its message goes to ``info.error``
    (the exception to ``errors``, unless it is a :class:`GroupFailed` already
    recorded before compiling) and the search goes on with the next group; the
    caller marks the group's rows failed when ``info.error`` is set. A
    checkpoint's fault (``FormatError``, ``OSError``) is never the group's and
    is raised, as is an ``on_chunk`` callback's (:class:`CallbackError`);
    ``Ctrl-C`` prints ``resume_hint()`` when a checkpoint keeps the work done so
    far, then is raised.
    """
    try:
        yield
    except KeyboardInterrupt:
        if ckpt is not None:
            print(f"jaxhp: interrupted; {resume_hint()}", file=sys.stderr)
        raise
    except (FormatError, OSError, CallbackError):
        raise
    except Exception as e:  # noqa: BLE001 - the failure policy
        if on_error == "raise":
            raise
        info.error = str(e) if isinstance(e, GroupFailed) else f"{type(e).__name__}: {e}"
        if not isinstance(e, GroupFailed):
            errors.append(e)


def _init_program(model: Model):
    init = population.init

    def program(hp, key, seed_ids):
        return init(model, hp, population.member_keys(key, seed_ids))

    return program


def recheck_size(k: int, chunk: int, n_devices: int) -> int:
    """Settings in the batch that runs ``k`` suspect settings again checked: a power of
    two (few distinct sizes, so few compiles), a device multiple, at most the chunk."""
    r = max(1 << (k - 1).bit_length(), n_devices)
    return min(chunk, -(-r // n_devices) * n_devices)


def recheck(out, dead_at, m: int, chunk: int, mesh: Mesh | None,
            run_checked: Callable, info: GroupInfo):
    """A chunk's outputs ``out`` (numpy leaves ``(replicas, settings, ...)``, from the
    program whose steps check the loss only) with its suspect settings
    (``population.suspects`` of ``dead_at``, among the ``m`` real ones) replaced by
    ``run_checked(rows, size)``: the checked program's outputs for those rows, padded
    to ``size`` settings (:func:`recheck_size`). The one rule for every search."""
    bad = population.suspects(dead_at)
    bad = bad[bad < m]  # padding rows are dropped anyway
    if not len(bad):
        return out
    size = recheck_size(len(bad), chunk, 1 if mesh is None else mesh.devices.size)
    again = run_checked(bad, size)
    info.rechecked += len(bad)
    return population.replace_settings(out, bad, again)


def _segment_program(model: Model, cfg: LoopConfig, length: int, checked: bool = True):
    """Steps ``s0 .. s1 - 1`` of a chunk, then its evaluation. A segment from step 0
    initialises its members first (a ``lax.cond`` on ``s0``: the ``carry`` passed is
    then a placeholder of the carry's shapes), so one program serves a search's first
    and later segments: one compile in all."""
    advance = population.advance(model, cfg, length, checked)
    evaluate = population.evaluate(model)

    def program(hp, carry, train_part, val_part, s0, s1, key, seed_ids):
        keys = population.member_keys(key, seed_ids)

        def fresh():
            new = population.init(model, hp, keys)
            return jax.tree_util.tree_map(lambda a, b: a.astype(b.dtype), new, carry)

        carry = jax.lax.cond(s0 == 0, fresh, lambda: carry)
        carry, losses = advance(hp, carry, train_part, s0, s1, keys)
        val, train_loss = evaluate(hp, carry, val_part, train_part, keys)
        return carry, losses, val, train_loss

    return program


_SEGMENT_SPECS = (POP, MEMBERS) + (SHARED,) * 6


class Runner:
    """One static group's population on the host, run in fixed-size sharded chunks.

    Holds the settings (a batched ``HParams``, e.g. :meth:`SettingsTable.batch` of
    the group's rows, whose tunable columns a policy may replace), the carry of
    every member (leaves ``(seeds, settings, ...)``, numpy), and what each
    member did, in dense buffers: its loss at every step, its validation
    metrics after each segment it ran, its last training objective. :meth:`run`
    trains any subset of members over steps ``[s0, s1)`` (from scratch when
    ``s0 == 0``) with one compiled program (initialise when ``s0 == 0``, train a
    segment of at most ``length`` steps, evaluate), whatever the subset, the
    segment or the tunable values; :meth:`outcome` gives what every member did as one
    ``Run``. :meth:`state` and :meth:`restore` save and resume all of it exactly.
    """

    def __init__(self, ctx: dict, hp: HParams, cfg: LoopConfig, chunk: int,
                 length: int, info: GroupInfo, total_steps: int, max_evals: int, *,
                 group: int = 0, rows=None):
        self.ctx, self.cfg, self.c, self.length, self.info = ctx, cfg, chunk, length, info
        self.hp = hp
        n, s = len(hp), len(ctx["seed_ids"])
        # what ctx["reporter"] (the search's on_chunk) is told: the group, the members'
        # rows in the search's result, and a counter of the chunks reported
        self.group = group
        self.rows = np.arange(n) if rows is None else np.asarray(rows, np.int64)
        self.n_reported = 0
        self.shape = (n, s)
        self.carry = None  # leaves (seeds, n, ...), allocated from the first chunk
        self.loss = np.full((s, n, total_steps), np.nan, np.float32)
        self.val: dict[str, np.ndarray] = {}  # metric -> (seeds, n, max_evals)
        self.max_evals = max_evals
        self.n_evals = np.zeros(n, np.int64)
        self.train_loss = np.full((s, n), np.nan, np.float32)
        self.trained = np.zeros(n, np.int64)

    def _call(self, name, fn, specs, args, chunk: bool = True):
        compiled, dt = CACHE.get(name, fn, args, self.ctx["mesh"], specs)
        self.info.compile_s += dt
        self.info.compiled += int(dt > 0)
        t0 = time.perf_counter()
        out = jax.device_get(jax.block_until_ready(compiled(*args)))
        self.info.run_s += time.perf_counter() - t0
        self.info.chunks_computed += int(chunk)
        return out

    def _segment(self, checked: bool, hp, carry, s0: int, s1: int):
        """One segment program's call (steps that check the loss only, or every step)."""
        model, mesh, shared = self.ctx["model"], self.ctx["mesh"], self.ctx["shared"]
        args = (put(hp, mesh, POP), put(carry, mesh, MEMBERS), shared["train"],
                shared["val"], np.int32(s0), np.int32(s1), shared["key"], shared["seed_ids"])
        return self._call(("population-segment", model, self.cfg, self.length, checked),
                          _segment_program(model, self.cfg, self.length, checked),
                          _SEGMENT_SPECS, args, chunk=not checked)

    def _recheck(self, out, hp, carry, m: int, s0: int, s1: int):
        """``out`` with its suspect settings (a non-finite state after the segment)
        trained again over the segment, from the same carry, by the checked program."""

        def run_checked(bad, size):
            return self._segment(True, pad_axis(population.take_settings(hp, bad), size),
                                 pad_axis(population.take(carry, bad), size, axis=1), s0, s1)

        return recheck(out, out[0][1], m, self.c, self.ctx["mesh"], run_checked, self.info)

    def run(self, alive: np.ndarray, s0: int, s1: int) -> tuple[dict, np.ndarray]:
        """Trains the members ``alive`` from step ``s0`` to ``s1`` in fixed-size chunks;
        returns their validation metrics and health, ``(seeds, len(alive))``."""
        c = self.c
        val_out: dict = {}
        dead_out = []
        for start in range(0, len(alive), c):
            rows = np.asarray(alive[start:start + c])
            m = len(rows)
            hp = pad_axis(population.take_settings(self.hp, rows), c)
            if self.carry is None:  # every member's carry, allocated from its shapes
                self.carry = self._blank_carry(self.shape[0])
            # from step 0 the program initialises the members: the carry passed is a
            # placeholder of the right shapes (this buffer's zeros)
            carry = pad_axis(population.take(self.carry, rows), c, axis=1)
            out = self._segment(False, hp, carry, s0, s1)
            carry, losses, val, train_loss = self._recheck(out, hp, carry, m, s0, s1)
            for dst, src in zip(jax.tree_util.tree_leaves(self.carry),
                                jax.tree_util.tree_leaves(carry)):
                dst[:, rows] = src[:, :m]
            self.loss[:, rows, s0:s1] = losses[:, :m, :s1 - s0]
            k_eval = self.n_evals[rows]
            for k, v in val.items():
                buf = self.val.setdefault(k, np.full(self.shape[::-1] + (self.max_evals,),
                                                     np.nan, np.float32))
                buf[:, rows, k_eval] = v[:, :m]
                val_out.setdefault(k, []).append(v[:, :m])
            self.n_evals[rows] += 1
            self.train_loss[:, rows] = train_loss[:, :m]
            self.trained[rows] = s1
            dead_out.append(carry[1][:, :m])
            reporter = self.ctx.get("reporter")
            if reporter:
                reporter.report(group=self.group, chunk=self.n_reported, step=s1,
                                rows=self.rows[rows], settings=settings_columns(self.hp, rows),
                                val=val, train_loss=train_loss, diverged_at=carry[1])
                self.n_reported += 1
        return ({k: np.concatenate(v, axis=1) for k, v in val_out.items()},
                np.concatenate(dead_out, axis=1))

    def outcome(self) -> Run:
        """Every member's outcome as one ``Run``, leaves ``(seeds, members, ...)``, from
        the dense buffers: a member's final validation metrics are those of its last
        evaluation; curves are NaN past what it trained (or was evaluated), cut at the
        longest member's."""
        last = (self.n_evals - 1)[None, :, None]
        t, e = int(self.trained.max(initial=0)), int(self.n_evals.max(initial=0))
        return Run(None, self.train_loss,
                   {k: np.take_along_axis(v, last, axis=2)[:, :, 0]
                    for k, v in self.val.items()},
                   self.loss[:, :, :t], {k: v[:, :, :e] for k, v in self.val.items()},
                   np.asarray(self.carry[1], np.int32))

    def state(self) -> dict:
        """Everything needed to continue exactly: carry leaves, tunables, buffers."""
        return {"carry": jax.tree_util.tree_leaves(self.carry),
                "hp": {k: np.asarray(v) for k, v in self.hp.tunables().items()},
                "loss": self.loss, "val": dict(self.val), "n_evals": self.n_evals,
                "train_loss": self.train_loss, "trained": self.trained}

    def _blank_carry(self, n: int):
        """Zeros of every member's carry for ``n`` settings, leaves ``(seeds, n, ...)``
        (shapes traced with ``jax.eval_shape``: nothing compiles)."""
        model, shared = self.ctx["model"], self.ctx["shared"]
        hp = pad_axis(population.take_settings(self.hp, np.arange(1)), 1)
        structure = jax.eval_shape(_init_program(model), hp, shared["key"],
                                   shared["seed_ids"])
        return jax.tree_util.tree_map(
            lambda a: np.zeros(a.shape[:1] + (n,) + a.shape[2:], a.dtype), structure)

    def restore(self, state: dict) -> None:
        """Puts back a :meth:`state` (the carry's tree structure is traced, not saved)."""
        self.carry = jax.tree_util.tree_unflatten(
            jax.tree_util.tree_structure(self._blank_carry(1)),
            [np.array(a) for a in state["carry"]])
        self.hp = population.replace_tunables(self.hp, **state["hp"])
        self.loss, self.n_evals = np.array(state["loss"]), np.array(state["n_evals"])
        self.val = {k: np.array(v) for k, v in state["val"].items()}
        self.train_loss, self.trained = np.array(state["train_loss"]), \
            np.array(state["trained"])
