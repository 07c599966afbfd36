"""The training configuration: one dataclass, presets (the paper's protocol and the CPU demo), file + overrides."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

SCHEDULES = ("constant", "cosine")
PRECISIONS = ("fp32", "bf16")  # bf16: bfloat16 compute, float32 master weights and checkpoints (train/precision.py)
COMPILE = ("auto", "on", "off")
MAX_LR = 10.0        # larger learning rates are typos (1e30) or non-finite in effect
MAX_RESIZE = 4096    # pixels per side; --resize 100000 would ask for terabytes per batch


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2 ** 30:,.0f} GiB"


@dataclass
class TrainConfig:
    """Everything a run needs; `resolved()` is what config.json beside the metrics holds."""

    model: str = "vgg11"
    model_options: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    dataset: str = "cifar10"
    data_dir: Optional[str] = None
    download: bool = False
    val_size: Optional[int] = None      # last N training images; None: 10% (5,000 of CIFAR's 50,000)
    subset: Optional[int] = None        # train on the first N images of the training split only
    val_subset: Optional[int] = None    # evaluate on the first N validation images only
    test: bool = False                  # evaluate the best model on the official test split at the end
    epochs: int = 150
    batch_size: int = 256
    eval_batch_size: Optional[int] = None
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad_norm: Optional[float] = 1.0
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    augment: bool = False
    resize: Optional[int] = None        # None: the model's image size (ViT), else as loaded
    seed: int = 42
    dtype: str = "float32"
    out_dir: str = "runs"
    run_name: Optional[str] = None
    checkpoint_every: int = 0           # also save 'last' every N steps (0: at the end of each epoch only)
    compile: str = "auto"               # auto: where capabilities.compile_by_default; on: backend.compile; off
    progress: bool = True
    preset: str = "paper"
    precision: str = "fp32"             # fp32, or bf16: bfloat16 compute with float32 master weights (torch, jax)
    devices: Any = 1                    # jax: shard each batch over N local devices (or "all"); torch: use torchrun

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field, the value and what is allowed."""
        def positive_int(name: str, allow_none: bool = False, minimum: int = 1) -> None:
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"train config {name}={v!r} must be an int >= {minimum}"
                                 + (" or null" if allow_none else ""))

        for name in ("epochs", "batch_size", "seed"):
            positive_int(name, minimum=0 if name == "seed" else 1)
        for name in ("val_size", "subset", "val_subset", "eval_batch_size", "resize"):
            positive_int(name, allow_none=True)
        positive_int("checkpoint_every", minimum=0)
        if self.resize is not None and self.resize > MAX_RESIZE:
            raise ValueError(f"train config resize={self.resize} is larger than {MAX_RESIZE} pixels (one batch of "
                             f"{self.batch_size} images would need {_gib(self.batch_size * 3 * self.resize ** 2 * 4)});"
                             f" use the model's size (omit --resize) or a size such as 32 or 224")
        for name in ("lr", "weight_decay", "eps", "warmup_epochs"):
            v = getattr(self, name)
            positive = name in ("lr", "eps")  # eps 0 turns AdamW's 0/0 into NaN for a parameter with no gradient
            if (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0
                    or (positive and v == 0)):
                kind = "positive" if positive else "non-negative"
                raise ValueError(f"train config {name}={v!r} must be a finite {kind} number")
        if self.lr > MAX_LR:
            raise ValueError(f"train config lr={self.lr!r} is implausibly large (more than {MAX_LR}; AdamW learning "
                             f"rates are typically 1e-5 to 1e-2): training would diverge at once")
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"train config weight_decay={self.weight_decay!r} with lr={self.lr!r}: the decoupled "
                             f"decay step lr*weight_decay={self.lr * self.weight_decay:g} must stay below 1 (it "
                             f"multiplies every parameter by 1 - lr*weight_decay each step)")
        if self.clip_grad_norm is not None and (isinstance(self.clip_grad_norm, bool) or not isinstance(
                self.clip_grad_norm, (int, float)) or not math.isfinite(self.clip_grad_norm)
                or self.clip_grad_norm <= 0):
            raise ValueError(f"train config clip_grad_norm={self.clip_grad_norm!r} must be a finite positive number or "
                             f"null (no clipping)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train config schedule={self.schedule!r} is not allowed; choose one of "
                             f"{', '.join(SCHEDULES)}")
        if self.compile not in COMPILE:
            raise ValueError(f"train config compile={self.compile!r} is not allowed; choose one of {', '.join(COMPILE)}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"train config dtype={self.dtype!r} is not allowed; choose float32 or float64")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train config precision={self.precision!r} is not allowed; choose one of "
                             f"{', '.join(PRECISIONS)}")
        if self.precision == "bf16" and self.dtype != "float32":
            raise ValueError(f"train config precision='bf16' keeps float32 master weights: it needs dtype='float32', "
                             f"not dtype={self.dtype!r}")
        if self.devices != "all" and (isinstance(self.devices, bool) or not isinstance(self.devices, int)
                                      or self.devices < 1):
            raise ValueError(f"train config devices={self.devices!r} must be an int >= 1 or 'all'")
        if not isinstance(self.model_options, dict):
            raise ValueError(f"train config model_options={self.model_options!r} must be a dict")
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else ()
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas):
            raise ValueError(f"train config betas={self.betas!r} must be two numbers in [0, 1)")
        self.betas = (float(betas[0]), float(betas[1]))
        for name in ("download", "test", "augment", "progress"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train config {name}={getattr(self, name)!r} must be true or false")

    def resolved(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}

PRESETS: dict[str, dict[str, Any]] = {
    # SPEC.md section 7: AdamW 1e-4, wd 0.01 on everything, constant LR, clip 1.0, batch 256, 150 epochs,
    # no augmentation, seed 42 (set before the model is built)
    "paper": {"dataset": "cifar10", "epochs": 150, "batch_size": 256, "lr": 1e-4, "weight_decay": 0.01,
              "clip_grad_norm": 1.0, "schedule": "constant", "augment": False, "seed": 42},
    # the README's main command: a small branching VGG-11 on the embedded 3,000-image sample, minutes on a CPU
    "demo": {"model": "vgg11", "dataset": "sample",
             "model_options": {"layer": "branching", "ratio": 0.5, "width": 0.125, "head": "light"},
             "epochs": 4, "batch_size": 64, "lr": 2e-3, "weight_decay": 0.01, "clip_grad_norm": 1.0,
             "schedule": "constant", "augment": False, "seed": 42},
}


def parse_value(text: str) -> Any:
    """A --set value: JSON when it parses (numbers, true/false/null, lists, dicts), else the string itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge overrides into a config dict; 'model_options.k' style keys (or model_options dicts) merge deeply."""
    out = dict(base)
    out["model_options"] = dict(base.get("model_options") or {})
    for key, value in overrides.items():
        if key.startswith("model_options.") or key.startswith("model."):
            out["model_options"][key.split(".", 1)[1]] = value
        elif key == "model_options":
            if not isinstance(value, dict):
                raise ValueError(f"model_options={value!r} must be a dict")
            out["model_options"].update(value)
        elif key in FIELDS:
            out[key] = value
        else:
            raise ValueError(f"unknown training option {key!r}; allowed: {', '.join(sorted(FIELDS))} and "
                             f"model_options.NAME (model options)")
    return out


def build_config(preset: str = "paper", file: Optional[str] = None, overrides: Optional[dict[str, Any]] = None
                 ) -> TrainConfig:
    """Preset, then a JSON config file, then overrides (later wins); validated.

    A model other than the preset's does not inherit the preset's model options.
    """
    data: dict[str, Any] = {}
    if file is not None:
        path = Path(file)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise FileNotFoundError(f"config file {path} does not exist") from err
        except json.JSONDecodeError as err:
            raise ValueError(f"config file {path} is not valid JSON ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a JSON object of training options")
    overrides = dict(overrides or {})
    preset = data.get("preset", preset) if "preset" not in overrides else overrides["preset"]
    base = dict(PRESETS[_preset(preset)])
    model = overrides.get("model", data.get("model"))
    if model is not None and model != base.get("model", model):
        base.pop("model_options", None)
    cfg = apply_overrides({"preset": preset}, base)
    cfg = apply_overrides(cfg, data)
    cfg = apply_overrides(cfg, overrides)
    return TrainConfig(**cfg)


def _preset(name: Any) -> str:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; choose one of {', '.join(PRESETS)}")
    return name
