"""Planted faults: fake backends that wrap the NumPy oracle with one classic bug each, to prove the suite fails.

Each fake is what a buggy backend would look like from outside (same vocabulary, plausible output);
`tests/test_conformance_faults.py` checks that the suite reports every one of them.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from convnn import ConvNNConfig, get_backend


class _Wrapped:
    """Delegates everything to the NumPy oracle backend; subclasses override the faulty op."""

    fault = ""

    def __init__(self) -> None:
        self._base = get_backend("numpy")
        self.name = f"fault:{self.fault}"
        self.xp = self._base.xp

    def __getattr__(self, item: str) -> Any:
        return getattr(self._base, item)


class WrongTieRule(_Wrapped):
    """select_neighbors breaks ties towards the HIGHER token index (torch.topk-like behaviour)."""

    fault = "tie-rule"

    def select_neighbors(self, feats: Any, cfg: ConvNNConfig, *, query_feats: Any = None, candidates: Any = None,
                         rng: Any = None) -> tuple[Any, Any]:
        n = feats.shape[1]
        rev_q = None if query_feats is None else query_feats[:, ::-1]
        rev_c = None if candidates is None else np.sort(n - 1 - np.asarray(candidates), axis=-1)
        idx, aff = self._base.select_neighbors(feats[:, ::-1], cfg, query_feats=rev_q, candidates=rev_c, rng=rng)
        idx, aff = (n - 1 - idx)[:, ::-1], aff[:, ::-1]
        if cfg.order == "position":
            perm = np.argsort(idx, axis=-1, kind="stable")
            idx, aff = np.take_along_axis(idx, perm, -1), np.take_along_axis(aff, perm, -1)
        return idx, aff


class DroppedBias(_Wrapped):
    """convnn2d / convnn1d ignore the bias."""

    fault = "dropped-bias"

    def convnn2d(self, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn2d(x, weight, None, cfg, **kw)

    def convnn1d(self, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn1d(x, weight, None, cfg, **kw)


def _transposed(weight: Any) -> Any:
    """The taps read in the wrong memory order: [O, C, K] as if stored [O, K, C] (depthwise [C, K] as [K, C])."""
    w = np.asarray(weight)
    if w.ndim == 3:
        return np.ascontiguousarray(np.transpose(w, (0, 2, 1))).reshape(w.shape)
    return np.ascontiguousarray(w.T).reshape(w.shape)


class TransposedWeight(_Wrapped):
    """Taps read in [O, K, C] order and attention projections applied as x @ w instead of x @ w.T."""

    fault = "transposed-weight"

    def convnn2d(self, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn2d(x, _transposed(weight), bias, cfg, **kw)

    def convnn1d(self, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn1d(x, _transposed(weight), bias, cfg, **kw)

    def convnn_attention(self, x: Any, params: Any, cfg: ConvNNConfig, **kw: Any) -> Any:
        swapped = dict(params)
        for name in ("wq", "wk", "wv", "wo"):
            swapped[name] = np.asarray(params[name]).T
        return self._base.convnn_attention(x, swapped, cfg, **kw)


def _no_self(cfg: ConvNNConfig) -> ConvNNConfig:
    return cfg.replace(self_first=False, self_logit=None) if cfg.self_first else cfg


class MissingSelfSlot(_Wrapped):
    """self_first is ignored: slot 0 is not reserved for the query."""

    fault = "missing-self-slot"

    def convnn2d(self, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn2d(x, weight, bias, _no_self(cfg), **kw)

    def convnn1d(self, x: Any, weight: Any, bias: Optional[Any], cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn1d(x, weight, bias, _no_self(cfg), **kw)

    def convnn_attention(self, x: Any, params: Any, cfg: ConvNNConfig, **kw: Any) -> Any:
        return self._base.convnn_attention(x, params, _no_self(cfg), **kw)

    def select_neighbors(self, feats: Any, cfg: ConvNNConfig, **kw: Any) -> tuple[Any, Any]:
        return self._base.select_neighbors(feats, _no_self(cfg), **kw)


FAULTS = {cls.fault: cls for cls in (WrongTieRule, DroppedBias, TransposedWeight, MissingSelfSlot)}


def fault_entry(fault: str, dtypes: tuple[str, ...] = ("float64", "float32")) -> Any:
    """A runner entry for a planted-fault backend (ValueError for an unknown fault name)."""
    from .runner import BackendEntry

    if fault not in FAULTS:
        raise ValueError(f"fault={fault!r} is unknown; choose one of {', '.join(FAULTS)}")
    backend = FAULTS[fault]()
    return BackendEntry(backend.name, backend, f"planted fault: {FAULTS[fault].__doc__.strip()}", dtypes)
