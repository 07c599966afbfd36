"""Shared helpers for the jax backend tests: x64 on for a test, the backend, inputs for ConvNN ops."""
from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np
import pytest

import convnn as cc

jax = pytest.importorskip("jax")
pytest.importorskip("optax")


@contextlib.contextmanager
def x64(enabled: bool = True) -> Iterator[None]:
    """jax_enable_x64 set for the block and restored after it."""
    before = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", before)


def backend(**options):
    """The jax backend object through the registry."""
    return cc.get_backend("jax", **options)


def conv_inputs(cfg: cc.ConvNNConfig, shape=(2, 3, 4, 5), out: int = 4, seed: int = 0, kind: str = "2d"):
    """x, weight, bias (float64 NumPy) for convnn2d (kind '2d') or convnn1d ('1d', shape [B, C, L])."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    c = shape[1] * (cfg.shuffle_scale ** (2 if kind == "2d" else 1))
    c_agg = c + ((2 if kind == "2d" else 1) if cfg.aggregate_coords else 0)
    w_shape = (out, c_agg, cfg.k) if cfg.taps == "full" else (c_agg, cfg.k)
    w = rng.standard_normal(w_shape) / np.sqrt(c_agg * cfg.k)
    b = rng.standard_normal(w_shape[0])
    return x, w, b


def attention_inputs(cfg: cc.ConvNNConfig, b: int = 2, n: int = 7, d: int = 4, seed: int = 0):
    """x [B, N, D] and params {wq, wk, wv, wo, taps} (float64 NumPy)."""
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal((d, d)) / np.sqrt(d) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = rng.standard_normal((d, cfg.k) if cfg.taps == "depthwise" else (d, d, cfg.k))
    return rng.standard_normal((b, n, d)), params
