"""The numba backend object: the pipeline's ConvNN ops on numba kernels plus the NumPy vocabulary traced by autograd."""
from __future__ import annotations

from typing import Optional

import autograd.numpy as anp
import numpy as np

from convnn.backend_base import PipelineOps
from convnn.backends.common.numpy_ops import NumpyOps
from convnn.kernels import Capabilities
from convnn.vocabulary import ATTENTION_OPS, CONVNN_OPS

from . import threads
from .kernels import DTYPES, NumbaKernels
from .optimizer import NumbaAdamW
from .vision_ops import NumbaVisionOps
from .sequence_ops import NumbaSequenceOps


class NumbaBackend(PipelineOps, NumbaSequenceOps, NumbaVisionOps, NumpyOps):
    """ConvNN on numba (forward and backward kernels, autograd primitives) and the rest on autograd NumPy.

    Arrays are NumPy arrays; `value_and_grad` is HIPS autograd, so a model trains with no torch or jax.
    """

    name = "numba"
    xp = np

    def __init__(self, threads_: Optional[int] = None, check_inputs: bool = True) -> None:
        NumpyOps.__init__(self, anp)
        self.threads = threads.configure(threads_)
        self.kernels = NumbaKernels(self.threads, check_inputs)
        self.capabilities = Capabilities(
            dtypes=DTYPES, devices=("cpu",), device="cpu", differentiable=CONVNN_OPS + ATTENTION_OPS,
            trainable=True, compiles=False, compile_by_default=False, int64_labels=True, memory="host",
        )

    def adamw(self, lr: float, weight_decay: float = 0.01, betas: tuple[float, float] = (0.9, 0.999),
              eps: float = 1e-8) -> NumbaAdamW:
        """torch.optim.AdamW semantics, each leaf updated in one fused numba pass."""
        return NumbaAdamW(self.np, lr, weight_decay, betas, eps)

    def __repr__(self) -> str:
        return f"<convnn backend 'numba' ({self.threads} threads)>"
