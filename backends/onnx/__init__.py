"""The onnx backend: ConvNN forward through exported ONNX graphs on onnxruntime (forward only, float32, CPU).

`convnn.get_backend("onnx")` returns an OnnxBackend (backend.py): each forward op of the vocabulary is the
torch computation in plain operators (convnn.backends.torch.onnx_export), exported to ONNX once per op,
plan and input shape, and run by onnxruntime, so the conformance suite proves the exported graphs equal to
the float64 oracle. Gradients and training are not available; `auto` never picks this backend.
Files: graphs.py (export + InferenceSession cache), kernels.py (the pipeline's hooks), backend.py.
"""
from __future__ import annotations

from typing import Any

from convnn.registry import BackendPlugin

OPTIONS = ("opset", "threads", "check_inputs")
DEFAULT_OPSET = 17  # as convnn.backends.torch.onnx_export.DEFAULT_OPSET (not imported here: that imports torch)


def load(**options: Any) -> Any:
    """The OnnxBackend; options: opset (13-20, default 17), threads (onnxruntime intra-op threads, default 1;
    0 lets onnxruntime choose), check_inputs (refuse NaN/inf inputs, default True)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"backend 'onnx' got unknown option(s) {unknown}; allowed: {', '.join(OPTIONS)}")
    from convnn.backends.torch.onnx_export import check_opset

    opset = check_opset(options.get("opset", DEFAULT_OPSET))
    threads = options.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads={threads!r} must be an int >= 0 (0: onnxruntime chooses)")
    from .backend import OnnxBackend

    return OnnxBackend(opset, threads, bool(options.get("check_inputs", True)))


def describe_path(request: Any) -> Any:
    from convnn.kernels import PathChoice

    return PathChoice("exported ONNX graph on onnxruntime (CPU, float32, forward only): dense affinities, TopK "
                      "(ties to the lower index), Gather, taps")


PLUGIN = BackendPlugin(
    name="onnx", requires=("onnxruntime", "onnx", "torch"), extra="onnx",
    summary="exported ONNX graphs on onnxruntime (forward only, float32; never chosen by auto)",
    loader=load, devices=("cpu",), trains_convnn=False, describe_path=describe_path, options=OPTIONS, auto=False,
)
