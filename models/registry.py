"""The model registry: timm-like names -> model families, and `create_model`, the one factory of the zoo.

A family (models/vgg.py, models/vit.py) supplies `build(backend, name, num_classes, options)`, its
`DEFAULTS` and `uses_convnn(name, options)`, so what a model needs is known before it is built.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, Union

from . import vgg, vit
from .base import Model


class ModelEntry(NamedTuple):
    """One registered name: its family module, the name given to the family, options fixed by the name, about."""

    family: ModuleType
    name: str
    fixed: dict[str, Any]
    about: str


MODELS: dict[str, ModelEntry] = {
    "vgg11": ModelEntry(vgg, "vgg11", {}, "VGG-11 (A), the paper's CNN; layer = conv | convnn | branching"),
    "vgg13": ModelEntry(vgg, "vgg13", {}, "VGG-13 (B)"),
    "vgg16": ModelEntry(vgg, "vgg16", {}, "VGG-16 (D)"),
    "vgg19": ModelEntry(vgg, "vgg19", {}, "VGG-19 (E)"),
    "vit_tiny": ModelEntry(vit, "vit_tiny", {"image_size": 224, "patch_size": 16},
                           "the paper's ViT-Tiny: 224x224 (CIFAR resized), patch 16, 197 tokens"),
    "vit_tiny_cifar": ModelEntry(vit, "vit_tiny_cifar", {"image_size": 32, "patch_size": 4},
                                 "CIFAR-native ViT-Tiny: 32x32, patch 4, 65 tokens (the practical one on a CPU)"),
}


def list_models() -> list[str]:
    """Registered model names."""
    return list(MODELS)


def model_defaults(name: str) -> dict[str, Any]:
    """The options of a model with their default values."""
    _check_name(name)
    entry = MODELS[name]
    return {**entry.family.DEFAULTS, **entry.fixed}


def model_uses_convnn(name: str, options: dict[str, Any]) -> bool:
    """Whether the model `name` with these options has ConvNN layers, known without building it (or a backend)."""
    _check_name(name)
    entry = MODELS[name]
    return bool(entry.family.uses_convnn(entry.name, {**entry.fixed, **options}))


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; choose one of {', '.join(MODELS)}")


def create_model(name: str, backend: Union[str, Any] = "numpy", num_classes: int = 10, **options: Any) -> Model:
    """A zoo model bound to a backend (a name for convnn.get_backend, or a backend object).

    Options are the model family's (see `model_defaults(name)`); unknown ones raise ValueError.
    """
    _check_name(name)
    if isinstance(backend, str):
        from convnn.registry import get_backend

        backend = get_backend(backend)
    entry = MODELS[name]
    return entry.family.build(backend, entry.name, num_classes, {**entry.fixed, **options})
