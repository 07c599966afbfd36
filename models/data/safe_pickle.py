"""A restricted unpickler for the official CIFAR python archives.

It admits only what those files hold: dicts, lists, strings/bytes, numbers and NumPy's array
reconstruction. A pickle that asks for any other global (os.system, builtins.eval, ...) is refused
before anything is constructed.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol 2
})


class UnsafePickleError(ValueError):
    """A pickle asked to construct something outside the allowed set."""


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class admits only ALLOWED_GLOBALS."""

    def __init__(self, file: Any, *, source: str, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self.source}: the pickle tries to construct {module}.{name}; only dicts, lists, strings/bytes "
            f"and NumPy arrays are allowed in a dataset archive, so it was refused (the file may be tampered with)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.source}: the pickle uses persistent ids, which a dataset archive never has")


def safe_load(data: bytes, source: str) -> Any:
    """Unpickle bytes with the restricted unpickler (latin1 for Python 2 strings, as the CIFAR archives need)."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or corrupt file
        raise ValueError(f"{source}: not a readable pickle ({type(err).__name__}: {err}); the file may be "
                         f"truncated or corrupt") from err
