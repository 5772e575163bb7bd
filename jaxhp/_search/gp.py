"""A Gaussian process in JAX: Matern 5/2 ARD kernel, exact posterior, marginal likelihood.

Pure functions over arrays (their dtype follows the inputs: float32, float64 under
``jax_enable_x64``) and :class:`GPSurrogate`, the public face of a fitted model.

Observations may be padded to a fixed capacity with a ``mask``: a masked point's row
and column of the kernel matrix are the identity's and its residual is zero, so the
posterior and the log marginal likelihood are exactly those of the real points (one
compiled program serves every number of points up to the capacity).

Hyperparameters (:class:`Hyper`) live in log space; the fit maximises the log
marginal likelihood with Adam from several starts at once (``vmap`` over starts, one
``jit``), each start a point of the box :data:`BOUNDS` reached through a sigmoid, so
every iterate is a valid model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.linalg import cho_solve, solve_triangular

__all__ = ["BOUNDS", "GPSurrogate", "Hyper", "fit", "joint_samples", "neg_log_likelihood",
           "posterior"]

# Box of the fitted hyperparameters (natural units; inputs in the unit cube, outputs
# standardised): lengthscale, signal variance, noise variance.
BOUNDS = {"lengthscale": (1e-2, 20.0), "signal_variance": (5e-2, 20.0),
          "noise_variance": (1e-4, 2.0)}
_SQRT5 = math.sqrt(5.0)


class Hyper(NamedTuple):
    """Kernel hyperparameters: ``k(x, x') = s * m52(|(x - x') / l|) + n * [x == x']``."""

    log_lengthscales: jax.Array  # (d,)
    log_signal: jax.Array  # log s
    log_noise: jax.Array  # log n
    mean: jax.Array  # the constant prior mean


def matern52(x1, x2, log_lengthscales, log_signal):
    """The Matern 5/2 ARD kernel matrix between rows of ``x1`` and ``x2``."""
    d = (x1[:, None, :] - x2[None, :, :]) / jnp.exp(log_lengthscales)
    r2 = jnp.sum(d * d, axis=-1)
    pos = r2 > 0  # sqrt's gradient at 0 is infinite: take it where r > 0 only
    a = _SQRT5 * jnp.where(pos, jnp.sqrt(jnp.where(pos, r2, 1.0)), 0.0)
    return jnp.exp(log_signal) * (1.0 + a + a * a / 3.0) * jnp.exp(-a)


def _factor(hyper: Hyper, x, y, mask):
    """Cholesky factor of the (masked) noisy kernel matrix and the weights ``K^-1 r``."""
    n = x.shape[0]
    k = matern52(x, x, hyper.log_lengthscales, hyper.log_signal)
    eye = jnp.eye(n, dtype=x.dtype)
    both = mask[:, None] & mask[None, :]
    k = jnp.where(both, k + jnp.exp(hyper.log_noise) * eye, eye)
    chol = jnp.linalg.cholesky(k)
    resid = jnp.where(mask, y - hyper.mean, 0.0)
    return chol, resid, cho_solve((chol, True), resid)


def neg_log_likelihood(hyper: Hyper, x, y, mask):
    """``-log p(y | x, hyper)`` of the unmasked points."""
    chol, resid, alpha = _factor(hyper, x, y, mask)
    n = jnp.sum(mask)
    return (0.5 * resid @ alpha + jnp.sum(jnp.log(jnp.diagonal(chol)))
            + 0.5 * n * math.log(2 * math.pi))


def _cross(hyper: Hyper, x, mask, xs):
    return matern52(xs, x, hyper.log_lengthscales, hyper.log_signal) * mask[None, :]


def posterior(hyper: Hyper, x, y, mask, xs):
    """Posterior mean and latent variance (noise excluded) of ``f`` at the rows of ``xs``."""
    chol, _, alpha = _factor(hyper, x, y, mask)
    ks = _cross(hyper, x, mask, xs)
    v = solve_triangular(chol, ks.T, lower=True)
    var = jnp.exp(hyper.log_signal) - jnp.sum(v * v, axis=0)
    return hyper.mean + ks @ alpha, jnp.maximum(var, 0.0)


def joint_samples(hyper: Hyper, x, y, mask, xs, key, n: int):
    """``n`` joint draws of the latent ``f`` at the rows of ``xs``: ``(n, len(xs))``.

    The posterior covariance is factored by ``eigh`` with negative eigenvalues
    (rounding) clipped to 0, which stays valid in float32 where a Cholesky of a
    near-singular covariance would not.
    """
    chol, _, alpha = _factor(hyper, x, y, mask)
    ks = _cross(hyper, x, mask, xs)
    v = solve_triangular(chol, ks.T, lower=True)
    cov = matern52(xs, xs, hyper.log_lengthscales, hyper.log_signal) - v.T @ v
    w, u = jnp.linalg.eigh(0.5 * (cov + cov.T))
    root = u * jnp.sqrt(jnp.maximum(w, 0.0))[None, :]
    z = jax.random.normal(key, (n, xs.shape[0]), xs.dtype)
    return hyper.mean + ks @ alpha + z @ root.T


def _box(name: str):
    lo, hi = BOUNDS[name]
    return math.log(lo), math.log(hi)


def _to_hyper(u, dtype) -> Hyper:
    """Unconstrained ``u`` (``d + 3``) -> hyperparameters inside :data:`BOUNDS`."""
    def squash(v, name):
        lo, hi = _box(name)
        return lo + (hi - lo) * jax.nn.sigmoid(v)
    u = u.astype(dtype)
    return Hyper(squash(u[:-3], "lengthscale"), squash(u[-3], "signal_variance"),
                 squash(u[-2], "noise_variance"), u[-1])


def _from_hyper(log_l, log_s, log_n, mean):
    """The inverse of :func:`_to_hyper` (numpy, for the first start)."""
    def unsquash(v, name):
        lo, hi = _box(name)
        p = np.clip((np.asarray(v, np.float64) - lo) / (hi - lo), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))
    return np.concatenate([np.atleast_1d(unsquash(log_l, "lengthscale")),
                           [unsquash(log_s, "signal_variance"),
                            unsquash(log_n, "noise_variance"), mean]])


