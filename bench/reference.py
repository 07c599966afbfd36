"""The authors' ConvNN algorithm rebuilt in torch eager from its published description: the speed baseline.

It keeps the costly structure the authors' layers have, because that is what the benchmark compares
against: the dense similarity over every padded token (queries included), a diagonal fill that puts
self first, torch.topk, the expand-then-gather copy of the values into a [B, C, N', K] "prime"
tensor, the crop of the padding, and a Conv1d with kernel K and stride K. Sampled variants score
all tokens against a candidate subset, push sampled tokens away from themselves and prepend self.
The ViT layer (`reference_convnn_attention`) scores keys against queries, keeps the top K, weights
them by a softmax and applies a depthwise Conv1d over the weighted, gathered values.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

SELF_SCORE = {"cosine": 1.1, "euclidean": -0.1}  # written on the diagonal so self ranks first
SAMPLED_SELF_PENALTY = {"cosine": -1e5, "euclidean": 1e5}
ATTENTION_SELF_PENALTY = -0.1
ATTENTION_SELF_LOGIT = 1.0


def _torch() -> Any:
    import torch

    return torch


def coordinate_channels(batch: int, hp: int, wp: int, like: Any) -> Any:
    """[B, 2, Hp, Wp]: the column coordinate linspace(-1, 1, Wp), then the row coordinate, over the padded grid."""
    torch = _torch()
    xs = torch.linspace(-1.0, 1.0, wp, dtype=like.dtype, device=like.device)
    ys = torch.linspace(-1.0, 1.0, hp, dtype=like.dtype, device=like.device)
    grid = torch.stack([xs[None, :].expand(hp, wp), ys[:, None].expand(hp, wp)])
    return grid[None].expand(batch, 2, hp, wp)


def pairwise_scores(queries: Any, keys: Any, metric: str) -> Any:
    """[B, Nq, Nk] scores of channels-first features [B, F, Nq] against [B, F, Nk]: cosine or squared distance."""
    torch = _torch()
    if metric == "cosine":
        qn = torch.nn.functional.normalize(queries, dim=1)
        kn = torch.nn.functional.normalize(keys, dim=1)
        return torch.bmm(qn.transpose(1, 2), kn).clamp(-1.0, 1.0)
    if metric == "euclidean":
        dots = torch.bmm(queries.transpose(1, 2), keys)
        sq_q = (queries * queries).sum(dim=1)[:, :, None]
        sq_k = (keys * keys).sum(dim=1)[:, None, :]
        return (sq_q + sq_k - 2.0 * dots).clamp_min(0.0)
    raise ValueError(f"metric={metric!r} is not allowed in the reference; choose cosine or euclidean")


def _rank(scores: Any, k: int, metric: str, by_position: bool) -> Any:
    """Indices of the k best scores per row; for position selection a full stable sort, then ascending order."""
    torch = _torch()
    largest = metric == "cosine"
    if by_position:
        order = torch.sort(scores, dim=-1, descending=largest, stable=True).indices[..., :k]
        return torch.sort(order, dim=-1).values
    return torch.topk(scores, k, dim=-1, largest=largest, sorted=True).indices


def authors_spatial_candidates(height: int, width: int, side: int, device: Any) -> Any:
    """The authors' side x side grid: floor(linspace) rows and cols of the unpadded map, flattened row * height + col."""
    torch = _torch()
    rows = torch.floor(torch.linspace(0, height - 1, side, device=device)).long()
    cols = torch.floor(torch.linspace(0, width - 1, side, device=device)).long()
    first, second = torch.meshgrid(rows, cols, indexing="ij")
    return (second * height + first).reshape(-1)


def _candidates(sampling: str, num_samples: Optional[int], n_padded: int, height: int, width: int,
                device: Any) -> Optional[Any]:
    """The sampled token subset of one call, or None where the authors fall back to the dense path."""
    torch = _torch()
    if sampling == "all":
        return None
    if num_samples is None:
        raise ValueError(f"sampling={sampling!r} needs num_samples (an int >= 1)")
    if sampling == "random":
        if num_samples > n_padded:
            return None
        return torch.randperm(n_padded, device=device)[:num_samples]
    side = math.isqrt(num_samples)
    if side > height:
        return None
    return authors_spatial_candidates(height, width, side, device)


def selection_and_values(x: Any, padding: int, select: str, blend: float) -> tuple[Any, Any]:
    """Padded, flattened selection features [B, F, N'] and values [B, C, N'] of a map [B, C, H, W]."""
    torch = _torch()
    b, c, h, w = x.shape
    xp = torch.nn.functional.pad(x, (padding,) * 4) if padding else x
    hp, wp = h + 2 * padding, w + 2 * padding
    values = xp.reshape(b, c, hp * wp)
    if select == "feature":
        return values, values
    coords = coordinate_channels(b, hp, wp, x).reshape(b, 2, hp * wp)
    if select == "position":
        return coords, values
    if select == "blend":
        sigma = values.reshape(b, -1).std(dim=1) + 1e-6
        return torch.cat([blend * values / sigma[:, None, None], (1.0 - blend) * coords], dim=1), values
    raise ValueError(f"select={select!r} is not allowed; choose feature, position or blend")


