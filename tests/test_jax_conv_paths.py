"""The jax conv2d's patch-product path (tiny maps, RGB stems) equals XLA's convolution, gradients included."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

from convnn.backends.jax import nn  # noqa: E402

CASES = [  # (batch, c_in, c_out, h, w, kernel, stride, padding)
    (2, 3, 5, 7, 9, 3, 1, 1),
    (2, 3, 5, 7, 9, 3, 2, 1),
    (2, 16, 4, 2, 2, 3, 1, 1),
    (1, 9, 4, 3, 5, 2, 1, "same"),
    (2, 16, 4, 5, 5, 3, 2, 0),
    (2, 8, 6, 9, 9, 3, 1, 1),  # 81 outputs, 8 channels: XLA's own convolution
]


def _xla(x, w, stride, padding):
    k = w.shape[-1]
    pads = ([((k - 1) // 2, k - 1 - (k - 1) // 2)] * 2 if padding == "same" else [(padding, padding)] * 2)
    return lax.conv_general_dilated(x, w, (stride, stride), pads, dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                    precision="highest")


@pytest.mark.parametrize("case", CASES, ids=[f"{c[1]}->{c[2]} {c[3]}x{c[4]} k{c[5]} s{c[6]} p{c[7]}" for c in CASES])
def test_conv2d_matches_xla_forward_and_gradients(case):
    b, ci, co, h, w, k, stride, padding = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, ci, h, w)), jnp.float32)
    wt = jnp.asarray(rng.standard_normal((co, ci, k, k)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(co), jnp.float32)
    got = nn.conv2d(x, wt, bias, stride=stride, padding=padding, precision="highest")
    want = _xla(x, wt, stride, padding) + bias[None, :, None, None]
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    g_got = jax.grad(lambda a, b_: (nn.conv2d(a, b_, None, stride=stride, padding=padding,
                                              precision="highest") * cot).sum(), argnums=(0, 1))(x, wt)
    g_want = jax.grad(lambda a, b_: (_xla(a, b_, stride, padding) * cot).sum(), argnums=(0, 1))(x, wt)
    for a, b_ in zip(g_got, g_want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b_), rtol=1e-4, atol=1e-4)


def test_the_rule_takes_the_patch_product_only_where_it_won():
    assert nn.patches_win(512, 2, 2) and nn.patches_win(3, 32, 32) and nn.patches_win(512, 4, 4)
    assert not nn.patches_win(64, 16, 16) and not nn.patches_win(256, 8, 8)
