"""The shared model zoo (VGG and ViT with ConvNN variants), data loading, training and checkpoints.

Models are written once against the backend vocabulary (convnn_core/vocabulary.py):
`model = create_model("vgg11", backend="torch", layer="branching")`, then
`params, state = model.init(seed)` and `logits, state = model.apply(params, state, x, train=..., rng=...)`.
"""
from .base import Model
from .registry import MODELS, create_model, list_models, model_defaults, model_uses_convnn

__all__ = ["Model", "MODELS", "create_model", "list_models", "model_defaults", "model_uses_convnn"]