def reference_neighbors(feats: Any, k: int, metric: str, select: str, cand: Optional[Any]) -> Any:
    """[B, N', K] neighbour indices of every padded token, self in slot 0, as the authors compute them."""
    torch = _torch()
    n = feats.shape[-1]
    by_position = select == "position"
    if cand is None:
        scores = pairwise_scores(feats, feats, metric)
        scores.diagonal(dim1=1, dim2=2).fill_(SELF_SCORE[metric])
        return _rank(scores, k, metric, by_position)
    scores = pairwise_scores(feats, feats[:, :, cand], metric)
    scores[:, cand, torch.arange(cand.shape[0], device=cand.device)] = SAMPLED_SELF_PENALTY[metric]
    picked = cand[_rank(scores, k - 1, metric, False)]
    own = torch.arange(n, device=feats.device)[None, :, None].expand(feats.shape[0], n, 1)
    idx = torch.cat([own, picked], dim=-1)
    return torch.sort(idx, dim=-1).values if by_position else idx


def expand_and_gather(values: Any, idx: Any) -> Any:
    """prime [B, C, N', K] with prime[b, c, i, k] = values[b, c, idx[b, i, k]], via a contiguous expanded copy."""
    b, c, n = values.shape
    k = idx.shape[-1]
    expanded = values[:, :, :, None].expand(b, c, n, k).contiguous()
    return expanded.gather(2, idx[:, None, :, :].expand(b, c, n, k))


def reference_convnn2d(x: Any, weight: Any, bias: Optional[Any], *, k: int = 9, padding: int = 1,
                       select: str = "feature", metric: str = "cosine", sampling: str = "all",
                       num_samples: Optional[int] = None, blend: float = 0.5,
                       candidates: Optional[Any] = None) -> Any:
    """The authors' ConvNN2d on x [B, C, H, W] with a Conv1d weight [O, C, K]: y [B, O, H, W].

    Sampled variants draw their candidates on every call, as the authors do; `candidates` (padded
    token indices) fixes them instead, for checks against the spec.
    """
    torch = _torch()
    b, c, h, w = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    feats, values = selection_and_values(x, padding, select, blend)
    cand = candidates if candidates is not None else _candidates(sampling, num_samples, hp * wp, h, w, x.device)
    idx = reference_neighbors(feats, k, metric, select, cand)  # with autograd on, as the authors run it
    prime = expand_and_gather(values, idx)  # [B, C, N', K]
    if padding:
        prime = prime.reshape(b, c, hp, wp, k)[:, :, padding:padding + h, padding:padding + w, :]
    prime = prime.reshape(b, c, h * w * k)
    y = torch.nn.functional.conv1d(prime, weight, bias, stride=k)
    return y.reshape(b, weight.shape[0], h, w)


def reference_convnn_attention(x: Any, params: Mapping[str, Any], *, k: int = 9, heads: int = 1,
                               sampling: str = "all", num_samples: Optional[int] = None) -> Any:
    """The authors' ViT ConvNN attention on x [B, N, D]; params wq, wk, wv, wo [D, D] and taps [D/h, K] (depthwise)."""
    torch = _torch()
    F = torch.nn.functional
    b, n, d = x.shape
    dk = d // heads

    def heads_channels_first(t: Any) -> Any:  # [B, M, D] -> [B*h, dk, M]
        m = t.shape[1]
        return t.reshape(b, m, heads, dk).permute(0, 2, 3, 1).reshape(b * heads, dk, m)

    keys = heads_channels_first(F.linear(x, params["wk"]))
    values = heads_channels_first(F.linear(x, params["wv"]))
    if sampling == "all":
        queries = heads_channels_first(F.linear(x, params["wq"]))
        scores = torch.bmm(keys.transpose(1, 2), queries) / math.sqrt(dk)
        top = torch.topk(scores, k, dim=-1, largest=True, sorted=True)
        idx, weights = top.indices, torch.softmax(top.values, dim=-1)
    else:
        if num_samples is None:
            raise ValueError(f"sampling={sampling!r} needs num_samples (an int >= 1)")
        if sampling == "random":
            cand = torch.randperm(n, device=x.device)[:num_samples]
        else:
            cand = torch.floor(torch.linspace(0, n - 1, num_samples, device=x.device)).long()
        queries = heads_channels_first(F.linear(x[:, cand], params["wq"]))
        scores = torch.bmm(keys.transpose(1, 2), queries) / math.sqrt(dk)
        scores[:, cand, torch.arange(cand.shape[0], device=x.device)] = ATTENTION_SELF_PENALTY
        top = torch.topk(scores, k - 1, dim=-1, largest=True, sorted=True)
        own = torch.arange(n, device=x.device)[None, :, None].expand(b * heads, n, 1)
        idx = torch.cat([own, cand[top.indices]], dim=-1)
        self_logit = torch.full_like(top.values[..., :1], ATTENTION_SELF_LOGIT)
        weights = torch.softmax(torch.cat([self_logit, top.values], dim=-1), dim=-1)
    prime = expand_and_gather(values, idx) * weights[:, None, :, :]  # [B*h, dk, N, K]
    taps = params["taps"].reshape(dk, 1, k)
    y = F.conv1d(prime.reshape(b * heads, dk, n * k), taps, None, stride=k, groups=dk)  # [B*h, dk, N]
    y = y.reshape(b, heads, dk, n).permute(0, 3, 1, 2).reshape(b, n, d)
    return F.linear(y, params["wo"])


def sdpa_attention(x: Any, params: Mapping[str, Any], *, heads: int = 1) -> Any:
    """Dense attention with the same four projections, its core in torch's scaled_dot_product_attention."""
    torch = _torch()
    F = torch.nn.functional
    b, n, d = x.shape

    def split(t: Any) -> Any:
        return t.reshape(b, n, heads, d // heads).transpose(1, 2)

    q, kk, v = (split(F.linear(x, params[name])) for name in ("wq", "wk", "wv"))
    y = F.scaled_dot_product_attention(q, kk, v)
    return F.linear(y.transpose(1, 2).reshape(b, n, d), params["wo"])
