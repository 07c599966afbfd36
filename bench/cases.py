"""The benchmarked layer shapes (VGG-11 maps, ViT-Tiny token sets) and the layer variants run on each."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Union

K = 9


@dataclass(frozen=True)
class MapShape:
    """A VGG-style layer input: B maps of C_in channels, H x W pixels, mapped to C_out channels."""

    name: str
    batch: int
    c_in: int
    c_out: int
    height: int
    width: int
    samples: int = 64  # candidates for random / spatial sampling (the paper's 8 x 8 grid)
    k: int = K
    only: Optional[tuple[str, ...]] = None  # restrict the variants run on this shape (None: all)

    @property
    def label(self) -> str:
        return f"{self.name} B{self.batch} {self.height}x{self.width} C{self.c_in}->{self.c_out}"


@dataclass(frozen=True)
class TokenShape:
    """A ViT-style attention input: B sequences of N tokens of width D, split into `heads` heads."""

    name: str
    batch: int
    tokens: int
    dim: int
    heads: int = 1
    samples: int = 32  # candidates for random / spatial sampling (the paper's ViT setting)
    k: int = K

    @property
    def label(self) -> str:
        return f"{self.name} B{self.batch} N{self.tokens} D{self.dim} h{self.heads}"


Shape = Union[MapShape, TokenShape]


@dataclass(frozen=True)
class Variant:
    """One layer to time: the op and, for ConvNN, how it selects and samples."""

    label: str
    op: str  # convnn2d | conv2d | convnn_attention | attention
    select: str = "feature"
    metric: str = "cosine"
    sampling: str = "all"

    @property
    def is_convnn(self) -> bool:
        return self.op.startswith("convnn")


MAP_VARIANTS = (
    Variant("convnn feature/all", "convnn2d"),
    Variant("convnn feature/random", "convnn2d", sampling="random"),
    Variant("convnn feature/spatial", "convnn2d", sampling="spatial"),
    Variant("convnn position/all", "convnn2d", select="position", metric="euclidean"),
    Variant("convnn blend/all", "convnn2d", select="blend"),
    Variant("conv2d 3x3", "conv2d"),
)
TOKEN_VARIANTS = (
    Variant("convnn attention/all", "convnn_attention", metric="dot"),
    Variant("convnn attention/random", "convnn_attention", metric="dot", sampling="random"),
    Variant("convnn attention/spatial", "convnn_attention", metric="dot", sampling="spatial"),
    Variant("attention (dense)", "attention"),
)

FEATURE_ONLY = ("convnn feature/all", "convnn feature/random", "convnn feature/spatial", "conv2d 3x3")
VGG_MAIN = (
    MapShape("vgg11", 32, 64, 64, 32, 32),
    MapShape("vgg11", 32, 128, 128, 16, 16),
    MapShape("vgg11", 32, 256, 256, 8, 8),
)
VGG_DEEP = (
    MapShape("vgg11", 32, 512, 512, 4, 4),
    MapShape("vgg11", 32, 512, 512, 2, 2),
)
VIT = (
    TokenShape("vit-tiny", 32, 65, 192),
    TokenShape("vit-tiny", 32, 197, 192),
)
QUICK = (
    MapShape("tiny", 2, 8, 8, 8, 8, samples=16),
    TokenShape("tiny", 2, 17, 16, samples=12),
)
SHAPE_SETS: dict[str, tuple[Shape, ...]] = {
    "quick": QUICK,
    # the default fits the 15-minute budget of a 2-core machine: at 32x32 only feature selection (the
    # paper's VGG runs), since the authors' position selection sorts every 1156-long row in full
    "default": (replace(VGG_MAIN[0], only=FEATURE_ONLY),) + VGG_MAIN[1:] + VIT,
    "paper": VGG_MAIN + VGG_DEEP + VIT,
}


def shape_set(name: str, batch: Optional[int] = None) -> tuple[Shape, ...]:
    """The shapes of a named set, with the batch replaced when one is given."""
    if name not in SHAPE_SETS:
        raise ValueError(f"shapes={name!r} is not allowed; choose one of {', '.join(SHAPE_SETS)}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"--batch={batch!r} is not allowed; give an int >= 1")
    shapes = SHAPE_SETS[name]
    return tuple(replace(s, batch=batch) for s in shapes) if batch else shapes


def variants_for(shape: Shape) -> tuple[Variant, ...]:
    """The layers run on a shape: ConvNN2d variants and conv2d on maps, attentions on tokens."""
    if isinstance(shape, TokenShape):
        return TOKEN_VARIANTS
    return tuple(v for v in MAP_VARIANTS if shape.only is None or v.label in shape.only)


def check_variant_filters(wanted: Optional[list[str]]) -> None:
    """ValueError naming each --variants entry that is part of no variant label, with the known labels."""
    labels = [v.label for v in MAP_VARIANTS + TOKEN_VARIANTS]
    unknown = [w for w in (wanted or []) if not any(w in label for label in labels)]
    if unknown:
        raise ValueError(f"--variants: {', '.join(map(repr, unknown))} {'matches' if len(unknown) == 1 else 'match'} "
                         f"no layer variant; give parts of "
                         f"these labels (comma separated): {', '.join(labels)}")


def filter_variants(variants: tuple[Variant, ...], wanted: Optional[list[str]]) -> tuple[Variant, ...]:
    """Keep the variants whose label contains one of the wanted substrings (all when none are given)."""
    if not wanted:
        return variants
    return tuple(v for v in variants if any(w in v.label for w in wanted))