@functools.partial(jax.jit, static_argnames=("starts", "steps"))
def _fit(x, y, mask, key, starts: int, steps: int):
    d = x.shape[1]
    first = _from_hyper(np.full(d, math.log(0.3)), 0.0, math.log(1e-2), 0.0)
    rand = jax.random.uniform(key, (starts - 1, d + 3), x.dtype, -2.0, 2.0)
    rand = rand.at[:, -1].set(0.0)  # the mean starts at the data's (standardised) 0
    u0 = jnp.concatenate([jnp.asarray(first, x.dtype)[None], rand])
    opt = optax.adam(0.08)

    def loss(u):
        return neg_log_likelihood(_to_hyper(u, x.dtype), x, y, mask)

    def run(u):
        def step(carry, _):
            u, s = carry
            g = jax.grad(loss)(u)
            g = jnp.where(jnp.isfinite(g), g, 0.0)
            upd, s = opt.update(g, s)
            return (optax.apply_updates(u, upd), s), None
        (u, _), _ = jax.lax.scan(step, (u, opt.init(u)), None, length=steps)
        return u, loss(u)

    us, losses = jax.vmap(run)(u0)
    losses = jnp.where(jnp.isfinite(losses), losses, jnp.inf)
    return _to_hyper(us[jnp.argmin(losses)], x.dtype), jnp.min(losses)


def fit(x, y, mask, key, starts: int = 8, steps: int = 120) -> tuple[Hyper, jax.Array]:
    """Hyperparameters maximising the marginal likelihood, and the minimal ``-log p``.

    Start 0 is a fixed, moderate model (lengthscales 0.3, signal 1, noise 0.01, mean
    0); the others are drawn from ``key``. All run ``steps`` Adam steps in one
    vmapped program; the best final likelihood wins.
    """
    return _fit(x, y, mask, key, starts=starts, steps=steps)


_posterior = jax.jit(posterior)
_nll = jax.jit(neg_log_likelihood)
_samples = jax.jit(joint_samples, static_argnames="n")


