"""The embedded default dataset: the first 3,000 CIFAR-10 training images, shipped as small npz shards.

`build_sample` regenerates the shards from an official CIFAR-10 python archive; provenance is in
sample/README.md and sample/manifest.json (file checksums are verified when loading).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .cifar import CIFAR10_CLASSES, load_cifar
from .dataset import NORMALISATION, Dataset

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SHARD_SIZE = 500  # 500 images = 1.5 MB raw per shard
SAMPLE_SIZE = 3000


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_sample(folder: Optional[os.PathLike] = None) -> Dataset:
    """The embedded CIFAR-10 sample (uint8 [3000, 3, 32, 32]); its official order is kept."""
    folder = Path(folder) if folder is not None else SAMPLE_DIR
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"the embedded sample is missing ({manifest_path}); reinstall convnn or rebuild it "
                                f"with models.data.sample.build_sample")
    manifest = json.loads(manifest_path.read_text())
    images, labels, index = [], [], []
    for shard in manifest["shards"]:
        path = folder / shard["file"]
        if not path.is_file():
            raise FileNotFoundError(f"embedded sample shard {path} is missing")
        if _sha256(path) != shard["sha256"]:
            raise ValueError(f"embedded sample shard {path} does not match its sha256 in manifest.json (corrupt)")
        with np.load(path, allow_pickle=False) as z:
            images.append(z["images"])
            labels.append(z["labels"].astype(np.int64))
            index.append(z["index"])
    mean, std = NORMALISATION["cifar10"]
    ds = Dataset("sample", np.concatenate(images), np.concatenate(labels), list(CIFAR10_CLASSES), mean, std,
                 source=manifest["source"])
    ds.notes.append(f"official indices {int(np.min(index[0]))}..{int(np.max(index[-1]))} of the training set")
    return ds


def build_sample(cifar_dir: os.PathLike, out_dir: os.PathLike = SAMPLE_DIR, count: int = SAMPLE_SIZE) -> Path:
    """Write the first `count` CIFAR-10 training images as compressed npz shards plus manifest.json."""
    train = load_cifar("cifar10", "train", cifar_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards = []
    for start in range(0, count, SHARD_SIZE):
        stop = min(count, start + SHARD_SIZE)
        name = f"cifar10_train_{start:05d}_{stop - 1:05d}.npz"
        np.savez_compressed(out / name, images=train.images[start:stop], labels=train.labels[start:stop].astype(
            np.uint8), index=np.arange(start, stop, dtype=np.int32))
        shards.append({"file": name, "images": stop - start, "sha256": _sha256(out / name)})
    manifest = {
        "source": f"CIFAR-10 training set (official python archive), images 0..{count - 1} in the official order "
                  f"(data_batch_1)",
        "layout": "images uint8 [N, 3, 32, 32] (RGB planes), labels uint8 [N], index int32 [N] (official index)",
        "classes": CIFAR10_CLASSES,
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
