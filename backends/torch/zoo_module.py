"""Zoo models (and `convnn train` checkpoints) as plain torch nn.Modules, for the user's own training loop.

`from_zoo("vgg11", layer="branching")` and `from_checkpoint("runs/my_run")` return a `ZooModule`: its
forward(x [B, C, H, W]) runs the zoo model on the torch backend and returns logits. The zoo's parameter tree
becomes nn.Parameters and its state (batch-norm running statistics) buffers, both named by the zoo's dotted
paths, so `state_dict()` keys equal the checkpoint's tensor names ('features.0.layer.weight', 'blocks.3.attn.wq',
...). train()/eval() switch the zoo's training flag (dropout, batch-norm statistics, fresh candidate draws).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from torch import nn

from convnn.models.base import Model
from convnn.models.registry import create_model
from convnn.tree import flatten



def _fresh_seed() -> int:
    """A seed drawn from torch's global RNG, so torch.manual_seed makes training draws repeatable."""
    return int(torch.randint(0, 2 ** 62, (), dtype=torch.int64))


def _child(node: nn.Module, name: str) -> nn.Module:
    """The sub-module `name` of node, created empty when missing (the inner nodes of the zoo's tree)."""
    if name not in node._modules:
        node.add_module(name, nn.Module())
    return node._modules[name]


def _place(root: nn.Module, path: str, tensor: torch.Tensor, *, buffer: bool) -> None:
    """Register `tensor` at the dotted `path` under root, as a parameter or a persistent buffer."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        node = _child(node, name)
    if leaf in node._parameters or leaf in node._buffers or leaf in node._modules:
        raise ValueError(f"the zoo's tree has two entries at {path!r}; parameter and state paths must differ")
    if buffer:
        node.register_buffer(leaf, tensor, persistent=True)
    else:
        node.register_parameter(leaf, nn.Parameter(tensor))


class ZooModule(nn.Module):
    """A zoo model as an nn.Module: parameters and buffers named by the zoo's paths, forward -> logits.

    The zoo model (`self.zoo`, a convnn.models Model) does the computation on the torch backend of the
    input's device; this module only holds the tensors and the training flag. `resize` is the image size
    a checkpoint was trained at (None: the images as they come).
    """

    def __init__(self, zoo: Model, params: dict[str, np.ndarray], state: dict[str, np.ndarray],
                 resize: Optional[int] = None) -> None:
        super().__init__()
        self.zoo_config = zoo.config
        self.resize = resize
        self._zoos: dict[str, Model] = {str(zoo.backend.device): zoo}
        dtype = getattr(torch, zoo.dtype)
        self._param_paths = tuple(p for p in zoo.param_specs() if p in params)  # the zoo's construction order
        self._state_paths = tuple(p for p in zoo.state_specs() if p in state)
        if set(self._param_paths) != set(params) or set(self._state_paths) != set(state):
            raise ValueError(f"the arrays given do not match {zoo.name}'s param_specs() / state_specs() names")
        for path in self._param_paths:
            _place(self, path, torch.as_tensor(np.asarray(params[path]), dtype=dtype).clone(), buffer=False)
        for path in self._state_paths:
            _place(self, path, torch.as_tensor(np.asarray(state[path]), dtype=dtype).clone(), buffer=True)

    # ------------------------------------------------------------------ the zoo model per device
    @property
    def zoo(self) -> Model:
        """The zoo model on the device of the parameters."""
        return self._zoo_on(self._device())

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _zoo_on(self, device: torch.device) -> Model:
        key = str(device)
        if key not in self._zoos:
            from .backend import TorchBackend

            cfg = self.zoo_config
            self._zoos[key] = create_model(cfg["name"], backend=TorchBackend(device=device),
                                           num_classes=cfg["num_classes"], **cfg["options"])
        return self._zoos[key]

    # ------------------------------------------------------------------ trees for the zoo's apply
    def params_tree(self) -> dict:
        """The zoo's nested params dict holding this module's nn.Parameters (gradients flow into them)."""
        return _nest({path: self.get_parameter(path) for path in self._param_paths})

    def state_tree(self) -> dict:
        """The zoo's nested state dict holding this module's buffers."""
        return _nest({path: self.get_buffer(path) for path in self._state_paths})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """logits [B, num_classes] for images x [B, C, H, W] (in training, running statistics are updated)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor [B, C, H, W], got {type(x).__name__}")
        zoo = self._zoo_on(x.device)
        train = self.training
        rng = _fresh_seed() if train and zoo.train_rng_draws else None
        logits, new_state = zoo.apply(self.params_tree(), self.state_tree(), x, train=train, rng=rng)
        if train and self._state_paths:
            flat = flatten(new_state)
            with torch.no_grad():
                for path in self._state_paths:
                    self.get_buffer(path).copy_(flat[path])
        return logits

    def extra_repr(self) -> str:
        cfg = self.zoo_config
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(cfg["options"].items()))
        return f"{cfg['name']}, num_classes={cfg['num_classes']}, {opts}"


