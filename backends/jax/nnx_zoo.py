"""Zoo models (VGG, ViT) and their checkpoints as flax.nnx Modules, for JAX users' own training loops.

`from_zoo(name, ...)` builds a freshly initialised zoo model, `from_checkpoint(path)` one trained by
`convnn train`; both return a `ZooModule` whose nnx.Param / nnx.BatchStat variables are the zoo's
params and BatchNorm state, under the zoo's names (features.0.layer.weight, ...), and whose call
runs the zoo model's own forward on the jax backend, so its logits are the zoo's. Images are
channels-last [B, H, W, C] (flax's convention) and are transposed to the zoo's NCHW inside.

`zoo_layer(module, path)` lifts one ConvNN layer of such a model into the matching nnx layer of
convnn.backends.jax.nnx (ConvNN2d, Branching2d or ConvNNAttention) with its trained weights.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

from .nnx import Branching2d, ConvNN2d, ConvNNAttention, nnx

import jax
import jax.numpy as jnp


def _backend_for(dtype: str) -> Any:
    """The jax backend for a model dtype (float64 turns on 64-bit jax, as the zoo's jax runs do)."""
    from convnn.registry import get_backend

    return get_backend("jax", x64=True) if dtype == "float64" else get_backend("jax")


def _variables(tree: Any, kind: type) -> Any:
    """A nested dict of arrays -> the same dict of nnx variables of `kind`."""
    if isinstance(tree, Mapping):
        return {key: _variables(value, kind) for key, value in tree.items()}
    return kind(tree)


def _arrays(tree: Any) -> Any:
    """A nested dict of nnx variables -> the same dict of their arrays."""
    if isinstance(tree, Mapping):
        return {key: _arrays(value) for key, value in tree.items()}
    return tree.get_value()


def _write_back(variables: Any, arrays: Any) -> None:
    """Store arrays into the variables of the same nested dict (the BatchNorm state after a training call)."""
    if isinstance(variables, Mapping):
        for key, value in variables.items():
            _write_back(value, arrays[key])
    else:
        variables.set_value(arrays)


class ZooModule(nnx.Module):
    """A zoo model as an nnx Module: `params` (nnx.Param) and `state` (nnx.BatchStat) hold the zoo's trees.

    Like nnx layers it starts in training mode (`deterministic=False`: dropout, batch statistics,
    random candidate draws from the `rng_collection` stream); call `.eval()` for inference.
    """

    def __init__(self, model: Any, params: Any, state: Any, *, rngs: Optional[nnx.Rngs] = None,
                 deterministic: bool = False, rng_collection: str = "dropout") -> None:
        self.model = model
        self.params = nnx.data(_variables(params, nnx.Param))
        self.state = nnx.data(_variables(state, nnx.BatchStat))
        self.deterministic = bool(deterministic)
        self.rng_collection = rng_collection
        self.resize: Optional[int] = None
        if model.train_rng_draws > 0:
            rngs = rngs if rngs is not None else nnx.Rngs(0)
            if not isinstance(rngs, nnx.Rngs):
                raise TypeError(f"rngs={rngs!r} must be a flax.nnx.Rngs or None")
            self.rngs = rngs[rng_collection].fork()
        else:
            self.rngs = nnx.data(None)

    @property
    def config(self) -> dict[str, Any]:
        """The zoo config ({'name', 'num_classes', 'options'}) that rebuilds the model."""
        return self.model.config

    def zoo_trees(self) -> tuple[Any, Any]:
        """(params, state) as the zoo's nested dicts of jax arrays (for model.apply or a checkpoint)."""
        return _arrays(self.params), _arrays(self.state)

    def __call__(self, x: jax.Array, *, deterministic: Optional[bool] = None, rngs: Any = None) -> jax.Array:
        """logits [B, classes] for channels-last images x [B, H, W, C]; a training call updates `state`."""
        if x.ndim != 4:
            raise ValueError(f"x has shape {tuple(x.shape)}; {self.model.name} takes channels-last images "
                             f"[B, H, W, C]")
        train = not (self.deterministic if deterministic is None else bool(deterministic))
        key = None
        if train and self.model.train_rng_draws > 0:
            if isinstance(rngs, nnx.Rngs):
                key = rngs[self.rng_collection]()
            elif rngs is not None:
                key = rngs
            else:
                key = self.rngs()
        params, state = self.zoo_trees()
        logits, new_state = self.model.apply(params, state, jnp.transpose(x, (0, 3, 1, 2)), train=train, rng=key)
        if train:
            _write_back(self.state, new_state)
        return logits


def from_zoo(name: str, num_classes: int = 10, seed: int = 0, *, rngs: Optional[nnx.Rngs] = None,
             **model_options: Any) -> ZooModule:
    """A zoo model (convnn.models.create_model's names and options) initialised with `seed`, as an nnx Module.

    rngs feeds the training-time draws (dropout, random candidates); default nnx.Rngs(seed).
    """
    from convnn.models.registry import create_model

    dtype = str(model_options.get("dtype", "float32"))
    model = create_model(name, backend=_backend_for(dtype), num_classes=num_classes, **model_options)
    params, state = model.init(seed)
    return ZooModule(model, params, state, rngs=rngs if rngs is not None else nnx.Rngs(seed))


def from_checkpoint(path: Union[str, os.PathLike], *, which: str = "best",
                    rngs: Optional[nnx.Rngs] = None) -> ZooModule:
    """The model of a `convnn train` checkpoint (a .safetensors file, or a run folder: its `which` checkpoint,
    'best' as `convnn eval` reads, or 'last') with its trained params and BatchNorm state, as an nnx Module.

    The digests are verified on loading. `module.resize` is the image size the run trained at when it
    resized its images (None otherwise): resize inputs to it before calling the module."""
    from convnn.models.registry import create_model
    from convnn.models.train.checkpoint import checkpoint_file, load_checkpoint
    from convnn.models.train.loop import restore_tree

    ckpt = load_checkpoint(checkpoint_file(path, which))
    model_cfg = ckpt.meta["model"]
    options = dict(model_cfg["options"])
    backend = _backend_for(str(options.get("dtype", "float32")))
    model = create_model(model_cfg["name"], backend=backend, num_classes=model_cfg["num_classes"], **options)
    params = restore_tree(ckpt.groups["params"], model.param_specs(), backend, model.dtype, "params")
    state = restore_tree(ckpt.groups["state"], model.state_specs(), backend, model.dtype, "state")
    module = ZooModule(model, params, state, rngs=rngs)
    module.resize = ckpt.meta.get("resize")
    return module


def _subtree(tree: Any, path: str) -> Any:
    node = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(f"path={path!r} is not a layer of this model (no {part!r} under it)")
        node = node[part]
    return node


def zoo_layer(module: ZooModule, path: str, *, rngs: Optional[nnx.Rngs] = None) -> nnx.Module:
    """The ConvNN layer at `path` of a zoo module as a standalone nnx layer with the same weights.

    VGG: 'features.<i>.layer' (ConvNN2d for layer='convnn', Branching2d for 'branching');
    ViT: 'blocks.<i>.attn' (attention='convnn') or 'blocks.<i>.attn.convnn' (attention='branching').
    Sampled layers draw evaluation candidates from their own seed, not the zoo's per-layer draw.
    """
    model = module.model
    if not model.uses_convnn:
        raise ValueError(f"model {model.name!r} with these options has no ConvNN layers")
    tree = _subtree(module.zoo_trees()[0], path)
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    options = model.options
    from convnn.models.vgg import VGG

    if isinstance(model, VGG):
        if not path.endswith(".layer") or not isinstance(tree, Mapping):
            raise ValueError(f"path={path!r}: VGG ConvNN layers are at 'features.<i>.layer'")
        if options["layer"] == "convnn":
            out, c_agg, _ = tree["weight"].shape
            in_features = c_agg - (2 if model.cfg.aggregate_coords else 0)
            layer: Any = ConvNN2d(in_features, out, config=model.cfg, rngs=rngs, deterministic=True)
        else:
            out = tree["pointwise"]["weight"].shape[0]
            source = tree["conv"]["weight"] if "conv" in tree else tree["convnn"]["weight"]
            in_features = source.shape[1] - (2 if "conv" not in tree and model.cfg.aggregate_coords else 0)
            fields = {f: getattr(model.cfg, f) for f in ("select", "metric", "blend", "sampling", "num_samples",
                                                          "aggregate_coords", "order")}
            layer = Branching2d(in_features, out, options["ratio"], model.cfg.k, kernel_size=options["kernel_size"],
                                padding=model.cfg.padding, rngs=rngs, deterministic=True, **fields)
    else:  # ViT
        if "taps" not in tree:
            raise ValueError(f"path={path!r} is not a ConvNN attention (ViT: 'blocks.<i>.attn', or "
                             f"'blocks.<i>.attn.convnn' with attention='branching')")
        if options.get("taps", "depthwise") == "separable":
            raise ValueError("taps='separable' has no standalone nnx ConvNNAttention (its pointwise folds into wo); "
                             "use the whole ZooModule, or taps='depthwise' or 'full'")
        layer = ConvNNAttention(options["heads"], tree["wq"].shape[0], config=model.cfg,
                                dropout_rate=options["attention_dropout"], rngs=rngs, deterministic=True)
    layer.load_zoo_params(tree)
    return layer


__all__ = ["ZooModule", "from_zoo", "from_checkpoint", "zoo_layer"]
