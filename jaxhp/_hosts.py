"""Several processes (hosts) and per-backend chunk defaults: the engine's view of the machine.

- **Processes.** After ``jax.distributed.initialize()`` the engine's mesh holds
  the devices of every process (``jax.devices()``). Every process runs the same
  search on the same settings (spaces are deterministic), so each one holds the
  whole host value of every input and feeds the shards of its own devices
  (:func:`global_put`); outputs are compiled replicated, so every process reads the
  full result. Only the first process of the mesh writes checkpoints
  (:func:`open_checkpoint`); the others read them, which assumes that
  ``checkpoint_dir`` is on a filesystem every process sees, and they check that
  they see the same finished chunks before anything runs.
- **Chunk defaults** (:func:`chunk_defaults`): on a CPU the caps measured by
  ``bench/``; on a GPU or TPU larger chunks bounded by a fraction of the device's
  memory (``device.memory_stats()``, or :data:`ACCELERATOR_MEMORY` when the
  backend does not report it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from jaxhp._checkpoint import Checkpoint

# --------------------------------------------------------------- chunk defaults
# On a 2-core CPU, ridge (265 examples) ran fastest at 512-1,024 settings per chunk
# per device: the (chunk, n_train) temporaries of a step stay in the cores' L2 caches;
# 2,048 was 8-14% slower (bench/, max_chunk sweep).
CPU_MAX_CHUNK = 512
# On a CPU, automatic chunks also keep their estimated working set (member bytes x
# members) near the caches: the MLP of bench/ (0.9 MB per member) ran 2-2.5x faster in
# chunks of 32-64 settings than of 256, where the Adam state streams from memory.
CPU_CACHE_BUDGET = 64 * 2**20
# The memory an automatic chunk may use per device when no budget is given, on a CPU.
CPU_MEMORY_BUDGET = 512 * 2**20
# On a GPU or TPU a chunk should fill the device: up to this many settings per device
# (not measured here: `python -m bench --gpu` times 512 to 262,144 per chunk) ...
ACCELERATOR_MAX_CHUNK = 65_536
# ... within this fraction of the device's memory (the per-member estimate of
# member_bytes is rough; XLA needs room for its own temporaries and the data) ...
ACCELERATOR_MEMORY_FRACTION = 0.25
# ... of the memory `device.memory_stats()["bytes_limit"]` reports, or of this size
# when the backend reports none (16 GiB: the smallest of current TPU v5e / data-centre
# GPU memories).
ACCELERATOR_MEMORY = 16 * 2**30


class ChunkDefaults(NamedTuple):
    """How automatic chunks are sized on a backend (:func:`jaxhp.chunk_defaults`).

    Attributes:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``, ... (``jax.default_backend()``).
      max_chunk: settings per device an automatic chunk holds at most (the
        default of every search's ``max_chunk=``).
      memory_budget: bytes per device an automatic chunk may use (estimated), the
        default of ``memory_budget=``.
      cache_budget: on a CPU, the working set per device an automatic chunk keeps
        near the caches (``None`` elsewhere, or when a ``memory_budget`` is given).
      device_memory: the device's memory in bytes as the backend reports it
        (``None``: not reported, or a CPU).
      source: where ``memory_budget`` comes from: ``"cpu"`` (the constant measured
        on a CPU), ``"memory_stats"`` (a fraction of ``device_memory``) or
        ``"constant"`` (a fraction of :data:`ACCELERATOR_MEMORY`, 16 GiB).
    """

    backend: str
    max_chunk: int
    memory_budget: int
    cache_budget: int | None
    device_memory: int | None
    source: str


def device_memory(device: jax.Device) -> int | None:
    """The bytes of memory ``device`` reports (``memory_stats()["bytes_limit"]``), or None."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - backends without the query raise various errors
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if isinstance(limit, (int, np.integer)) and limit > 0 else None


def chunk_defaults(backend: str | None = None,
                   device: jax.Device | None = None) -> ChunkDefaults:
    """The chunk sizing a search uses when ``max_chunk`` and ``memory_budget`` are left
    at their defaults, for a backend.

    On a CPU: at most 512 settings per device and a 64 MiB working set per device
    (measured by ``bench/`` on a 2-core CPU). On a GPU or TPU: at most 65,536
    settings per device, within a quarter of the device's memory as
    ``device.memory_stats()`` reports it, or of 16 GiB when it reports none. The
    accelerator values are estimates, not measurements: ``python -m bench --gpu``
    shows what a device wants; pass ``max_chunk=`` / ``memory_budget=`` to a
    search to override them. A result records the defaults it ran with in
    ``result.meta["chunk_defaults"]``.

    Args:
      backend: a JAX backend name (default: ``jax.default_backend()``).
      device: the device whose memory is asked (default: the backend's first).

    Returns:
      A :class:`ChunkDefaults`.

    Example:
      >>> jaxhp.chunk_defaults().max_chunk  # on a CPU
      512
    """
    backend = jax.default_backend() if backend is None else str(backend)
    if backend == "cpu":
        return ChunkDefaults("cpu", CPU_MAX_CHUNK, CPU_MEMORY_BUDGET, CPU_CACHE_BUDGET,
                             None, "cpu")
    if device is None:
        try:
            device = jax.local_devices(backend=backend)[0]
        except RuntimeError:  # the backend is not present here
            device = None
    memory = None if device is None else device_memory(device)
    source = "constant" if memory is None else "memory_stats"
    budget = int(ACCELERATOR_MEMORY_FRACTION * (ACCELERATOR_MEMORY if memory is None
                                                else memory))
    return ChunkDefaults(backend, ACCELERATOR_MAX_CHUNK, budget, None, memory, source)


# -------------------------------------------------------------------- processes
def mesh_processes(mesh: Mesh | None) -> list[int]:
    """The indices of the processes whose devices are in ``mesh`` (sorted)."""
    if mesh is None:
        return [jax.process_index()]
    return sorted({d.process_index for d in mesh.devices.flat})


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether ``mesh`` holds devices of another process than this one."""
    return mesh_processes(mesh) != [jax.process_index()]


def check_devices(devices: Sequence[jax.Device]) -> None:
    """Refuses devices that span some but not all processes, or omit this one's.

    A search over several processes runs collectives every process must join, so
    its devices come from every process (the default, ``jax.devices()``), or
    from this process alone (``jax.local_devices()``: independent runs).
    """
    procs = sorted({d.process_index for d in devices})
    if procs == [jax.process_index()]:
        return
    everyone = list(range(jax.process_count()))
    if procs != everyone:
        raise ValueError(
            f"`devices`: they belong to processes {procs}, but this is process "
            f"{jax.process_index()} of {jax.process_count()}; a search sharded over "
            "several processes must use devices of every process (the default, "
            "jax.devices()), or only this process's own (jax.local_devices())")


def global_put(tree, sharding: NamedSharding):
    """``tree`` as global arrays of ``sharding``, from the whole host value that every
    process holds (each process feeds the shards of its own devices)."""

    def one(x):
        if not isinstance(x, jax.Array):
            x = np.asarray(x)
        return jax.make_array_from_callback(np.shape(x), sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(one, tree)


def writer_process(mesh: Mesh | None) -> bool:
    """Whether this process writes a search's files: the first process of the mesh."""
    return jax.process_index() == mesh_processes(mesh)[0]


def _gather_ints(values: Sequence[int]) -> np.ndarray:
    """``values`` of every process, ``(processes, len(values))`` (a collective)."""
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))


