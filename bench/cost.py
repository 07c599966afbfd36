"""FLOPs and minimal memory traffic of each benchmarked layer, from the cost model of one ConvNN layer.

Every implementation of a case is credited with the same useful work, so GFLOP/s compare directly:
similarity 2*N*r*F (N interior queries, r candidates, F selection features), aggregation
2*N*K*C*O (full taps) or 2*N*K*C (depthwise), per image. The backward of an op with no
weighting differentiates only the aggregation (2x its FLOPs: input and weight gradients);
attention's backward is counted as twice its forward.
"""
from __future__ import annotations

from dataclasses import dataclass

BYTES_FLOAT32 = 4


@dataclass(frozen=True)
class Cost:
    """Useful FLOPs of forward and forward+backward, and the bytes a fused layer must move at least."""

    forward_flops: float
    backward_flops: float
    io_bytes: float

    @property
    def forward_backward_flops(self) -> float:
        return self.forward_flops + self.backward_flops


def candidate_count(n_padded: int, sampling: str, num_samples: int | None) -> int:
    """r: every padded token for sampling 'all' (or when the sample would not be smaller), else the sample."""
    if sampling == "all" or num_samples is None or num_samples >= n_padded:
        return n_padded
    return num_samples


def selection_width(select: str, channels: int, coord_dims: int = 2) -> int:
    """F: the selection features per token (channels, coordinates, or both for blend)."""
    return {"feature": channels, "position": coord_dims, "blend": channels + coord_dims}[select]


def convnn2d_cost(batch: int, c_in: int, c_out: int, height: int, width: int, *, k: int, padding: int,
                  select: str, sampling: str, num_samples: int | None) -> Cost:
    """One ConvNN2d layer with full taps (the paper's VGG layer) on a batch of maps."""
    n = height * width
    n_padded = (height + 2 * padding) * (width + 2 * padding)
    r = candidate_count(n_padded, sampling, num_samples)
    sim = 2.0 * batch * n * r * selection_width(select, c_in)
    agg = 2.0 * batch * n * k * c_in * c_out
    io = BYTES_FLOAT32 * (batch * n * (c_in + c_out) + c_out * c_in * k)
    return Cost(sim + agg, 2.0 * agg, io)


def conv2d_cost(batch: int, c_in: int, c_out: int, height: int, width: int, kernel: int = 3) -> Cost:
    """A kernel x kernel convolution with 'same' padding."""
    flops = 2.0 * batch * height * width * kernel * kernel * c_in * c_out
    io = BYTES_FLOAT32 * (batch * height * width * (c_in + c_out) + c_out * c_in * kernel * kernel)
    return Cost(flops, 2.0 * flops, io)


def attention_cost(batch: int, tokens: int, dim: int) -> Cost:
    """Dense multi-head attention with four D x D projections: 8*N*D^2 + 4*N^2*D per image."""
    flops = 8.0 * batch * tokens * dim * dim + 4.0 * batch * tokens * tokens * dim
    io = BYTES_FLOAT32 * (2 * batch * tokens * dim + 4 * dim * dim)
    return Cost(flops, 2.0 * flops, io)


def convnn_attention_cost(batch: int, tokens: int, dim: int, *, k: int, sampling: str,
                          num_samples: int | None) -> Cost:
    """ConvNN attention: the projections, q.k over r candidates, and the weighted K-gather with depthwise taps."""
    r = candidate_count(tokens, sampling, num_samples)
    flops = 8.0 * batch * tokens * dim * dim + 2.0 * batch * tokens * r * dim + 4.0 * batch * tokens * k * dim
    io = BYTES_FLOAT32 * (2 * batch * tokens * dim + 4 * dim * dim + dim * k)
    return Cost(flops, 2.0 * flops, io)


def floor_ms(flops: float, io_bytes: float, sgemm_gflops: float | None, copy_gbs: float | None) -> float | None:
    """The physical floor of a call: max(FLOPs at the sgemm rate, minimal bytes at the copy rate), in ms."""
    if not sgemm_gflops or not copy_gbs:
        return None
    return max(flops / (sgemm_gflops * 1e9), io_bytes / (copy_gbs * 1e9)) * 1e3
