"""How each implementation is called: a backend through the vocabulary, or a torch baseline, as zero-argument closures.

A closure runs one call to completion (device work synchronised) and returns its result, so the
same closure serves timing and memory measurement. Forward+backward is the value and gradient of
sum(out * cotangent) with respect to the input and every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from convnn.vocabulary import CONVNN_OPS

COMPILE_MODES = ("auto", "always", "never")
DEVICES = ("cpu", "cuda")


@dataclass
class Contender:
    """One implementation of one case: its label, where it ran, and its two callables (None = not available)."""

    name: str
    role: str  # "backend" or "baseline"
    device: str
    mode: str
    forward: Optional[Callable[[], Any]] = None
    forward_backward: Optional[Callable[[], Any]] = None
    notes: list[str] = field(default_factory=list)
    memory_measurable: bool = True  # False where the meter cannot see this framework's allocations
    extra: dict[str, Any] = field(default_factory=dict)  # facts copied into the report row (e.g. params)


def meter_kind(device: str) -> str:
    """Which peak-memory meter PeakMemory(device) uses: 'cuda' (torch.cuda statistics) or 'host' (the RSS)."""
    return "cuda" if device.startswith("cuda") else "host"


class BackendRunner:
    """A backend loaded for the benchmark plus what it needs from it: placement, sync, compile, all read from
    the backend object (place, synchronize, capabilities), never from its name."""

    def __init__(self, name: str, device: str = "cpu", compile_mode: str = "auto",
                 threads: Optional[int] = None) -> None:
        from convnn.conformance.runner import load_backend, takes_option
        from convnn.registry import BACKENDS

        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile={compile_mode!r} is not allowed; choose one of {', '.join(COMPILE_MODES)}")
        if device not in DEVICES:
            raise ValueError(f"device={device!r} is not allowed; choose cpu or cuda")
        if device not in BACKENDS[name].devices:
            raise ValueError(f"backend {name!r} runs on {', '.join(BACKENDS[name].devices)} only, not on {device}")
        self.name = name
        self.device = device
        extra = {"threads": threads} if threads is not None and takes_option(name, "threads") else {}
        self.backend = load_backend(name, device=device, **extra)
        self.capabilities = self.backend.capabilities
        self.compiled = compile_mode == "always" or (compile_mode == "auto" and self.capabilities.compile_by_default)
        self.mode = "compiled" if self.compiled else "eager"

    @property
    def has_gradients(self) -> bool:
        return self.capabilities.trainable and callable(getattr(self.backend, "value_and_grad", None))

    def differentiates(self, op: str) -> bool:
        """Whether value_and_grad goes through `op` here (a ConvNN op only where capabilities.differentiable says)."""
        if not self.has_gradients:
            return False
        return op in self.capabilities.differentiable if op in CONVNN_OPS else True

    @property
    def memory_measurable(self) -> bool:
        """Whether the peak-memory meter of this device sees the backend's allocations (capabilities.memory)."""
        return self.capabilities.memory == meter_kind(self.device)

    def array(self, host: np.ndarray) -> Any:
        """A backend array of a host array, on the backend's device (int64 as int32 where it has no 64-bit ints)."""
        if host.dtype == np.int64 and not self.capabilities.int64_labels:
            host = host.astype(np.int32)
        return self.backend.place(self.backend.asarray(host, dtype=str(host.dtype)))

    def commit(self, tree: Any) -> Any:
        """Place a pytree of this backend's arrays on its device (committed, as compiled outputs are, so feeding
        outputs back in does not trigger a second compile)."""
        return self.backend.place(tree)

    def sync(self, value: Any) -> Any:
        """Block until the device work behind value is done, and return value."""
        return self.backend.synchronize(value)

    def prepare(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn compiled through the backend's own `compile` when this runner compiles, else fn."""
        return self.backend.compile(fn) if self.compiled else fn

    def contender(self, forward: Callable[..., Any], inputs: dict[str, np.ndarray], out_shape: tuple[int, ...],
                  extra: tuple[np.ndarray, ...] = (), op: Optional[str] = None) -> Contender:
        """Closures for forward(**inputs) and for value_and_grad of sum(forward(**inputs) * cotangent).

        inputs are the differentiated arrays (input and parameters); extra are host arrays passed
        after them unchanged (candidate indices); op names the vocabulary op, whose gradient the
        backend's capabilities must declare.
        """
        args = {k: self.array(v) for k, v in inputs.items()}
        fixed = tuple(self.array(v) for v in extra)
        fwd = self.prepare(lambda params, *rest: forward(*rest, **params))
        out = Contender(self.name, "backend", self.device, self.mode)
        out.memory_measurable = self.memory_measurable
        out.forward = lambda: self.sync(fwd(args, *fixed))
        if not (self.differentiates(op) if op is not None else self.has_gradients):
            out.notes.append(f"forward only: the backend declares no gradient through {op or 'its ops'}")
            return out
        dtype = next(iter(inputs.values())).dtype
        cot = self.array(np.random.default_rng(7).standard_normal(out_shape).astype(dtype))

        def loss(params: dict[str, Any], cotangent: Any, *rest: Any) -> Any:
            return (forward(*rest, **params) * cotangent).sum()

        grad_fn = self.prepare(self.backend.value_and_grad(loss))
        out.forward_backward = lambda: self.sync(grad_fn(args, cot, *fixed))
        return out


class TorchBaselines:
    """The torch-eager baselines on one device: the authors' algorithm, conv2d 3x3 and SDPA attention."""

    def __init__(self, device: str = "cpu") -> None:
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but torch sees no CUDA GPU")
        self.torch = torch
        self.device = device

    def _sync(self, value: Any) -> Any:
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return value

    def contender(self, name: str, forward: Callable[..., Any], inputs: dict[str, np.ndarray],
                  out_shape: tuple[int, ...]) -> Contender:
        """Closures for forward(**inputs) and for torch.autograd.grad of sum(out * cotangent) over every input."""
        torch = self.torch
        plain = {k: torch.as_tensor(v, device=self.device) for k, v in inputs.items()}
        leaves = {k: v.clone().requires_grad_(True) for k, v in plain.items()}
        out = Contender(name, "baseline", self.device, "eager")
        out.forward = lambda: self._sync(forward(**plain))
        dtype = next(iter(inputs.values())).dtype
        cot = torch.as_tensor(np.random.default_rng(7).standard_normal(out_shape).astype(dtype), device=self.device)

        def forward_backward() -> Any:
            y = forward(**leaves)
            return self._sync(torch.autograd.grad((y * cot).sum(), list(leaves.values())))

        out.forward_backward = forward_backward
        return out
