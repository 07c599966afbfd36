"""Evaluation: per-sample mean loss and top-1 / top-5 accuracy of a model over a dataset split."""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np

from ..data.dataset import Dataset
from ..data.transforms import normalise, resize_bilinear
from .metrics import topk_correct


def host_batch(ds: Dataset, index: np.ndarray, resize: Optional[int]) -> np.ndarray:
    """Normalised float32 images of `index` (resized when asked)."""
    x = normalise(ds.images[index], ds.mean, ds.std)
    return resize_bilinear(x, resize) if resize else x


class EvaluationStopped(Exception):
    """evaluate() stopped early because should_stop() said so (a signal asked the run to stop)."""


def evaluate(model: Any, params: Any, state: Any, ds: Dataset, *, batch_size: int, resize: Optional[int],
             logits_fn: Optional[Callable[..., Any]] = None, progress: bool = False, desc: str = "eval",
             should_stop: Optional[Callable[[], bool]] = None) -> dict[str, float]:
    """{'loss', 'top1', 'top5', 'n'}: every image counts once (no mean of batch means).

    should_stop() is asked before each batch; when it answers True, EvaluationStopped is raised.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"evaluation batch_size={batch_size!r} must be an int >= 1")
    if len(ds) == 0:
        raise ValueError(f"the {desc} split of {ds.name!r} holds no images")
    backend = model.backend
    if logits_fn is None:
        def logits_fn(p: Any, s: Any, x: Any) -> Any:
            return model.apply(p, s, x, train=False, rng=None)[0]
    n = len(ds)
    loss_sum, top1, top5 = 0.0, 0, 0
    bar = _bar(math.ceil(n / batch_size), desc, progress)
    for start in range(0, n, batch_size):
        if should_stop is not None and should_stop():
            if bar is not None:
                bar.close()
            raise EvaluationStopped(desc)
        index = np.arange(start, min(n, start + batch_size))
        x = backend.asarray(host_batch(ds, index, resize), model.dtype)
        logits = backend.to_numpy(logits_fn(params, state, x)).astype(np.float64)
        labels = ds.labels[index]
        m = logits.max(axis=1, keepdims=True)
        lse = np.log(np.exp(logits - m).sum(axis=1)) + m[:, 0]
        loss_sum += float(np.sum(lse - logits[np.arange(len(index)), labels]))
        correct = topk_correct(logits, labels)
        top1 += correct[1]
        top5 += correct[5]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return {"loss": loss_sum / n, "top1": top1 / n, "top5": top5 / n, "n": n}


def _bar(total: int, desc: str, progress: bool) -> Any:
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
