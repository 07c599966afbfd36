"""Fashion-MNIST from the four official IDX files (gzipped or not), e.g. Debian's dataset-fashion-mnist package."""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .cifar import DatasetNotFound, default_roots
from .dataset import NORMALISATION, Dataset
from .download import fetch

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (unsigned bytes) as an array of its declared shape; ValueError on anything else."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: IDX element type 0x{raw[2]:02x} is not unsigned bytes (0x08)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape)) if shape else 0
    if len(raw) - header != size:
        raise ValueError(f"{path}: header declares shape {shape} ({size} bytes) but holds {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _locate(stem: str, roots: list[Path]) -> Optional[Path]:
    for root in roots:
        for folder in (root / "fashion-mnist", root):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    return folder / name
    return None


def load_fashion_mnist(split: str = "train", data_dir: Optional[os.PathLike] = None, *,
                       download: bool = False) -> Dataset:
    """Fashion-MNIST images [N, 1, 28, 28] uint8 and labels; split 'train' (60,000) or 'test' (10,000)."""
    if split not in FILES:
        raise ValueError(f"split={split!r} is not allowed; choose train or test")
    roots = default_roots(data_dir)
    if data_dir is None:
        roots.append(DEBIAN_DIR)
    paths = []
    for stem in FILES[split]:
        path = _locate(stem, roots)
        if path is None and download:
            path = fetch(BASE_URL + stem + ".gz", roots[0] / "fashion-mnist" / (stem + ".gz"), MD5[stem + ".gz"])
        if path is None:
            raise DatasetNotFound(f"fashion_mnist: {stem}[.gz] not found in {', '.join(map(str, roots))}; install "
                                  f"Debian's dataset-fashion-mnist, pass --data-dir, or --download")
        paths.append(path)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{paths[0]}: images of shape {images.shape}; expected [N, 28, 28]")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{paths[1]}: labels of shape {labels.shape} do not match {images.shape[0]} images")
    mean, std = NORMALISATION["fashion_mnist"]
    return Dataset("fashion_mnist", images[:, None], labels.astype(np.int64), list(CLASSES), mean, std,
                   source=f"IDX files in {paths[0].parent}")
