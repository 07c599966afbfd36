"""How each implementation is called: a backend through the vocabulary, or a torch baseline, as zero-argument closures.

A closure runs one call to completion (device work synchronised) and returns its result, so the
same closure serves timing and memory measurement. Forward+backward is the value and gradient of
sum(out * cotangent) with respect to the input and every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

ORACLE = "numpy"
COMPILE_MODES = ("auto", "always", "never")


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


class BackendRunner:
    """A backend from convnn_core.get_backend plus what the benchmark needs: placement, sync, compile."""

    def __init__(self, name: str, device: str = "cpu", compile_mode: str = "auto",
                 threads: Optional[int] = None) -> None:
        from convnn_core import get_backend

        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile={compile_mode!r} is not allowed; choose one of {', '.join(COMPILE_MODES)}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device={device!r} is not allowed; choose cpu or cuda")
        if device == "cuda" and name not in ("torch", "jax"):
            raise ValueError(f"backend {name!r} runs on the CPU only; cuda needs torch or jax")
        self.name = name
        self.device = device
        options: dict[str, Any] = {}
        if name == "torch" and device == "cuda":
            options["device"] = "cuda"
        if name == "numba" and threads is not None:
            options["threads"] = threads
        self.backend = get_backend(name, **options)
        self.compiled = compile_mode == "always" or (compile_mode == "auto" and name == "jax")
        self.mode = "compiled" if self.compiled else "eager"
        if name == "jax":
            self.mode = "jit" if self.compiled else "eager"
        self._jax_device = None
        if name == "jax":
            import jax

            platform = "gpu" if device == "cuda" else "cpu"
            try:
                self._jax_device = jax.devices(platform)[0]
            except RuntimeError as err:
                raise RuntimeError(f"jax has no {platform} device: {err}") from err

    @property
    def has_gradients(self) -> bool:
        return callable(getattr(self.backend, "value_and_grad", None))

    def array(self, host: np.ndarray) -> Any:
        """A backend array of a host array, on this runner's device (int64 indices as int32 on 32-bit jax)."""
        if self.name == "jax" and host.dtype == np.int64:
            import jax

            if not jax.config.jax_enable_x64:
                host = host.astype(np.int32)
        arr = self.backend.asarray(host, dtype=str(host.dtype))
        if self.name == "torch" and self.device == "cuda" and arr.device.type != "cuda":
            arr = arr.to("cuda")
        elif self.name == "jax":
            import jax

            arr = jax.device_put(arr, self._jax_device)
        return arr

    def commit(self, tree: Any) -> Any:
        """Place a pytree of this backend's arrays on the runner's device (jax: committed, as jit outputs are,
        so feeding outputs back in does not trigger a second compile)."""
        if self.name == "jax":
            import jax

            return jax.device_put(tree, self._jax_device)
        return tree

    def sync(self, value: Any) -> Any:
        """Block until the device work behind value is done, and return value."""
        if self.name == "jax":
            import jax

            return jax.block_until_ready(value)
        if self.name == "torch" and self.device == "cuda":
            import torch

            torch.cuda.synchronize()
        return value

    def prepare(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """fn compiled through the backend's own `compile` when this runner compiles, else fn."""
        return self.backend.compile(fn) if self.compiled else fn

    def contender(self, forward: Callable[..., Any], inputs: dict[str, np.ndarray], out_shape: tuple[int, ...],
                  extra: tuple[np.ndarray, ...] = ()) -> Contender:
        """Closures for forward(**inputs) and for value_and_grad of sum(forward(**inputs) * cotangent).

        inputs are the differentiated arrays (input and parameters); extra are host arrays passed
        after them unchanged (candidate indices).
        """
        args = {k: self.array(v) for k, v in inputs.items()}
        fixed = tuple(self.array(v) for v in extra)
        fwd = self.prepare(lambda params, *rest: forward(*rest, **params))
        out = Contender(self.name, "backend", self.device, self.mode)
        out.memory_measurable = not (self.name == "jax" and self.device == "cuda")
        out.forward = lambda: self.sync(fwd(args, *fixed))
        if not self.has_gradients:
            out.notes.append("no value_and_grad (forward-only oracle)")
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