def _array(v, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(v)
    if a.ndim != ndim or a.dtype.kind not in "fiu" or not np.isfinite(a).all():
        raise ValueError(f"GPSurrogate: `{name}` must be a finite real array with {ndim} "
                         f"dimension(s), got shape {a.shape} dtype {a.dtype}")
    return a


@dataclasses.dataclass(frozen=True)
class GPSurrogate:
    """A Gaussian process over the unit cube: what :func:`jaxhp.bayesopt` believes.

    Matern 5/2 kernel with one lengthscale per input dimension (ARD), a signal
    variance, a white-noise variance and a constant mean. Computations follow the
    inputs' dtype (float32; float64 under ``jax_enable_x64``).

    Attributes:
      x: ``(n, d)`` observed inputs (for :func:`jaxhp.bayesopt`: the searched tunables
        in natural coordinates, log for log fields, scaled to ``[0, 1]`` by their
        bounds; ``result.meta["search"]["dims"]`` names the columns).
      y: ``(n,)`` observed outputs (for :func:`jaxhp.bayesopt`: the standardised
        metric, oriented so that lower is better).
      lengthscales: ``(d,)`` positive lengthscales.
      signal_variance, noise_variance: positive variances.
      mean: the constant prior mean.

    Example:
      >>> gp = jaxhp.GPSurrogate.fit(x, y, key=jax.random.key(0))
      >>> mean, std = gp.predict(x_new)
    """

    x: np.ndarray
    y: np.ndarray
    lengthscales: np.ndarray
    signal_variance: float
    noise_variance: float
    mean: float = 0.0

    def __post_init__(self):
        x = _array(self.x, "x", 2)
        y = _array(self.y, "y", 1)
        if len(y) != len(x):
            raise ValueError(f"GPSurrogate: `y` has {len(y)} values for {len(x)} rows of `x`")
        ls = _array(self.lengthscales, "lengthscales", 1)
        if ls.shape != (x.shape[1],) or (ls <= 0).any():
            raise ValueError(f"GPSurrogate: `lengthscales`={ls.tolist()}: need "
                             f"{x.shape[1]} positive values (one per column of `x`)")
        for name in ("signal_variance", "noise_variance"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating, np.integer)) and v > 0
                    and math.isfinite(v)):
                raise ValueError(f"GPSurrogate: `{name}`={v!r}: must be a positive number")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "lengthscales", ls)

    @classmethod
    def fit(cls, x, y, *, key: jax.Array, starts: int = 8, steps: int = 120) -> GPSurrogate:
        """The GP whose hyperparameters maximise the log marginal likelihood of ``y``.

        Lengthscales, signal and noise variances are searched in the box
        ``lengthscale`` in [0.01, 20], ``signal_variance`` in [0.05, 20],
        ``noise_variance`` in [1e-4, 2] (suited to inputs in the unit cube and
        standardised outputs), the mean freely; ``starts`` starts (one fixed, the
        others drawn from ``key``) run ``steps`` Adam steps in one vmapped program.

        Args:
          x: ``(n, d)`` inputs. y: ``(n,)`` outputs. key: a PRNG key.
          starts, steps: optimisation starts and Adam steps per start.

        Returns:
          The fitted :class:`GPSurrogate`.

        Example:
          >>> gp = jaxhp.GPSurrogate.fit(x, y, key=jax.random.key(0))
        """
        x = _array(x, "x", 2)
        y = _array(y, "y", 1)
        if len(y) != len(x) or not len(y):
            raise ValueError(f"GPSurrogate.fit: `x` has {len(x)} rows and `y` {len(y)} "
                             "values: need as many, at least one")
        # padded (masked) to a power of two: one program for many sizes of data
        cap = max(16, 1 << (len(y) - 1).bit_length())
        dtype = jax.dtypes.canonicalize_dtype(np.float64)
        xs = np.zeros((cap, x.shape[1]), dtype)
        ys = np.zeros(cap, dtype)
        xs[:len(y)], ys[:len(y)] = x, y
        hyper, _ = fit(xs, ys, np.arange(cap) < len(y), key, starts=int(starts),
                       steps=int(steps))
        return cls.from_hyper(x, y, hyper)

    @classmethod
    def from_hyper(cls, x, y, hyper: Hyper) -> GPSurrogate:
        """A surrogate from hyperparameters in log space (:class:`Hyper`).

        Example:
          >>> gp = GPSurrogate.from_hyper(x, y, hyper)
        """
        h = [np.asarray(v, np.float64) for v in hyper]
        return cls(np.asarray(x), np.asarray(y), np.exp(h[0]), float(np.exp(h[1])),
                   float(np.exp(h[2])), float(h[3]))

    def _args(self):
        x = jnp.asarray(self.x)
        dt = x.dtype if x.dtype.kind == "f" else jnp.result_type(float)
        x = x.astype(dt)
        hyper = Hyper(jnp.log(jnp.asarray(self.lengthscales, dt)),
                      jnp.log(jnp.asarray(self.signal_variance, dt)),
                      jnp.log(jnp.asarray(self.noise_variance, dt)),
                      jnp.asarray(self.mean, dt))
        return hyper, x, jnp.asarray(self.y, dt), jnp.ones(len(self.y), bool)

    def predict(self, x, *, include_noise: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation at the rows of ``x``.

        Args:
          x: ``(m, d)`` inputs.
          include_noise: add the noise variance (the predictive distribution of a
            new observation, as scikit-learn's ``predict(return_std=True)`` with a
            ``WhiteKernel``); default: the latent function's.

        Returns:
          ``(mean, std)``, two ``(m,)`` arrays.

        Example:
          >>> mean, std = gp.predict(x_new)
        """
        hyper, xo, y, mask = self._args()
        xs = jnp.asarray(_array(x, "x", 2), xo.dtype)
        mean, var = _posterior(hyper, xo, y, mask, xs)
        var = np.asarray(var) + (self.noise_variance if include_noise else 0.0)
        return np.asarray(mean), np.sqrt(var)

    def sample(self, x, *, key: jax.Array, n: int = 1) -> np.ndarray:
        """``n`` joint draws of the latent function at the rows of ``x``: ``(n, m)``.

        Example:
          >>> draws = gp.sample(x_new, key=jax.random.key(1), n=4)
        """
        hyper, xo, y, mask = self._args()
        xs = jnp.asarray(_array(x, "x", 2), xo.dtype)
        return np.asarray(_samples(hyper, xo, y, mask, xs, key, n=int(n)))

    def log_marginal_likelihood(self) -> float:
        """``log p(y | x)`` under this model's hyperparameters.

        Example:
          >>> gp.log_marginal_likelihood()
        """
        return -float(_nll(*self._args()))
