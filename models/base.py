"""The model interface every zoo entry implements: init(seed) -> (params, state), apply(...) -> (logits, state)."""
from __future__ import annotations

import zlib
from typing import Any, Iterator, Optional

import numpy as np

from .init import ParamSpec, count, init_tree


class Model:
    """A zoo model bound to one backend; params and state are nested dicts of that backend's arrays.

    Subclasses fill `param_specs()` / `state_specs()` and `apply`. `config` is JSON-able and
    `create_model(**config)` rebuilds the same model (checkpoints store it).
    """

    name: str = ""

    def __init__(self, backend: Any, name: str, num_classes: int, options: dict[str, Any]) -> None:
        self.backend = backend
        self.name = name
        self.num_classes = int(num_classes)
        self.options = dict(options)
        self.dtype = str(options.get("dtype", "float32"))
        self._eval_candidates: dict[tuple[str, int], np.ndarray] = {}

    # ------------------------------------------------------------------ description
    @property
    def config(self) -> dict[str, Any]:
        """What rebuilds this model: {'name', 'num_classes', 'options'} (the backend is chosen at load time)."""
        return {"name": self.name, "num_classes": self.num_classes, "options": dict(self.options)}

    def param_specs(self) -> dict[str, ParamSpec]:
        raise NotImplementedError

    def state_specs(self) -> dict[str, ParamSpec]:
        return {}

    @property
    def uses_convnn(self) -> bool:
        """Whether this model has ConvNN layers (a backend that runs them forward only cannot train it)."""
        raise NotImplementedError

    @property
    def train_rng_draws(self) -> int:
        """How many RNG keys one training call splits from its rng (dropout, random sampling); 0: none needed."""
        return 0

    def num_params(self) -> int:
        """Number of trainable parameters, from shapes alone."""
        return count(self.param_specs())

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in sorted(self.options.items()))
        return (f"{type(self).__name__}({self.name}, classes={self.num_classes}, backend="
                f"{getattr(self.backend, 'name', '?')}, {opts}; {self.num_params():,} params)")

    # ------------------------------------------------------------------ life cycle
    def init(self, seed: int) -> tuple[Any, Any]:
        """(params, state) drawn on the host with PyTorch's default initialisation, then moved to the backend."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed={seed!r} must be an int")
        params = init_tree(self.param_specs(), int(seed), self.dtype, self.backend)
        state = init_tree(self.state_specs(), int(seed), self.dtype, self.backend)
        return params, state

    def apply(self, params: Any, state: Any, x: Any, *, train: bool, rng: Any = None) -> tuple[Any, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ randomness helpers
    def _keys(self, rng: Any, train: bool) -> Iterator[Any]:
        """The train_rng_draws backend RNG keys of one training call (None everywhere in evaluation)."""
        n = self.train_rng_draws
        if not train or n == 0:
            return iter([None] * n)
        if rng is None:
            raise ValueError(f"{self.name}: train=True needs rng= (an int seed or a key from backend.make_rng)")
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = self.backend.make_rng(int(rng))
        return iter(self.backend.split_rng(rng, n))

    def eval_candidates(self, layer: str, n_tokens: int, num_samples: int) -> Optional[np.ndarray]:
        """The fixed evaluation draw of a randomly sampled layer: seeded by the layer's path, same on every backend."""
        if num_samples >= n_tokens:
            return None
        key = (layer, n_tokens)
        if key not in self._eval_candidates:
            from convnn.candidates import draw_random

            seed = [int(self.options.get("eval_seed", 0)), zlib.crc32(layer.encode("utf-8"))]
            self._eval_candidates[key] = draw_random(n_tokens, num_samples, np.random.default_rng(seed))
        return self._eval_candidates[key]
