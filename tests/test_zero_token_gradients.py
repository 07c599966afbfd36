"""An all-zero token (common after ReLU) with cosine selection and softmax weights has finite gradients."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convnn as cc  # noqa: E402

CFG = cc.ConvNNConfig(k=4, weighting="softmax", padding=0)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 4))
    x[:, :, 1, 2] = 0.0  # one token whose features are all zero
    return x, rng.standard_normal((2, 3, 4)) * 0.3


def test_spec_gradient_is_finite_for_a_zero_token() -> None:
    x, w = _inputs()
    xt = torch.tensor(x, requires_grad=True)
    cc.convnn2d(xt, torch.tensor(w), None, CFG).sum().backward()
    assert torch.isfinite(xt.grad).all()


@pytest.mark.parametrize("name", ["torch", "jax", "numba"])
def test_backend_gradient_is_finite_for_a_zero_token(name: str) -> None:
    if not cc.backend_status(name)[0]:
        pytest.skip(f"{name} is not installed")
    be = cc.get_backend(name, **cc.registry.BACKENDS[name].dtype_options.get("float64", {}))
    x, w = _inputs()
    grad = be.value_and_grad(lambda p: (be.convnn2d(p["x"], p["w"], None, CFG) ** 2).sum())
    _, g = grad({"x": be.asarray(x, "float64"), "w": be.asarray(w, "float64")})
    assert np.isfinite(be.to_numpy(g["x"])).all()
