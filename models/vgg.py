"""VGG-11/13/16/19 with Conv2d, ConvNN2d or Branching layers (SPEC.md sections 5 and 7), written once for every backend."""
from __future__ import annotations

import math
from typing import Any

from convnn.config import ConvNNConfig

from . import _arrays as A
from . import options as opt
from .base import Model
from .init import ParamSpec, ones, uniform, zeros

PLANS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
              "M"),
}
LAYERS = ("conv", "convnn", "branching")
HEADS = ("paper", "light")

DEFAULTS: dict[str, Any] = {
    "layer": "conv",          # conv | convnn | branching
    "ratio": 0.5,             # branching: share of output channels from ConvNN (floor(ratio * out))
    "k": 9,                   # ConvNN neighbours
    "sampling": "all",        # all | random | spatial
    "num_samples": None,      # candidates for random / spatial (spatial: a perfect square n*n)
    "metric": "cosine",
    "select": "feature",      # feature (Col) | position (Loc) | blend (Loc_Col)
    "blend": 0.5,
    "aggregate_coords": False,
    "order": "rank",
    "padding": 1,
    "kernel_size": 3,         # the Conv2d layers / branch
    "head": "paper",          # paper: 7x7 pool + 4096-4096 MLP; light: global average pool + one linear
    "hidden": 4096,
    "dropout": 0.5,
    "width": 1.0,             # channel multiplier (0.125 gives 8..64 channels: the CPU demo)
    "in_chans": 3,
    "dtype": "float32",
    "eval_seed": 0,
}


def uses_convnn(name: str, options: dict[str, Any]) -> bool:
    """Whether VGG `name` with these options has ConvNN layers (layer convnn or branching)."""
    return opt.choice(name, "layer", {**DEFAULTS, **options}["layer"], LAYERS) != "conv"


