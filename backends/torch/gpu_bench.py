"""GPU benchmark of the torch backend (run by .ci/gpu_check): `python -m backends.torch.gpu_bench OUT_DIR`.

Reports, from one process on one GPU: the fused ConvNN layer against the authors' algorithm in torch
eager (dense N x N cosine with the diagonal forced, topk, expand-and-gather copy, crop, Conv1d) and
torch conv2d 3x3 at the VGG-11 32x32 layer (B = 128, C 64 -> 64, K = 9); ConvNN attention against
scaled_dot_product_attention at N = 197, d = 192; medians of CUDA-event timings after warm-up, peak
memory, and the share of the roofline floor (H100/H200 SXM ceilings). Writes gpu_bench.json and .md.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

# Hopper SXM ceilings: the H100 and H200 share the compute (dense, no sparsity); the H200's HBM3e is faster.
PEAK_FLOPS = {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 66.9e12}  # float32 kernels use IEEE FMA
HBM_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12}


def hbm_bytes_per_s() -> float:
    """The memory ceiling of the visible GPU (H200 when its name says so, else the H100 figure)."""
    return HBM_BYTES_PER_S["H200" if "H200" in torch.cuda.get_device_name(0) else "H100"]


def cuda_time(fn: Callable[[], object], reps: int = 50, warmup: int = 10) -> tuple[float, float]:
    """(median ms, peak MiB above the starting allocation) of fn on the current CUDA stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start_mem = torch.cuda.memory_allocated()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    peak = (torch.cuda.max_memory_allocated() - start_mem) / 2 ** 20
    return statistics.median(times), peak


def reference_layer(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, k: int = 9, p: int = 1):
    """The authors' algorithm (REFERENCE_CODE.md 1.1-1.4) in torch eager."""
    b, c, h, w = x.shape
    z = F.pad(x, (p, p, p, p)).flatten(2)
    zn = F.normalize(z, p=2, dim=1)
    sim = torch.bmm(zn.transpose(1, 2), zn).clamp(-1, 1)
    sim.diagonal(dim1=1, dim2=2).fill_(1.1)
    _, idx = torch.topk(sim, k, dim=-1)
    n = z.shape[-1]
    prime = torch.gather(z.unsqueeze(-1).expand(b, c, n, k).contiguous(), 2, idx.unsqueeze(1).expand(b, c, n, k))
    prime = prime.view(b, c, h + 2 * p, w + 2 * p, k)[:, :, p:-p, p:-p, :].reshape(b, c, h * w * k)
    return F.conv1d(prime, weight, bias, stride=k).view(b, -1, h, w)


def floor_us(flops: float, bytes_moved: float, dtype: str) -> float:
    """max(FLOP-bound, minimal-IO-bound) in microseconds."""
    return 1e6 * max(flops / PEAK_FLOPS[dtype], bytes_moved / hbm_bytes_per_s())


def bench_layer(dtype_name: str, results: dict) -> None:
    from convnn import ConvNNConfig

    from .backend import TorchBackend

    dtype = getattr(torch, dtype_name)
    bsz, c, o, h, w, k = 128, 64, 64, 32, 32, 9
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(bsz, c, h, w, device="cuda", dtype=dtype, generator=g)
    weight = (torch.randn(o, c, k, device="cuda", dtype=dtype, generator=g) * 0.05)
    bias = torch.zeros(o, device="cuda", dtype=dtype)
    fused_be = TorchBackend("cuda", check_inputs=False)
    eager_be = TorchBackend("cuda", check_inputs=False, fused=False)
    cfg = ConvNNConfig()
    ours = lambda: fused_be.convnn2d(x, weight, bias, cfg)  # noqa: E731
    ours_unfused = lambda: eager_be.convnn2d(x, weight, bias, cfg)  # noqa: E731
    ref = lambda: reference_layer(x, weight, bias)  # noqa: E731
    conv = lambda: F.conv2d(x, weight[..., :9].reshape(o, c, 3, 3), bias, padding=1)  # noqa: E731
    with torch.no_grad():
        agree = (ours().float() - ref().float()).abs().gt(1e-2).float().mean().item()
        t_ours, m_ours = cuda_time(ours)
        t_unf, m_unf = cuda_time(ours_unfused)
        t_ref, m_ref = cuda_time(ref)
        t_conv, _ = cuda_time(conv)
    n, s = h * w, (h + 2) * (w + 2)
    flops = 2 * bsz * n * s * c + 2 * bsz * n * k * c * o
    io = bsz * (s * c + n * o) * x.element_size()
    fl = floor_us(flops, io, dtype_name)
    xg = x.clone().requires_grad_(True)
    wg = weight.clone().requires_grad_(True)

    def train_ours():
        fused_be.convnn2d(xg, wg, bias, cfg).float().sum().backward()

    def train_ref():
        reference_layer(xg, wg, bias).float().sum().backward()

    t_ours_bwd, m_ours_bwd = cuda_time(train_ours, reps=20)
    t_ref_bwd, m_ref_bwd = cuda_time(train_ref, reps=20)
    results[f"vgg32_{dtype_name}"] = {
        "shape": "B=128 C=64->64 32x32 K=9 all cosine",
        "fused fwd ms": t_ours, "unfused fwd ms": t_unf, "reference fwd ms": t_ref, "conv2d 3x3 ms": t_conv,
        "speedup fused vs reference fwd": t_ref / t_ours,
        "fused fwd peak MiB": m_ours, "reference fwd peak MiB": m_ref, "unfused fwd peak MiB": m_unf,
        "fwd+bwd ms": t_ours_bwd, "reference fwd+bwd ms": t_ref_bwd,
        "speedup fwd+bwd": t_ref_bwd / t_ours_bwd, "fwd+bwd / fwd": t_ours_bwd / t_ours,
        "fwd+bwd peak MiB": m_ours_bwd, "reference fwd+bwd peak MiB": m_ref_bwd,
        "roofline floor us": fl, "percent of roofline (fwd)": 100.0 * fl / (1e3 * t_ours),
        "ratio to conv2d": t_ours / t_conv, "outputs differing from reference > 1e-2 (fraction)": agree,
    }


