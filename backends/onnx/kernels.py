"""OnnxKernels: the pipeline's door on NumPy arrays, its compute step as an exported ONNX graph on onnxruntime.

The pipeline (convnn.pipeline) checks every argument and plans the call on the host; its array part
(`compute_nd`, `compute_select`, `compute_attention`) is handed to `stage`. Here `stage` exports that
array part, run on the plain-torch ExportKernels (convnn.backends.torch.onnx_export), to ONNX once per
plan and input signature, and runs it in onnxruntime. Candidates drawn on the host (a seed, a Generator or
explicit indices) are a graph input, so one graph serves every draw of the same size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import array_api_compat.numpy as np_xp
import numpy as np

from convnn.backends.torch.onnx_export import ExportKernels
from convnn.kernels import KernelsBase

from .graphs import GraphCache

DTYPES = ("float32",)
PATH = ("exported ONNX graph on onnxruntime (CPU): dense affinities, TopK (ties to the lower index), Gather, taps; "
        "one graph per plan and input shape")
PARAM_ORDER = ("wq", "wk", "wv", "wo", "taps")


class ForwardOnly(NotImplementedError):
    """What the onnx backend cannot do: gradients, training, training-mode randomness (inference graphs only)."""


class OnnxKernels(KernelsBase):
    """The pipeline's hooks on NumPy arrays; stage() runs the array part as an ONNX graph (see module docstring)."""

    xp = np_xp
    backend_name = "onnx"
    device = "cpu"
    dtypes = DTYPES
    path_name = PATH

    def __init__(self, graphs: GraphCache, check_inputs: bool = True) -> None:
        self.graphs = graphs
        self.check_inputs = bool(check_inputs)
        self.export_kernels = ExportKernels()

    def __repr__(self) -> str:
        return f"<OnnxKernels opset={self.graphs.opset} graphs={len(self.graphs)}>"

    def index_array(self, host: Any) -> np.ndarray:
        return np.asarray(host, dtype=np.int64)

    def constant(self, host: np.ndarray, like: Any) -> np.ndarray:
        return np.asarray(host, dtype=like.dtype)

    def zeros(self, shape: tuple[int, ...], like: Any) -> np.ndarray:
        return np.zeros(shape, dtype=like.dtype)

    def stage(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn(plan, *arrays) as an ONNX graph: exported per (plan, input signature), run by onnxruntime."""
        def run(plan: Any, *arrays: Any) -> Any:
            torch_plan = dataclasses.replace(plan, kernels=self.export_kernels)
            key = (name, dataclasses.replace(plan, kernels=None))
            if name == "convnn_attention":
                x, params, cand, drop_rng = arrays
                if drop_rng is not None:
                    raise ForwardOnly("backend 'onnx' is forward only (inference graphs): dropout in training (train=True with "
                                      "dropout > 0) is not available; use train=False")
                flat = [x, cand] + [_param(params, k) for k in PARAM_ORDER]

                def attention(x: Any, cand: Any, *p: Any) -> Any:
                    return fn(torch_plan, x, dict(zip(PARAM_ORDER, p)), cand, None)

                return self.graphs.run(key, attention, flat)[0]
            outs = self.graphs.run(key, lambda *a: fn(torch_plan, *a), [_host(a) for a in arrays])
            return tuple(outs) if name == "select_neighbors" else outs[0]

        return run


def _host(a: Any) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a)


def _param(params: Mapping[str, Any], name: str) -> np.ndarray:
    return np.asarray(params[name])
