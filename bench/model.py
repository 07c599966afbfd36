"""`convnn bench model`: training-step and inference images/s and peak memory of zoo models, per backend.

A training step is value_and_grad of the cross-entropy through `model.apply(train=True)` followed by
the backend's AdamW update, all through the vocabulary (compiled as one function where the runner
compiles: by default where capabilities.compile_by_default). Inference is `model.apply(train=False)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from .measure import error_text, measure_contender
from .runners import BackendRunner, Contender
from .context import CommonOptions, BenchContext, check_int, open_context
from .timing import PeakMemory


@dataclass(frozen=True)
class ModelCase:
    """A zoo model to time: its label, registry name, options, and image size."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32


MODEL_CASES = (
    ModelCase("vgg11 conv", "vgg11", {"layer": "conv"}),
    ModelCase("vgg11 branching", "vgg11", {"layer": "branching"}),
    ModelCase("vgg11 convnn", "vgg11", {"layer": "convnn"}),
    ModelCase("vit-tiny/4 attention", "vit_tiny_cifar", {"attention": "attention"}),
    ModelCase("vit-tiny/4 convnn random", "vit_tiny_cifar", {"attention": "convnn", "sampling": "random"}),
)
QUICK_OPTIONS = {
    "vgg11": {"width": 0.125, "head": "light"},
    "vit_tiny_cifar": {"dim": 16, "depth": 1, "mlp_dim": 32, "patch_size": 8, "num_samples": 12},
}


VGG_HEADS = ("paper", "light")


def model_cases(wanted: Optional[list[str]], quick: bool, vgg_head: str = "paper") -> list[ModelCase]:
    """The cases to run (all; or those named exactly, or containing a wanted substring), shrunk in quick mode.

    vgg_head 'light' swaps the paper's 4096-4096 classifier (119.6M of VGG-11's 130M parameters,
    the same in every variant) for global pooling and one linear layer, so the layers that differ
    dominate the time.
    """
    if vgg_head not in VGG_HEADS:
        raise ValueError(f"vgg_head={vgg_head!r} is not allowed; choose one of {', '.join(VGG_HEADS)}")
    labels = [c.label for c in MODEL_CASES]
    unknown = [w for w in (wanted or []) if not any(w in label for label in labels)]
    if unknown:
        raise ValueError(f"--models: {', '.join(map(repr, unknown))} {'matches' if len(unknown) == 1 else 'match'} "
                         f"no model; give labels or parts of "
                         f"them (comma separated): {', '.join(labels)}")
    exact = [w for w in (wanted or []) if w in labels]
    cases = [c for c in MODEL_CASES if not wanted or c.label in exact
             or any(w not in labels and w in c.label for w in wanted)]
    if vgg_head != "paper":
        cases = [ModelCase(c.label + f" ({vgg_head} head)", c.name, {**c.options, "head": vgg_head}, c.image_size)
                 if c.name == "vgg11" else c for c in cases]
    if quick:
        cases = [ModelCase(c.label, c.name, {**c.options, **QUICK_OPTIONS.get(c.name, {})}, c.image_size)
                 for c in cases]
    return cases


def zoo_status() -> tuple[bool, str]:
    """Whether the model zoo can be imported here, and why not."""
    try:
        from convnn.models import create_model  # noqa: F401
    except ImportError as err:
        return False, f"model zoo not importable: {error_text(err)}"
    return True, "ok"


def model_contender(runner: BackendRunner, case: ModelCase, batch: int, num_classes: int = 10) -> Contender:
    """Closures for one training step (forward + backward + AdamW) and one inference call of a zoo model."""
    from convnn.models import create_model

    be = runner.backend
    model = create_model(case.name, backend=be, num_classes=num_classes, **case.options)
    # a second instance for inference: a model may cache arrays it builds inside a traced call, and a
    # cache filled during one jit trace must not be read by another
    infer_model = create_model(case.name, backend=be, num_classes=num_classes, **case.options)
    params, state = model.init(0)
    rng = np.random.default_rng(0)
    x = runner.array(rng.standard_normal((batch, 3, case.image_size, case.image_size)).astype(np.float32))
    y = runner.array(rng.integers(0, num_classes, size=batch).astype(np.int64))
    key = be.make_rng(0)
    optimizer = be.adamw(lr=1e-3, weight_decay=0.05)
    opt_state = optimizer.init(params)

    def loss_fn(p: Any, s: Any, images: Any, labels: Any, k: Any) -> Any:
        logits, new_state = model.apply(p, s, images, train=True, rng=k)
        return be.cross_entropy(logits, labels), new_state

    grad_fn = be.value_and_grad(loss_fn, has_aux=True)

    def train_step(p: Any, o: Any, s: Any, images: Any, labels: Any, k: Any) -> Any:
        (loss, new_state), grads = grad_fn(p, s, images, labels, k)
        p, o = optimizer.update(grads, o, p)
        return p, o, new_state, loss

    step = runner.prepare(train_step)
    infer = runner.prepare(lambda p, s, images: infer_model.apply(p, s, images, train=False)[0])
    current = {"params": runner.commit(params), "opt": runner.commit(opt_state), "state": runner.commit(state)}

    def train() -> Any:
        out = runner.sync(step(current["params"], current["opt"], current["state"], x, y, key))
        current["params"], current["opt"], current["state"] = out[0], out[1], out[2]
        return out[3]

    contender = Contender(case.label, "backend", runner.device, runner.mode)
    contender.memory_measurable = runner.memory_measurable
    contender.forward = lambda: runner.sync(infer(current["params"], current["state"], x))
    contender.forward_backward = train
    contender.extra["params"] = model.num_params()
    return contender