def bench_attention(dtype_name: str, results: dict) -> None:
    from convnn import attention_config

    from convnn import pipeline

    from .backend import TorchBackend
    from .kernels import split_heads

    dtype = getattr(torch, dtype_name)
    bsz, n, d, heads, k = 128, 197, 192, 3, 9
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(bsz, n, d, device="cuda", dtype=dtype, generator=g)
    params = {name: torch.randn(d, d, device="cuda", dtype=dtype, generator=g) / d ** 0.5
              for name in ("wq", "wk", "wv", "wo")}
    params["taps"] = torch.ones(d, k, device="cuda", dtype=dtype)
    cfg = attention_config(k)
    be = TorchBackend("cuda", check_inputs=False)
    kern = be.kernels
    qf, kf, vf = (x @ params[nm].t() for nm in ("wq", "wk", "wv"))
    q, kk, v = (split_heads(t, heads) for t in (qf, kf, vf))
    queries = np.arange(n, dtype=np.int64)

    def core_ours():
        idx = pipeline.neighbours(kern, cfg, kf, queries, None, heads, query_feats=qf)
        rho = pipeline.slot_weights(kern, cfg, kf, queries, idx, heads, query_feats=qf)
        return kern.gather_taps(vf, idx, rho, params["taps"], taps=cfg.taps)

    core_sdpa = lambda: F.scaled_dot_product_attention(q.unsqueeze(0), kk.unsqueeze(0), v.unsqueeze(0))  # noqa
    layer_ours = lambda: be.convnn_attention(x, params, cfg, heads=heads)  # noqa: E731
    layer_sdpa = lambda: be.multihead_attention(x, params, heads=heads)  # noqa: E731
    with torch.no_grad():
        t_core, _ = cuda_time(core_ours)
        t_sdpa, _ = cuda_time(core_sdpa)
        t_layer, _ = cuda_time(layer_ours)
        t_layer_sdpa, _ = cuda_time(layer_sdpa)
    dh = d // heads
    flops = 2 * bsz * heads * n * n * dh + 2 * bsz * heads * n * k * dh
    io = 4 * bsz * n * d * x.element_size()
    fl = floor_us(flops, io, dtype_name)
    results[f"vit_attention_{dtype_name}"] = {
        "shape": "B=128 N=197 d=192 heads=3 K=9 dense, depthwise taps",
        "convnn core ms": t_core, "sdpa core ms": t_sdpa, "core ratio (target <= 1.5)": t_core / t_sdpa,
        "convnn layer ms": t_layer, "mhsa layer (sdpa) ms": t_layer_sdpa, "layer ratio": t_layer / t_layer_sdpa,
        "roofline floor us (core)": fl, "percent of roofline (core)": 100.0 * fl / (1e3 * t_core),
    }


def markdown(results: dict) -> str:
    lines = [f"# torch backend GPU benchmark ({torch.cuda.get_device_name(0)}, torch {torch.__version__})", ""]
    for name, row in results.items():
        lines.append(f"## {name}")
        lines.append("")
        lines.append("| metric | value |")
        lines.append("|---|---|")
        for key, value in row.items():
            lines.append(f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |")
        lines.append("")
    return "\n".join(lines)


def main(out_dir: str) -> int:
    if not torch.cuda.is_available():
        print("no CUDA GPU visible; the GPU benchmark needs one")
        return 2
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for dtype_name in ("bfloat16", "float32"):
        for bench in (bench_layer, bench_attention):
            try:
                bench(dtype_name, results)
            except Exception as err:  # keep the other rows; the failure is part of the report
                results[f"{bench.__name__}_{dtype_name}"] = {"error": f"{type(err).__name__}: {err}"}
            print(json.dumps({k: v for k, v in results.items()}, indent=1, default=str)[-3000:], flush=True)
    (out / "gpu_bench.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu_bench.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "gpu_check_out"))
