"""The machine's ceilings, measured with JAX on its default device: float32 matrix-product
throughput (GFLOP/s, best over a few square sizes) and copy bandwidth (GB/s, bytes read
plus written, of an out-of-place copy far larger than the caches)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def _best(fn, args, reps):
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(sizes=(512, 1024, 2048), reps: int = 5) -> dict:
    out = {}
    mm = jax.jit(lambda a, b: a @ b)
    rng = np.random.default_rng(0)
    for s in sizes:
        a = jnp.asarray(rng.standard_normal((s, s), np.float32))
        b = jnp.asarray(rng.standard_normal((s, s), np.float32))
        out[str(s)] = 2 * s ** 3 / _best(mm, (a, b), reps) / 1e9
    return {"gflops": max(out.values()), "by_size": out}


def copy_bandwidth(mbytes: int = 256, reps: int = 5) -> dict:
    n = mbytes * 2 ** 20 // 4
    x = jnp.arange(n, dtype=jnp.float32)
    copy = jax.jit(lambda a: a + 1.0)  # out of place: reads and writes every byte
    jax_gbs = 2 * 4 * n / _best(copy, (x,), reps) / 1e9
    src, dst = np.ones(n, np.float32), np.empty(n, np.float32)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    np_gbs = 2 * 4 * n / best / 1e9
    return {"gbs": max(jax_gbs, np_gbs), "jax_gbs": jax_gbs, "numpy_gbs": np_gbs,
            "mbytes": mbytes}


def measure(quick: bool = False, gpu: bool = False) -> dict:
    sizes = (512, 1024) if quick else ((2048, 4096, 8192) if gpu else (1024, 2048, 4096))
    mm = matmul_gflops(sizes, reps=3 if quick else 5)
    bw = copy_bandwidth(32 if quick else (1024 if gpu else 256), reps=3 if quick else 5)
    return {"matmul_gflops": mm["gflops"], "matmul_by_size": mm["by_size"],
            "copy_gbs": bw["gbs"], "copy": bw}
