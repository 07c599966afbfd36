"""ConvNNConfig: the one configuration every backend accepts (SPEC.md section 3), validated on creation."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

SELECT_MODES = ("feature", "position", "blend")
METRICS = ("cosine", "euclidean", "dot")
SAMPLINGS = ("all", "random", "spatial")
ORDERS = ("rank", "position")
WEIGHTINGS = ("none", "softmax")
TAPS = ("full", "depthwise")


def _choice(field: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"ConvNNConfig.{field}={value!r} is not allowed; choose one of {', '.join(allowed)}")


def _int(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ConvNNConfig.{field}={value!r} must be an int >= {minimum}")
    if value < minimum:
        raise ValueError(f"ConvNNConfig.{field}={value!r} must be an int >= {minimum}")


def _bool(field: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"ConvNNConfig.{field}={value!r} must be True or False")


@dataclass(frozen=True)
class ConvNNConfig:
    """What a ConvNN op computes; the defaults are the paper's VGG layer (ConvNN2d).

    Fields and their meaning are those of SPEC.md section 3; ``shuffle_scale`` s > 1 adds the
    pixel unshuffle before / pixel shuffle after the op (the authors' "BA" pattern).
    """

    k: int = 9
    select: str = "feature"
    metric: str = "cosine"
    blend: float = 0.5
    sampling: str = "all"
    num_samples: Optional[int] = None
    self_first: bool = True
    order: str = "rank"
    aggregate_coords: bool = False
    weighting: str = "none"
    self_logit: Optional[float] = None
    taps: str = "full"
    padding: int = 1
    shuffle_scale: int = 1

    def __post_init__(self) -> None:
        _int("k", self.k, 1)
        _choice("select", self.select, SELECT_MODES)
        _choice("metric", self.metric, METRICS)
        _choice("sampling", self.sampling, SAMPLINGS)
        _choice("order", self.order, ORDERS)
        _choice("weighting", self.weighting, WEIGHTINGS)
        _choice("taps", self.taps, TAPS)
        _bool("self_first", self.self_first)
        _bool("aggregate_coords", self.aggregate_coords)
        _int("padding", self.padding, 0)
        _int("shuffle_scale", self.shuffle_scale, 1)
        if isinstance(self.blend, bool) or not isinstance(self.blend, (int, float)):
            raise TypeError(f"ConvNNConfig.blend={self.blend!r} must be a float in [0, 1]")
        if not (0.0 <= float(self.blend) <= 1.0):
            raise ValueError(f"ConvNNConfig.blend={self.blend!r} must be a float in [0, 1]")
        if self.sampling == "all":
            if self.num_samples is not None:
                _int("num_samples", self.num_samples, 1)
        else:
            if self.num_samples is None:
                raise ValueError(
                    f"ConvNNConfig.num_samples=None is not allowed with sampling={self.sampling!r}; "
                    "give the number of candidate tokens (an int >= 1)"
                )
            _int("num_samples", self.num_samples, 1)
        if self.self_logit is not None:
            if isinstance(self.self_logit, bool) or not isinstance(self.self_logit, (int, float)):
                raise TypeError(f"ConvNNConfig.self_logit={self.self_logit!r} must be a float or None")
            if not math.isfinite(float(self.self_logit)):
                raise ValueError(f"ConvNNConfig.self_logit={self.self_logit!r} must be finite or None")

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes: Any) -> "ConvNNConfig":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(
                f"unknown ConvNNConfig field(s) {sorted(unknown)}; allowed: "
                f"{', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON friendly), the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ConvNNConfig":
        """Build from a dict, refusing unknown keys with the list of known ones."""
        return cls().replace(**dict(data)) if data else cls()

    @property
    def uses_coords(self) -> bool:
        """Whether the coordinate channels are built (selection or aggregation needs them)."""
        return self.select in ("position", "blend") or self.aggregate_coords

    @property
    def softmax_self_logit(self) -> Optional[float]:
        """The logit used for slot 0 when it applies (self_first, softmax and a self_logit)."""
        if self.self_first and self.weighting == "softmax" and self.self_logit is not None:
            return float(self.self_logit)
        return None


def attention_config(
    k: int,
    *,
    sampling: str = "all",
    num_samples: Optional[int] = None,
    metric: str = "dot",
    taps: str = "depthwise",
) -> ConvNNConfig:
    """The paper's ViT layer (SPEC.md section 5): dense is top-k softmax attention, sampled adds self first."""
    sampled = sampling != "all"
    return ConvNNConfig(
        k=k,
        select="feature",
        metric=metric,
        sampling=sampling,
        num_samples=num_samples,
        self_first=sampled,
        order="rank",
        weighting="softmax",
        self_logit=1.0 if sampled else None,
        taps=taps,
        padding=0,
        aggregate_coords=False,
    )


# the ConvNNConfig fields a layer module takes as keywords besides k and padding (torch and nnx modules alike)
LAYER_OPTIONS = ("select", "metric", "blend", "sampling", "num_samples", "self_first", "order", "aggregate_coords",
                 "weighting", "self_logit", "taps", "shuffle_scale")


def layer_config(k: int, padding: int, config: Optional[ConvNNConfig], options: dict[str, Any]) -> ConvNNConfig:
    """A layer module's ConvNNConfig: `config=` as given, or k, padding and the option keywords (not both)."""
    if config is not None:
        if options:
            raise ValueError(f"give either config= or the option arguments {sorted(options)}, not both")
        if not isinstance(config, ConvNNConfig):
            raise TypeError(f"config must be a ConvNNConfig, got {type(config).__name__}")
        return config
    unknown = sorted(set(options) - set(LAYER_OPTIONS))
    if unknown:
        raise TypeError(f"unknown argument(s) {unknown}; ConvNN options are {', '.join(LAYER_OPTIONS)}")
    return ConvNNConfig(k=k, padding=padding, **options)
