"""The torch backend: ConvNN on PyTorch (CPU and CUDA), Triton kernels on CUDA, and nn.Module drop-ins.

`load(device=..., deterministic=..., fused=..., check_inputs=...)` returns the backend object that
`convnn.get_backend("torch", ...)` hands out; the modules live in `convnn.backends.torch.modules`.

Files: backend.py (TorchBackend, the vocabulary), kernels.py (TorchKernels: what the one pipeline,
convnn.pipeline, runs on), ops.py (the torch.library custom ops), selection.py / aggregation.py (the
eager kernels), cpu_select.py (the CPU selection on the numba kernel), triton_kernels.py (CUDA),
attention.py (baseline attentions), nn.py (layers), arrays.py (dtypes, asarray, RNG keys), training.py,
modules.py (nn.Module drop-ins).
"""
from __future__ import annotations

import importlib.util
from typing import Any

from convnn.backends import numba
from convnn.grid import uses_grid
from convnn.registry import BackendPlugin

OPTIONS = ("device", "deterministic", "fused", "check_inputs")
FUSED_MAX_K = 64  # the fused kernel's streaming queue (triton_kernels.MAX_K)
EAGER_PATH = "eager blocked path: chunked GEMM affinities, exact top-K, gather + taps custom op"
# looked up once (not per call, and never while torch.compile traces a call)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
NUMBA_SELECT = numba.SELECT_PATH  # the CPU selection's path when numba is installed (cpu_select.py)


def load(**options: Any) -> Any:
    """The TorchBackend object; options: device ('cpu', 'cuda', ...), deterministic, fused, check_inputs."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"backend 'torch' got unknown option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    from .backend import TorchBackend

    return TorchBackend(**options)


def fused_blockers(op: str, cfg: Any, dtype: str, device: str, explicit_candidates: bool) -> list[str]:
    """Why the fused Triton kernel does not take a call (empty: it does)."""
    why = []
    if op not in ("convnn2d", "convnn1d"):
        why.append(f"{op} has no fused kernel")
    if not str(device).startswith("cuda"):
        why.append(f"device {device} is not CUDA")
    if not TRITON_INSTALLED:
        why.append("triton is not installed")
    if dtype == "float64":
        why.append("float64 stays on the eager path")
    if cfg is not None:
        if cfg.k > FUSED_MAX_K:
            why.append(f"K={cfg.k} > {FUSED_MAX_K}")
        if cfg.weighting != "none":
            why.append(f"weighting={cfg.weighting!r} (needs 'none')")
        if cfg.order != "rank":
            why.append(f"order={cfg.order!r} (needs 'rank')")
        if cfg.sampling != "all" or explicit_candidates:
            why.append("a candidate subset (needs all tokens)")
        if op in ("convnn2d", "convnn1d") and uses_grid(cfg):
            why.append(f"select={cfg.select!r} with metric='euclidean' adds the exact grid distance of SPEC "
                       "section 4 step 1, which the Triton kernels do not compute")
    return why


def numba_select_blockers(device: str, dtype: str, uses_grid_distance: bool) -> list[str]:
    """Why the CPU selection does not run on the numba kernel (empty: it does); torch's own code runs then."""
    return numba.select_blockers(device, dtype, uses_grid_distance, "CONVNN_TORCH_NO_NUMBA")


def describe_path(request: Any, fused: bool = True) -> Any:
    """The path a call takes (PathChoice); fused=False is the backend option that turns the fused kernel off."""
    from convnn.kernels import PathChoice

    blockers = [] if fused else ["fused=False was asked for"]
    blockers += fused_blockers(request.op, request.cfg, request.dtype, request.device, request.explicit_candidates)
    if blockers:
        grid = request.cfg is not None and request.op in ("convnn2d", "convnn1d") and uses_grid(request.cfg)
        numba_why = numba_select_blockers(request.device, request.dtype, grid)
        passed = [("the fused Triton kernel", "; ".join(blockers))]
        if numba_why:
            passed.append((NUMBA_SELECT, "; ".join(numba_why)))
            return PathChoice(EAGER_PATH, tuple(passed))
        return PathChoice(f"{EAGER_PATH}; {NUMBA_SELECT}", tuple(passed))
    return PathChoice(f"fused Triton kernel: CUDA, {request.dtype}, K <= {FUSED_MAX_K}",
                      (("the eager blocked path", "the fused kernel takes this call"),))


PLUGIN = BackendPlugin(
    name="torch", requires=("torch",), extra="torch",
    summary="PyTorch on CPU and CUDA, fused Triton kernel on CUDA, nn.Module drop-ins",
    loader=load, devices=("cpu", "cuda"), trains_convnn=True, describe_path=describe_path, options=OPTIONS,
)
