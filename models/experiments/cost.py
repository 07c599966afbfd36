"""Forward GFLOPs per image of a zoo model from its options, summed from the layer cost model of convnn.bench.cost.

FLOPs count 2 per multiply-add (the paper's profiler counted multiply-adds, so its GFLOPs are about half of
these; compare ratios between cells, not absolute values). Normalisations, activations and pooling are left
out; local and sparse attention count the keys each query sees.
"""
from __future__ import annotations

import math
from typing import Any

from convnn.bench.cost import attention_cost, conv2d_cost, convnn2d_cost, convnn_attention_cost


def vgg_flops(options: dict[str, Any], plan: list[Any], num_classes: int, image_size: int = 32) -> float:
    """Forward FLOPs of one image through a VGG (`plan` as the model built it, widths already scaled)."""
    o = options
    c, s, flops = int(o.get("in_chans", 3)), image_size, 0.0
    c_agg = 2 if o.get("aggregate_coords") else 0
    sampling, num_samples = o.get("sampling", "all"), o.get("num_samples")
    if sampling != "all" and num_samples is None:
        num_samples = 64

    def convnn(c_in: int, c_out: int) -> float:
        return convnn2d_cost(1, c_in + c_agg, c_out, s, s, k=o.get("k", 9), padding=o.get("padding", 1),
                             select=o.get("select", "feature"), sampling=sampling,
                             num_samples=num_samples).forward_flops

    for v in plan:
        if v == "M":
            s //= 2
            continue
        layer, ks = o.get("layer", "conv"), o.get("kernel_size", 3)
        if layer == "conv":
            flops += conv2d_cost(1, c, v, s, s, ks).forward_flops
        elif layer == "convnn":
            flops += convnn(c, v)
        else:
            c1 = int(math.floor(o.get("ratio", 0.5) * v))
            if c1:
                flops += convnn(c, c1)
            if v - c1:
                flops += conv2d_cost(1, c, v - c1, s, s, ks).forward_flops
            flops += conv2d_cost(1, v, v, s, s, 1).forward_flops
        c = v
    if o.get("head", "paper") == "paper":
        h = o.get("hidden", 4096)
        flops += 2.0 * (c * 49 * h + h * h + h * num_classes)
    else:
        flops += 2.0 * c * num_classes
    return flops


def _attention_flops(o: dict[str, Any], tokens: int, dim: int) -> float:
    kind = o.get("attention", "attention")
    k = o.get("k", 9)
    if kind == "convnn":
        sampled = o.get("sampling", "all") != "all"
        flops = convnn_attention_cost(1, tokens, dim, k=k, sampling=o.get("sampling", "all"),
                                      num_samples=o.get("num_samples") if sampled else None).forward_flops
        taps = o.get("taps", "depthwise")
        if taps == "full":  # [D, D, K] taps instead of [D, K]
            flops += 2.0 * tokens * k * dim * (dim - 1)
        elif taps == "separable":  # a D x D pointwise after the depthwise taps
            flops += 2.0 * tokens * dim * dim
        return flops
    if kind in ("local", "sparse-local", "sparse-strided"):
        if kind == "local":
            seen = min(tokens, 2 * o.get("window", 128) + 1)
        else:
            width = o.get("sparse_width") or (14 if kind == "sparse-strided" else 49)
            seen = min(tokens, width if kind == "sparse-local" else math.ceil(tokens / width))
        return 8.0 * tokens * dim * dim + 4.0 * tokens * seen * dim
    return attention_cost(1, tokens, dim).forward_flops  # dense attention and KVT (top-k of the dense scores)


def vit_flops(options: dict[str, Any], num_classes: int) -> float:
    """Forward FLOPs of one image through the ViT with these (complete) options."""
    o = options
    d, p, m, depth = o["dim"], o["patch_size"], o["mlp_dim"], o["depth"]
    patches = (o["image_size"] // p) ** 2
    tokens = patches + 1
    flops = 2.0 * patches * d * o.get("in_chans", 3) * p * p
    if o.get("attention") == "branching":
        d1 = int(math.floor(o.get("ratio", 0.5) * d))
        per_block = (_attention_flops({**o, "attention": "convnn"}, tokens, d1) if d1 else 0.0) + \
            (attention_cost(1, tokens, d - d1).forward_flops if d - d1 else 0.0) + 2.0 * tokens * d * d
    else:
        per_block = _attention_flops(o, tokens, d)
    per_block += 4.0 * tokens * d * m
    return flops + depth * per_block + 2.0 * d * num_classes


def model_gflops(model_config: dict[str, Any]) -> float | None:
    """Forward GFLOPs per image for a run's model_config (config.json), or None for a model this does not know."""
    name, options = model_config.get("name", ""), dict(model_config.get("options", {}))
    classes = int(model_config.get("num_classes", 10))
    if name.startswith("vgg"):
        from ..vgg import PLANS

        width = options.get("width", 1.0)
        plan = [v if v == "M" else max(1, int(round(v * width))) for v in PLANS[name]]
        return vgg_flops(options, plan, classes) / 1e9
    if name.startswith("vit"):
        return vit_flops(options, classes) / 1e9
    return None
