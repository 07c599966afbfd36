"""Host-side transforms: normalisation, crop + flip augmentation, bilinear resize against torch."""
from __future__ import annotations

import numpy as np
import pytest

from convnn.models.data.transforms import normalise, random_crop_flip, resize_bilinear


def test_normalise_is_totensor_then_normalize():
    x = np.array([[[[0, 255]], [[51, 102]]]], dtype=np.uint8)
    out = normalise(x, (0.5, 0.2), (0.5, 0.1))
    np.testing.assert_allclose(out[0, 0, 0], [-1.0, 1.0], rtol=1e-6)
    np.testing.assert_allclose(out[0, 1, 0], [0.0, 2.0], atol=1e-6)
    assert out.dtype == np.float32
    with pytest.raises(ValueError, match="channels"):
        normalise(x, (0.5,), (0.5,))


def test_random_crop_flip_is_seeded_and_keeps_content():
    x = np.random.default_rng(0).integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    a = random_crop_flip(x, np.random.default_rng(1))
    b = random_crop_flip(x, np.random.default_rng(1))
    np.testing.assert_array_equal(a, b)
    assert a.shape == x.shape and a.dtype == np.uint8
    # zero offsets (padding 0) leave only the flip: every image is itself or its mirror
    c = random_crop_flip(x, np.random.default_rng(2), padding=0)
    for i in range(8):
        assert np.array_equal(c[i], x[i]) or np.array_equal(c[i], x[i, :, :, ::-1])


@pytest.mark.parametrize("size", [7, 32, 50, 224])
def test_resize_matches_torch_bilinear(size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.as_tensor(x), size=(size, size), mode="bilinear",
                                          align_corners=False)
    if size < 32:
        ref = torch.nn.functional.interpolate(torch.as_tensor(x), size=(size, size), mode="bilinear",
                                              align_corners=False, antialias=False)
    np.testing.assert_allclose(resize_bilinear(x, size), ref.numpy(), rtol=1e-4, atol=3e-5)  # float32 weights
