"""Levels 4-6 on zoo models: forward with shared parameters, one training step, a short training curve.

The reference is the zoo model on the NumPy backend in float64 (the spec's ConvNN ops plus the
NumPy layers). Gradients are checked by central differences of that float64 loss along two
directions (the backend's own gradient and a random one), so no second framework is trusted.
Needs `models.create_model`; without the zoo these levels are n/a. A backend with `exported_model_forward`
(onnx) is also checked at level 4 on the whole model exported as one graph, as `convnn export` writes it.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from convnn.tree import flatten, tree_map

from .dtypes import round_to
from .execute import NotAvailable, to_host
from .levels import OracleCache, guarded
from .results import CheckResult
from .tolerances import FINITE_DIFFERENCE, Comparison, compare, merge, tolerance_for

VGG_SMALL = {"width": 0.125, "head": "light", "dropout": 0.0}
VIT_SMALL = {"dim": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "dropout": 0.0, "attention_dropout": 0.0}

# id -> (zoo name, options, uses ConvNN ops, neighbour choice driven by features)
MODELS: dict[str, tuple[str, dict[str, Any], bool, bool]] = {
    "vgg11-conv": ("vgg11", {**VGG_SMALL, "layer": "conv"}, False, False),
    "vgg11-convnn": ("vgg11", {**VGG_SMALL, "layer": "convnn"}, True, True),
    "vgg11-convnn-position": ("vgg11", {**VGG_SMALL, "layer": "convnn", "select": "position",
                                        "metric": "euclidean", "order": "position"}, True, False),
    "vgg11-branching": ("vgg11", {**VGG_SMALL, "layer": "branching", "ratio": 0.5}, True, True),
    "vit-attention": ("vit_tiny_cifar", {**VIT_SMALL, "attention": "attention"}, False, False),
    "vit-convnn": ("vit_tiny_cifar", {**VIT_SMALL, "attention": "convnn", "k": 9}, True, True),
    "vit-kvt": ("vit_tiny_cifar", {**VIT_SMALL, "attention": "kvt", "k": 9}, False, True),
}
STEP_MODELS = ("vgg11-conv", "vgg11-convnn", "vit-attention", "vit-convnn")
CURVE_MODEL = "vit-convnn"
CURVE_STEPS, CURVE_BATCH, CURVE_LR = 30, 32, 1e-3
BATCH = 2


@dataclass(frozen=True)
class ModelCase:
    """A model-level check: which zoo model (small CIFAR-native config), level, dtype."""

    id: str
    level: int
    key: str
    dtype: str
    seed: int = 0
    note: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model(self) -> str:
        return MODELS[self.key][0]

    @property
    def options(self) -> dict[str, Any]:
        return dict(MODELS[self.key][1])

    def describe(self) -> str:
        return f"{self.model} {self.options} {self.dtype} batch {BATCH}"


def zoo() -> Optional[Any]:
    """The models package if it offers create_model, else None."""
    try:
        from convnn import models
    except ImportError:
        return None
    return models if callable(getattr(models, "create_model", None)) else None


def model_cases(level: int, dtype: str, full: bool) -> list[ModelCase]:
    """Level 4: every model in float64; in low precision only models whose neighbour choice is not
    feature-driven (a near-tie among thousands of queries may pick another, equally valid neighbour)."""
    if dtype == "bfloat16" and level == 4:  # the trainer's --precision bf16 forward (float32 weights)
        return [ModelCase(f"fwd-{k}-bf16-mixed", 4, k, dtype) for k, m in MODELS.items() if not m[3]]
    if dtype in ("bfloat16", "float16"):
        return []
    if level == 4:
        keys = [k for k, (_, _, _, by_feature) in MODELS.items() if dtype == "float64" or not by_feature]
    elif level == 5:
        keys = [k for k in STEP_MODELS if dtype == "float64" or not MODELS[k][3]]
    else:
        keys = [CURVE_MODEL] if dtype == "float32" else []
    return [ModelCase(f"{'fwd' if level == 4 else 'step' if level == 5 else 'curve'}-{k}-{dtype}", level, k, dtype)
            for k in keys]


# ----------------------------------------------------------------------------- data
def real_batch(n: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n normalised images (float64 NCHW) and labels from the zoo's embedded CIFAR-10 sample."""
    try:
        from convnn.models.data import load_sample
        from convnn.models.data.transforms import normalise
    except ImportError as err:
        raise NotAvailable(f"models.data has no embedded sample loader ({err})") from err
    ds = load_sample()
    idx = np.arange(offset, offset + n) % len(ds)
    return normalise(ds.images[idx], ds.mean, ds.std).astype(np.float64), ds.labels[idx].astype(np.int64)


