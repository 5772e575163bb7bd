"""Layers whose hyperparameters may be traced: usable with a tunable field.

Library layers often branch on a hyperparameter in Python (Flax's
``nn.Dropout`` runs ``if self.rate == 0.0``), which fails when the value is a
tunable field: a traced array under ``jit`` and ``vmap``. The functions here
take such values as arrays and never branch on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["dropout"]


def dropout(x: jax.Array, rate, key: jax.Array | None) -> jax.Array:
    """Inverted dropout whose rate may be traced (a tunable field).

    Each element of ``x`` is zeroed with probability ``rate`` and the others
    are scaled by ``1 / (1 - rate)``, so the expectation of the output is
    ``x``. ``rate == 1`` zeroes everything (no division by zero, no NaN, also
    in gradients). ``key=None`` is evaluation: ``x`` is returned unchanged,
    which is what jaxhp passes at evaluation (``loss(..., key=None)``).

    No gradient flows to ``rate`` (the mask is discrete; a hypergradient with
    respect to a dropout rate is 0, as in Equinox's ``Dropout``).

    Args:
      x: the activations (any shape, any float dtype; kept).
      rate: the probability of dropping an element, in ``[0, 1]``: a Python
        float or a scalar array, traced or not. A concrete value outside
        ``[0, 1]`` is refused; a traced one cannot be checked here (jaxhp
        checks the field's declared range instead).
      key: a PRNG key (training) or ``None`` (evaluation: the identity).

    Returns:
      An array of the shape and dtype of ``x``.

    Raises:
      ValueError: a concrete ``rate`` outside ``[0, 1]`` or not a scalar.

    Example:
      >>> h = jaxhp.nn.dropout(h, hp.dropout, key)   # key None at evaluation
    """
    if key is None:
        return x
    if not isinstance(rate, jax.core.Tracer):
        r = np.asarray(rate)
        if r.shape != () or not (0.0 <= float(r) <= 1.0):
            raise ValueError(f"dropout: `rate`={rate!r}: must be a scalar in [0, 1]")
    x = jnp.asarray(x)
    keep = 1.0 - jax.lax.stop_gradient(jnp.asarray(rate, jnp.result_type(float)))
    mask = jax.random.uniform(key, x.shape, keep.dtype) < keep
    scale = jnp.where(keep > 0, 1.0 / jnp.where(keep > 0, keep, 1.0), 0.0)
    return jnp.where(mask, x * scale.astype(x.dtype), jnp.zeros((), x.dtype))
