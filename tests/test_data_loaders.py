"""Dataset loaders: restricted unpickling, CIFAR-10/100 python and binary archives, Fashion-MNIST IDX files,
checksum-verified download, the embedded sample and the validation split."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from convnn.models.data import (DatasetNotFound, UnsafePickleError, load_cifar, load_dataset, load_fashion_mnist,
                         load_sample, split_validation)
from convnn.models.data.download import fetch
from convnn.models.data.fashion_mnist import read_idx
from convnn.models.data.safe_pickle import safe_load
from convnn.models.data.sample import SAMPLE_DIR

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


# ----------------------------------------------------------------------------- archive builders
def _batch_pickle(data: np.ndarray, labels: list[int], label_key: str = "labels", *, bytes_keys: bool = False,
                  protocol: int = 2) -> bytes:
    d = {label_key: labels, "data": data, "batch_label": "testing batch", "filenames": ["a.png"] * len(labels)}
    if label_key == "fine_labels":
        d["coarse_labels"] = [lab // 5 for lab in labels]
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    return pickle.dumps(d, protocol=protocol)


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def make_cifar10_py(root: Path, n: int = 4, *, with_test: bool = True, bytes_keys: bool = False) -> dict:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    truth = {"train": [], "labels": []}
    for i in range(1, 6):
        data, labels = _images(n, i), [int(v) for v in np.random.default_rng(i).integers(0, 10, n)]
        (folder / f"data_batch_{i}").write_bytes(_batch_pickle(data, labels, bytes_keys=bytes_keys))
        truth["train"].append(data)
        truth["labels"] += labels
    if with_test:
        (folder / "test_batch").write_bytes(_batch_pickle(_images(n, 9), [1] * n))
    return truth


def make_cifar100(root: Path, n: int = 6, fmt: str = "python") -> tuple[np.ndarray, np.ndarray]:
    data, fine = _images(n, 3), np.arange(n) * 17 % 100
    if fmt == "python":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        (folder / "train").write_bytes(_batch_pickle(data, [int(v) for v in fine], "fine_labels"))
        (folder / "test").write_bytes(_batch_pickle(data[:2], [int(v) for v in fine[:2]], "fine_labels"))
        names = [f"name{i}" for i in range(100)]
        (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": ["c"] * 20},
                                                   protocol=2))
    else:
        folder = root / "cifar-100-binary"
        folder.mkdir(parents=True)
        records = np.concatenate([(fine // 5)[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), data], 1)
        (folder / "train.bin").write_bytes(records.tobytes())
    return data.reshape(-1, 3, 32, 32), fine


# ----------------------------------------------------------------------------- restricted unpickler
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_crafted_pickle_is_refused(tmp_path):
    payload = pickle.dumps({"data": _Evil(), "labels": [0]}, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        safe_load(payload, "crafted")
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="only dicts, lists, strings/bytes and NumPy arrays"):
        load_cifar("cifar10", "train", tmp_path)


def test_restricted_unpickler_refuses_builtins_and_accepts_arrays():
    with pytest.raises(UnsafePickleError, match="eval"):
        safe_load(pickle.dumps(eval, protocol=2), "x")
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        out = safe_load(pickle.dumps({"a": arr, "b": [b"x", "y"]}, protocol=protocol), "ok")
        np.testing.assert_array_equal(out["a"], arr)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        safe_load(pickle.dumps({"a": arr})[:20], "cut")


# ----------------------------------------------------------------------------- CIFAR-10
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_python_folder(tmp_path, bytes_keys):
    truth = make_cifar10_py(tmp_path, bytes_keys=bytes_keys)
    ds = load_cifar("cifar10", "train", tmp_path)
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == np.uint8
    np.testing.assert_array_equal(ds.images[:4].reshape(4, -1), truth["train"][0])
    np.testing.assert_array_equal(ds.labels, truth["labels"])
    assert len(load_cifar("cifar10", "test", tmp_path)) == 4
    assert ds.classes[0] == "airplane"


def test_cifar10_python_tarball_is_read_in_place(tmp_path):
    src = tmp_path / "src"
    truth = make_cifar10_py(src)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    shutil.rmtree(src)
    ds = load_cifar("cifar10", "train", tmp_path)
    np.testing.assert_array_equal(ds.labels, truth["labels"])
    assert not (tmp_path / "cifar-10-batches-py").exists()  # nothing extracted


def test_cifar10_binary_folder(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    data = _images(3, 0)
    for i in range(1, 6):
        (folder / f"data_batch_{i}.bin").write_bytes(
            np.concatenate([np.full((3, 1), i, np.uint8), data], 1).tobytes())
    ds = load_cifar("cifar10", "train", tmp_path)
    assert ds.labels.tolist() == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3 + [5] * 3
    np.testing.assert_array_equal(ds.images[0].reshape(-1), data[0])
    (folder / "data_batch_2.bin").write_bytes(b"\0" * 3074)
    with pytest.raises(ValueError, match="3073-byte records"):
        load_cifar("cifar10", "train", tmp_path)
    with pytest.raises(DatasetNotFound, match="test_batch.bin"):
        load_cifar("cifar10", "test", tmp_path)


def test_missing_test_batch_is_a_clear_error_without_fallback(tmp_path):
    make_cifar10_py(tmp_path, with_test=False)
    with pytest.raises(DatasetNotFound, match="official test batch 'test_batch' is missing.*no fallback"):
        load_cifar("cifar10", "test", tmp_path)


def test_missing_dataset_and_wrong_shapes(tmp_path):
    with pytest.raises(DatasetNotFound, match="cifar10 not found"):
        load_cifar("cifar10", "train", tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(_batch_pickle(np.zeros((2, 100), np.uint8), [0, 1]))
    with pytest.raises(ValueError, match=r"shape \(2, 100\).*\[N, 3072\]"):
        load_cifar("cifar10", "train", tmp_path)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(_batch_pickle(_images(2, 0), [0, 11]))
    with pytest.raises(ValueError, match="labels must lie in"):
        load_cifar("cifar10", "train", tmp_path)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(_batch_pickle(_images(2, 0), [0]))
    with pytest.raises(ValueError, match="2 images but 1 labels"):
        load_cifar("cifar10", "train", tmp_path)


def test_shared_cifar10_training_set():
    if not (SHARED / "cifar-10-batches-py" / "data_batch_1").is_file():
        pytest.skip("the shared CIFAR-10 batches are not present beside the repository")
    ds = load_dataset("cifar10", "train", SHARED)
    assert ds.images.shape == (50000, 3, 32, 32)
    assert np.bincount(ds.labels).tolist() == [5000] * 10
    train, val = split_validation(ds, 5000)
    assert len(train) == 45000 and len(val) == 5000
    np.testing.assert_array_equal(val.images[0], ds.images[45000])
    with pytest.raises(DatasetNotFound, match="no fallback"):
        load_dataset("cifar10", "test", SHARED)
    # the embedded sample is the first 3,000 images, pixel-exact
    sample = load_sample()
    np.testing.assert_array_equal(sample.images, ds.images[:3000])
    np.testing.assert_array_equal(sample.labels, ds.labels[:3000])


# ----------------------------------------------------------------------------- CIFAR-100
@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar100_official_layouts(tmp_path, fmt):
    images, fine = make_cifar100(tmp_path, fmt=fmt)
    ds = load_cifar("cifar100", "train", tmp_path)
    np.testing.assert_array_equal(ds.images, images)
    np.testing.assert_array_equal(ds.labels, fine)
    assert ds.num_classes == 100 and ds.mean == (0.5071, 0.4867, 0.4408)
    if fmt == "python":
        assert ds.classes[1] == "name1"
        assert len(load_cifar("cifar100", "test", tmp_path)) == 2
    else:
        with pytest.raises(DatasetNotFound, match="test.bin"):
            load_cifar("cifar100", "test", tmp_path)


def test_cifar100_tarball(tmp_path):
    src = tmp_path / "src"
    images, fine = make_cifar100(src)
    with tarfile.open(tmp_path / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(src / "cifar-100-python", arcname="cifar-100-python")
    ds = load_cifar("cifar100", "train", tmp_path)
    np.testing.assert_array_equal(ds.labels, fine)
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"not a tarball")
    shutil.rmtree(src)
    with pytest.raises(ValueError, match="corrupt"):
        load_cifar("cifar100", "train", tmp_path)


# ----------------------------------------------------------------------------- Fashion-MNIST
def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_fashion_mnist_idx(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(labels))
    ds = load_fashion_mnist("train", tmp_path)
    assert ds.images.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(ds.images[:, 0], imgs)
    assert ds.labels.tolist() == [0, 9, 3, 3, 1] and ds.classes[9] == "Ankle boot"
    with pytest.raises(DatasetNotFound, match="t10k-images"):
        load_fashion_mnist("test", tmp_path)
    bad = tmp_path / "bad"
    (bad).write_bytes(_idx(imgs)[:-10])
    with pytest.raises(ValueError, match="header declares"):
        read_idx(bad)
    bad.write_bytes(b"\x01\x02\x08\x01" + b"\0" * 8)
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)


# ----------------------------------------------------------------------------- download verification
def test_fetch_verifies_checksums_and_leaves_nothing_half_written(tmp_path):
    src = tmp_path / "archive.bin"
    src.write_bytes(b"official bytes" * 1000)
    good = hashlib.md5(src.read_bytes()).hexdigest()
    dest = tmp_path / "data" / "archive.bin"
    with pytest.raises(ValueError, match="does not match the published"):
        fetch(src.as_uri(), dest, "0" * 32, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert fetch(src.as_uri(), dest, good, progress=False) == dest
    assert dest.read_bytes() == src.read_bytes()
    dest.write_bytes(b"tampered")
    with pytest.raises(ValueError, match="checksum"):
        fetch(src.as_uri(), dest, good, progress=False)
    with pytest.raises(OSError, match="cannot download"):
        fetch((tmp_path / "absent").as_uri(), tmp_path / "x" / "y.bin", good, progress=False)


# ----------------------------------------------------------------------------- embedded sample
def test_embedded_sample_shards_and_provenance(tmp_path):
    shards = sorted(SAMPLE_DIR.glob("*.npz"))
    assert len(shards) == 6 and all(p.stat().st_size < 2 * 1024 * 1024 for p in shards)
    ds = load_dataset("sample")
    assert ds.images.shape == (3000, 3, 32, 32) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels, minlength=10).min() > 250
    manifest = json.loads((SAMPLE_DIR / "manifest.json").read_text())
    assert "official order" in manifest["source"]
    with pytest.raises(DatasetNotFound, match="no test split"):
        load_dataset("sample", "test")
    copy = tmp_path / "sample"
    shutil.copytree(SAMPLE_DIR, copy)
    with np.load(shards[0]) as z:
        arrays = dict(z)
    arrays["images"][0, 0, 0, 0] ^= 1
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    (copy / shards[0].name).write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match="sha256"):
        load_sample(copy)


def test_unknown_dataset_and_bad_split(tmp_path):
    with pytest.raises(ValueError, match="dataset='imagenet' is unknown"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split='dev'"):
        load_cifar("cifar10", "dev", tmp_path)
    ds = load_sample()
    with pytest.raises(ValueError, match="val_size"):
        split_validation(ds, 3000)
