"""Small helpers shared by the test modules (import with ``from helpers import ...``).

``count_compiles()`` counts XLA backend compilations: JAX reports each one as a
``/jax/core/compile/backend_compile_duration`` event, and a listener registered
once, when this module is imported, forwards it to every open counter. A cache
hit (same function, same static arguments, same shapes) compiles nothing, so
this is the direct way to prove "a new tunable value reuses the program".
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxhp

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

# The test run compiles with LLVM's cheap settings (tests/conftest.py): the suite's time
# is mostly XLA compilation of small programs run for a few steps. Same programs, same
# semantics; measured on 2 CPU cores: test_sweep 97 -> 79 s, test_model_state 100 -> 76 s.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0",
                      "--xla_llvm_disable_expensive_passes=true")



class CompileCount:
    """The number of XLA compilations seen while the counter was open."""

    def __init__(self) -> None:
        self.count = 0

    def __repr__(self) -> str:
        return f"CompileCount(count={self.count})"


_open_counters: list[CompileCount] = []


def _on_event(event: str, duration_secs: float, **kwargs) -> None:
    del duration_secs, kwargs
    if event == COMPILE_EVENT:
        for counter in _open_counters:
            counter.count += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


@contextlib.contextmanager
def count_compiles() -> Iterator[CompileCount]:
    """Counts XLA compilations inside the ``with`` block.

    Example:
      >>> with count_compiles() as c:
      ...     f(x)
      >>> assert c.count == 0
    """
    counter = CompileCount()
    _open_counters.append(counter)
    try:
        yield counter
    finally:
        _open_counters.remove(counter)


def tree_leaves_np(tree) -> list[np.ndarray]:
    """The leaves of a pytree as NumPy arrays."""
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_trees_equal(a, b) -> None:
    """Same structure and bit-identical leaves (NaN equal to NaN)."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(tree_leaves_np(a), tree_leaves_np(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x, y)


def assert_trees_close(a, b, *, rtol: float, atol: float) -> None:
    """Same structure, dtypes and shapes; leaves equal within ``rtol``/``atol``."""
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(tree_leaves_np(a), tree_leaves_np(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@contextlib.contextmanager
def on_progress(callback) -> Iterator[list]:
    """Calls ``callback(k)`` after the ``k``-th update of a jaxhp progress bar.

    A search run with ``progress=True`` advances its tqdm bar once a piece of work
    is finished and saved (a sweep's chunk, a rung, a PBT interval), so raising
    ``KeyboardInterrupt`` here is a Ctrl-C at that point, and sleeping here slows
    the search down between two saves. Yields the list of the updates' amounts.
    """
    from tqdm.auto import tqdm

    original = tqdm.update
    updates: list = []

    def update(self, n=1):
        out = original(self, n)
        updates.append(n)
        callback(len(updates))
        return out

    tqdm.update = update
    try:
        yield updates
    finally:
        tqdm.update = original


def interrupt_after(k: int):
    """A callback for :func:`on_progress`: Ctrl-C after the ``k``-th update."""
    def callback(count):
        if count == k:
            raise KeyboardInterrupt
    return callback


# A model whose parameters go non-finite before its loss does (the loss-checked steps'
# suspects: tests/test_sweep.py, tests/test_adaptive.py).
class GrowHP(jaxhp.HParams):
    """A ridge whose extra parameter ``s`` (not in the loss) grows every step."""

    learning_rate: float = jaxhp.tunable(0.05, low=0, low_open=True, log=True)
    growth: float = jaxhp.tunable(0.0, low=0, doc="`s` is multiplied by 1 + lr * growth")
    steps: int = jaxhp.static(40, low=1, integer=True)
    batch_size: int = jaxhp.static(None, low=1, integer=True)


def grow_model() -> jaxhp.Model:
    def init(key, hp):
        del key, hp
        return {"w": jnp.zeros((10,)), "b": jnp.zeros(()), "s": jnp.ones(())}

    def mse(params, batch):
        return jnp.mean((batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2)

    def loss(params, batch, hp, key=None):
        return 0.5 * mse(params, batch), {}

    def optimizer(hp):  # gradient descent; `s` (zero gradient) grows by decay < 0
        grow = optax.masked(optax.add_decayed_weights(-hp.growth),
                            {"w": False, "b": False, "s": True})
        return optax.chain(grow, optax.sgd(hp.learning_rate))

    return jaxhp.Model(init, loss, optimizer, lambda p, b, hp: {"mse": mse(p, b)},
                       hparams=GrowHP, directions={"mse": "min"})
