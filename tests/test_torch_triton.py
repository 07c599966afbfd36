"""The Triton kernels run on the CPU under TRITON_INTERPRET=1 (small shapes) against the eager torch path.

The interpreter must be switched on before triton is imported, so each check runs in a fresh
Python process; the check prints one line per comparison and exits non-zero on a mismatch.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed (pip install 'convnn[dev]')", allow_module_level=True)

REPO = Path(__file__).resolve().parents[1]

PRELUDE = """
import sys
import torch
from convnn.backends.torch import aggregation, ops, selection, triton_kernels as T
assert T.AVAILABLE, "triton did not import"
g = torch.Generator().manual_seed(0)
failures = []

def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + " " + str(detail))
    if not ok:
        failures.append(name)

def close(a, b, tol=1e-5):
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())
"""

EPILOGUE = """
sys.exit(1 if failures else 0)
"""

SELECT = """
B, N, F = 2, 37, 5
cand_sets = {"all": None, "shared": torch.sort(torch.randperm(N, generator=g)[:19]).values,
             "per-sample": torch.sort(torch.stack([torch.randperm(N, generator=g)[:19] for _ in range(B)]), 1).values}
for metric in ("cosine", "euclidean", "dot"):
    for self_first in (True, False):
        for cname, cand in cand_sets.items():
            q, kf = torch.randn(B, N, F, generator=g), torch.randn(B, N, F, generator=g)
            queries = torch.arange(N)
            i1, a1 = T.select_topk(q, kf, queries, cand, 6, metric, self_first)
            i2, a2 = selection.select_topk(q, kf, queries, cand, 6, metric, self_first)
            check(f"select {metric} self_first={self_first} cand={cname}", torch.equal(i1, i2) and close(a1, a2),
                  (a1 - a2).abs().max().item())
scores = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0, 1.0, 3.0, 0.0])
feats = torch.zeros(1, 8, 2)
feats[0, :, 0] = scores
ones = torch.zeros(1, 1, 2)
ones[0, 0, 0] = 1.0
idx, _ = T.select_topk(ones, feats, None, None, 3, "dot", False)
check("ties to the lower index", idx.tolist() == [[[1, 2, 4]]], idx.tolist())
"""

TAPS = """
B, N, C, NQ, K = 2, 23, 6, 17, 4
v = torch.randn(B, N, C, generator=g)
idx = torch.randint(0, N, (B, NQ, K), generator=g)
rho = torch.rand(B, NQ, K, generator=g)
gy = torch.randn(B, NQ, 7, generator=g)
cases = {"full": (torch.randn(7, C, K, generator=g), torch.randn(7, generator=g), gy),
         "depthwise": (torch.randn(C, K, generator=g), torch.randn(C, generator=g), gy[..., :C].contiguous())}
for taps, (w, bias, grad_y) in cases.items():
    for r in (None, rho):
        y1 = T.gather_taps_forward(v, idx, r, w, bias, taps)
        y2 = aggregation.gather_taps_forward(v, idx, r, w, bias, taps)
        check(f"gather_taps {taps} rho={r is not None}", close(y1, y2), (y1 - y2).abs().max().item())
        got = T.gather_taps_backward(grad_y, v, idx, r, w, taps, True, True, True, True)
        want = aggregation.gather_taps_backward(grad_y, v, idx, r, w, taps)
        ok = all((a is None and b is None) or close(a, b) for a, b in zip(got, want))
        check(f"backward {taps} rho={r is not None}", ok)
        again = T.gather_taps_backward(grad_y, v, idx, r, w, taps, True, True, True, True)
        check(f"backward {taps} bitwise repeatable", torch.equal(got[0], again[0]))
heads_w = torch.randn(2, 3, K, generator=g)
v3 = v[..., :3].contiguous()
y1 = T.gather_taps_forward(v3, idx, rho, heads_w, None, "depthwise")
y2 = aggregation.gather_taps_forward(v3, idx, rho, heads_w, None, "depthwise")
check("gather_taps depthwise per head", close(y1, y2))
"""

FUSED = """
B, C = 2, 5
x = torch.randn(B, 30, C, generator=g)
queries = torch.arange(4, 26)
for taps, w, bias in (("full", torch.randn(6, C, 4, generator=g), torch.randn(6, generator=g)),
                      ("depthwise", torch.randn(C, 4, generator=g), None)):
    for metric in ("cosine", "euclidean"):
        y1, i1 = ops.fused_convnn(x[:, queries].contiguous(), x, x, queries, w, bias, 4, metric, True, taps, False)
        i2, _ = selection.select_topk(x[:, queries], x, queries, None, 4, metric, True)
        y2 = aggregation.gather_taps_forward(x, i2, None, w, bias, taps)
        check(f"fused {taps} {metric}", torch.equal(i1, i2) and close(y1, y2), (y1 - y2).abs().max().item())
xg = x.clone().requires_grad_(True)
wg = torch.randn(6, C, 4, generator=g, requires_grad=True)
y, _ = ops.fused_convnn(xg[:, queries].detach().contiguous(), xg.detach(), xg, queries, wg, None, 4, "cosine", True,
                        "full", True)
y.square().sum().backward()
xr = x.clone().requires_grad_(True)
wr = wg.detach().clone().requires_grad_(True)
i2, _ = selection.select_topk(x[:, queries], x, queries, None, 4, "cosine", True)
aggregation.gather_taps_forward(xr, i2, None, wr, None, "full").square().sum().backward()
check("fused backward", close(xg.grad, xr.grad) and close(wg.grad, wr.grad))
"""


def run_interpreted(body: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TRITON_INTERPRET="1", CONVNN_TORCH_TRITON_ON_CPU="1", OMP_NUM_THREADS="1")
    code = PRELUDE + textwrap.dedent(body) + EPILOGUE
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("body", [SELECT, TAPS, FUSED], ids=["select", "gather-taps", "fused"])
def test_triton_kernels_in_the_interpreter(body):
    proc = run_interpreted(body)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok" in proc.stdout


def test_triton_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    # The interpreter does not check what only the compiler rejects (it passed a non-constexpr static_range
    # bound that failed on an H200); this compiles every launch for sm_90 through ptxas, running nothing.
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "triton_compile_only.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "_select_kernel" in proc.stdout and "_gather_taps_kernel" in proc.stdout, proc.stdout
