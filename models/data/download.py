"""Fetch an archive into a local folder with checksum verification; nothing half-written is ever left behind."""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path
from typing import Optional


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in 1 MiB blocks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, expected: str, algorithm: str = "md5") -> None:
    """Raise ValueError when the file's digest is not the published one."""
    got = file_digest(path, algorithm)
    if got != expected.lower():
        raise ValueError(f"{path}: {algorithm} checksum {got} does not match the published {expected}; the file is "
                         f"corrupt or not the official archive (delete it and download again)")


def fetch(url: str, dest: Path, expected: str, algorithm: str = "md5", *, timeout: float = 60.0,
          progress: Optional[bool] = None) -> Path:
    """Download `url` to `dest` unless a verified copy is there: a temporary file, checked, then renamed."""
    dest = Path(dest)
    if dest.exists():
        verify(dest, expected, algorithm)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed official URLs
            except OSError as err:
                raise OSError(f"cannot download {url} ({err}); without a network, put the archive in "
                              f"{dest.parent} yourself") from err
            with response:
                total = int(response.headers.get("Content-Length") or 0) or None
                bar = _bar(total, dest.name, progress)
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    if bar is not None:
                        bar.update(len(block))
                if bar is not None:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        verify(tmp, expected, algorithm)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _bar(total: Optional[int], name: str, progress: Optional[bool]):
    if progress is False:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"download {name}", leave=False)
