"""Shared pytest fixtures: the Array API namespaces the spec must run on, in float64."""
from __future__ import annotations

import importlib.util
from typing import Any, Callable

import numpy as np
import pytest

NAMESPACES = ("numpy", "array_api_strict", "torch", "jax")


class Namespace:
    """One array library as the tests see it: make arrays from NumPy, read them back."""

    def __init__(self, name: str, asarray: Callable[[np.ndarray], Any], to_numpy: Callable[[Any], np.ndarray]):
        self.name = name
        self.asarray = asarray
        self.to_numpy = to_numpy

    def __repr__(self) -> str:
        return self.name


def _make_namespace(name: str) -> Namespace:
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed (pip install 'convnn[dev]' / the matching extra)")
    if name == "numpy":
        return Namespace(name, lambda a: np.asarray(a), np.asarray)
    if name == "array_api_strict":
        import array_api_strict as xs

        return Namespace(name, lambda a: xs.asarray(a), lambda a: np.asarray(a))
    if name == "torch":
        import torch

        return Namespace(name, lambda a: torch.as_tensor(np.asarray(a)), lambda a: a.detach().cpu().numpy())
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    return Namespace(name, lambda a: jnp.asarray(a), lambda a: np.asarray(a))


@pytest.fixture(params=NAMESPACES)
def ns(request: pytest.FixtureRequest):
    """Each namespace in turn (jax with float64 enabled for the test, then restored)."""
    restore = None
    if request.param == "jax" and importlib.util.find_spec("jax") is not None:
        import jax

        restore = jax.config.jax_enable_x64
    try:
        yield _make_namespace(request.param)
    finally:
        if restore is not None:
            import jax

            jax.config.update("jax_enable_x64", restore)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