def _reference() -> Any:
    from convnn import get_backend

    from .oracle import ORACLE_BACKEND

    return get_backend(ORACLE_BACKEND)


def _build(backend: Any, case: ModelCase, dtype: str) -> Any:
    mz = zoo()
    if mz is None:
        raise NotAvailable("the model zoo (models.create_model) is not installed")
    return mz.create_model(case.model, backend=backend, num_classes=10, **{**case.options, "dtype": dtype})


def _shared(case: ModelCase, cache: OracleCache) -> dict[str, Any]:
    """Reference params/state on the host (rounded to the case dtype) and a real batch."""
    def make() -> dict[str, Any]:
        ref = _reference()
        model = _build(ref, case, "float64")
        params, state = model.init(case.seed)
        host = lambda t: tree_map(lambda a: round_to(np.asarray(ref.to_numpy(a)), case.dtype), t)  # noqa: E731
        x, y = real_batch(BATCH)
        return {"model": model, "params": host(params), "state": host(state), "x": round_to(x, case.dtype),
                "labels": y}

    return cache.get("model", case, make)


def _require_training(backend: Any, model: Any) -> None:
    """NotAvailable when the backend lacks the training vocabulary or, by its capabilities, cannot train the model."""
    for op in ("value_and_grad", "adamw", "clip_grad_norm", "cross_entropy"):
        if not callable(getattr(backend, op, None)):
            raise NotAvailable(f"backend has no {op}")
    ok, why = backend.capabilities.can_train(model.uses_convnn)
    if not ok:
        raise NotAvailable(f"the backend cannot train {model.name} ({why}; capabilities)")


def _labels(backend: Any, host: np.ndarray) -> Any:
    """Labels as backend int64, or int32 where the backend has no 64-bit ints (capabilities.int64_labels)."""
    if backend.capabilities.int64_labels:
        return backend.asarray(host, "int64")
    return backend.asarray(np.asarray(host).astype(np.int32), "int32")


def _to_backend(backend: Any, tree: Any, dtype: str) -> Any:
    return tree_map(lambda a: backend.asarray(a, dtype), tree)


def _host_tree(backend: Any, tree: Any) -> dict[str, np.ndarray]:
    return {k: to_host(backend, v) for k, v in flatten(tree).items()}


def _compare_trees(got: dict[str, np.ndarray], want: dict[str, np.ndarray], tol: Any, what: str) -> list[tuple[str, Comparison]]:
    missing = sorted(set(want) ^ set(got))
    if missing:
        return [(f"{what} keys", Comparison(False, float("inf"), 0.0, float("inf"), f"keys differ: {missing[:5]}"))]
    return [(f"{what}.{k}", compare(got[k], want[k], tol)) for k in sorted(want)]


# ----------------------------------------------------------------------------- level 4
def check_forward_model(backend: Any, name: str, case: ModelCase, cache: OracleCache) -> list[CheckResult]:
    """Level 4: logits of the same params and images on the backend and on the float64 reference (eval mode)."""
    def run() -> list[CheckResult]:
        shared = _shared(case, cache)
        ref = _reference()

        def oracle() -> np.ndarray:
            logits, _ = shared["model"].apply(_to_backend(ref, shared["params"], "float64"),
                                              _to_backend(ref, shared["state"], "float64"),
                                              ref.asarray(shared["x"], "float64"), train=False, rng=None)
            return to_host(ref, logits)

        want = cache.get("logits", case, oracle)
        logits = _forward(backend, case, shared)
        tol = tolerance_for(case.dtype)
        parts = [("logits", compare(to_host(backend, logits), want, tol))]
        detail = "logits vs float64 reference"
        whole = getattr(backend, "exported_model_forward", None)
        if callable(whole):  # a backend that also runs the whole model as one exported graph (onnx)
            got = whole(case.model, 10, {**case.options, "dtype": case.dtype}, shared["params"], shared["state"],
                        shared["x"])
            parts.append(("exported model", compare(np.asarray(got, dtype=np.float64), want, tol)))
            detail = "logits op by op and of the whole exported model vs float64 reference"
        return [CheckResult.from_comparison(name, 4, case.id, case.dtype, merge(parts), detail=detail)]

    return guarded(name, case, run)  # type: ignore[arg-type]


