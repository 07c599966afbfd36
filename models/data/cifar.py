"""CIFAR-10 and CIFAR-100 from the official python or binary archives: a folder, or the .tar.gz read in place.

Search order: the folder given, else $CONVNN_DATA, else ~/.cache/convnn/data; python layout before
binary; an unpacked folder before the archive. Download (with the published MD5) only when asked.
"""
from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .dataset import NORMALISATION, Dataset
from .download import fetch
from .safe_pickle import safe_load

BASE_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IMAGE_BYTES = 3 * 32 * 32


class DatasetNotFound(FileNotFoundError):
    """The dataset (or the split asked for) is not in any searched place."""


@dataclass(frozen=True)
class Layout:
    """One official archive: its folder, tarball, checksum and member files."""

    dataset: str
    fmt: str  # "python" or "binary"
    folder: str
    archive: str
    md5: str
    train: tuple[str, ...]
    test: str
    label_bytes: int = 1  # binary: bytes before each image (CIFAR-100: coarse, fine)


LAYOUTS = {
    "cifar10": (
        Layout("cifar10", "python", "cifar-10-batches-py", "cifar-10-python.tar.gz",
               "c58f30108f718f92721af3b95e74349a", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        Layout("cifar10", "binary", "cifar-10-batches-bin", "cifar-10-binary.tar.gz",
               "c32a1d4ab5d03f1284b67883e8d87530", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
               "test_batch.bin", 1),
    ),
    "cifar100": (
        Layout("cifar100", "python", "cifar-100-python", "cifar-100-python.tar.gz",
               "eb9058c3a382ffc7106e4002c42a8d85", ("train",), "test"),
        Layout("cifar100", "binary", "cifar-100-binary", "cifar-100-binary.tar.gz",
               "03b5dce01913d631647c71ecec9e9cb8", ("train.bin",), "test.bin", 2),
    ),
}


def default_roots(data_dir: Optional[os.PathLike] = None) -> list[Path]:
    """Where datasets are looked for: the folder given, else $CONVNN_DATA and ~/.cache/convnn/data."""
    if data_dir is not None:
        return [Path(data_dir)]
    roots = []
    if os.environ.get("CONVNN_DATA"):
        roots.append(Path(os.environ["CONVNN_DATA"]))
    roots.append(Path.home() / ".cache" / "convnn" / "data")
    return roots


class _Source:
    """Member files of one layout, from an unpacked folder or from the tarball (never extracted to disk)."""

    def __init__(self, layout: Layout, folder: Optional[Path] = None, archive: Optional[Path] = None) -> None:
        self.layout, self.folder, self.archive = layout, folder, archive
        self._names: Optional[set[str]] = None

    def __str__(self) -> str:
        return str(self.folder if self.folder is not None else self.archive)

    def has(self, member: str) -> bool:
        if self.folder is not None:
            return (self.folder / member).is_file()
        if self._names is None:
            try:
                with tarfile.open(self.archive, "r:gz") as tar:
                    self._names = {m.name for m in tar.getmembers()}
            except (tarfile.TarError, EOFError, OSError) as err:
                raise ValueError(f"{self.archive}: corrupt archive ({err})") from err
        return f"{self.layout.folder}/{member}" in self._names

    def read(self, member: str) -> bytes:
        if self.folder is not None:
            return (self.folder / member).read_bytes()
        try:
            with tarfile.open(self.archive, "r:gz") as tar:
                handle = tar.extractfile(f"{self.layout.folder}/{member}")
                if handle is None:
                    raise KeyError(member)
                return handle.read()
        except (tarfile.TarError, EOFError, OSError) as err:
            raise ValueError(f"{self.archive}: corrupt archive ({err})") from err


def _find(layouts: Sequence[Layout], roots: Sequence[Path]) -> Optional[_Source]:
    for root in roots:
        for layout in layouts:
            first = layout.train[0]
            if (root / layout.folder / first).is_file():
                return _Source(layout, folder=root / layout.folder)
            if (root / first).is_file():
                return _Source(layout, folder=root)
        for layout in layouts:
            if (root / layout.archive).is_file():
                return _Source(layout, archive=root / layout.archive)
    return None


def _str_keys(d: Any, source: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a dict in the official CIFAR layout, got {type(d).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


def _python_batch(source: _Source, member: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    where = f"{source}/{member}" if source.folder is not None else f"{source}:{member}"
    d = _str_keys(safe_load(source.read(member), where), where)
    if "data" not in d or label_key not in d:
        raise ValueError(f"{where}: keys {sorted(d)} lack 'data' or {label_key!r} (not an official CIFAR batch)")
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        raise ValueError(f"{where}: 'data' has dtype {data.dtype} and shape {data.shape}; expected uint8 "
                         f"[N, {IMAGE_BYTES}]")
    labels = np.asarray(d[label_key], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{where}: {data.shape[0]} images but {labels.shape[0] if labels.ndim else 0} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _binary_batch(source: _Source, member: str, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    where = f"{source}/{member}"
    raw = np.frombuffer(source.read(member), dtype=np.uint8)
    record = label_bytes + IMAGE_BYTES
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{where}: {raw.size} bytes is not a whole number of {record}-byte records")
    rows = raw.reshape(-1, record)
    labels = rows[:, label_bytes - 1].astype(np.int64)  # CIFAR-100: the fine label is the second byte
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).copy(), labels


def _classes(source: _Source, n_classes: int) -> list[str]:
    layout = source.layout
    if layout.dataset == "cifar10":
        return list(CIFAR10_CLASSES)
    try:
        if layout.fmt == "python":
            meta = _str_keys(safe_load(source.read("meta"), f"{source}/meta"), f"{source}/meta")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get("fine_label_names", [])]
        else:
            names = source.read("fine_label_names.txt").decode().split()
    except (KeyError, FileNotFoundError):
        names = []
    return names if len(names) == n_classes else [f"class_{i}" for i in range(n_classes)]


def load_cifar(name: str, split: str = "train", data_dir: Optional[os.PathLike] = None, *,
               download: bool = False) -> Dataset:
    """CIFAR-10 ('cifar10') or CIFAR-100 ('cifar100'), split 'train' (50,000) or 'test' (10,000)."""
    if name not in LAYOUTS:
        raise ValueError(f"name={name!r} is not a CIFAR dataset; choose cifar10 or cifar100")
    if split not in ("train", "test"):
        raise ValueError(f"split={split!r} is not allowed; choose train or test")
    layouts = LAYOUTS[name]
    roots = default_roots(data_dir)
    source = _find(layouts, roots)
    if source is None and download:
        layout = layouts[0]
        archive = fetch(BASE_URL + layout.archive, roots[0] / layout.archive, layout.md5)
        source = _Source(layout, archive=archive)
    if source is None:
        wanted = ", ".join(f"{lay.folder}/ or {lay.archive}" for lay in layouts)
        raise DatasetNotFound(f"{name} not found in {', '.join(map(str, roots))} (looked for {wanted}); "
                              f"pass --data-dir, or --download where a network exists")
    layout = source.layout
    members = layout.train if split == "train" else (layout.test,)
    for member in members:
        if not source.has(member):
            what = "the official test batch" if split == "test" else "a training batch"
            raise DatasetNotFound(f"{name}: {what} '{member}' is missing from {source}; there is no fallback "
                                  f"(select models on the validation split, or add the official file)")
    label_key = "labels" if name == "cifar10" else "fine_labels"
    parts = [_python_batch(source, m, label_key) if layout.fmt == "python" else
             _binary_batch(source, m, layout.label_bytes) for m in members]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    n_classes = 10 if name == "cifar10" else 100
    mean, std = NORMALISATION[name]
    return Dataset(name, images, labels, _classes(source, n_classes), mean, std,
                   source=f"{layout.fmt} archive at {source}")
