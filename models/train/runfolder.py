"""One run per folder: an exclusive lock held for the whole run, stale temporaries cleaned, and no new run into a
folder that already holds files.

The lock is `fcntl.flock` on RUN/.lock (released by the kernel when the process dies, even by SIGKILL); the file
holds the pid of the run that holds it, so a second run can say who is using the folder.
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Optional

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks here
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder's lock."""


class RunFolderError(OSError):
    """The run folder cannot be created or written (a permission, a read-only disk, a file in the way)."""

    def __str__(self) -> str:
        return str(self.args[1]) if len(self.args) > 1 else super().__str__()


def folder_problem(err: OSError, what: str) -> str:
    """'cannot create the run folder X: permission denied; choose ...' for an OSError met making or writing it."""
    where = err.filename or what
    hints = {
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.EROFS: "read-only file system",
        errno.ENOSPC: "no space left on the device",
        errno.EEXIST: "a file is in the way of a folder",
        errno.ENOTDIR: "a file is in the way of a folder",
        errno.ENOENT: "a parent folder does not exist",
    }
    why = hints.get(err.errno, err.strerror or str(err))
    if err.errno in (errno.EEXIST, errno.ENOTDIR):
        where = blocking_file(Path(what)) or where
    return f"cannot create or write the run folder {what} ({why}: {where}); choose a writable --out-dir (or " \
           f"another --run-name)"


def blocking_file(path: Path) -> Optional[Path]:
    """The first component of `path` that exists but is not a folder (what makes mkdir fail), if any."""
    for part in reversed([path, *path.parents]):
        if part.exists() and not part.is_dir():
            return part
    return None


class RunFolderLock:
    """The exclusive lock of one run folder (creating the folder); `release()` removes what it created."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: Optional[int] = None
        self.created: list[Path] = []  # the folders acquire() made, innermost first
        self.locked = False  # False where the platform or the file system has no locks

    def acquire(self) -> "RunFolderLock":
        """Create the folder if needed and take its lock; RunFolderBusy naming the holder's pid when taken."""
        try:
            self.created = [f for f in (self.run_dir, *self.run_dir.parents) if not f.exists()]
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                if not self._lock(fd):
                    holder = _read_pid(fd)
                    os.close(fd)
                    raise RunFolderBusy(
                        f"run folder {self.run_dir} is in use by another convnn train (pid {holder or 'unknown'}, "
                        f"lock {self.path}); wait for it to finish or stop it, or choose another --run-name")
                # the holder before us may have removed the lock file between our open and our lock: retry
                try:
                    same = os.path.samestat(os.fstat(fd), os.stat(self.path))
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
        except OSError as err:
            raise RunFolderError(err.errno or errno.EIO, folder_problem(err, str(self.run_dir))) from err
        return self

    def _lock(self, fd: int) -> bool:
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return False
            return True  # a file system without locks (ENOLCK, EOPNOTSUPP): run unlocked
        self.locked = True
        return True

    def release(self) -> None:
        """Remove the lock file (still holding the lock), unlock; remove the folder when this run created it and
        left nothing in it (a run that failed before writing anything)."""
        if self.fd is None:
            return
        try:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            if self.created:
                _remove_if_empty([self.run_dir / "checkpoints", *self.created])
        finally:
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def clean_stale_temporaries(run_dir: Path) -> list[Path]:
    """Remove the *.tmp files an interrupted atomic write left in the run folder (call holding the lock)."""
    removed = []
    for folder in (run_dir, run_dir / "checkpoints"):
        if not folder.is_dir():
            continue
        for path in folder.glob("*.tmp"):
            if path.is_file():
                path.unlink()
                removed.append(path)
    return removed


def contents(run_dir: Path) -> list[str]:
    """The files a run folder holds (its lock excepted), relative and sorted."""
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.name != LOCK_NAME)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first; rmdir refuses a folder that holds anything
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


def _read_pid(fd: int) -> Optional[str]:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None
