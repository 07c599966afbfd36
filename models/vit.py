"""ViT-Tiny (SPEC.md section 7) with the paper's attention variants, written once for every backend.

Patch Conv2d -> LayerNorm -> CLS (N(0,1)) -> fixed sinusoidal positions on every token -> pre-norm
blocks (attention, MLP with exact GELU) -> no final norm -> linear head on the CLS token.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from convnn.config import attention_config

from . import _arrays as A
from . import options as opt
from .base import Model
from .init import ParamSpec, normal, ones, uniform, zeros

ATTENTIONS = ("attention", "convnn", "kvt", "local", "sparse-local", "sparse-strided", "branching")
PROJECTIONS = ("wq", "wk", "wv", "wo")
TAPS = ("depthwise", "full", "separable")  # convnn: [D, K] taps, a full [D, D, K] Conv1d, or depthwise + pointwise
CONVNN_ATTENTIONS = ("convnn", "branching")  # the attentions built on the ConvNN ops

DEFAULTS: dict[str, Any] = {
    "attention": "attention",  # attention | convnn | kvt | local | sparse-local | sparse-strided | branching
    "image_size": 224,
    "patch_size": 16,
    "dim": 192,
    "depth": 12,
    "heads": 1,
    "mlp_dim": 768,
    "dropout": 0.1,
    "attention_dropout": 0.1,
    "k": 9,                    # convnn / kvt / branching: neighbours (top-k)
    "sampling": "all",         # convnn: all | random | spatial
    "num_samples": 32,         # convnn: candidates when sampling is random or spatial
    "metric": "dot",           # convnn: dot (the paper) | cosine | euclidean
    "window": 128,             # local: tokens within +-window in the 1-D token order
    "sparse_width": None,      # sparse: band width (local, default 49) or stride (strided, default 14)
    "ratio": 0.5,              # branching: share of the width D given to ConvNN attention
    "taps": "depthwise",       # convnn: depthwise (the paper) | full | separable (depthwise, then a D x D pointwise)
    "in_chans": 3,
    "dtype": "float32",
    "eval_seed": 0,
}


def sinusoid_table(n_tokens: int, dim: int) -> np.ndarray:
    """[N, D] fixed positions: sin on even dims, cos on odd dims, frequencies 10000^(-2i/D)."""
    pos = np.arange(n_tokens, dtype=np.float64)[:, None]
    i = np.arange(0, dim, 2, dtype=np.float64)
    angle = pos / np.power(10000.0, i / dim)
    table = np.zeros((n_tokens, dim))
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : dim // 2])
    return table


def uses_convnn(name: str, options: dict[str, Any]) -> bool:
    """Whether ViT `name` with these options has ConvNN layers (attention convnn or branching)."""
    return opt.choice(name, "attention", {**DEFAULTS, **options}["attention"], ATTENTIONS) in CONVNN_ATTENTIONS


class ViT(Model):
    """A pre-norm ViT on NCHW images; the attention of every block is chosen by `attention`."""

    def __init__(self, backend: Any, name: str, num_classes: int, options: dict[str, Any]) -> None:
        opt.check_known(name, options, DEFAULTS)
        o = {**DEFAULTS, **options}
        o["attention"] = opt.choice(name, "attention", o["attention"], ATTENTIONS)
        for field in ("image_size", "patch_size", "dim", "depth", "heads", "mlp_dim", "k", "window", "in_chans"):
            o[field] = opt.integer(name, field, o[field], 1)
        o["num_samples"] = opt.integer(name, "num_samples", o["num_samples"], 1)
        o["eval_seed"] = opt.integer(name, "eval_seed", o["eval_seed"], 0)
        o["dropout"] = opt.number(name, "dropout", o["dropout"], 0.0, 1.0, hi_open=True)
        o["attention_dropout"] = opt.number(name, "attention_dropout", o["attention_dropout"], 0.0, 1.0,
                                            hi_open=True)
        o["ratio"] = opt.number(name, "ratio", o["ratio"], 0.0, 1.0)
        o["dtype"] = opt.dtype(name, o["dtype"])
        opt.choice(name, "sampling", o["sampling"], ("all", "random", "spatial"))
        o["taps"] = opt.choice(name, "taps", o["taps"], TAPS)
        if o["taps"] != "depthwise" and o["attention"] != "convnn":
            raise ValueError(f"model {name!r}: taps={o['taps']!r} applies to attention='convnn' only (got "
                             f"attention={o['attention']!r}); leave taps at 'depthwise'")
        if o["sparse_width"] is None:
            o["sparse_width"] = 14 if o["attention"] == "sparse-strided" else 49
        o["sparse_width"] = opt.integer(name, "sparse_width", o["sparse_width"], 1)
        if o["image_size"] % o["patch_size"]:
            raise ValueError(f"model {name!r}: patch_size={o['patch_size']} must divide image_size={o['image_size']}")
        if o["dim"] % o["heads"]:
            raise ValueError(f"model {name!r}: heads={o['heads']} must divide dim={o['dim']}")
        super().__init__(backend, name, num_classes, o)
        opt.integer(name, "num_classes", num_classes, 1)
        self.n_tokens = (o["image_size"] // o["patch_size"]) ** 2 + 1
        self.d1 = int(math.floor(o["ratio"] * o["dim"])) if o["attention"] == "branching" else 0
        if o["attention"] == "branching":
            for width in (self.d1, o["dim"] - self.d1):
                if width and width % o["heads"]:
                    raise ValueError(f"model {name!r}: heads={o['heads']} must divide both branch widths "
                                     f"{self.d1} and {o['dim'] - self.d1} (ratio={o['ratio']})")
        if o["attention"] in CONVNN_ATTENTIONS:
            try:
                self.cfg = attention_config(o["k"], sampling=o["sampling"],
                                            num_samples=None if o["sampling"] == "all" else o["num_samples"],
                                            metric=o["metric"], taps="full" if o["taps"] == "full" else "depthwise")
            except (TypeError, ValueError) as err:
                raise ValueError(f"model {name!r}: {err}") from err
            needed = o["k"] - 1 if o["sampling"] != "all" else o["k"]
            pool = min(o["num_samples"], self.n_tokens) if o["sampling"] != "all" else self.n_tokens
            if needed > pool:
                raise ValueError(f"model {name!r}: k={o['k']} needs at least {needed} candidates but only {pool} "
                                 f"exist ({self.n_tokens} tokens, num_samples={o['num_samples']})")
        if o["attention"] == "kvt" and o["k"] > self.n_tokens:
            raise ValueError(f"model {name!r}: k={o['k']} is larger than the {self.n_tokens} tokens")
        self._pos: Any = None

    # ------------------------------------------------------------------ what the model needs
    @property
    def uses_convnn(self) -> bool:
        return self.options["attention"] in CONVNN_ATTENTIONS

    def _per_block_draws(self) -> int:
        """Keys per block: one for attention (dropout or random sampling), three for the dropouts."""
        o = self.options
        return (1 if (o["attention_dropout"] > 0 or o["sampling"] == "random") else 0) + (3 if o["dropout"] > 0 else 0)

    @property
    def train_rng_draws(self) -> int:
        return self._per_block_draws() * self.options["depth"]

    # ------------------------------------------------------------------ parameters
    def _attention_specs(self, prefix: str) -> dict[str, ParamSpec]:
        d, kind = self.options["dim"], self.options["attention"]
        specs: dict[str, ParamSpec] = {}

        def projections(p: str, width: int) -> None:
            for w in PROJECTIONS:
                specs[f"{p}.{w}"] = uniform((width, width), width)

        if kind == "branching":
            if self.d1:
                projections(f"{prefix}.convnn", self.d1)
                specs[f"{prefix}.convnn.taps"] = ones((self.d1, self.options["k"]))
            if d - self.d1:
                projections(f"{prefix}.attention", d - self.d1)
            specs[f"{prefix}.mix.weight"] = uniform((d, d), d)
            specs[f"{prefix}.mix.bias"] = uniform((d,), d)
            return specs
        projections(prefix, d)
        if kind == "convnn":
            k, taps = self.options["k"], self.options["taps"]
            specs[f"{prefix}.taps"] = uniform((d, d, k), d * k) if taps == "full" else ones((d, k))
            if taps == "separable":
                specs[f"{prefix}.pointwise"] = uniform((d, d), d)
        return specs

    def param_specs(self) -> dict[str, ParamSpec]:
        o = self.options
        d, p, m = o["dim"], o["patch_size"], o["mlp_dim"]
        fan = o["in_chans"] * p * p
        specs: dict[str, ParamSpec] = {
            "patch.weight": uniform((d, o["in_chans"], p, p), fan),
            "patch.bias": uniform((d,), fan),
            "patch_norm.gamma": ones((d,)),
            "patch_norm.beta": zeros((d,)),
            "cls": normal((1, 1, d)),
        }
        for i in range(o["depth"]):
            b = f"blocks.{i}"
            specs[f"{b}.ln1.gamma"], specs[f"{b}.ln1.beta"] = ones((d,)), zeros((d,))
            specs.update(self._attention_specs(f"{b}.attn"))
            specs[f"{b}.ln2.gamma"], specs[f"{b}.ln2.beta"] = ones((d,)), zeros((d,))
            specs[f"{b}.mlp.fc1.weight"], specs[f"{b}.mlp.fc1.bias"] = uniform((m, d), d), uniform((m,), d)
            specs[f"{b}.mlp.fc2.weight"], specs[f"{b}.mlp.fc2.bias"] = uniform((d, m), m), uniform((d,), m)
        specs["head.weight"] = uniform((self.num_classes, d), d)
        specs["head.bias"] = uniform((self.num_classes,), d)
        return specs

    # ------------------------------------------------------------------ forward
    def _convnn_attention(self, p: Any, x: Any, path: str, key: Any, train: bool) -> Any:
        o = self.options
        kw: dict[str, Any] = {"heads": o["heads"], "dropout": o["attention_dropout"], "train": train}
        if train:
            kw["rng"] = key
        elif self.cfg.sampling == "random":
            cand = self.eval_candidates(path, x.shape[1], self.cfg.num_samples)
            if cand is not None:
                kw["candidates"] = cand
        if "pointwise" in p:  # separable taps: wo(pointwise(y)) is one linear map, wo @ pointwise
            pw_t = A.permute_dims(p["pointwise"], (1, 0))
            p = {**{k: v for k, v in p.items() if k != "pointwise"},
                 "wo": A.permute_dims(self.backend.linear(pw_t, p["wo"], None), (1, 0))}
        return self.backend.convnn_attention(x, p, self.cfg, **kw)

    def _attention(self, p: Any, x: Any, path: str, key: Any, train: bool) -> Any:
        o, ops = self.options, self.backend
        kind = o["attention"]
        kw: dict[str, Any] = {"heads": o["heads"], "dropout": o["attention_dropout"], "train": train,
                              "rng": key if train else None}
        if kind == "attention":
            return ops.multihead_attention(x, p, **kw)
        if kind == "convnn":
            return self._convnn_attention(p, x, path, key, train)
        if kind == "kvt":
            return ops.kvt_attention(x, p, o["k"], **kw)
        if kind == "local":
            return ops.local_attention(x, p, o["window"], **kw)
        if kind in ("sparse-local", "sparse-strided"):
            return ops.sparse_attention(x, p, kind.split("-")[1], o["sparse_width"], **kw)
        # branching: ConvNN attention on the first d1 channels beside attention on the rest, then a linear mix
        d = o["dim"]
        k1, k2 = (ops.split_rng(key, 2) if train and key is not None else (None, None))
        parts = []
        if self.d1:
            parts.append(self._convnn_attention(p["convnn"], x[:, :, : self.d1], f"{path}.convnn", k1, train))
        if d - self.d1:
            parts.append(ops.multihead_attention(x[:, :, self.d1:], p["attention"], **{**kw, "rng": k2}))
        y = parts[0] if len(parts) == 1 else A.concat(parts, axis=2)
        return ops.linear(y, p["mix"]["weight"], p["mix"]["bias"])

    def _positions(self) -> Any:
        # the host table is cached, the backend array is not: under jax.jit a cached array would leak a tracer
        if self._pos is None:
            self._pos = sinusoid_table(self.n_tokens, self.options["dim"])[None].astype(self.dtype)
        return self.backend.asarray(self._pos, self.dtype)

    def apply(self, params: Any, state: Any, x: Any, *, train: bool, rng: Any = None) -> tuple[Any, Any]:
        """logits [B, classes] for images x [B, C, image_size, image_size]; the state is empty (no BatchNorm)."""
        o, ops = self.options, self.backend
        size = o["image_size"]
        if len(x.shape) != 4 or tuple(x.shape[1:]) != (o["in_chans"], size, size):
            raise ValueError(f"{self.name}: x has shape {tuple(x.shape)}; expected [B, {o['in_chans']}, {size}, "
                             f"{size}] (resize the images to image_size={size})")
        b, d, depth = x.shape[0], o["dim"], o["depth"]
        drop = o["dropout"]
        per_block = self._per_block_draws()
        keys = self._keys(rng, train)
        t = ops.conv2d(x, params["patch"]["weight"], params["patch"]["bias"], stride=o["patch_size"], padding=0)
        t = A.permute_dims(A.reshape(t, (b, d, self.n_tokens - 1)), (0, 2, 1))
        t = ops.layer_norm(t, params["patch_norm"]["gamma"], params["patch_norm"]["beta"])
        t = A.concat([A.broadcast_to(params["cls"], (b, 1, d)), t], axis=1)
        t = t + self._positions()
        for i in range(depth):
            bp = params["blocks"][str(i)]
            attn_key = next(keys) if train and per_block in (1, 4) else None
            h = ops.layer_norm(t, bp["ln1"]["gamma"], bp["ln1"]["beta"])
            h = self._attention(bp["attn"], h, f"blocks.{i}.attn", attn_key, train)
            if drop > 0:
                h = ops.dropout(h, drop, next(keys), train=train)
            t = t + h
            h = ops.layer_norm(t, bp["ln2"]["gamma"], bp["ln2"]["beta"])
            h = ops.gelu(ops.linear(h, bp["mlp"]["fc1"]["weight"], bp["mlp"]["fc1"]["bias"]))
            if drop > 0:
                h = ops.dropout(h, drop, next(keys), train=train)
            h = ops.linear(h, bp["mlp"]["fc2"]["weight"], bp["mlp"]["fc2"]["bias"])
            if drop > 0:
                h = ops.dropout(h, drop, next(keys), train=train)
            t = t + h
        return ops.linear(t[:, 0], params["head"]["weight"], params["head"]["bias"]), state


def build(backend: Any, name: str, num_classes: int, options: dict[str, Any]) -> ViT:
    return ViT(backend, name, num_classes, options)
