"""Compile every Triton kernel launch for a Hopper GPU (sm_90) on a machine without one, launching nothing.

Triton's interpreter (TRITON_INTERPRET=1) checks what the kernels compute but not whether they compile:
a non-constexpr loop bound, for one, passes the interpreter and fails on the GPU. This script swaps in a
driver that reports an sm_90 target and turns each launch into a full compile (frontend, LLVM, ptxas).
Run as a script: it drives the interpreter tests' cases and every float dtype through the kernels and
exits non-zero on the first compile error. Outputs are never computed (nothing runs), only compiled.
"""
from __future__ import annotations

import os
import sys
import traceback

os.environ["CONVNN_TORCH_TRITON_ON_CPU"] = "1"  # route CPU tensors to the Triton kernels

import torch  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

ARCH = int(os.environ.get("CONVNN_TRITON_ARCH", "90"))
COMPILED: list[str] = []


class CompileOnlyDriver:
    """The parts of a Triton driver that a launch asks before it compiles: one device, one stream, a target."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: object = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", ARCH, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def install() -> None:
    """Make each launch compile for the target (once per specialization) and return without running."""
    driver.set_active(CompileOnlyDriver())
    original = JITFunction._do_compile
    seen: set = set()

    def compile_only(self, key, signature, device, constexprs, options, attrs, warmup):
        if (self.fn.__name__, key) not in seen:
            seen.add((self.fn.__name__, key))
            original(self, key, signature, device, constexprs, options, attrs, warmup)
            self.device_caches[device][0].pop(key, None)  # no compiled kernel stays: a cache hit would launch
            COMPILED.append(self.fn.__name__)
        return None  # run() returns before launching when the compile step hands back None

    JITFunction._do_compile = compile_only


def drive_kernels() -> None:
    """Every kernel entry point: the interpreter tests' cases (float32), then bf16, fp16 and float64 inputs."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_torch_triton as cases

    quiet = cases.PRELUDE + "\ndef check(*args, **kwargs):\n    pass  # outputs are not computed here\n"
    for name in ("SELECT", "TAPS", "FUSED"):
        exec(compile(quiet + getattr(cases, name), name, "exec"), {})  # noqa: S102 (our own test source)
    from convnn.backends.torch import triton_kernels as T

    g = torch.Generator().manual_seed(0)
    b, n, f, c, o, k = 2, 40, 24, 16, 24, 9
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        x = torch.randn(b, n, f, generator=g).to(dt)
        v = torch.randn(b, n, c, generator=g).to(dt)
        queries = torch.arange(n)
        for metric in ("cosine", "euclidean", "dot"):
            T.select_topk(x, x, queries, None, k, metric, True)
            T.fused_forward(x, x, v, queries, torch.randn(o, c, k).to(dt), torch.randn(o).to(dt), k, metric, True,
                            "full")
            T.fused_forward(x, x, v, queries, torch.randn(c, k).to(dt), None, k, metric, False, "depthwise")
        idx = torch.randint(0, n, (b, n, k), generator=g)
        rho = torch.rand(b, n, k, generator=g).to(dt)
        T.gather_taps_forward(v, idx, rho, torch.randn(o, c, k).to(dt), torch.randn(o).to(dt), "full")
        T.gather_taps_forward(v, idx, None, torch.randn(c, k).to(dt), None, "depthwise")
        T.gather_taps_backward(torch.randn(b, n, o).to(dt), v, idx, rho, torch.randn(o, c, k).to(dt), "full",
                               True, True, True, True)


if __name__ == "__main__":
    install()
    try:
        drive_kernels()
    except Exception:
        traceback.print_exc()
        print(f"COMPILE FAILED after {len(COMPILED)} kernel compiles for sm_{ARCH}")
        sys.exit(1)
    kinds = sorted(set(COMPILED))
    print(f"compiled {len(COMPILED)} kernel specializations for sm_{ARCH} ({', '.join(kinds)})")
    sys.exit(0 if COMPILED else 1)  # a run that compiled nothing checked nothing
