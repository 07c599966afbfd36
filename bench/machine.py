"""What the benchmark ran on: CPU/GPU, versions, and two measured physical limits (sgemm GFLOP/s, copy GB/s)."""
from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any, Callable, Optional

PACKAGES = ("convnn", "numpy", "torch", "jax", "jaxlib", "numba", "autograd", "optax", "triton", "threadpoolctl")


def package_versions() -> dict[str, Optional[str]]:
    """Installed versions of the packages that matter for the numbers (None when absent)."""
    out: dict[str, Optional[str]] = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what platform reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` calls after a warm-up: a ceiling is what the machine reaches at best."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def numpy_sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 n x n x n matrix product through NumPy's BLAS, in GFLOP/s (2 n^3 FLOPs)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    return 2.0 * n**3 / _best_seconds(lambda: np.matmul(a, b, out=c), repeats) / 1e9


def numpy_copy_gbs(mib: int = 256, repeats: int = 5) -> float:
    """A STREAM-style copy of `mib` MiB with NumPy (one thread), counted as read + write, in GB/s."""
    import numpy as np

    n = mib * 2**20 // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)
    return 2.0 * src.nbytes / _best_seconds(lambda: np.copyto(dst, src), repeats) / 1e9


def torch_limits(device: str, n: int = 2048, mib: int = 256, repeats: int = 5) -> dict[str, float]:
    """sgemm GFLOP/s (float32, TF32 off) and copy GB/s (read + write) measured with torch on `device`."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if dev.type == "cuda":
        n, mib = max(n, 8192), max(mib, 1024)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        a = torch.randn(n, n, device=dev)
        b = torch.randn(n, n, device=dev)
        c = torch.empty(n, n, device=dev)

        def gemm() -> None:
            torch.mm(a, b, out=c)
            sync()

        gflops = 2.0 * n**3 / _best_seconds(gemm, repeats) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    src = torch.ones(mib * 2**20 // 4, device=dev)
    dst = torch.zeros_like(src)

    def copy() -> None:
        dst.copy_(src)
        sync()

    gbs = 2.0 * src.numel() * 4 / _best_seconds(copy, repeats) / 1e9
    return {"sgemm_gflops": gflops, "copy_gbs": gbs}


def device_name(device: str) -> str:
    """A readable name of the device the numbers come from."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return f"{cpu_model()} ({os.cpu_count()} logical cores)"


def measure_machine(device: str = "cpu", *, quick: bool = False) -> dict[str, Any]:
    """Machine facts plus the measured ceilings: the best sgemm GFLOP/s and copy GB/s of NumPy and torch."""
    n, mib, repeats = (512, 32, 3) if quick else (2048, 256, 5)
    limits: dict[str, Any] = {}
    if device == "cpu":
        limits["numpy"] = {"sgemm_gflops": numpy_sgemm_gflops(n, repeats), "copy_gbs": numpy_copy_gbs(mib, repeats)}
    try:
        limits["torch"] = torch_limits(device, n, mib, repeats)
    except ImportError:
        pass
    sgemm = max(v["sgemm_gflops"] for v in limits.values()) if limits else None
    copy = max(v["copy_gbs"] for v in limits.values()) if limits else None
    return {
        "device": device,
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "logical_cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "packages": package_versions(),
        "sgemm_gflops": sgemm,
        "copy_gbs": copy,
        "limits_by_library": limits,
        "limits_note": (f"sgemm: float32 {n}^3 matmul; copy: {mib} MiB float32, counted read + write; "
                        f"best of {repeats} calls, the best library of the same run is the ceiling"),
    }
