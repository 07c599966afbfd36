"""Which backend trains when the config says backend='auto'."""
from __future__ import annotations

from typing import Any

from convnn_core.registry import BackendUnavailable, backend_status, get_backend

CPU_TRAINING_ORDER = ("numba", "torch", "jax", "numpy")


def uses_convnn(model: str, options: dict[str, Any]) -> bool:
    """Whether the model has ConvNN layers (which the forward-only numpy oracle cannot train)."""
    if model.startswith("vgg"):
        return options.get("layer", "conv") in ("convnn", "branching")
    return options.get("attention", "attention") in ("convnn", "branching")


def resolve_training_backend(name: str, model: str, options: dict[str, Any]) -> tuple[Any, str]:
    """(backend object, why it was chosen).

    'auto' is the registry's rule (torch on a CUDA GPU, else numba) extended for training: without
    numba it takes torch on the CPU, then jax, and numpy (autograd) only for models without ConvNN.
    """
    if name != "auto":
        return get_backend(name), f"backend {name!r} asked for by name"
    from convnn_core.registry import _cuda_available

    cuda, _ = _cuda_available()
    if cuda:
        return get_backend("torch"), "auto: torch on the CUDA GPU"
    passed = []
    for candidate in CPU_TRAINING_ORDER:
        ok, why = backend_status(candidate)
        if candidate == "numpy" and ok and uses_convnn(model, options):
            ok, why = False, "forward only for ConvNN layers"
        if ok:
            try:
                backend = get_backend(candidate)
            except Exception as err:  # a backend that is present but broken is reported, not fatal
                passed.append(f"{candidate}: {err}")
                continue
            reason = f"auto: {candidate} (CPU)" + (f"; passed over {'; '.join(passed)}" if passed else "")
            return backend, reason
        passed.append(f"{candidate}: {why}")
    raise BackendUnavailable("no backend can train this model: " + "; ".join(passed))