def _nest(flat: dict[str, Any]) -> dict:
    root: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = root
        *parents, name = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = leaf
    return root


def _host_zoo(name: str, num_classes: int, device: Union[str, torch.device], options: dict[str, Any]) -> Model:
    from .backend import TorchBackend

    return create_model(name, backend=TorchBackend(device=device), num_classes=num_classes, **options)


def from_zoo(name: str, num_classes: int = 10, seed: int = 0, device: Union[str, torch.device] = "cpu",
             **model_options: Any) -> ZooModule:
    """A freshly initialised zoo model as an nn.Module: the same parameters `create_model(...).init(seed)` draws
    on every backend (model options as for create_model, see convnn.models.model_defaults(name))."""
    zoo = _host_zoo(name, num_classes, device, model_options)
    params, state = zoo.init(seed)
    to_np = zoo.backend.to_numpy
    module = ZooModule(zoo, {p: to_np(v) for p, v in flatten(params).items()},
                       {p: to_np(v) for p, v in flatten(state).items()})
    return module.to(device)


def from_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
                    which: str = "best") -> ZooModule:
    """A model trained by `convnn train` as an nn.Module: `path` is a run folder (its `which` checkpoint, 'best' or
    'last') or a checkpoint file. Digests are verified; a checkpoint that does not fit its model raises ValueError."""
    from convnn.models.train.checkpoint import checkpoint_file, load_checkpoint

    ckpt = load_checkpoint(checkpoint_file(path, which))
    cfg = ckpt.meta.get("model")
    if not isinstance(cfg, dict) or not {"name", "num_classes", "options"} <= set(cfg):
        raise ValueError(f"{ckpt.path} has no model config in its metadata (meta['model']); it was not written by "
                         f"`convnn train`")
    zoo = _host_zoo(cfg["name"], cfg["num_classes"], device, dict(cfg["options"]))
    params = _checked(ckpt.groups["params"], zoo.param_specs(), "params", ckpt.path)
    state = _checked(ckpt.groups["state"], zoo.state_specs(), "state", ckpt.path)
    module = ZooModule(zoo, params, state, resize=ckpt.meta.get("resize"))
    return module.to(device)


def _checked(flat: dict[str, np.ndarray], specs: dict[str, Any], what: str, where: Path) -> dict[str, np.ndarray]:
    """The checkpoint's arrays of one group, refused unless their names and shapes are the model's."""
    missing, extra = sorted(set(specs) - set(flat)), sorted(set(flat) - set(specs))
    if missing or extra:
        raise ValueError(f"{where}: the checkpoint's {what} do not fit its model: missing {missing[:4]}, unexpected "
                         f"{extra[:4]}")
    for path, spec in specs.items():
        if tuple(flat[path].shape) != tuple(spec.shape):
            raise ValueError(f"{where}: the checkpoint's {what} {path} has shape {tuple(flat[path].shape)}; the "
                             f"model needs {tuple(spec.shape)}")
    return {path: flat[path] for path in specs}


__all__ = ["ZooModule", "from_zoo", "from_checkpoint"]
