"""CUDA checks of the torch backend (pytest -m gpu on a GPU machine; .ci/gpu_check runs them).

The Triton kernels against the float64 CPU oracle, bf16 tolerance, determinism, torch.compile with
the fused op, and the memory bound of the lean path (no B*N*K*C tensor).
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convnn import ConvNNConfig, attention_config, get_backend  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run with pytest -m gpu)")]

CONFIGS = [
    {},
    {"metric": "euclidean"},
    {"weighting": "softmax", "metric": "dot"},
    {"select": "position", "metric": "euclidean", "order": "position"},
    {"sampling": "random", "num_samples": 40},
    {"taps": "depthwise", "k": 5},
]


@pytest.fixture(scope="module")
def cuda():
    return get_backend("torch", device="cuda")


def _case(cfg: ConvNNConfig, c: int = 16, o: int = 24, shape=(3, 9, 11), seed: int = 0):
    rng = np.random.default_rng(seed)
    b, h, w = shape
    x = rng.standard_normal((b, c, h, w))
    if cfg.taps == "full":
        weight, bias = rng.standard_normal((o, c, cfg.k)) * 0.2, rng.standard_normal(o)
    else:
        weight, bias = rng.standard_normal((c, cfg.k)), rng.standard_normal(c)
    return x, weight, bias


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kw", CONFIGS, ids=[",".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS])
def test_float32_on_cuda_matches_the_oracle(kw, fused):
    cfg = ConvNNConfig(**kw)
    x, w, b = _case(cfg)
    want = get_backend("numpy").convnn2d(x, w, b, cfg, rng=7)
    be = get_backend("torch", device="cuda", fused=fused)
    got = be.convnn2d(*(torch.tensor(a, dtype=torch.float32, device="cuda") for a in (x, w, b)), cfg, rng=7)
    np.testing.assert_allclose(got.double().cpu().numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_indices_exact_on_cuda(cuda):
    rng = np.random.default_rng(1)
    feats = rng.standard_normal((4, 300, 24))
    for kw in ({"metric": "cosine"}, {"metric": "euclidean", "self_first": False}, {"metric": "dot", "k": 16}):
        cfg = ConvNNConfig(padding=0, **kw)
        want, _ = get_backend("numpy").select_neighbors(feats, cfg)
        got, _ = cuda.select_neighbors(torch.tensor(feats, dtype=torch.float32, device="cuda"), cfg)
        assert (got.cpu().numpy() != want).mean() < 1e-3  # float32 rounding may swap a near-tie
    ties = torch.zeros(1, 64, 2, device="cuda")
    ties[0, ::7, 0] = 1.0
    idx, _ = cuda.select_neighbors(ties, ConvNNConfig(k=4, metric="dot", self_first=False, padding=0))
    assert idx[0, 0].tolist() == [0, 7, 14, 21]


def test_bfloat16_within_tolerance(cuda):
    cfg = ConvNNConfig()
    x, w, b = _case(cfg, c=32, o=32)
    xb, wb, bb = (torch.tensor(a, dtype=torch.bfloat16, device="cuda") for a in (x, w, b))
    want = get_backend("numpy").convnn2d(*(t.double().cpu().numpy() for t in (xb, wb, bb)), cfg)
    got = cuda.convnn2d(xb, wb, bb, cfg).double().cpu().numpy()
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("kw", [{}, {"weighting": "softmax"}, {"sampling": "random", "num_samples": 40}])
def test_gradients_on_cuda_match_cpu_float64(kw):
    cfg = ConvNNConfig(**kw)
    x, w, b = _case(cfg)
    cot = np.random.default_rng(3).standard_normal((3, 24, 9, 11))

    def grads(backend, device, dtype):
        ts = [torch.tensor(a, dtype=dtype, device=device, requires_grad=True) for a in (x, w, b)]
        y = backend.convnn2d(*ts, cfg, rng=5)
        (y * torch.tensor(cot, dtype=dtype, device=device)).sum().backward()
        return [t.grad.double().cpu().numpy() for t in ts]

    want = grads(get_backend("torch"), "cpu", torch.float64)
    got = grads(get_backend("torch", device="cuda"), "cuda", torch.float32)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-4 * np.abs(r).max())


def test_deterministic_backward_is_bitwise_repeatable():
    # the ConvNN kernels are atomic-free; torch's own flag covers the surrounding autograd ops
    torch.use_deterministic_algorithms(True, warn_only=True)
    be = get_backend("torch", device="cuda", deterministic=True)
    cfg = ConvNNConfig(weighting="softmax")
    x, w, b = _case(cfg, c=32, o=32, shape=(8, 16, 16))

    def run():
        ts = [torch.tensor(a, dtype=torch.float32, device="cuda", requires_grad=True) for a in (x, w, b)]
        be.convnn2d(*ts, cfg).square().sum().backward()
        return [t.grad.clone() for t in ts]

    try:
        first, second = run(), run()
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b_) for a, b_ in zip(first, second))


def test_attention_on_cuda(cuda):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 65, 48))
    params = {k: rng.standard_normal((48, 48)) / 7 for k in ("wq", "wk", "wv", "wo")}
    params["taps"] = rng.standard_normal((48, 9))
    for cfg in (attention_config(9), attention_config(9, sampling="random", num_samples=20)):
        want = get_backend("numpy").convnn_attention(x, params, cfg, heads=3, rng=2)
        got = cuda.convnn_attention(torch.tensor(x, dtype=torch.float32, device="cuda"),
                                    {k: torch.tensor(v, dtype=torch.float32, device="cuda") for k, v in params.items()},
                                    cfg, heads=3, rng=2)
        np.testing.assert_allclose(got.double().cpu().numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_compile_fullgraph_with_the_fused_kernel():
    from convnn.backends.torch.modules import ConvNN2d, ConvNNAttention

    torch.manual_seed(0)
    m = ConvNN2d(16, 16).cuda()
    x = torch.randn(4, 16, 12, 12, device="cuda", requires_grad=True)
    compiled = torch.compile(m, fullgraph=True)
    y = compiled(x)
    torch.testing.assert_close(y, m(x), rtol=1e-4, atol=1e-4)
    y.sum().backward()
    a = ConvNNAttention(48, 3, 9).cuda()
    xa = torch.randn(2, 65, 48, device="cuda")
    torch.testing.assert_close(torch.compile(a, fullgraph=True)(xa), a(xa), rtol=1e-4, atol=1e-4)


def test_lean_path_never_holds_a_gathered_copy(cuda):
    # DESIGN: never materialise [B, N, K, C]. A gathered copy grows by C*itemsize = 256 bytes per token and extra
    # slot; the lean paths may only grow by the [B, N, K] tables (int64 indices, float32 affinities and weights:
    # 16 bytes per token and slot), so growth from K=9 to K=25 must stay under 2x that.
    b, c = 32, 64
    n = 32 * 32
    x = torch.randn(b, c, 32, 32, device="cuda")

    def extra_bytes(be, k: int) -> int:
        w = torch.randn(c, c, k, device="cuda") * 0.05
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad():
            be.convnn2d(x, w, None, ConvNNConfig(k=k))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    for fused in (True, False):
        be = get_backend("torch", device="cuda", fused=fused, check_inputs=False)
        small, large = extra_bytes(be, 9), extra_bytes(be, 25)
        bytes_per_slot = (large - small) / (b * n * (25 - 9))
        assert bytes_per_slot < 2 * 16, (fused, small, large, bytes_per_slot)  # a gathered copy: C*4 = 256
        assert large < b * n * 25 * c * 4, (fused, large)


def test_triton_matches_eager_on_larger_shapes():
    from convnn.backends.torch import aggregation, selection, triton_kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    for c, o, k in ((64, 64, 9), (128, 256, 9), (512, 512, 9), (3, 64, 9)):
        x = torch.randn(4, 18 * 18, c, device="cuda", generator=g)
        queries = torch.arange(18 * 18, device="cuda")
        i1, a1 = triton_kernels.select_topk(x, x, queries, None, k, "cosine", True)
        i2, a2 = selection.select_topk(x, x, queries, None, k, "cosine", True)
        assert (i1 != i2).float().mean().item() < 1e-3
        w = torch.randn(o, c, k, device="cuda", generator=g) * 0.05
        y1 = triton_kernels.gather_taps_forward(x, i2, None, w, None, "full")
        y2 = aggregation.gather_taps_forward(x, i2, None, w, None, "full")
        torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)


def test_paired_affinities_on_cuda_match_the_cpu():
    from convnn.backends.torch import paired

    gen = torch.Generator().manual_seed(5)
    q = torch.randn(4, 50, 16, generator=gen, dtype=torch.float64)
    keys = torch.randn(4, 80, 16, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, 80, (4, 50, 9), generator=gen)
    for metric in ("cosine", "dot", "euclidean"):
        grads = []
        for dev in ("cpu", "cuda"):
            qd, kd = (t.to(dev).requires_grad_() for t in (q, keys))
            a = paired.paired_affinity(metric, qd, kd, idx.to(dev))
            a.square().sum().backward()
            grads.append([a.detach().cpu(), qd.grad.cpu(), kd.grad.cpu()])
        for cpu_t, cuda_t in zip(*grads):
            torch.testing.assert_close(cuda_t, cpu_t, rtol=1e-10, atol=1e-10)


def test_module_indices_and_key_padding_mask_on_cuda():
    from convnn.backends.torch.modules import ConvNN2d, ConvNNAttention

    torch.manual_seed(0)
    attn = ConvNNAttention(32, 2, 5, return_indices=True)
    x = torch.randn(2, 12, 32)
    pad = torch.zeros(2, 12, dtype=torch.bool)
    pad[1, 8:] = True
    y_cpu, idx_cpu = attn(x, key_padding_mask=pad)
    attn = attn.cuda()
    y, idx = attn(x.cuda(), key_padding_mask=pad.cuda())
    assert idx.dtype == torch.int64 and tuple(idx.shape) == (2, 2, 12, 5)
    assert int(idx[1].max()) < 8
    torch.testing.assert_close(idx.cpu(), idx_cpu)
    torch.testing.assert_close(y.cpu(), y_cpu, rtol=1e-4, atol=1e-4)
    conv = ConvNN2d(8, 8, k=9, return_indices=True).cuda()
    out, cidx = conv(torch.randn(2, 8, 6, 6, device="cuda"))
    assert tuple(out.shape) == (2, 8, 6, 6) and tuple(cidx.shape) == (2, 6, 6, 9)


def test_zoo_module_runs_on_cuda_like_on_the_cpu():
    from convnn.backends.torch.zoo_module import from_zoo

    # float64: feature-driven selection has near-ties that float32 may break differently on another device
    module = from_zoo("vgg11", num_classes=10, seed=0, layer="branching", width=0.125, head="light",
                      dtype="float64").eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    want = module(x)
    got = module.to("cuda")(x.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), want, rtol=1e-9, atol=1e-9)
