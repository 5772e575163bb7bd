"""Shared fixtures: a compile counter and the bundled datasets, loaded once."""

from __future__ import annotations

import jax
import pytest
from helpers import count_compiles  # importing helpers registers the compile listener

import jaxhp


@pytest.fixture
def compile_counter():
    """Counts XLA compilations for the rest of the test (see ``helpers.count_compiles``)."""
    with count_compiles() as counter:
        yield counter


@pytest.fixture(scope="session")
def diabetes() -> jaxhp.Split:
    """Standardised diabetes (x and y), split (0.6, 0.2, 0.2) with key 0."""
    return jaxhp.datasets.load("diabetes", key=jax.random.key(0))


@pytest.fixture(scope="session")
def digits() -> jaxhp.Split:
    """Standardised digits (8x8 images, 10 classes), stratified split with key 0."""
    return jaxhp.datasets.load("digits", key=jax.random.key(0))
