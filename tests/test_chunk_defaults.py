"""Chunk defaults per backend: CPU as measured, GPU/TPU from the device's memory.

The accelerator cases run on the CPU with the backend query (``jax.default_backend``)
and the device query (``jax.local_devices``) replaced: the planning is what is tested,
not an accelerator.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxhp
from jaxhp import models

GiB = 2**30


class FakeDevice:
    """A device whose ``memory_stats()`` reports ``bytes_limit`` (or raises)."""

    def __init__(self, bytes_limit=None):
        self.bytes_limit = bytes_limit

    def memory_stats(self):
        if self.bytes_limit is None:
            raise NotImplementedError("no memory stats on this backend")
        return {"bytes_limit": self.bytes_limit, "bytes_in_use": 0}


def test_cpu_defaults_are_the_measured_constants():
    d = jaxhp.chunk_defaults()
    assert d == jaxhp.ChunkDefaults(backend="cpu", max_chunk=512, memory_budget=512 * 2**20,
                                    cache_budget=64 * 2**20, device_memory=None, source="cpu")
    assert jaxhp.chunk_defaults("cpu") == d


def test_accelerator_defaults_come_from_the_device_memory():
    gpu = jaxhp.chunk_defaults("gpu", FakeDevice(80 * GiB))
    assert gpu == jaxhp.ChunkDefaults("gpu", 65_536, 20 * GiB, None, 80 * GiB,
                                      "memory_stats")
    tpu = jaxhp.chunk_defaults("tpu", FakeDevice(None))  # no stats: 1/4 of 16 GiB
    assert tpu == jaxhp.ChunkDefaults("tpu", 65_536, 4 * GiB, None, None, "constant")


@pytest.fixture
def as_gpu(monkeypatch):
    """The backend reads "gpu"; its device reports ``memory[0]`` bytes (None: nothing)."""
    memory = [None]
    local_devices = jax.local_devices

    def fake_local_devices(*args, backend=None, **kw):
        if backend == "gpu":
            return [FakeDevice(memory[0])]
        return local_devices(*args, backend=backend, **kw)

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    monkeypatch.setattr(jax, "local_devices", fake_local_devices)
    return memory


def _sweep(diabetes, n=1200):
    space = jaxhp.random(n, learning_rate=jaxhp.loguniform(1e-3, 1e-1),
                         l2=jaxhp.loguniform(1e-5, 1e-1))
    return jaxhp.sweep(models.linear_regression(10), space, diabetes, key=jax.random.key(0),
                       base=models.LinearHP(steps=5), devices=jax.devices()[:1])


def test_sweep_plans_per_backend_and_records_it(diabetes, as_gpu):
    gpu = _sweep(diabetes)  # 1,200 settings: one chunk under the accelerator's cap
    assert gpu.meta["chunk_defaults"]["backend"] == "gpu"
    assert gpu.meta["chunk_defaults"]["source"] == "constant"
    assert gpu.groups[0].chunk_size == 1200 and gpu.groups[0].n_chunks == 1
    as_gpu[0] = 2**18  # a 256 KiB device: its budget (64 KiB) bounds the chunk
    small = _sweep(diabetes)
    as_gpu[0] = 2**19
    double = _sweep(diabetes)
    assert small.meta["chunk_defaults"]["memory_budget"] == 2**16
    assert small.meta["chunk_defaults"]["source"] == "memory_stats"
    c1, c2 = small.groups[0].chunk_size, double.groups[0].chunk_size
    assert 1 < c1 < 1200 and small.groups[0].n_chunks == -(-1200 // c1)
    # twice the memory: at most twice the chunk (chunks are evened out), half the chunks
    assert c1 < c2 <= 2 * c1
    assert double.groups[0].n_chunks == pytest.approx(small.groups[0].n_chunks / 2, abs=1)
    np.testing.assert_allclose(small.val["mse"], gpu.val["mse"], rtol=1e-5)


def test_cpu_sweep_keeps_the_measured_cap(diabetes):
    cpu = _sweep(diabetes)
    assert cpu.meta["chunk_defaults"] == jaxhp.chunk_defaults()._asdict()
    # at most 512 per device, evened out: 1,200 settings as 3 chunks of 400 (5 steps of
    # ridge run in far less time than trying other sizes would cost to compile)
    assert cpu.groups[0].chunk_size == 400 and cpu.groups[0].n_chunks == 3
