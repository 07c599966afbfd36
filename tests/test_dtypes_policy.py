"""The low-precision dtype policy (float16 / bfloat16): every backend declares what it takes, and nothing is silent.

- The spec (convnn.convnn2d & co. on NumPy, torch and jax arrays) takes float16 and bfloat16 wherever the
  array library has them and computes selection (affinities, top-K) in float32: the 1e-12 cosine norm
  floor underflows to 0 in float16, so a zero-padding token scored 0/0 = NaN and the query could appear
  twice. Values and taps stay in the input dtype; the output has the input dtype.
- numba, jax and torch on the CPU refuse float16/bfloat16 at the door with a TypeError naming the dtype,
  the backend and the dtypes it supports; the numpy backend (the float64 oracle) too.
- Tolerances: DESIGN.md's conformance table (bfloat16 2e-2, float16 5e-3, times max|oracle|).
"""
from __future__ import annotations

import numpy as np
import pytest

import convnn as cc
from convnn import pipeline
from convnn.spec_kernels import SpecKernels

LOW = ("float16", "bfloat16")
TOL = {"float16": 5e-3, "bfloat16": 2e-2}
LIBS = ("numpy", "torch", "jax")


# ----------------------------------------------------------------------------- array helpers
def _lib_arrays(lib: str, dtype: str):
    """(to, back): host float64 -> the library's array in dtype, and back to float64 NumPy."""
    if lib == "numpy":
        if dtype == "bfloat16":
            pytest.skip("NumPy has no native bfloat16 (refused by name: test_spec_refuses_numpy_bfloat16)")
        return (lambda a: np.asarray(a).astype(dtype)), (lambda y: np.asarray(y, dtype=np.float64))
    if lib == "torch":
        torch = pytest.importorskip("torch")
        tdt = getattr(torch, dtype)
        return (lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)).to(tdt),
                lambda y: y.detach().to(torch.float64).cpu().numpy())
    jnp = pytest.importorskip("jax.numpy")
    return (lambda a: jnp.asarray(np.asarray(a, dtype=np.float32)).astype(dtype),
            lambda y: np.asarray(y.astype(jnp.float32)).astype(np.float64))


def _dtype_name(a) -> str:
    return str(a.dtype).replace("torch.", "")


def _conv_inputs(cfg: cc.ConvNNConfig, shape=(2, 3, 5, 4), out=4, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1] * cfg.shuffle_scale ** (len(shape) - 2)
    c_agg = c + (len(shape) - 2 if cfg.aggregate_coords else 0)
    x = rng.standard_normal(shape)
    w = rng.standard_normal((out, c_agg, cfg.k) if cfg.taps == "full" else (c_agg, cfg.k)) / np.sqrt(c_agg * cfg.k)
    b = rng.standard_normal(out if cfg.taps == "full" else c_agg) * 0.1
    return x, w, b


def _assert_within(got, want, dtype):
    assert np.isfinite(got).all(), f"{dtype}: non-finite output"
    tol = TOL[dtype] * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=TOL[dtype], atol=tol)


SPEC_CONFIGS = {
    "vgg-cosine-pad1": cc.ConvNNConfig(),  # zero-padding tokens: the 0/0 cosine of float16
    "cosine-softmax": cc.ConvNNConfig(k=4, weighting="softmax", self_logit=None),
    # blend: bfloat16 rounds the coordinate channels to 8 bits, so a near-tie may flip a neighbour legitimately
    # (conformance draws its cases away from ties); features weigh 0.9 here, far from any tie for this seed
    "blend-euclid-softmax": cc.ConvNNConfig(k=5, select="blend", blend=0.9, metric="euclidean", weighting="softmax"),
    "position-conv": cc.ConvNNConfig(select="position", metric="euclidean", order="position"),
    "dot-pad0": cc.ConvNNConfig(k=3, metric="dot", self_first=False, padding=0),
}


