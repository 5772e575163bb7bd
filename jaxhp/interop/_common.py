"""What the three adapters share: argument checks, the loss and metrics on a
module's output, the data check and the error for a missing extra."""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Mapping

from jaxhp._data import DataError
from jaxhp._model import Model, ModelError


def require(module: str, adapter: str):
    """Imports ``module`` (flax.linen, flax.nnx, equinox) or names the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"jaxhp.interop.{adapter} needs {module.split('.')[0]}: "
                          'pip install "jaxhp[interop]"') from e


def check_args(adapter: str, factory, loss, optimizer, metrics, input,
               has_state=False, param_mask=None) -> None:
    """Refuses arguments of the wrong kind, naming them, before anything is traced."""
    for name, fn in (("factory", factory), ("loss", loss), ("optimizer", optimizer)):
        if not callable(fn):
            raise TypeError(f"jaxhp.interop.{adapter}: `{name}` must be callable, got "
                            f"{type(fn).__name__}")
    if metrics is not None and not callable(metrics):
        raise TypeError(f"jaxhp.interop.{adapter}: `metrics` must be callable or None, "
                        f"got {type(metrics).__name__}")
    if param_mask is not None and not callable(param_mask):
        raise TypeError(f"jaxhp.interop.{adapter}: `param_mask` must be callable or None, "
                        f"got {type(param_mask).__name__}")
    if not isinstance(input, str):
        raise TypeError(f"jaxhp.interop.{adapter}: `input` names the batch entry that "
                        f"holds the module's input (a str such as 'x'), got {input!r}")
    if not isinstance(has_state, bool):
        raise TypeError(f"jaxhp.interop.{adapter}: `has_state`={has_state!r}: must be True "
                        "(the module has BatchNorm statistics or other non-trained "
                        "state) or False")


@functools.lru_cache(maxsize=256)
def call_params(fn) -> frozenset:
    """The names of the parameters of ``fn`` (empty when it has no signature)."""
    try:
        return frozenset(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return frozenset()


def default_name(adapter: str, factory) -> str:
    qual = getattr(factory, "__qualname__", None) or type(factory).__name__
    return f"{adapter}({qual})"


def build_model(adapter: str, *, init: Callable, forward: Callable, loss: Callable,
                optimizer: Callable, metrics: Callable | None, input: str, hparams,
                directions, name: str | None, factory, has_state: bool,
                param_mask: Callable | None = None) -> Model:
    """A :class:`jaxhp.Model` from ``init(key, hp) -> params`` (``(params, state)``
    when ``has_state``) and ``forward(params, state, x, hp, key) -> (out, new_state)``
    (``state`` None when stateless; ``key`` None: evaluation mode, state unchanged)."""

    def output(value):
        return value if isinstance(value, tuple) else (value, {})

    if has_state:
        def model_loss(params, state, batch, hp, key=None):
            out, new_state = forward(params, state, batch[input], hp, key)
            value, aux = output(loss(out, batch, hp))
            return value, (aux, new_state)

        def model_metrics(params, state, batch, hp):
            out, _ = forward(params, state, batch[input], hp, None)
            return dict(metrics(out, batch, hp))
    else:
        def model_loss(params, batch, hp, key=None):
            return output(loss(forward(params, None, batch[input], hp, key)[0], batch, hp))

        def model_metrics(params, batch, hp):
            return dict(metrics(forward(params, None, batch[input], hp, None)[0], batch, hp))

    def check_data(part, part_name):
        if not isinstance(part, Mapping) or input not in part:
            where = (f"split.{part_name}" if part_name in ("train", "val", "test")
                     else part_name)
            got = (f"entries {sorted(part)}" if isinstance(part, Mapping)
                   else f"a {type(part).__name__}")
            raise DataError(f'{where}["{input}"] is missing: the module reads '
                            f'batch["{input}"] (input={input!r}), got {got}; pass '
                            "input= naming the entry that holds the module's input")

    model_loss.__qualname__ = f"{adapter}.loss"
    model_metrics.__qualname__ = f"{adapter}.metrics"
    return Model(init, model_loss, optimizer,
                 None if metrics is None else model_metrics, hparams,
                 name or default_name(adapter, factory), directions=directions,
                 check_data=check_data, has_state=has_state, param_mask=param_mask)


def state_error(adapter: str, what: str) -> ModelError:
    """The module has non-trained state but the adapter was not told (``has_state``)."""
    return ModelError(f"{adapter}: the module has {what} (non-trained state such as "
                      f"BatchNorm statistics); pass has_state=True to {adapter}(...) so "
                      "that jaxhp carries it from step to step and reads it at evaluation")
