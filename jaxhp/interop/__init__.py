"""Models from the libraries people use: Flax Linen, Flax NNX and Equinox.

Each adapter turns a module factory (a function of the hyperparameter
setting) into a :class:`jaxhp.Model`; you write no ``init``/``apply`` glue:

- :func:`from_linen`: ``factory(hp) -> flax.linen.Module`` and an example input;
- :func:`from_nnx`: ``factory(hp, rngs) -> flax.nnx.Module``;
- :func:`from_equinox`: ``factory(hp, key) -> equinox.Module`` (one example at a
  time, vmapped over the batch).

All three take the same keywords: ``loss(out, batch, hp)`` on the module's
output, ``optimizer(hp)``, optional ``metrics(out, batch, hp)``, ``input`` (the
batch entry fed to the module, ``"x"``), ``hparams``, ``directions`` and
``name``. Static fields may shape the module; tunable fields reach the forward
pass as traced values and are never trained. Training passes the run's key
(dropout on), evaluation none (dropout off), mapped to each library's mode.

Flax and Equinox are imported when an adapter is called, not when jaxhp is
imported: ``pip install "jaxhp[interop]"``.
"""

from jaxhp.interop._equinox import from_equinox as from_equinox
from jaxhp.interop._linen import from_linen as from_linen
from jaxhp.interop._nnx import from_nnx as from_nnx

__all__ = ["from_equinox", "from_linen", "from_nnx"]