# ----------------------------------------------------------------------------- the spec: selection in float32
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("lib", LIBS)
def test_spec_select_neighbors_low_precision_matches_float32_selection(lib, dtype):
    to, back = _lib_arrays(lib, dtype)
    rng = np.random.default_rng(3)
    feats = np.concatenate([np.zeros((2, 2, 4)), rng.standard_normal((2, 7, 4))], axis=1)  # two all-zero tokens
    low = to(feats)
    exact = back(low)  # the values the low-precision array holds
    cfg = cc.ConvNNConfig(k=4)
    idx, aff = cc.select_neighbors(low, cfg)
    want_idx, want_aff = cc.select_neighbors(exact, cfg)
    got_idx = np.asarray(back(idx) if lib == "torch" else idx)
    np.testing.assert_array_equal(got_idx, want_idx)
    assert (got_idx[..., 1:] != got_idx[..., :1]).all(), "the query appears twice"
    assert _dtype_name(aff) == dtype
    _assert_within(back(aff), want_aff, dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("name", list(SPEC_CONFIGS))
def test_spec_convnn2d_low_precision_within_tolerance(name, lib, dtype):
    cfg = SPEC_CONFIGS[name]
    to, back = _lib_arrays(lib, dtype)
    x, w, b = (to(a) for a in _conv_inputs(cfg))
    y = cc.convnn2d(x, w, b, cfg)
    assert _dtype_name(y) == dtype
    want = cc.convnn2d(back(x), back(w), back(b), cfg)  # the float64 oracle on the same (rounded) values
    _assert_within(back(y), want, dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("lib", LIBS)
def test_spec_convnn1d_and_attention_low_precision(lib, dtype):
    to, back = _lib_arrays(lib, dtype)
    cfg = cc.ConvNNConfig(k=3, weighting="softmax")
    x, w, b = _conv_inputs(cfg, shape=(2, 3, 7))
    x, w, b = to(x), to(w), to(b)
    y = cc.convnn1d(x, w, b, cfg)
    _assert_within(back(y), cc.convnn1d(back(x), back(w), back(b), cfg), dtype)
    rng = np.random.default_rng(5)
    d, n = 8, 6
    params = {k: to(rng.standard_normal((d, d)) / np.sqrt(d)) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = to(np.ones((d, 3)))
    xa = to(rng.standard_normal((2, n, d)))
    acfg = cc.attention_config(3)
    got = cc.convnn_attention(xa, params, acfg, heads=2)
    assert _dtype_name(got) == dtype
    want = cc.convnn_attention(back(xa), {k: back(v) for k, v in params.items()}, acfg, heads=2)
    _assert_within(back(got), want, dtype)


@pytest.mark.parametrize("lib", ("numpy", "torch"))
def test_spec_float16_blend_on_a_constant_sample_stays_finite(lib):
    """sigma_b = 0 on a constant sample: blend * f / 1e-6 overflows float16; the blend features are float32."""
    to, back = _lib_arrays(lib, "float16")
    cfg = cc.ConvNNConfig(k=3, select="blend", blend=0.5, padding=0, weighting="softmax")
    _, w, b = _conv_inputs(cfg, shape=(1, 2, 3, 3))
    x = np.ones((1, 2, 3, 3))
    y = back(cc.convnn2d(to(x), to(w), to(b), cfg))
    _assert_within(y, cc.convnn2d(x, back(to(w)), back(to(b)), cfg), "float16")


def test_spec_refuses_numpy_bfloat16_by_name():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    cfg = cc.ConvNNConfig(k=3)
    x, w, b = (a.astype(ml_dtypes.bfloat16) for a in _conv_inputs(cfg))
    named = r"dtype bfloat16 is not supported by backend 'spec'.*supports float64, float32"
    with pytest.raises(TypeError, match=named):
        cc.convnn2d(x, w, b, cfg)
    with pytest.raises(TypeError, match=r"dtype bfloat16 is not supported by backend 'spec'"):
        cc.select_neighbors(x[:, :, 0].transpose(0, 2, 1), cfg)


def test_spec_kernels_declare_their_dtypes():
    import array_api_compat.numpy as np_xp

    assert SpecKernels(np_xp).dtypes == ("float64", "float32", "float16")
    torch_xp = pytest.importorskip("array_api_compat.torch")
    assert SpecKernels(torch_xp).dtypes == ("float64", "float32", "bfloat16", "float16")
    jnp = pytest.importorskip("jax.numpy")
    assert set(SpecKernels(jnp).dtypes) >= {"float32", "bfloat16", "float16"}
    strict = pytest.importorskip("array_api_strict")
    assert SpecKernels(strict).dtypes == ("float64", "float32")


# ----------------------------------------------------------------------------- backends that refuse
def _backend_arrays(name: str, dtype: str):
    """(backend, to): host float64 -> the backend's array in dtype."""
    if name in ("numba", "numpy"):
        pytest.importorskip(name)
        be = cc.get_backend(name)
        if dtype == "bfloat16":
            ml_dtypes = pytest.importorskip("ml_dtypes")
            return be, (lambda a: np.asarray(a).astype(ml_dtypes.bfloat16))
        return be, (lambda a: np.asarray(a).astype(dtype))
    if name == "torch":
        torch = pytest.importorskip("torch")
        be = cc.get_backend("torch", device="cpu")
        return be, (lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)).to(getattr(torch, dtype)))
    jnp = pytest.importorskip("jax.numpy")
    be = cc.get_backend("jax")
    return be, (lambda a: jnp.asarray(np.asarray(a, dtype=np.float32)).astype(dtype))


REFUSING = ("numpy", "numba", "torch", "jax")


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("name", REFUSING)
def test_backend_refuses_low_precision_by_name(name, dtype):
    be, to = _backend_arrays(name, dtype)
    declared = be.capabilities.dtypes
    assert dtype not in declared
    pattern = rf"dtype {dtype} is not supported by backend '{name}' on cpu; it supports {', '.join(declared)}"
    cfg = cc.ConvNNConfig(k=3)
    x, w, b = (to(a) for a in _conv_inputs(cfg))
    with pytest.raises(TypeError, match=pattern):
        be.convnn2d(x, w, b, cfg)
    x1, w1, b1 = (to(a) for a in _conv_inputs(cfg, shape=(2, 3, 6)))
    with pytest.raises(TypeError, match=pattern):
        be.convnn1d(x1, w1, b1, cfg)
    with pytest.raises(TypeError, match=pattern):
        be.select_neighbors(to(np.ones((1, 5, 3))), cfg)
    d = 4
    params = {k: to(np.eye(d)) for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = to(np.ones((d, 3)))
    with pytest.raises(TypeError, match=pattern):
        be.convnn_attention(to(np.ones((1, 5, d))), params, cc.attention_config(3))


@pytest.mark.parametrize("name", REFUSING)
def test_capabilities_and_kernels_declare_the_same_dtypes(name):
    be, _ = _backend_arrays(name, "float32")
    assert be.kernels.dtypes is not None
    assert set(be.capabilities.dtypes) == set(be.kernels.dtypes)
    assert not set(LOW) & set(be.kernels.dtypes)


def test_check_dtype_supported_names_dtype_backend_and_list():
    class K:
        backend_name, device, dtypes = "toy", "cpu", ("float32",)

    with pytest.raises(TypeError, match=r"dtype float16 is not supported by backend 'toy' on cpu; it supports float32"):
        pipeline.check_dtype_supported(K(), np.dtype("float16"))
    assert pipeline.check_dtype_supported(K(), np.dtype("float32")) == "float32"


# ----------------------------------------------------------------------------- torch's half path (CUDA), on CPU
def test_torch_slot_affinity_float16_zero_rows_are_not_nan():
    """TorchKernels.slot_affinity recomputes from gathered rows when a gradient is wanted; in float16 the
    1e-12 norm floor is 0, so a zero row must be scored in float32 (torch declares float16 on CUDA)."""
    torch = pytest.importorskip("torch")
    from convnn.backends.torch.kernels import TorchKernels

    keys = torch.tensor([[[0.0, 0.0], [1.0, 2.0], [3.0, -1.0]]], dtype=torch.float16)
    idx = torch.tensor([[[[0, 1], [1, 0], [2, 0]]]])
    aff = TorchKernels("cpu").slot_affinity(keys, np.arange(3), idx, metric="cosine", heads=1)
    assert aff.dtype == torch.float16 and torch.isfinite(aff).all()
    want = TorchKernels("cpu").slot_affinity(keys.float(), np.arange(3), idx, metric="cosine", heads=1)
    torch.testing.assert_close(aff.float(), want, rtol=5e-3, atol=5e-3)


def test_torch_gather_taps_takes_float32_rho_with_half_values():
    """Selection in float32 gives float32 rho; the taps run in the values' dtype."""
    torch = pytest.importorskip("torch")
    from convnn.backends.torch.kernels import TorchKernels

    values = torch.randn(1, 4, 3).to(torch.bfloat16)
    idx = torch.tensor([[[[0, 1], [1, 2], [2, 3], [3, 0]]]])
    rho = torch.full((1, 1, 4, 2), 0.5)
    weight = torch.randn(5, 3, 2).to(torch.bfloat16)
    y = TorchKernels("cpu").gather_taps(values, idx, rho, weight, taps="full")
    assert y.dtype == torch.bfloat16
    want = TorchKernels("cpu").gather_taps(values.float(), idx, rho, weight.float(), taps="full")
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2 * float(want.abs().max()))