def _forward(backend: Any, case: ModelCase, shared: dict[str, Any]) -> Any:
    """Eval-mode logits; in bfloat16 the trainer's mixed precision: float32 weights, bfloat16 compute
    (models/train/precision.py), n/a on a backend that has no bf16 training."""
    dtype, run = case.dtype, None
    if dtype == "bfloat16":
        from convnn.models.train.precision import BF16_TRAINERS, MixedPrecision

        if getattr(backend.capabilities, "mixed_precision", None) is None:
            raise NotAvailable(f"no bf16 mixed-precision training on this backend (it runs on {BF16_TRAINERS})")
        run, dtype = MixedPrecision("bf16", backend), "float32"
    model = _build(backend if run is None else run.backend(), case, dtype)
    args = (_to_backend(backend, shared["params"], dtype), _to_backend(backend, shared["state"], dtype),
            backend.asarray(shared["x"], dtype))
    with (run.autocast() if run is not None else contextlib.nullcontext()):
        return model.apply(*args, train=False, rng=None)[0]


# ----------------------------------------------------------------------------- level 5
def _adamw_reference(params: dict[str, np.ndarray], grads: dict[str, np.ndarray], lr: float, wd: float,
                     betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> dict[str, np.ndarray]:
    """The first torch.optim.AdamW step in float64: decay, then m/(1-b1), v/(1-b2) with zero initial moments."""
    b1, b2 = betas
    out = {}
    for k, p in params.items():
        g = grads[k]
        m_hat = (1 - b1) * g / (1 - b1)
        v_hat = (1 - b2) * g * g / (1 - b2)
        out[k] = p * (1 - lr * wd) - lr * m_hat / (np.sqrt(v_hat) + eps)
    return out


def _loss_fn(backend: Any, model: Any, state: Any, x: Any, labels: Any) -> Any:
    def loss(params: Any) -> Any:
        logits, new_state = model.apply(params, state, x, train=True, rng=0)
        return backend.cross_entropy(logits, labels), new_state

    return loss


def check_training_step(backend: Any, name: str, case: ModelCase, cache: OracleCache) -> list[CheckResult]:
    """Level 5: loss and BatchNorm state (train mode), the gradient by finite differences of the float64
    reference loss, global-norm clipping and one AdamW step."""
    def run() -> list[CheckResult]:
        model = _build(backend, case, case.dtype)
        _require_training(backend, model)
        shared = _shared(case, cache)
        ref = _reference()
        tol = tolerance_for(case.dtype)
        ref_model = shared["model"]
        ref_state = _to_backend(ref, shared["state"], "float64")
        ref_x = ref.asarray(shared["x"], "float64")
        ref_loss = _loss_fn(ref, ref_model, ref_state, ref_x, shared["labels"])

        def oracle_loss(host_params: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
            from convnn.tree import unflatten

            value, new_state = ref_loss(_to_backend(ref, unflatten(host_params), "float64"))
            return float(to_host(ref, value)), _host_tree(ref, new_state)

        flat_params = flatten(shared["params"])
        want_loss, want_state = cache.get("step", case, lambda: oracle_loss(flat_params))
        params = _to_backend(backend, shared["params"], case.dtype)
        labels = _labels(backend, shared["labels"])
        loss = _loss_fn(backend, model, _to_backend(backend, shared["state"], case.dtype),
                        backend.asarray(shared["x"], case.dtype), labels)
        (value, new_state), grads = backend.value_and_grad(loss, has_aux=True)(params)
        g = _host_tree(backend, grads)
        parts = [("loss", compare(np.asarray(float(to_host(backend, value))), np.asarray(want_loss), tol))]
        parts += _compare_trees(_host_tree(backend, new_state), want_state, tol, "state")
        parts += _directional(oracle_loss, flat_params, g, tol, case.seed)
        clipped, norm = backend.clip_grad_norm(grads, 1.0)
        total = math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))
        parts.append(("grad norm", compare(np.asarray(float(to_host(backend, norm))), np.asarray(total), tol)))
        coef = min(1.0, 1.0 / (total + 1e-6))
        clipped_host = _host_tree(backend, clipped)
        parts += _compare_trees(clipped_host, {k: v * coef for k, v in g.items()}, tol, "clipped")
        opt = backend.adamw(1e-3, weight_decay=0.01)
        new_params, _ = opt.update(clipped, opt.init(params), params)
        expected = _adamw_reference(flat_params, clipped_host, 1e-3, 0.01)
        parts += _compare_trees(_host_tree(backend, new_params), expected, tol, "adamw")
        return [CheckResult.from_comparison(name, 5, case.id, case.dtype, merge(parts),
                                            detail="loss, state, gradient (finite differences), clip, AdamW")]

    return guarded(name, case, run)  # type: ignore[arg-type]