class VGG(Model):
    """VGG on NCHW images: each plan entry is layer -> BatchNorm -> ReLU, 'M' a 2x2 max-pool, then the head."""

    def __init__(self, backend: Any, name: str, num_classes: int, options: dict[str, Any]) -> None:
        opt.check_known(name, options, DEFAULTS)
        o = {**DEFAULTS, **options}
        o["layer"] = opt.choice(name, "layer", o["layer"], LAYERS)
        o["head"] = opt.choice(name, "head", o["head"], HEADS)
        o["ratio"] = opt.number(name, "ratio", o["ratio"], 0.0, 1.0)
        o["dropout"] = opt.number(name, "dropout", o["dropout"], 0.0, 1.0, hi_open=True)
        o["width"] = opt.number(name, "width", o["width"], 1e-3, 64.0)
        o["kernel_size"] = opt.integer(name, "kernel_size", o["kernel_size"], 1)
        o["hidden"] = opt.integer(name, "hidden", o["hidden"], 1)
        o["in_chans"] = opt.integer(name, "in_chans", o["in_chans"], 1)
        o["eval_seed"] = opt.integer(name, "eval_seed", o["eval_seed"], 0)
        o["dtype"] = opt.dtype(name, o["dtype"])
        if o["sampling"] != "all" and o["num_samples"] is None:
            o["num_samples"] = 64
        super().__init__(backend, name, num_classes, o)
        opt.integer(name, "num_classes", num_classes, 1)
        try:
            self.cfg = ConvNNConfig(k=o["k"], select=o["select"], metric=o["metric"], blend=o["blend"],
                                    sampling=o["sampling"], num_samples=o["num_samples"],
                                    aggregate_coords=o["aggregate_coords"], order=o["order"],
                                    padding=o["padding"], self_first=True, weighting="none", taps="full")
        except (TypeError, ValueError) as err:
            raise ValueError(f"model {name!r}: {err}") from err
        self.plan = tuple(v if v == "M" else max(1, int(round(v * o["width"]))) for v in PLANS[name])

    # ------------------------------------------------------------------ parameters
    def _layer_specs(self, prefix: str, c: int, o: int) -> dict[str, ParamSpec]:
        ks, k = self.options["kernel_size"], self.cfg.k
        c_agg = c + 2 if self.cfg.aggregate_coords else c
        layer = self.options["layer"]
        specs: dict[str, ParamSpec] = {}
        if layer == "conv":
            specs[f"{prefix}.weight"] = uniform((o, c, ks, ks), c * ks * ks)
            specs[f"{prefix}.bias"] = uniform((o,), c * ks * ks)
        elif layer == "convnn":
            specs[f"{prefix}.weight"] = uniform((o, c_agg, k), c_agg * k)
            specs[f"{prefix}.bias"] = uniform((o,), c_agg * k)
        else:
            c1, c2 = self._branch_widths(o)
            if c1:
                specs[f"{prefix}.convnn.weight"] = uniform((c1, c_agg, k), c_agg * k)
                specs[f"{prefix}.convnn.bias"] = uniform((c1,), c_agg * k)
            if c2:
                specs[f"{prefix}.conv.weight"] = uniform((c2, c, ks, ks), c * ks * ks)
                specs[f"{prefix}.conv.bias"] = uniform((c2,), c * ks * ks)
            specs[f"{prefix}.pointwise.weight"] = uniform((o, o, 1, 1), o)
            specs[f"{prefix}.pointwise.bias"] = uniform((o,), o)
        return specs

    def _last_channels(self) -> int:
        return [v for v in self.plan if v != "M"][-1]

    def param_specs(self) -> dict[str, ParamSpec]:
        specs: dict[str, ParamSpec] = {}
        c = self.options["in_chans"]
        for i, v in enumerate(self.plan):
            if v == "M":
                continue
            specs.update(self._layer_specs(f"features.{i}.layer", c, v))
            specs[f"features.{i}.bn.gamma"] = ones((v,))
            specs[f"features.{i}.bn.beta"] = zeros((v,))
            c = v
        n = self.num_classes
        if self.options["head"] == "paper":
            h = self.options["hidden"]
            for name, fan_in, out in (("fc1", c * 49, h), ("fc2", h, h), ("fc3", h, n)):
                specs[f"head.{name}.weight"] = uniform((out, fan_in), fan_in)
                specs[f"head.{name}.bias"] = uniform((out,), fan_in)
        else:
            specs["head.fc.weight"] = uniform((n, c), c)
            specs["head.fc.bias"] = uniform((n,), c)
        return specs

    def state_specs(self) -> dict[str, ParamSpec]:
        specs: dict[str, ParamSpec] = {}
        for i, v in enumerate(self.plan):
            if v != "M":
                specs[f"features.{i}.bn.mean"] = zeros((v,))
                specs[f"features.{i}.bn.var"] = ones((v,))
        return specs

    # ------------------------------------------------------------------ what the model needs
    @property
    def uses_convnn(self) -> bool:
        return self.options["layer"] != "conv"

    @property
    def train_rng_draws(self) -> int:
        """One key per randomly sampled ConvNN layer, then one per dropout of the paper's head."""
        return self._random_layers() + self._head_random()

    # ------------------------------------------------------------------ forward
    def _random_layers(self) -> int:
        if self.cfg.sampling != "random" or self.options["layer"] == "conv":
            return 0
        return sum(1 for v in self.plan if v != "M")

    def _head_random(self) -> int:
        return 2 if self.options["head"] == "paper" and self.options["dropout"] > 0 else 0

    def _convnn(self, p: Any, x: Any, path: str, key: Any, train: bool) -> Any:
        kw: dict[str, Any] = {}
        if self.cfg.sampling == "random":
            if train:
                kw["rng"] = key
            else:
                h, w = x.shape[2], x.shape[3]
                pad = self.cfg.padding
                cand = self.eval_candidates(path, (h + 2 * pad) * (w + 2 * pad), self.cfg.num_samples)
                if cand is not None:
                    kw["candidates"] = cand
        return self.backend.convnn2d(x, p["weight"], p["bias"], self.cfg, **kw)

    def _branch_widths(self, out: int) -> tuple[int, int]:
        c1 = int(math.floor(self.options["ratio"] * out))
        return c1, out - c1

    def _layer(self, p: Any, x: Any, out: int, path: str, key: Any, train: bool) -> Any:
        ops = self.backend
        layer = self.options["layer"]
        if layer == "conv":
            return ops.conv2d(x, p["weight"], p["bias"], padding="same")
        if layer == "convnn":
            return self._convnn(p, x, path, key, train)
        c1, c2 = self._branch_widths(out)
        parts = []
        if c1:
            parts.append(self._convnn(p["convnn"], x, f"{path}.convnn", key, train))
        if c2:
            parts.append(ops.conv2d(x, p["conv"]["weight"], p["conv"]["bias"], padding="same"))
        y = parts[0] if len(parts) == 1 else A.concat(parts, axis=1)
        return ops.conv2d(y, p["pointwise"]["weight"], p["pointwise"]["bias"], padding=0)

    def apply(self, params: Any, state: Any, x: Any, *, train: bool, rng: Any = None) -> tuple[Any, Any]:
        """logits [B, classes] and the new BatchNorm state for images x [B, C, H, W]."""
        ops = self.backend
        if len(x.shape) != 4 or x.shape[1] != self.options["in_chans"]:
            raise ValueError(f"{self.name}: x has shape {tuple(x.shape)}; expected [B, {self.options['in_chans']}, H, W]")
        head_random = self._head_random()
        keys = self._keys(rng, train)
        sampled = self._random_layers() > 0
        features: dict[str, Any] = {}
        for i, v in enumerate(self.plan):
            if v == "M":
                x = ops.max_pool2d(x, 2)
                continue
            p = params["features"][str(i)]
            key = next(keys) if sampled else None
            x = self._layer(p["layer"], x, v, f"features.{i}.layer", key, train)
            x, bn_state = ops.batch_norm(x, p["bn"]["gamma"], p["bn"]["beta"], state["features"][str(i)]["bn"],
                                         train=train)
            features[str(i)] = {"bn": bn_state}
            x = ops.relu(x)
        head = params["head"]
        b = x.shape[0]
        if self.options["head"] == "paper":
            x = ops.adaptive_avg_pool2d(x, (7, 7))
            x = A.reshape(x, (b, x.shape[1] * 49))
            for name in ("fc1", "fc2"):
                x = ops.relu(ops.linear(x, head[name]["weight"], head[name]["bias"]))
                if head_random:
                    x = ops.dropout(x, self.options["dropout"], next(keys), train=train)
            logits = ops.linear(x, head["fc3"]["weight"], head["fc3"]["bias"])
        else:
            x = A.reshape(ops.adaptive_avg_pool2d(x, (1, 1)), (b, x.shape[1]))
            logits = ops.linear(x, head["fc"]["weight"], head["fc"]["bias"])
        return logits, {"features": features}


def build(backend: Any, name: str, num_classes: int, options: dict[str, Any]) -> VGG:
    return VGG(backend, name, num_classes, options)


