"""Scrambled low-discrepancy point sets (Sobol and Halton), numpy only.

Both generators return an ``(n, d)`` float64 array of points in ``[0, 1)^d``
and are reproducible from an integer seed: the seed draws the scrambling, the
underlying sequence is fixed.

- **Sobol** (base 2): direction numbers come from primitive polynomials over
  GF(2), found here by an order test, with initial direction numbers drawn
  once from a fixed generator (the first two dimensions are the canonical
  ones: van der Corput and the ``x + 1`` dimension, so every 2-D prefix of
  ``2^m`` points is a (0, m, 2)-net). The seed applies Matousek's affine
  scramble: a random lower-triangular binary matrix on the digits (applied to
  the direction numbers, which is the same by linearity) and a random digital
  shift. The net property survives the scramble.
- **Halton** (prime bases): every digit position of every dimension gets its
  own random permutation of the digits (a random digit permutation
  scramble), which removes the correlations between dimensions of plain
  Halton.
"""

from __future__ import annotations

import functools

import numpy as np

_BITS = 52  # Sobol digits kept: x / 2**52 is exact in float64 and < 1.
_INIT_SEED = 20240613  # fixed: chooses Sobol's initial direction numbers once.


def _poly_mulmod(a: int, b: int, p: int, deg: int) -> int:
    """Product of two GF(2) polynomials (bit masks) modulo ``p`` of degree ``deg``."""
    out = 0
    while b:
        if b & 1:
            out ^= a
        b >>= 1
        a <<= 1
        if a >> deg & 1:
            a ^= p
    return out


def _x_power(e: int, p: int, deg: int) -> int:
    """``x**e`` modulo ``p`` over GF(2)."""
    result, base = 1, 0b10  # the polynomial x (deg > 1 here)
    while e:
        if e & 1:
            result = _poly_mulmod(result, base, p, deg)
        base = _poly_mulmod(base, base, p, deg)
        e >>= 1
    return result


def _prime_factors(n: int) -> list[int]:
    out, q = [], 2
    while q * q <= n:
        if n % q == 0:
            out.append(q)
            while n % q == 0:
                n //= q
        q += 1
    return out + ([n] if n > 1 else [])


def _is_primitive(p: int) -> bool:
    """Whether the GF(2) polynomial with bit mask ``p`` is primitive."""
    deg = p.bit_length() - 1
    if deg < 1 or not p & 1:
        return False
    if deg == 1:
        return p == 0b11
    order = (1 << deg) - 1
    if _x_power(order, p, deg) != 1:
        return False
    return all(_x_power(order // q, p, deg) != 1 for q in _prime_factors(order))


@functools.cache
def _primitive_polynomials(count: int) -> tuple[int, ...]:
    """The first ``count`` primitive polynomials, by degree then value."""
    found, p = [], 2
    while len(found) < count:
        p += 1
        if _is_primitive(p):
            found.append(p)
    return tuple(found)


@functools.cache
def _sobol_directions(dim: int) -> tuple[int, ...]:
    """The ``_BITS`` direction numbers of Sobol dimension ``dim`` (0-based)."""
    if dim == 0:
        return tuple(1 << (_BITS - k) for k in range(1, _BITS + 1))
    p = _primitive_polynomials(dim)[dim - 1]
    s = p.bit_length() - 1
    if dim == 1:
        m = [1]
    else:
        rng = np.random.default_rng([_INIT_SEED, dim])
        m = [2 * int(rng.integers(0, 1 << (k - 1))) + 1 for k in range(1, s + 1)]
    for k in range(s, _BITS):
        new = m[k - s] ^ (m[k - s] << s)
        for j in range(1, s):
            if p >> (s - j) & 1:
                new ^= m[k - j] << j
        m.append(new)
    return tuple(mk << (_BITS - k) for k, mk in enumerate(m[:_BITS], 1))


def _scramble_matrix(rng: np.random.Generator) -> list[int]:
    """Rows of a random lower-triangular unit-diagonal binary matrix, as masks."""
    rows = []
    for r in range(_BITS):  # r = 0 is the most significant digit
        above = int(rng.integers(0, 1 << r)) if r else 0
        rows.append((above << (_BITS - r)) | (1 << (_BITS - 1 - r)))
    return rows


def _apply_matrix(rows: list[int], v: int) -> int:
    out = 0
    for r, mask in enumerate(rows):
        out |= (bin(mask & v).count("1") & 1) << (_BITS - 1 - r)
    return out


@functools.lru_cache(maxsize=64)
def _sobol_setup(d: int, seed: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Per dimension: the scrambled direction numbers and the random shift (a pure
    function of ``(d, seed)``, cached: it costs ~10 ms of Python per call)."""
    rng = np.random.default_rng([seed, 2])
    out = []
    for j in range(d):
        rows = _scramble_matrix(rng)
        v = tuple(_apply_matrix(rows, vk) for vk in _sobol_directions(j))
        out.append((v, int(rng.integers(0, 1 << _BITS))))
    return tuple(out)


def sobol(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` affinely scrambled Sobol points in ``[0, 1)^d``."""
    index = np.arange(n, dtype=np.uint64)
    out = np.empty((n, d))
    for j, (v, shift) in enumerate(_sobol_setup(d, seed)):
        x = np.full(n, shift, dtype=np.uint64)
        for k in range(max(n - 1, 1).bit_length()):
            bit = (index >> np.uint64(k)) & np.uint64(1)
            x ^= bit * np.uint64(v[k])
        out[:, j] = x.astype(np.float64) / float(1 << _BITS)
    return out


def _primes(count: int) -> list[int]:
    found, q = [], 2
    while len(found) < count:
        if all(q % p for p in found if p * p <= q):
            found.append(q)
        q += 1
    return found


def halton(n: int, d: int, seed: int) -> np.ndarray:
    """``n`` Halton points in ``[0, 1)^d`` with random digit permutations."""
    rng = np.random.default_rng([seed, 3])
    index = np.arange(n, dtype=np.int64)
    out = np.zeros((n, d))
    for j, b in enumerate(_primes(d)):
        digits = int(_BITS / np.log2(b))
        rest, scale = index.copy(), 1.0
        for _ in range(digits):
            scale /= b
            out[:, j] += rng.permutation(b)[rest % b] * scale
            rest //= b
    return np.minimum(out, np.nextafter(1.0, 0.0))
