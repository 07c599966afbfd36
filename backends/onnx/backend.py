"""OnnxBackend: the vocabulary's forward ops as exported ONNX graphs run by onnxruntime (float32, CPU).

The four ConvNN ops run the one pipeline with OnnxKernels (kernels.py); every other forward op (the
baseline attentions, the layers the zoo needs) is the torch backend's function exported to ONNX per
signature. Arrays are NumPy arrays. The backend is forward only: gradients, optimizers and training-mode
randomness raise ForwardOnly (a NotImplementedError), which the conformance suite reports as n/a.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import array_api_compat.numpy as np_xp
import numpy as np

from convnn.backend_base import PipelineOps
from convnn.backends.common.numpy_ops import host_rng, split_host_rng
from convnn.backends.torch import attention as torch_attention
from convnn.backends.torch import nn as torch_nn
from convnn.backends.torch.onnx_export import kvt_graph
from convnn.kernels import Capabilities

from .graphs import GraphCache
from .kernels import DTYPES, ForwardOnly, OnnxKernels

ARRAY_DTYPES = ("float32", "float64", "int64", "int32", "bool", "uint8")
PROJECTIONS = ("wq", "wk", "wv", "wo")
FORWARD_ONLY = "backend 'onnx' is forward only (exported inference graphs on onnxruntime)"


def _forward_only(what: str) -> ForwardOnly:
    return ForwardOnly(f"{FORWARD_ONLY}: {what} is not available; train on torch, jax or numba, then export")


class OnnxBackend(PipelineOps):
    """Forward ops as ONNX graphs on onnxruntime; see the module docstring."""

    name = "onnx"
    xp = np_xp

    def __init__(self, opset: int, threads: int = 1, check_inputs: bool = True) -> None:
        self.graphs = GraphCache(opset, threads)
        self.kernels = OnnxKernels(self.graphs, check_inputs)
        self.capabilities = Capabilities(
            dtypes=DTYPES, devices=("cpu",), device="cpu", differentiable=(), trainable=False, compiles=False,
            compile_by_default=False, int64_labels=True, memory="host",
        )

    def __repr__(self) -> str:
        return (f"<convnn backend 'onnx' (forward only: exported graphs on onnxruntime) opset={self.graphs.opset} "
                f"graphs={len(self.graphs)}>")

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        return self.capabilities.dtypes

    # -- running a torch function as a graph
    def _graph(self, key: tuple, fn: Callable[..., Any], *arrays: Any) -> Any:
        outs = self.graphs.run(key, fn, [None if a is None else np.asarray(a) for a in arrays])
        return outs[0] if len(outs) == 1 else tuple(outs)

    def _attention(self, op: str, fn: Callable[..., Any], x: Any, params: Mapping[str, Any], static: tuple,
                   dropout: float, train: bool) -> Any:
        if train and dropout > 0.0:
            raise _forward_only(f"{op} with dropout in training (train=True, dropout > 0)")
        missing = [k for k in PROJECTIONS if k not in params]
        if missing:
            raise ValueError(f"params is missing {missing}; attention needs {', '.join(PROJECTIONS)}")

        def graph(x: Any, *w: Any) -> Any:
            return fn(x, dict(zip(PROJECTIONS, w)))

        return self._graph((op,) + static, graph, x, *[params[k] for k in PROJECTIONS])

    # -- baseline attentions
    def multihead_attention(self, x: Any, params: Mapping[str, Any], *, heads: int = 1, dropout: float = 0.0,
                            rng: Any = None, train: bool = False) -> Any:
        """Dense softmax attention (torch's, exported)."""
        return self._attention("multihead_attention",
                               lambda x, p: torch_attention.multihead_attention(x, p, heads=heads),
                               x, params, (heads,), dropout, train)

    def masked_attention(self, x: Any, params: Mapping[str, Any], mask: Any = None, *, heads: int = 1,
                         dropout: float = 0.0, rng: Any = None, train: bool = False) -> Any:
        """Softmax attention with a boolean keep-mask (True = keep), the mask a graph input."""
        if train and dropout > 0.0:
            raise _forward_only("masked_attention with dropout in training")

        def graph(x: Any, mask: Any, *w: Any) -> Any:
            return torch_attention.masked_attention(x, dict(zip(PROJECTIONS, w)), mask, heads=heads)

        return self._graph(("masked_attention", heads), graph, x, mask, *[params[k] for k in PROJECTIONS])

    def kvt_attention(self, x: Any, params: Mapping[str, Any], k: int, *, heads: int = 1, dropout: float = 0.0,
                      rng: Any = None, train: bool = False) -> Any:
        """KVT top-k attention (ties to the lower key index: ONNX TopK)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k={k!r} must be an int >= 1")
        n = np.shape(x)[1] if np.ndim(x) == 3 else None
        if n is not None and k > n:
            raise ValueError(f"k={k} is larger than the number of keys N={n}")
        return self._attention("kvt_attention", lambda x, p: kvt_graph(x, p, k, heads), x, params, (k, heads),
                               dropout, train)

    def local_attention(self, x: Any, params: Mapping[str, Any], window: int, *, heads: int = 1,
                        dropout: float = 0.0, rng: Any = None, train: bool = False) -> Any:
        """Attention within `window` positions of the token order."""
        return self._attention("local_attention",
                               lambda x, p: torch_attention.local_attention(x, p, window, heads=heads),
                               x, params, (window, heads), dropout, train)

    def sparse_attention(self, x: Any, params: Mapping[str, Any], mode: str, width: int, *, heads: int = 1,
                         dropout: float = 0.0, rng: Any = None, train: bool = False) -> Any:
        """Sparse attention, mode 'local' or 'strided'."""
        return self._attention("sparse_attention",
                               lambda x, p: torch_attention.sparse_attention(x, p, mode, width, heads=heads),
                               x, params, (mode, width, heads), dropout, train)

    # -- the layers the zoo needs (forward, evaluation mode)
    def conv2d(self, x: Any, weight: Any, bias: Optional[Any], *, stride: int = 1,
               padding: Union[int, str] = 0) -> Any:
        """Cross-correlation, NCHW."""
        return self._graph(("conv2d", stride, padding),
                           lambda x, w, b: torch_nn.conv2d(x, w, b, stride=stride, padding=padding), x, weight, bias)

    def linear(self, x: Any, weight: Any, bias: Optional[Any]) -> Any:
        """x @ weight.T + bias."""
        return self._graph(("linear",), torch_nn.linear, x, weight, bias)

    def batch_norm(self, x: Any, gamma: Any, beta: Any, state: Mapping[str, Any], *, train: bool,
                   momentum: float = 0.1, eps: float = 1e-5) -> tuple[Any, dict]:
        """BatchNorm2d with the running statistics (evaluation mode only)."""
        if train:
            raise _forward_only("batch_norm in training mode (batch statistics and running-state updates)")

        def graph(x: Any, g: Any, b: Any, mean: Any, var: Any) -> Any:
            return torch_nn.batch_norm(x, g, b, {"mean": mean, "var": var}, train=False, eps=eps)[0]

        return self._graph(("batch_norm", eps), graph, x, gamma, beta, state["mean"], state["var"]), dict(state)

    def layer_norm(self, x: Any, gamma: Any, beta: Any, eps: float = 1e-5) -> Any:
        """LayerNorm over the last axis."""
        return self._graph(("layer_norm", eps), lambda x, g, b: torch_nn.layer_norm(x, g, b, eps), x, gamma, beta)

    def relu(self, x: Any) -> Any:
        return self._graph(("relu",), torch_nn.relu, x)

    def gelu(self, x: Any) -> Any:
        """Exact (erf) GELU."""
        return self._graph(("gelu",), torch_nn.gelu, x)

    def max_pool2d(self, x: Any, size: int = 2) -> Any:
        return self._graph(("max_pool2d", size), lambda x: torch_nn.max_pool2d(x, size), x)

    def adaptive_avg_pool2d(self, x: Any, output_size: Sequence[int]) -> Any:
        out = tuple(int(n) for n in output_size)
        return self._graph(("adaptive_avg_pool2d", out), lambda x: torch_nn.adaptive_avg_pool2d(x, out), x)

    def dropout(self, x: Any, p: float, rng: Any, *, train: bool) -> Any:
        """Identity in evaluation; dropout in training is not available."""
        if not (0.0 <= float(p) < 1.0):
            raise ValueError(f"p={p!r} must be in [0, 1)")
        if train and p > 0.0:
            raise _forward_only("dropout in training (train=True, p > 0)")
        return x

    def softmax(self, x: Any, axis: int = -1) -> Any:
        return self._graph(("softmax", axis), lambda x: torch_nn.softmax(x, axis), x)

    def cross_entropy(self, logits: Any, labels: Any) -> Any:
        """Mean cross-entropy (a 0-d array)."""
        return self._graph(("cross_entropy",), torch_nn.cross_entropy, logits, np.asarray(labels, dtype=np.int64))

    # -- arrays and randomness (host)
    def asarray(self, value: Any, dtype: Optional[str] = None) -> np.ndarray:
        """A NumPy array (dtype a name such as 'float32', or None to keep)."""
        if hasattr(value, "detach"):
            value = value.detach().cpu().numpy()
        if dtype is None:
            return np.asarray(value)
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if name not in ARRAY_DTYPES:
            raise ValueError(f"dtype={dtype!r} is not allowed; choose one of {', '.join(ARRAY_DTYPES)} or None")
        return np.asarray(value, dtype=np.dtype(name))

    def to_numpy(self, value: Any) -> np.ndarray:
        """A host NumPy copy."""
        return np.array(value, copy=True)

    def make_rng(self, seed: int) -> np.random.Generator:
        """A NumPy Generator: candidate draws happen on the host, then enter the graph as an input."""
        return host_rng(seed)

    def split_rng(self, key: np.random.Generator, n: int) -> tuple[np.random.Generator, ...]:
        """n independent Generators seeded from draws of `key` (advances key)."""
        return split_host_rng(key, n)

    # -- the whole model as one graph (conformance level 4 checks it besides the op-by-op forward)
    def exported_model_forward(self, model: str, num_classes: int, options: Mapping[str, Any], params: Any,
                               state: Any, images: Any) -> np.ndarray:
        """logits of a zoo model exported as one ONNX graph (as `convnn export onnx` writes it) with these host
        parameters and state, for images [B, C, H, W] (the image size fixed at export)."""
        from convnn.backends.torch.backend import TorchBackend
        from convnn.backends.torch.onnx_export import export_zoo_module, run_onnx
        from convnn.backends.torch.zoo_module import ZooModule
        from convnn.models.registry import create_model
        from convnn.tree import flatten

        zoo = create_model(model, backend=TorchBackend(device="cpu"), num_classes=num_classes,
                           **{**dict(options), "dtype": "float32"})
        host = {k: np.asarray(v) for k, v in flatten(params).items()}
        module = ZooModule(zoo, host, {k: np.asarray(v) for k, v in flatten(state).items()})
        images = np.asarray(images, dtype=np.float32)
        result = export_zoo_module(module, opset=self.graphs.opset, image_size=int(images.shape[-1]), verify=False)
        return run_onnx(result.model, images)

    # -- training: not here
    def value_and_grad(self, fn: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
        raise _forward_only("value_and_grad")

    def adamw(self, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> Any:
        raise _forward_only("adamw")

    def clip_grad_norm(self, grads: Any, max_norm: float) -> tuple[Any, Any]:
        raise _forward_only("clip_grad_norm")

    def compile(self, fn: Callable[..., Any], **options: Any) -> Callable[..., Any]:
        """The graphs are compiled by onnxruntime already: fn itself."""
        return fn
