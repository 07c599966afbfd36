"""The oracle: the spec (convnn_core) in float64 on NumPy for values, torch autograd of the same spec for gradients,
finite differences to check those gradients, and direct NumPy references for the identities of SPEC.md section 6.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import numpy as np

import convnn as cc

PROJECTIONS = ("wq", "wk", "wv", "wo")
# The role "oracle": the registered backend that runs the spec itself in float64. Bench and conformance name it
# through this constant only (it is skipped as a contender, and it is what every other backend is compared to).
ORACLE_BACKEND = "numpy"


# ----------------------------------------------------------------------------- forward
def spec_forward(case: Any, inputs: dict[str, Any], xp_asarray: Callable[[Any], Any] = np.asarray) -> dict[str, Any]:
    """The spec's outputs for a case, computed on arrays made by xp_asarray (NumPy float64 by default)."""
    cfg, cand = case.cfg, inputs.get("candidates")
    a = {k: (None if v is None else xp_asarray(v)) for k, v in inputs.items() if k != "candidates"}
    if case.op in ("convnn2d", "identity_conv3x3", "identity_conv1x1"):
        return {"y": cc.convnn2d(a["x"], a["weight"], a.get("bias"), cfg, candidates=cand)}
    if case.op == "convnn1d":
        return {"y": cc.convnn1d(a["x"], a["weight"], a.get("bias"), cfg, candidates=cand)}
    if case.op in ("convnn_attention", "identity_attention_dense", "identity_attention_kvt"):
        params = {k: a[k] for k in PROJECTIONS + ("taps",)}
        return {"y": cc.convnn_attention(a["x"], params, cfg, heads=case.heads, candidates=cand)}
    if case.op == "select_neighbors":
        idx, aff = cc.select_neighbors(a["feats"], cfg, query_feats=a.get("query_feats"), candidates=cand)
        return {"indices": idx, "affinities": aff}
    raise ValueError(f"case.op={case.op!r} is unknown")


def oracle_forward(case: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The float64 oracle outputs (NumPy) of a case."""
    return {k: np.asarray(v) for k, v in spec_forward(case, inputs).items()}


# ----------------------------------------------------------------------------- gradients
def grad_params(case: Any, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """The differentiable inputs of a case by name (x, weight, bias or x and the attention parameters)."""
    if case.op in ("convnn_attention", "identity_attention_dense", "identity_attention_kvt"):
        names = ("x",) + PROJECTIONS + ("taps",)
    else:
        names = ("x", "weight", "bias")
    return {k: inputs[k] for k in names if inputs.get(k) is not None}


def cotangent(case: Any, out_shape: tuple[int, ...]) -> np.ndarray:
    """The fixed output weighting: loss = sum(y * cotangent), the same for every backend."""
    return np.random.default_rng(case.seed + 17).standard_normal(out_shape)


def spec_loss(case: Any, inputs: dict[str, Any], params: dict[str, Any], cot: Any,
              xp_asarray: Callable[[Any], Any]) -> Any:
    """sum(op(params) * cot) with the spec on whatever arrays params holds."""
    merged = dict(inputs)
    merged.update(params)
    y = spec_forward(case, merged, xp_asarray=lambda v: v if not isinstance(v, np.ndarray) else xp_asarray(v))["y"]
    return (y * cot).sum()


def torch_autograd_grads(case: Any, inputs: dict[str, Any], cot: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Loss and gradients of the spec run on float64 torch tensors (the gradient oracle)."""
    import torch

    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in grad_params(case, inputs).items()}
    to_t = lambda v: torch.as_tensor(v, dtype=torch.float64)  # noqa: E731
    with warnings.catch_warnings():  # torch >= 2.13 notes its asarray requires_grad default, harmless here
        warnings.filterwarnings("ignore", message=".*unspecified requires_grad.*")
        loss = spec_loss(case, inputs, params, to_t(cot), to_t)
    names = list(params)
    grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
    out = {n: (np.zeros_like(inputs[n]) if g is None else g.detach().numpy()) for n, g in zip(names, grads)}
    return float(loss.detach()), out


def finite_difference_grads(loss: Callable[[dict[str, np.ndarray]], float], params: dict[str, np.ndarray],
                            step: float = 1e-6) -> dict[str, np.ndarray]:
    """Central differences of a scalar loss with respect to every entry of every parameter (float64)."""
    grads: dict[str, np.ndarray] = {}
    for name, value in params.items():
        g = np.zeros_like(value, dtype=np.float64)
        flat = g.reshape(-1)
        for i in range(value.size):
            plus = {k: v.copy() for k, v in params.items()}
            minus = {k: v.copy() for k, v in params.items()}
            plus[name].reshape(-1)[i] += step
            minus[name].reshape(-1)[i] -= step
            flat[i] = (loss(plus) - loss(minus)) / (2.0 * step)
        grads[name] = g
    return grads


# ----------------------------------------------------------------------------- identity references
def conv2d_reference(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray], padding: int) -> np.ndarray:
    """Direct cross-correlation, NCHW, stride 1 (the meaning of torch's Conv2d), in float64."""
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho, wo = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
    y = np.zeros((b, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            y += np.einsum("bchw,oc->bohw", xp[:, :, i:i + ho, j:j + wo], weight[:, :, i, j])
    if bias is not None:
        y += bias[None, :, None, None]
    return y


def softmax_attention_reference(x: np.ndarray, params: dict[str, np.ndarray], heads: int,
                                k: Optional[int] = None) -> np.ndarray:
    """softmax(q k^T / sqrt(d_head)) v then wo, optionally keeping only the top-k scores per row (lower index on ties)."""
    b, n, d = x.shape
    dh = d // heads

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(b, n, heads, dh).transpose(0, 2, 1, 3)

    q, kk, v = (split(x @ params[name].T) for name in ("wq", "wk", "wv"))
    scores = q @ kk.transpose(0, 1, 3, 2) / np.sqrt(dh)
    if k is not None:
        order = np.argsort(-scores, axis=-1, kind="stable")
        keep = np.zeros_like(scores, dtype=bool)
        np.put_along_axis(keep, order[..., :k], True, axis=-1)
        scores = np.where(keep, scores, -np.inf)
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = e / e.sum(axis=-1, keepdims=True)
    y = (probs @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    return y @ params["wo"].T
