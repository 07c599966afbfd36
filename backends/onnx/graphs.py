"""Export a torch function to an ONNX graph once per signature and run it on onnxruntime.

A signature is the op's static arguments plus the shapes and dtypes of its array inputs; each one is
exported (torch.onnx, the TorchScript-based exporter: a fraction of a second per graph), checked by
onnx.checker and loaded into a CPU InferenceSession that is kept for later calls.
"""
from __future__ import annotations

import io
import warnings
from typing import Any, Callable, Hashable, Optional, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch

Inputs = Sequence[Optional[np.ndarray]]


def signature(arrays: Inputs) -> tuple:
    """The shape and dtype of each input (None for an absent optional input)."""
    return tuple(None if a is None else (tuple(a.shape), str(a.dtype)) for a in arrays)


class _Positional(torch.nn.Module):
    """fn(*inputs) with the absent optional inputs put back as None (ONNX graphs have no None inputs)."""

    def __init__(self, fn: Callable[..., Any], present: tuple[bool, ...]) -> None:
        super().__init__()
        self.fn, self.present = fn, present

    def forward(self, *given: torch.Tensor) -> Any:
        it = iter(given)
        return self.fn(*[next(it) if here else None for here in self.present])


def export_function(fn: Callable[..., Any], arrays: Inputs, opset: int,
                    dynamic_axes: Optional[dict[str, dict[int, str]]] = None) -> onnx.ModelProto:
    """The ONNX model of fn traced at these inputs (torch tensors made from the NumPy arrays)."""
    present = tuple(a is not None for a in arrays)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays if a is not None)
    names = [f"in{i}" for i, a in enumerate(arrays) if a is not None]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes on shape checks: the graph is per signature anyway
        torch.onnx.export(_Positional(fn, present), args, buf, dynamo=False, opset_version=opset,
                          input_names=names, dynamic_axes=dynamic_axes, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """A CPU InferenceSession of the model (intra-op threads as given; 0 lets onnxruntime choose)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_session(sess: ort.InferenceSession, arrays: Inputs) -> list[np.ndarray]:
    """Run with the inputs named in0, in1, ... (those the graph kept; an unused input is dropped by the exporter)."""
    wanted = {i.name for i in sess.get_inputs()}
    feed = {f"in{i}": np.ascontiguousarray(a) for i, a in enumerate(arrays) if a is not None and f"in{i}" in wanted}
    return sess.run(None, feed)


class GraphCache:
    """key -> InferenceSession: each signature is exported and loaded once, then only run."""

    def __init__(self, opset: int, threads: int = 1) -> None:
        self.opset, self.threads = int(opset), int(threads)
        self._sessions: dict[Hashable, ort.InferenceSession] = {}
        self.exports = 0  # how many graphs were exported (for tests and the report)

    def __len__(self) -> int:
        return len(self._sessions)

    def run(self, key: Hashable, fn: Callable[..., Any], arrays: Inputs) -> list[np.ndarray]:
        """fn's outputs computed by onnxruntime from its graph for this key and the inputs' signature."""
        full = (key, signature(arrays))
        sess = self._sessions.get(full)
        if sess is None:
            sess = session(export_function(fn, arrays, self.opset), self.threads)
            self._sessions[full] = sess
            self.exports += 1
        return run_session(sess, arrays)
