"""Backend-neutral checkpoints: one safetensors file of the flattened params, model state and optimizer state,
with the model config, the training config and the progress counters as JSON metadata. Written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from convnn.tree import tree_items, unflatten

FORMAT = "convnn-checkpoint/1"
GROUPS = ("params", "state", "opt")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _safetensors() -> Any:
    try:
        import safetensors.numpy as st
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("checkpoints need safetensors; install it with pip install 'convnn[zoo]'") from err
    return st


def to_host(tree: Any, to_numpy: Any) -> dict[str, np.ndarray]:
    """{dotted path: contiguous NumPy array} for every leaf (python numbers become 0-d arrays)."""
    out = {}
    for path, leaf in tree_items(tree):
        arr = np.asarray(leaf) if isinstance(leaf, (int, float, np.number)) else to_numpy(leaf)
        out[path] = np.ascontiguousarray(arr).reshape(np.shape(arr))  # keeps 0-d arrays 0-d
    return out


def save_checkpoint(path: Path, *, params: Any, state: Any, opt_state: Any, meta: dict[str, Any],
                    to_numpy: Any) -> None:
    """One file: tensors 'params.*', 'state.*', 'opt.*' and metadata {'convnn': JSON(meta)}."""
    st = _safetensors()
    tensors: dict[str, np.ndarray] = {}
    for group, tree in zip(GROUPS, (params, state, opt_state)):
        for name, arr in to_host(tree, to_numpy).items():
            tensors[f"{group}.{name}"] = arr
    meta = {"format": FORMAT, **meta}
    atomic_write_bytes(Path(path), st.save(tensors, metadata={"convnn": json.dumps(meta)}))


class Checkpoint:
    """A loaded checkpoint: meta (dict) and the flat host arrays of each group."""

    def __init__(self, path: Path, meta: dict[str, Any], groups: dict[str, dict[str, np.ndarray]]) -> None:
        self.path, self.meta, self.groups = path, meta, groups

    def tree(self, group: str) -> Any:
        """The nested dict of host arrays of one group."""
        return unflatten(self.groups[group])


def load_checkpoint(path: os.PathLike) -> Checkpoint:
    """Read a checkpoint file (or the 'last' checkpoint of a run folder); ValueError when it is not one."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.safetensors"
        if not candidate.is_file():
            raise FileNotFoundError(f"{path} holds no checkpoints/last.safetensors; give a run folder or a "
                                    f".safetensors checkpoint")
        path = candidate
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    st = _safetensors()
    raw = path.read_bytes()
    try:
        tensors = st.load(raw)
        from safetensors import safe_open  # metadata lives in the header

        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path} is not a readable safetensors checkpoint ({type(err).__name__}: {err})") from err
    if "convnn" not in header:
        raise ValueError(f"{path} is a safetensors file without convnn metadata (not a convnn checkpoint)")
    meta = json.loads(header["convnn"])
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} has checkpoint format {meta.get('format')!r}; this version reads {FORMAT!r}")
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in GROUPS}
    for key, arr in tensors.items():
        group, _, name = key.partition(".")
        if group in groups:
            groups[group][name] = arr
    return Checkpoint(path, meta, groups)


def _leaf_dtype(leaf: Any) -> Optional[str]:
    dt = getattr(leaf, "dtype", None)
    if dt is None:
        return None
    return str(dt).replace("torch.", "")


def fill_like(template: Any, flat: dict[str, np.ndarray], asarray: Any, what: str) -> Any:
    """A tree shaped like `template` (dicts, lists, tuples, namedtuples) with leaves from `flat` (dotted paths)."""
    expected = {p for p, _ in tree_items(template)}
    missing, extra = sorted(expected - set(flat)), sorted(set(flat) - expected)
    if missing or extra:
        raise ValueError(f"{what} does not match this model/optimizer: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")

    def build(node: Any, prefix: str) -> Any:
        if isinstance(node, dict):
            return {k: build(v, f"{prefix}{k}.") for k, v in node.items()}
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            return type(node)(*[build(v, f"{prefix}{i}.") for i, v in enumerate(node)])
        if isinstance(node, (list, tuple)):
            return type(node)(build(v, f"{prefix}{i}.") for i, v in enumerate(node))
        if node is None:
            return None
        arr = flat[prefix[:-1]]
        if isinstance(node, bool):
            return bool(arr)
        if isinstance(node, int):
            return int(arr)
        if isinstance(node, float):
            return float(arr)
        shape = tuple(getattr(node, "shape", ()))
        if tuple(arr.shape) != shape:
            raise ValueError(f"{what}: {prefix[:-1]} has shape {tuple(arr.shape)} in the checkpoint but {shape} here")
        return asarray(arr, _leaf_dtype(node))

    return build(template, "")
