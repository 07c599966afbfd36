"""The in-memory dataset every loader returns, the paper's normalisation constants, and the validation split."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# SPEC.md section 7 (CIFAR); Fashion-MNIST: mean and std of its 60,000 training images
NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


@dataclass
class Dataset:
    """Images uint8 [N, C, H, W], labels int64 [N], the class names and where the data came from."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be uint8 [N, C, H, W]; got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.name}: {self.images.shape[0]} images but labels of shape {self.labels.shape}")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"{self.name}: labels must lie in [0, {len(self.classes)}); found "
                             f"{int(self.labels.min())}..{int(self.labels.max())}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def take(self, index: np.ndarray, name: Optional[str] = None) -> "Dataset":
        """The images at `index` (a new Dataset sharing the metadata)."""
        return Dataset(name or self.name, self.images[index], self.labels[index], self.classes, self.mean,
                       self.std, self.source, list(self.notes))


def split_validation(train: Dataset, val_size: int) -> tuple[Dataset, Dataset]:
    """(train, validation): the validation split is the last `val_size` images in the official order."""
    if isinstance(val_size, bool) or not isinstance(val_size, int) or not (0 < val_size < len(train)):
        raise ValueError(f"val_size={val_size!r} must be an int in [1, {len(train) - 1}] for {len(train)} images")
    n = len(train) - val_size
    return train.take(np.arange(n), train.name), train.take(np.arange(n, len(train)), f"{train.name}-val")


def default_val_size(n_train: int) -> int:
    """10% of the training images (5,000 of CIFAR's 50,000)."""
    return max(1, n_train // 10)
