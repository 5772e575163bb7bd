"""The versions that define a result's numbers: jaxhp's own, and its runtime's.

Kept in a module of its own so that the layers below the package's
``__init__`` (checkpoints, results) read them without importing upwards.
"""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """jaxhp, JAX, jaxlib, Optax and Python versions, as recorded in results and
    checkpoint fingerprints."""
    import jax
    import jaxlib
    import optax

    return {"jaxhp_version": __version__, "jax_version": jax.__version__,
            "jaxlib_version": jaxlib.__version__, "optax_version": optax.__version__,
            "python": platform.python_version()}
