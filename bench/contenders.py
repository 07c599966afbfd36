"""Build the contenders of one layer case: every backend through the vocabulary, plus the torch baselines."""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import numpy as np

from convnn import ConvNNConfig, attention_config, draw_random

from .cases import MapShape, Shape, TokenShape, Variant
from .runners import BackendRunner, Contender, TorchBaselines

REFERENCE = "authors' algorithm (torch eager)"
TORCH_CONV2D = "torch conv2d 3x3"
TORCH_SDPA = "torch SDPA attention"


def convnn_config(shape: Shape, variant: Variant) -> ConvNNConfig:
    """The ConvNNConfig of a ConvNN variant on a shape (VGG layer: padding 1; ViT: the paper's attention config)."""
    samples = shape.samples if variant.sampling != "all" else None
    if isinstance(shape, TokenShape):
        return attention_config(shape.k, sampling=variant.sampling, num_samples=samples, metric=variant.metric)
    order = "position" if variant.select == "position" else "rank"
    return ConvNNConfig(k=shape.k, select=variant.select, metric=variant.metric, sampling=variant.sampling,
                        num_samples=samples, order=order, padding=1)


def host_inputs(shape: Shape, variant: Variant, seed: int = 0) -> dict[str, np.ndarray]:
    """float32 input and parameters of a case, shared by every contender (weights scaled by 1/sqrt(fan-in))."""
    rng = np.random.default_rng(seed)

    def normal(*dims: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    if isinstance(shape, MapShape):
        b, c, o = shape.batch, shape.c_in, shape.c_out
        w = normal(o, c, 3, 3, scale=(9 * c) ** -0.5) if variant.op == "conv2d" else \
            normal(o, c, shape.k, scale=(shape.k * c) ** -0.5)
        return {"x": normal(b, c, shape.height, shape.width), "weight": w, "bias": normal(o, scale=0.1)}
    d = shape.dim
    out = {"x": normal(shape.batch, shape.tokens, d)}
    for name in ("wq", "wk", "wv", "wo"):
        out[name] = normal(d, d, scale=d ** -0.5)
    if variant.op == "convnn_attention":
        out["taps"] = np.ones((d, shape.k), dtype=np.float32)
    return out


def output_shape(shape: Shape) -> tuple[int, ...]:
    """The output shape of every layer on a shape."""
    if isinstance(shape, MapShape):
        return (shape.batch, shape.c_out, shape.height, shape.width)
    return (shape.batch, shape.tokens, shape.dim)


def random_candidates(shape: Shape, variant: Variant, seed: int = 0) -> Optional[np.ndarray]:
    """One uniform draw of candidate tokens for random sampling (None when the layer uses all tokens)."""
    if variant.sampling != "random":
        return None
    n_tokens = (shape.height + 2) * (shape.width + 2) if isinstance(shape, MapShape) else shape.tokens
    if shape.samples >= n_tokens:
        return None
    return draw_random(n_tokens, shape.samples, seed)


def backend_contender(runner: BackendRunner, shape: Shape, variant: Variant) -> Contender:
    """The case run by one backend through the vocabulary (random candidates drawn once and passed in)."""
    be = runner.backend
    inputs = host_inputs(shape, variant)
    cand = random_candidates(shape, variant)
    extra = (cand,) if cand is not None else ()
    heads = getattr(shape, "heads", 1)
    cfg = convnn_config(shape, variant) if variant.is_convnn else None

    def pick(rest: tuple[Any, ...]) -> Any:
        return rest[0] if rest else None

    if variant.op == "convnn2d":
        def forward(*rest: Any, x: Any, weight: Any, bias: Any) -> Any:
            return be.convnn2d(x, weight, bias, cfg, candidates=pick(rest))
    elif variant.op == "conv2d":
        def forward(*rest: Any, x: Any, weight: Any, bias: Any) -> Any:
            return be.conv2d(x, weight, bias, padding=1)
    elif variant.op == "convnn_attention":
        def forward(*rest: Any, x: Any, **params: Any) -> Any:
            return be.convnn_attention(x, params, cfg, heads=heads, candidates=pick(rest))
    else:
        def forward(*rest: Any, x: Any, **params: Any) -> Any:
            return be.multihead_attention(x, params, heads=heads)
    op = "multihead_attention" if variant.op == "attention" else variant.op
    return runner.contender(forward, inputs, output_shape(shape), extra, op=op)


def baseline_contender(baselines: TorchBaselines, shape: Shape, variant: Variant) -> Contender:
    """The torch-eager baseline of a case: the authors' algorithm for ConvNN, else conv2d or SDPA."""
    from . import reference

    inputs = host_inputs(shape, variant)
    heads = getattr(shape, "heads", 1)
    samples = shape.samples if variant.sampling != "all" else None
    if variant.op == "convnn2d":
        def forward(x: Any, weight: Any, bias: Any) -> Any:
            return reference.reference_convnn2d(x, weight, bias, k=shape.k, padding=1, select=variant.select,
                                                metric=variant.metric, sampling=variant.sampling,
                                                num_samples=samples)
        name = REFERENCE
    elif variant.op == "conv2d":
        def forward(x: Any, weight: Any, bias: Any) -> Any:
            return baselines.torch.nn.functional.conv2d(x, weight, bias, padding=1)
        name = TORCH_CONV2D
    elif variant.op == "convnn_attention":
        dk = shape.dim // heads

        def forward(x: Any, **params: Any) -> Any:
            params = dict(params, taps=params["taps"][:dk])
            return reference.reference_convnn_attention(x, params, k=shape.k, heads=heads, sampling=variant.sampling,
                                                        num_samples=samples)
        name = REFERENCE
    else:
        def forward(x: Any, **params: Any) -> Any:
            return reference.sdpa_attention(x, params, heads=heads)
        name = TORCH_SDPA
    return baselines.contender(name, forward, inputs, output_shape(shape))


def contender_builders(baselines: Optional[TorchBaselines], runners: Mapping[str, BackendRunner], shape: Shape,
                       variant: Variant) -> list[tuple[str, Callable[[], Contender]]]:
    """(label, build) for the authors' baseline (when measured) and every backend, built lazily so a failure
    to build one contender is reported on its own row."""
    builders: list[tuple[str, Callable[[], Contender]]] = []
    if baselines is not None:
        builders.append(("baseline", lambda: baseline_contender(baselines, shape, variant)))
    for name, runner in runners.items():
        builders.append((name, lambda r=runner: backend_contender(r, shape, variant)))
    return builders