def run_model_bench(options: CommonOptions, *, models: Optional[list[str]] = None, batch: Optional[int] = None,
                    vgg_head: Optional[str] = None, argv: Optional[list[str]] = None,
                    progress: bool = True) -> dict[str, Any]:
    """Time every model case on every opened backend; the zoo missing makes every row 'not available'.

    vgg_head defaults to 'light' on the CPU (the paper's classifier alone would take most of each
    step) and 'paper' on CUDA.
    """
    if vgg_head is None:
        vgg_head = "paper" if options.device == "cuda" else "light"
    cases = model_cases(models, options.quick, vgg_head)
    if batch is None:
        batch = 2 if options.quick else (64 if options.device == "cuda" else 8)
    check_int("batch", batch, 1)
    options.validate()
    ctx = open_context(options, "model", argv)
    rows: list[dict[str, Any]] = []
    try:
        model_rows(ctx, cases, batch, progress, rows)
        interrupted = False
    except KeyboardInterrupt:
        interrupted = True
    report = dict(ctx.header)
    report["interrupted"] = interrupted
    report["batch"] = batch
    report["memory_method"] = PeakMemory(options.device).method if options.memory else "not measured (--no-memory)"
    report["cases"] = [{"label": c.label, "name": c.name, "options": c.options, "image_size": c.image_size}
                       for c in cases]
    report["rows"] = rows
    return report


def _can_train(runner: BackendRunner, case: ModelCase) -> tuple[bool, str]:
    """(True, '') or (False, why) from the backend's capabilities and whether the model has ConvNN layers."""
    from convnn.models import model_uses_convnn

    if not callable(getattr(runner.backend, "value_and_grad", None)):
        return False, "has no value_and_grad"
    return runner.capabilities.can_train(model_uses_convnn(case.name, case.options))


def model_rows(ctx: BenchContext, cases: list[ModelCase], batch: int, progress: bool,
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, backend) appended to rows: images/s and peak memory of training and inference."""
    opts = ctx.options
    memory = PeakMemory(opts.device) if opts.memory else None
    ok, why = zoo_status()
    for case in cases:
        for name, runner in ctx.runners.items():
            row: dict[str, Any] = {"model": case.label, "backend": f"{name} ({runner.mode})", "batch": batch,
                                   "device": runner.device}
            trains, cannot = _can_train(runner, case) if ok else (False, why)
            if not ok:
                row.update(status="not available", notes=[why])
            elif not trains:
                row.update(status="not available", notes=[f"cannot train {case.label}: the backend {cannot}"])
            else:
                try:
                    measured = measure_contender(model_contender(runner, case, batch), repeats=opts.repeats,
                                                 warmup=opts.warmup, memory=memory)
                except Exception as err:  # an error row naming the exception (status 'error'), never a skip
                    measured = {"status": "error", "notes": [error_text(err)]}
                row.update(status=measured["status"], notes=measured["notes"], params=measured.get("params"))
                for src, dst in (("fwd", "infer"), ("fwdbwd", "train")):
                    ms = measured.get(f"{src}_ms")
                    row[f"{dst}_ms"] = ms
                    row[f"{dst}_first_ms"] = measured.get(f"{src}_first_ms")
                    row[f"{dst}_cv"] = measured.get(f"{src}_cv")
                    row[f"{dst}_images_per_s"] = batch / ms * 1e3 if ms else None
                    row[f"{dst}_peak_mib"] = measured.get(f"{src}_peak_mib")
            rows.append(row)
            if progress:
                print(f"  {case.label:<26} {row['backend']:<16} train {row.get('train_images_per_s')} img/s  "
                      f"infer {row.get('infer_images_per_s')} img/s  {row['status']} {row.get('notes', '')}",
                      flush=True)
    return rows
