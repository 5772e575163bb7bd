"""What a search will do, without training: its static groups, chunks, compiled
programs, memory per device and member steps (``jaxhp sweep --dry-run``).

Each search sizes its chunks with the engine's functions (:func:`member_bytes`,
:func:`plan_chunks`, :func:`jaxhp._search.halving.search_chunk` for the rungs and
:func:`jaxhp._search.tune.starts_chunk` for gradient tuning's starts);
this module calls the same functions with the same arguments, before anything
compiles (only abstract evaluation of the model). The numbers are those of a run
whose chunk plan is fixed (an explicit ``chunk_size`` or a ``checkpoint_dir``, as
``jaxhp sweep`` always has): an automatic plan without a checkpoint may try other
chunk sizes as it measures them. Successive halving's rungs are their planned sizes:
a rung whose settings all diverged promotes fewer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np

from jaxhp import _engine as engine
from jaxhp._data import Folds, Split, check_split
from jaxhp._folds import check_folds
from jaxhp._member_steps import check_member_steps, refuse_padded_steps
from jaxhp._search.common import group_firsts, replace_columns
from jaxhp._search.halving import hyperband_brackets, rung_budgets, rung_sizes, search_chunk
from jaxhp._search.hypergrad import resolve_remat, resolve_wrt
from jaxhp._search.tune import start_bytes, starts_chunk
from jaxhp._train import resolve_loop


class GroupPlan(NamedTuple):
    """One static group of a planned search.

    Attributes:
      statics: the group's static fields.
      n_settings: the settings it trains.
      chunk_size: settings per compiled call.
      calls: compiled calls (chunks; an adaptive search counts each rung's or
        interval's chunks).
      compiles: programs compiled for it in a fresh process.
      member_bytes: the estimated device bytes of one member (setting x seed).
      device_bytes: the estimated bytes of one chunk on each device.
      member_steps: training steps summed over its members (settings x seeds; a
        group that pads ``steps`` runs its allocation for every member).
    """

    statics: dict
    n_settings: int
    chunk_size: int
    calls: int
    compiles: int
    member_bytes: int
    device_bytes: int
    member_steps: int


class Plan(NamedTuple):
    """A planned search: one :class:`GroupPlan` per static group, and the totals
    (``n_folds``: cross-validation folds; each setting trains seeds x folds members)."""

    search: str
    n_settings: int
    n_seeds: int
    n_devices: int
    groups: list
    n_folds: int = 1

    @property
    def compiles(self) -> int:
        return sum(g.compiles for g in self.groups)

    @property
    def calls(self) -> int:
        return sum(g.calls for g in self.groups)

    @property
    def member_steps(self) -> int:
        return sum(g.member_steps for g in self.groups)

    @property
    def device_bytes(self) -> int:
        return max((g.device_bytes for g in self.groups), default=0)


def plan_search(model, space, split: Split | Folds, *, search: str = "sweep",
                seeds: int | Sequence[int] = 1, base=None,
                devices: Sequence[jax.Device] | None = None, chunk_size=None,
                memory_budget: int | None = None, max_chunk: int | None = None,
                keep_params: bool = False, eval_every: int | None = None,
                loss_every: int | None = 1, min_steps: int | None = None, eta: int = 3,
                max_steps: int | None = None, steps: int | None = None,
                ready_every: int | None = None, wrt=None, mode: str = "reverse",
                keep: str = "final", remat="auto", **_ignored) -> Plan:
    """The plan of ``search`` (``"sweep"``, ``"halving"``, ``"hyperband"``, ``"pbt"`` or
    ``"gradient"``, whose ``steps`` are its outer steps, default 30) with the arguments
    the search function takes; nothing is compiled or trained.
    ``split`` may be :class:`~jaxhp.Folds` for a sweep: every setting then trains
    seeds x folds members (replicas), as :func:`jaxhp.sweep` plans them."""
    seed_ids = engine.check_seeds(seeds)
    engine.check_chunking(chunk_size, memory_budget, max_chunk)
    n_dev = len(engine.mesh_for(devices)[0])
    s = len(seed_ids)
    table = engine.table_from(space, model, base, search)
    folds = split if isinstance(split, Folds) else None
    if folds is not None and search != "sweep":
        raise TypeError(f"{search}: K-fold cross-validation (jaxhp.Folds) is supported by "
                        "sweep only")
    if folds is None:
        n_train = check_split(split)[0]
    else:  # fold 0 stands for the checks; chunks hold seeds x folds replicas
        n_train, split = int(folds.sizes[0].max()), check_folds(folds)
        s *= folds.k
    if search in ("halving", "hyperband") and max_steps is not None:
        table = replace_columns(table, steps=np.full(len(table), max_steps))
    if search == "pbt":
        if steps is None:
            steps = int(np.unique(table.columns["steps"])[0])
        table = replace_columns(table, steps=np.full(len(table), steps))
    firsts = group_firsts(table)
    if search in ("halving", "hyperband", "pbt"):
        who = {"halving": "successive_halving"}.get(search, search)
        for gi, first in enumerate(firsts):
            refuse_padded_steps(first, who, dict(table.group_statics[gi]))
    out = []
    for gi, first in enumerate(firsts):
        n = len(table.rows(gi))
        statics = dict(table.group_statics[gi])
        if search == "sweep":
            cfg = resolve_loop(first, n_train, eval_every, loss_every)
            rows = table.rows(gi)
            check_member_steps(first, table.columns["steps"][rows], rows, eval_every)
            per = engine.member_bytes(model, first, cfg,
                                      engine.count_metrics(model, first, split.val),
                                      keep_params)
            c = engine.plan_chunks(n, s, per, n_dev, chunk_size, memory_budget, max_chunk)
            out.append(GroupPlan(statics, n, c, math.ceil(n / c), 1, per,
                                 per * s * c // n_dev, n * s * cfg.steps))
        elif search in ("halving", "hyperband"):
            cfg = resolve_loop(first, n_train, None, None)
            if search == "halving":
                brackets = [(n, rung_budgets(min_steps, first.steps, eta))]
            else:
                brackets = hyperband_brackets(min_steps, first.steps, eta)
                need = sum(m for m, _ in brackets)
                if n < need:  # as hyperband() refuses it
                    raise ValueError(f"hyperband(): the brackets {[m for m, _ in brackets]} "
                                     f"need {need} settings, the space has {n}; sample at "
                                     f"least {need}")
            sizes = [[*rung_sizes(m, b, eta)] for m, b in brackets]
            length = max(max([b[0]] + [y - x for x, y in zip(b, b[1:])]) for _, b in brackets)
            per = engine.member_bytes(model, first, cfg, 1, False) + 4 * length
            flat = [z for zs in sizes for z in zs]
            cap = engine.plan_chunks(max(flat), s, per, n_dev, None, memory_budget, max_chunk)
            c = search_chunk(flat, cap, n_dev, chunk_size)
            calls = sum(math.ceil(z / c) for zs in sizes for z in zs)
            member_steps = sum(z * s * (b[r] - (b[r - 1] if r else 0))
                               for zs, (_, b) in zip(sizes, brackets)
                               for r, z in enumerate(zs))
            used = sum(m for m, _ in brackets)
            out.append(GroupPlan(statics, used, c, calls, 1, per, per * s * c // n_dev,
                                 member_steps))
        elif search == "pbt":
            if n < 2:  # as pbt() refuses it
                raise ValueError(f"pbt(): a population (a static group) has {n} setting; "
                                 "exploit needs at least 2 per static group")
            cfg = resolve_loop(first, n_train, None, None)
            per = engine.member_bytes(model, first, cfg, 1, True) + 4 * ready_every
            c = engine.plan_chunks(n, s, per, n_dev, chunk_size, memory_budget, max_chunk)
            segments = math.ceil(steps / ready_every)
            out.append(GroupPlan(statics, n, c, math.ceil(n / c) * segments, 1, per,
                                 per * s * c // n_dev, n * s * steps))
        elif search == "gradient":
            cfg = resolve_loop(first, n_train, None, None)
            if mode == "reverse":
                cfg = cfg._replace(remat=resolve_remat(remat, cfg.steps))
            names = resolve_wrt(table.cls, wrt)  # as tune_gradient() refuses a bad `wrt`
            member = engine.member_bytes(model, first, cfg, 1, False)
            per = start_bytes(model, first, cfg, mode, len(names), s)
            c = starts_chunk(n, s, member, per, n_dev, chunk_size, memory_budget, max_chunk)
            outer = 30 if steps is None else steps
            out.append(GroupPlan(statics, n, c, math.ceil(n / c), 1, per // s,
                                 per * c // n_dev,
                                 n * s * (outer + 1 + (keep == "best")) * cfg.steps))
        else:
            raise ValueError(f"`search`={search!r}: must be 'sweep', 'halving', "
                             "'hyperband', 'pbt' or 'gradient'")
    return Plan(search, sum(g.n_settings for g in out), len(seed_ids), n_dev, out,
                1 if folds is None else folds.k)
