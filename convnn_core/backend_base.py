"""What every backend object shares: the four ConvNN ops of the vocabulary, run by the one pipeline on its kernels.

A backend class mixes this in and sets `kernels` (a convnn.kernels.KernelsBase) and `capabilities`
(a convnn.kernels.Capabilities); it adds its layer vocabulary, arrays and training itself.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

from . import pipeline
from .config import ConvNNConfig
from .kernels import Capabilities, KernelsBase

DEFAULT_CONFIG = ConvNNConfig()


class PipelineOps:
    """convnn2d, convnn1d, convnn_attention and select_neighbors through convnn.pipeline on `self.kernels`."""

    name: str = "?"
    kernels: KernelsBase
    capabilities: Capabilities

    def convnn2d(self, x: Any, weight: Any, bias: Optional[Any] = None, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
                 candidates: Any = None, rng: Any = None) -> Any:
        """ConvNN on an NCHW map: y [B, O, H, W] (SPEC.md); weight [O, C_agg, K] or depthwise [C_agg, K]."""
        return pipeline.convnn_nd(self.kernels, x, weight, bias, cfg, 2, candidates=candidates, rng=rng)

    def convnn1d(self, x: Any, weight: Any, bias: Optional[Any] = None, cfg: ConvNNConfig = DEFAULT_CONFIG, *,
                 candidates: Any = None, rng: Any = None) -> Any:
        """ConvNN on a [B, C, L] sequence: y [B, O, L]."""
        return pipeline.convnn_nd(self.kernels, x, weight, bias, cfg, 1, candidates=candidates, rng=rng)

    def convnn_attention(self, x: Any, params: Mapping[str, Any], cfg: Optional[ConvNNConfig] = None, *,
                         heads: int = 1, dropout: float = 0.0, candidates: Any = None, rng: Any = None,
                         train: bool = False) -> Any:
        """ConvNN attention on [B, N, D] tokens (SPEC.md section 5)."""
        return pipeline.convnn_attention(self.kernels, x, params, cfg, heads=heads, dropout=dropout,
                                         candidates=candidates, rng=rng, train=train)

    def select_neighbors(self, feats: Any, cfg: ConvNNConfig = DEFAULT_CONFIG, *, query_feats: Any = None,
                         candidates: Any = None, rng: Any = None) -> tuple[Any, Any]:
        """Neighbour indices [B, N, K] (int64) and affinities [B, N, K] in cfg.order."""
        return pipeline.select_neighbors(self.kernels, feats, cfg, query_feats=query_feats, candidates=candidates,
                                         rng=rng)

    def synchronize(self, value: Any) -> Any:
        """Block until the device work behind value is done; return value (CPU backends: nothing to wait for)."""
        return value

    def place(self, tree: Any) -> Any:
        """Commit a pytree of this backend's arrays to its device (a no-op where arrays are already placed)."""
        return tree
