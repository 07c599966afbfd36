"""Backend-neutral checkpoints: one safetensors file of the flattened params, model state and optimizer state,
with the model config, the training config and the progress counters as JSON metadata.

Every file is written atomically (a temporary file in the same folder, fsync, rename) with the permissions the
umask gives a new file. A checkpoint records a sha256 digest of its metadata and of each tensor (dtype, shape and
bytes); loading verifies them, so a damaged file is refused naming the file and the tensor, never used."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np

from convnn.tree import tree_items, unflatten

FORMAT = "convnn-checkpoint/2"
LEGACY_FORMATS = ("convnn-checkpoint/1",)  # written before digests: read without verification
GROUPS = ("params", "state", "opt")
DIGEST_KEY = "convnn_sha256"


class CheckpointCorrupt(ValueError):
    """A checkpoint whose bytes no longer match the digests stored when it was written."""


class CheckpointWriteError(OSError):
    """A checkpoint (or several written together) could not be written; the previous files are intact."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


class NonFiniteTensor(ValueError):
    """A tensor about to be checkpointed holds NaN or inf (the run diverged)."""

    def __init__(self, name: str, value: float) -> None:
        super().__init__(f"tensor {name} holds non-finite values ({value})")
        self.name, self.value = name, value


def _umask() -> int:
    """The process umask: read from /proc where it is (setting it to read it back would briefly change it for every
    thread), else by setting and restoring it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode of the file being replaced, else what the umask gives a new file (0666 & ~umask)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _write_tmp(path: Path, data: bytes) -> str:
    """`data` in a fsynced temporary file beside `path` (removed again when anything fails); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, _new_file_mode(path))
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise
    return tmp


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_many(items: Iterable[tuple[Path, bytes]]) -> None:
    """Write several files all-or-nothing: every temporary file first (in order), then the renames (in order).

    When any write fails (a full disk, a missing permission) none of the files is replaced and no temporary
    file is left; the OSError is raised as it came.
    """
    items = [(Path(p), d) for p, d in items]
    written: list[tuple[str, Path]] = []
    try:
        for path, data in items:
            try:
                written.append((_write_tmp(path, data), path))
            except OSError as err:
                err.target = path  # which file of several could not be written
                raise
        for tmp, path in written:
            os.replace(tmp, path)
        for folder in {p.parent for _, p in written}:
            _fsync_dir(folder)
    finally:
        for tmp, _ in written:
            if os.path.exists(tmp):
                _unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then os.replace: readers never see a partial file."""
    atomic_write_many([(Path(path), data)])


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


def host_tensors(params: Any, state: Any, opt_state: Any, to_numpy: Any) -> dict[str, np.ndarray]:
    """The flat tensors of a checkpoint: 'params.*', 'state.*', 'opt.*' as contiguous host arrays."""
    tensors: dict[str, np.ndarray] = {}
    for group, tree in zip(GROUPS, (params, state, opt_state)):
        for name, arr in to_host(tree, to_numpy).items():
            tensors[f"{group}.{name}"] = arr
    return tensors


def check_finite(tensors: dict[str, np.ndarray], groups: tuple[str, ...] = GROUPS) -> None:
    """Raise NonFiniteTensor naming the first floating tensor of `groups` that holds NaN or inf."""
    for name, arr in tensors.items():
        if name.partition(".")[0] in groups and np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
            bad = arr[~np.isfinite(arr)].reshape(-1)[0]
            raise NonFiniteTensor(name, float(bad))


def tensor_digest(arr: np.ndarray) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    arr = np.ascontiguousarray(arr)
    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    if arr.size:
        h.update(memoryview(arr.reshape(-1)).cast("B"))
    return h.hexdigest()


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def checkpoint_bytes(tensors: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    """The safetensors bytes of a checkpoint: the tensors, the metadata and their digests."""
    st = _safetensors()
    meta_json = json.dumps({**meta, "format": FORMAT})  # always this format: the digests below are its mark
    digests = {"meta": _text_digest(meta_json), "tensors": {k: tensor_digest(v) for k, v in tensors.items()}}
    return st.save(tensors, metadata={"convnn": meta_json, DIGEST_KEY: json.dumps(digests)})


def save_checkpoint(path: Path, *, params: Any, state: Any, opt_state: Any, meta: dict[str, Any],
                    to_numpy: Any) -> None:
    """One file: tensors 'params.*', 'state.*', 'opt.*' and metadata {'convnn': JSON(meta)} with digests."""
    data = checkpoint_bytes(host_tensors(params, state, opt_state, to_numpy), meta)
    write_checkpoints([Path(path)], data)


def write_checkpoints(paths: list[Path], data: bytes) -> None:
    """The same checkpoint bytes to every path in order, all or nothing; CheckpointWriteError on failure."""
    try:
        atomic_write_many([(Path(p), data) for p in paths])
    except OSError as err:
        name = getattr(err, "target", None) or Path(err.filename or paths[0])
        kept = ", ".join(p.name for p in map(Path, paths) if p.exists()) or "none yet"
        why = err.strerror or str(err)
        code = err.errno if err.errno is not None else errno.EIO
        raise CheckpointWriteError(code, f"could not write checkpoint {name} ({why}); the previous checkpoint "
                                         f"files are intact ({kept})") from err


class Checkpoint:
    """A loaded checkpoint: meta (dict) and the flat host arrays of each group."""

    def __init__(self, path: Path, meta: dict[str, Any], groups: dict[str, dict[str, np.ndarray]]) -> None:
        self.path, self.meta, self.groups = path, meta, groups

    def tree(self, group: str) -> Any:
        """The nested dict of host arrays of one group."""
        return unflatten(self.groups[group])


def load_checkpoint(path: os.PathLike) -> Checkpoint:
    """Read a checkpoint file (or the 'last' checkpoint of a run folder), verifying its digests.

    ValueError when it is not a checkpoint; CheckpointCorrupt (a ValueError) naming the file and the tensor (or
    the metadata) when its bytes do not match the digests recorded when it was written.
    """
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
    try:
        meta = json.loads(header["convnn"])
    except json.JSONDecodeError as err:
        raise CheckpointCorrupt(f"checkpoint {path} is corrupt: its metadata is not valid JSON ({err}); use "
                                f"another checkpoint") from err
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt == FORMAT:
        _verify(path, header, tensors)
    elif fmt not in LEGACY_FORMATS:
        raise ValueError(f"{path} has checkpoint format {fmt!r}; this version reads {FORMAT!r}")
    groups: dict[str, dict[str, np.ndarray]] = {g: {} for g in GROUPS}
    for key, arr in tensors.items():
        group, _, name = key.partition(".")
        if group in groups:
            groups[group][name] = arr
    return Checkpoint(path, meta, groups)


def _verify(path: Path, header: dict[str, str], tensors: dict[str, np.ndarray]) -> None:
    """Raise CheckpointCorrupt unless the metadata and every tensor match the digests in the header."""
    advice = ("the file was damaged after it was written (disk, copy or transfer); use another checkpoint of the "
              "run (checkpoints/last.safetensors or best.safetensors) or a backup")
    try:
        digests = json.loads(header[DIGEST_KEY])
        expected = dict(digests["tensors"])
        meta_digest = digests["meta"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointCorrupt(f"checkpoint {path} is corrupt: its digests ({DIGEST_KEY}) are missing or "
                                f"unreadable; {advice}") from err
    if _text_digest(header["convnn"]) != meta_digest:
        raise CheckpointCorrupt(f"checkpoint {path} is corrupt: its metadata (training state and config) does not "
                                f"match its sha256 digest; {advice}")
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointCorrupt(f"checkpoint {path} is corrupt: tensors missing {missing[:4]}, unexpected "
                                f"{extra[:4]}; {advice}")
    for name in sorted(tensors):
        if tensor_digest(tensors[name]) != expected[name]:
            raise CheckpointCorrupt(f"checkpoint {path} is corrupt: tensor {name} does not match its sha256 digest; "
                                    f"{advice}")


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


CHECKPOINT_CHOICES = ("best", "last")


def checkpoint_file(path: Union[str, os.PathLike], which: str = "best") -> Path:
    """The checkpoint file of a path: the file itself, or a run folder's checkpoints/{which}.safetensors."""
    if which not in CHECKPOINT_CHOICES:
        raise ValueError(f"which={which!r} is not allowed; choose one of {', '.join(CHECKPOINT_CHOICES)}")
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / f"{which}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"run folder has no {path}; give a run folder written by `convnn train` or a "
                                    f".safetensors checkpoint")
    return path
