"""Which backend trains (or evaluates) a zoo model: a name, or 'auto' through the registry's one policy."""
from __future__ import annotations

from typing import Any, Optional

from convnn.registry import BACKENDS, BackendUnavailable, resolve_auto

from ..registry import model_uses_convnn


class BackendCannotTrain(NotImplementedError):
    """The chosen backend cannot train this model (its capabilities say why)."""


class BackendLoadError(BackendUnavailable):
    """The chosen backend is installed but failed to load with the options the run needs."""


def trainers_text() -> str:
    """'numba, torch or jax': the registered backends that train ConvNN layers, in the registry's order."""
    names = [n for n in BACKENDS if BACKENDS[n].trains_convnn]
    if len(names) < 2:
        return names[0] if names else "no registered backend"
    return ", ".join(names[:-1]) + " or " + names[-1]


def resolve_training_backend(name: str, model: str, options: dict[str, Any], *, dtype: Optional[str] = None,
                             train: bool = True) -> tuple[Any, str]:
    """(backend object, why it was chosen) for a model `model` with `options`, computing in `dtype`.

    'auto' is registry.resolve_auto('train', uses_convnn=...), on the device it picks. A backend that fails
    to load raises BackendLoadError naming it; with train=True a backend whose capabilities cannot train
    the model raises BackendCannotTrain. Nothing falls back to another backend.
    """
    from convnn.conformance.runner import LOAD_ERRORS, load_backend

    uses_convnn = model_uses_convnn(model, options)
    device: Optional[str] = None
    if name == "auto":
        choice = resolve_auto("train", uses_convnn=uses_convnn)
        name, device = choice.name, choice.device
        passed = "; ".join(f"{n}: {why}" for n, why in choice.passed_over if why != "lower in the auto order")
        why = f"auto ({choice.device}): {choice.reason}" + (f"; passed over {passed}" if passed else "")
    else:
        why = f"backend {name!r} asked for by name"
    try:
        backend = load_backend(name, dtypes=(dtype,) if dtype else (), device=device)
    except BackendUnavailable:
        raise
    except LOAD_ERRORS as err:
        raise BackendLoadError(f"backend {name!r} ({why}) failed to load: {type(err).__name__}: {err}") from err
    if train:
        ok, cannot = backend.capabilities.can_train(uses_convnn)
        if not ok:
            raise BackendCannotTrain(f"backend {name!r} cannot train {model} with these options: it {cannot}; "
                                     f"train it on {trainers_text()}")
    return backend, why
