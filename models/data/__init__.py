"""Datasets for the zoo: CIFAR-10/100 (python or binary archives), Fashion-MNIST (IDX) and the embedded sample."""
from __future__ import annotations

import os
from typing import Optional

from .cifar import DatasetNotFound, load_cifar
from .dataset import NORMALISATION, Dataset, default_val_size, split_validation
from .fashion_mnist import load_fashion_mnist
from .safe_pickle import UnsafePickleError
from .sample import load_sample

DATASETS = ("sample", "cifar10", "cifar100", "fashion_mnist")


def load_dataset(name: str, split: str = "train", data_dir: Optional[os.PathLike] = None, *,
                 download: bool = False) -> Dataset:
    """One split of a dataset by name: 'sample' (embedded, train only), 'cifar10', 'cifar100', 'fashion_mnist'."""
    if name == "sample":
        if split != "train":
            raise DatasetNotFound("the embedded sample has no test split; evaluate on its validation split, or use "
                                  "dataset=cifar10 with the official test batch")
        return load_sample()
    if name in ("cifar10", "cifar100"):
        return load_cifar(name, split, data_dir, download=download)
    if name == "fashion_mnist":
        return load_fashion_mnist(split, data_dir, download=download)
    raise ValueError(f"dataset={name!r} is unknown; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "Dataset", "DatasetNotFound", "NORMALISATION", "UnsafePickleError", "default_val_size",
           "load_cifar", "load_dataset", "load_fashion_mnist", "load_sample", "split_validation"]
