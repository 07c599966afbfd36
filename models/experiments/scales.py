"""Scales: how big each cell of a grid is. `paper` is the full protocol, `cpu` a reduced one sized for a 2-core
machine, `smoke` seconds per cell for CI. A scale's settings go over the grid's own and under its levels.

The `cpu` scale (all else is the paper's protocol: AdamW, weight decay 0.01, constant LR, clip 1.0, no augmentation):
- VGG: width 0.125 (8..64 channels) with the light head (global pool + one linear), 8,000 training images, 1,000
  validation images, 10 epochs, batch 64, lr 1e-3 (the paper's 1e-4 barely moves in a few hundred steps).
- ViT: the CIFAR-native ViT-Tiny (32 px, patch 4, 65 tokens) at dim 64, depth 4, MLP 128, one head; 5,000
  training images, otherwise as VGG. Options that count tokens (a window of 128, k=100, r=32) are scaled by the
  grid's `at_scale` levels.
Measured on a short run (1 epoch of 4,000 images, torch, 2 threads, a shared 2-core machine), seconds per epoch:
VGG ratio 0 / 0.5 / 1: 5.8 / 37.8 / 21.3; ViT attention / ConvNN random: 13.9 / 67.9. Scaled to this scale's data
and epochs: VGG 2 / 13 / 7 minutes a cell (a 6-cell VGG grid in about 45-60 minutes), ViT 3 / 14 minutes a cell.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .grid import flatten


@dataclass(frozen=True)
class Scale:
    """A scale: the trainer preset, settings per model family ('vgg', 'vit'), and the dataset it forces (if any)."""

    name: str
    about: str
    preset: str = "paper"
    family: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset: str | None = None  # smoke: every cell trains on the embedded sample instead of its dataset


CPU_DATA = {"val_subset": 1000, "epochs": 10, "batch_size": 64, "lr": 1e-3}
SMOKE_DATA = {"subset": 64, "val_subset": 32, "epochs": 1, "batch_size": 32, "lr": 1e-3}

SCALES: dict[str, Scale] = {
    "paper": Scale("paper", "the paper's protocol (SPEC.md section 7): full width and data, 150 epochs (100 for the "
                            "k ablation), batch 256, AdamW lr 1e-4; hours per cell on a GPU"),
    "cpu": Scale("cpu", "reduced width, 8,000 (VGG) or 5,000 (ViT) training images, 10 epochs: 2-14 minutes a cell "
                        "on 2 CPU cores (a 6-cell grid in about an hour)",
                 family={"vgg": {**CPU_DATA, "subset": 8000, "model_options": {"width": 0.125, "head": "light"}},
                         "vit": {**CPU_DATA, "subset": 5000, "model": "vit_tiny_cifar",
                                 "model_options": {"dim": 64, "depth": 4, "mlp_dim": 128}}}),
    "smoke": Scale("smoke", "seconds per cell for CI: 64 images of the embedded CIFAR-10 sample, one epoch, a tiny "
                            "model",
                   family={"vgg": {**SMOKE_DATA, "model_options": {"width": 0.0625, "head": "light"}},
                           "vit": {**SMOKE_DATA, "model": "vit_tiny_cifar",
                                   "model_options": {"dim": 16, "depth": 1, "mlp_dim": 32, "patch_size": 8}}},
                   dataset="sample"),
}


def get_scale(name: str) -> Scale:
    """The scale called `name` (ValueError listing the scales otherwise)."""
    if name not in SCALES:
        raise ValueError(f"scale={name!r} is unknown; choose one of {', '.join(SCALES)}")
    return SCALES[name]


def model_family(model: str) -> str:
    """'vgg' or 'vit' for a zoo model name (the scales size the two families differently)."""
    for family in ("vgg", "vit"):
        if model.startswith(family):
            return family
    raise ValueError(f"model={model!r}: the experiment scales know the vgg* and vit* models only")


def scale_settings(scale: Scale, model: str) -> dict[str, Any]:
    """The flat settings a scale applies to cells of `model`."""
    return flatten(scale.family.get(model_family(model), {}))