def _done_digest(ckpt: Checkpoint | None) -> int:
    names = "\n".join(sorted(ckpt.done)) if ckpt is not None else ""
    return int.from_bytes(hashlib.sha256(names.encode()).digest()[:7], "little")


def open_checkpoint(folder, fp: dict, *, overwrite: bool, mesh: Mesh | None) -> Checkpoint:
    """A search's checkpoint folder, opened by every process of ``mesh``.

    One process: :class:`~jaxhp._checkpoint.Checkpoint` as is. Several: the first
    process of the mesh opens it (lock, comparison, cleanup, manifest) while the
    others wait; then the others open it read-only (they write nothing, ever),
    and all check that they see the same finished chunks, since every chunk is
    computed by all of them together or loaded by all of them. Every process
    raises if any failed, so none is left waiting in a collective.

    Raises:
      as :class:`~jaxhp._checkpoint.Checkpoint`, on the process that failed;
      RuntimeError on the others, naming the process; RuntimeError on every
      process when they see different finished chunks (``checkpoint_dir`` is not
      on a filesystem they share).
    """
    if not spans_processes(mesh):
        return Checkpoint(folder, fp, overwrite=overwrite)
    writer = writer_process(mesh)
    first = mesh_processes(mesh)[0]
    ckpt, error = None, None
    if writer:
        try:
            ckpt = Checkpoint(folder, fp, overwrite=overwrite)
        except Exception as e:  # noqa: BLE001 - raised below, after telling the others
            error = e
    opened = _gather_ints([error is None])
    if not opened.all():
        if error is not None:
            raise error
        raise RuntimeError(f"checkpoint_dir {folder}: process {first} could not open it "
                           "(its own error says why); this process stops too")
    if not writer:
        try:
            ckpt = Checkpoint(folder, fp, overwrite=False, writer=False)
        except Exception as e:  # noqa: BLE001 - raised below, after telling the others
            error = e
    seen = _gather_ints([error is None, -1 if ckpt is None else len(ckpt.done),
                         _done_digest(ckpt)])
    if not seen[:, 0].all():
        if ckpt is not None and writer:
            ckpt.close()
        if error is not None:
            raise error
        bad = int(np.flatnonzero(seen[:, 0] == 0)[0])
        raise RuntimeError(f"checkpoint_dir {folder}: process {bad} could not read it "
                           "(its own error says why); this process stops too")
    if len(set(seen[:, 2].tolist())) > 1:
        if writer:
            ckpt.close()
        counts = ", ".join(f"process {p}: {int(n)}" for p, n in enumerate(seen[:, 1]))
        raise RuntimeError(
            f"checkpoint_dir {folder}: the processes see different finished chunks "
            f"({counts}). Every process reads the checkpoint that process {first} writes, "
            "so checkpoint_dir must be on a filesystem all of them share (NFS, Lustre, "
            "GCS FUSE, ...), the same path on each")
    return ckpt
