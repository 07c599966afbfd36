"""The model registry: timm-like names -> builders, and `create_model`, the one factory of the zoo."""
from __future__ import annotations

from typing import Any, Callable, Union

from . import vgg, vit
from .base import Model

# name -> (builder, name given to the builder, options fixed by the name, one-line description)
MODELS: dict[str, tuple[Callable[..., Model], str, dict[str, Any], str]] = {
    "vgg11": (vgg.build, "vgg11", {}, "VGG-11 (A), the paper's CNN; layer = conv | convnn | branching"),
    "vgg13": (vgg.build, "vgg13", {}, "VGG-13 (B)"),
    "vgg16": (vgg.build, "vgg16", {}, "VGG-16 (D)"),
    "vgg19": (vgg.build, "vgg19", {}, "VGG-19 (E)"),
    "vit_tiny": (vit.build, "vit_tiny", {"image_size": 224, "patch_size": 16},
                 "the paper's ViT-Tiny: 224x224 (CIFAR resized), patch 16, 197 tokens"),
    "vit_tiny_cifar": (vit.build, "vit_tiny_cifar", {"image_size": 32, "patch_size": 4},
                       "CIFAR-native ViT-Tiny: 32x32, patch 4, 65 tokens (the practical one on a CPU)"),
}


def list_models() -> list[str]:
    """Registered model names."""
    return list(MODELS)


def model_defaults(name: str) -> dict[str, Any]:
    """The options of a model with their default values."""
    _check_name(name)
    builder, _, fixed, _ = MODELS[name]
    defaults = dict(vgg.DEFAULTS if builder is vgg.build else vit.DEFAULTS)
    defaults.update(fixed)
    return defaults


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"model={name!r} is unknown; choose one of {', '.join(MODELS)}")


def create_model(name: str, backend: Union[str, Any] = "numpy", num_classes: int = 10, **options: Any) -> Model:
    """A zoo model bound to a backend (a name for convnn_core.get_backend, or a backend object).

    Options are the model family's (see `model_defaults(name)`); unknown ones raise ValueError.
    """
    _check_name(name)
    if isinstance(backend, str):
        from convnn_core.registry import get_backend

        backend = get_backend(backend)
    builder, family_name, fixed, _ = MODELS[name]
    return builder(backend, family_name, num_classes, {**fixed, **options})