def _directional(oracle_loss: Any, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], tol: Any,
                 seed: int, steps: tuple[float, ...] = (1e-6, 1e-7)) -> list[tuple[str, Comparison]]:
    """<grad, u> against central differences of the float64 reference loss along u (own gradient, random).

    ReLU, max-pool and neighbour selection make the loss piecewise smooth; a step that crosses a
    kink or a selection change gives a wrong difference, so a second, smaller step is tried before
    a direction is reported as failing.
    """
    norm = math.sqrt(sum(float(np.sum(v * v)) for v in grads.values()))
    if not np.isfinite(norm) or norm == 0.0:
        return [("gradient", Comparison(False, float("inf"), 0.0, float("inf"), f"gradient norm is {norm}"))]
    rng = np.random.default_rng(seed + 99)
    rand = {k: rng.standard_normal(v.shape) for k, v in grads.items()}
    rnorm = math.sqrt(sum(float(np.sum(v * v)) for v in rand.values()))
    allowed = (tol.rtol + FINITE_DIFFERENCE.rtol * 10) * norm  # Cauchy-Schwarz scale of <g, u>
    out = []
    for label, direction in (("own gradient", {k: v / norm for k, v in grads.items()}),
                             ("random", {k: v / rnorm for k, v in rand.items()})):
        dot = sum(float(np.sum(grads[k] * direction[k])) for k in grads)
        tried = []
        for step in steps:
            plus = {k: params[k] + step * direction[k] for k in params}
            minus = {k: params[k] - step * direction[k] for k in params}
            fd = (oracle_loss(plus)[0] - oracle_loss(minus)[0]) / (2 * step)
            tried.append((abs(dot - fd), fd, step))
            if abs(dot - fd) <= allowed:
                break
        err, fd, step = min(tried)
        out.append((f"d/du ({label})", Comparison(err <= allowed, err, allowed, err / allowed,
                                                  f"<g,u>={dot:.6g}, finite difference {fd:.6g} (step {step:g})")))
    return out


# ----------------------------------------------------------------------------- level 6
def check_training_curve(backend: Any, name: str, case: ModelCase, cache: OracleCache) -> list[CheckResult]:
    """Level 6: a few dozen AdamW steps on real images must lower the loss (finite throughout)."""
    def run() -> list[CheckResult]:
        model = _build(backend, case, case.dtype)
        _require_training(backend, model)
        params, state = model.init(case.seed)
        opt = backend.adamw(CURVE_LR, weight_decay=0.01)
        ostate = opt.init(params)
        x_all, y_all = real_batch(CURVE_STEPS * CURVE_BATCH)
        losses = []
        start = time.perf_counter()
        for step in range(CURVE_STEPS):
            sl = slice(step * CURVE_BATCH, (step + 1) * CURVE_BATCH)
            labels = _labels(backend, y_all[sl])
            x = backend.asarray(x_all[sl], case.dtype)

            def loss(p: Any, state: Any = state, x: Any = x, labels: Any = labels) -> Any:
                logits, new_state = model.apply(p, state, x, train=True, rng=step)
                return backend.cross_entropy(logits, labels), new_state

            (value, state), grads = backend.value_and_grad(loss, has_aux=True)(params)
            grads, _ = backend.clip_grad_norm(grads, 1.0)
            params, ostate = opt.update(grads, ostate, params)
            losses.append(float(to_host(backend, value)))
        first, last = float(np.mean(losses[:5])), float(np.mean(losses[-5:]))
        finite = bool(np.all(np.isfinite(losses)))
        ok = finite and last < first - 0.05
        curve = ", ".join(f"{v:.3f}" for v in losses[::5])
        detail = (f"{CURVE_STEPS} steps x {CURVE_BATCH} images, lr {CURVE_LR}: mean loss of the first 5 steps "
                  f"{first:.3f}, of the last 5 {last:.3f} (must drop by > 0.05); every 5th: {curve}; "
                  f"{time.perf_counter() - start:.1f} s")
        bound = first - 0.05  # the cell reads: last-5 mean / the bound it must stay under
        cmp = Comparison(ok, last if finite else float("inf"), bound, last / bound if bound > 0 else float("inf"), "")
        return [CheckResult.from_comparison(name, 6, case.id, case.dtype, cmp, detail=detail)]

    return guarded(name, case, run)  # type: ignore[arg-type]


def check_model(backend: Any, name: str, case: ModelCase, cache: OracleCache) -> list[CheckResult]:
    """Dispatch a model case to its level's check."""
    if case.level == 4:
        return check_forward_model(backend, name, case, cache)
    if case.level == 5:
        return check_training_step(backend, name, case, cache)
    return check_training_curve(backend, name, case, cache)
