"""The training loop: data, model, AdamW steps, validation each epoch, checkpoints, metrics, curves, test at the end.

Every random draw is a function of (seed, step) or (seed, epoch), so a run resumed from its last
checkpoint replays exactly what the uninterrupted run would have done.

Nothing is lost or mixed silently: a run holds an exclusive lock on its folder and never starts in a folder that
already holds files; a fresh run saves 'last' before its first step, so it can always be resumed; SIGINT/SIGTERM
save 'last' at the last completed step and raise TrainingInterrupted; a non-finite loss, gradient norm or
parameter raises TrainingDiverged and keeps the last good checkpoint; checkpoint writes are all-or-nothing.
"""
from __future__ import annotations

import json
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from convnn.tree import tree_map, unflatten

from ..data import DatasetNotFound, default_val_size, load_dataset, split_validation
from ..data.dataset import Dataset
from ..data.transforms import normalise, random_crop_flip, resize_bilinear
from ..registry import create_model
from .backend_choice import resolve_training_backend
from .checkpoint import (CheckpointWriteError, NonFiniteTensor, atomic_write_text, check_finite, checkpoint_bytes,
                         fill_like, host_tensors, load_checkpoint, to_host, write_checkpoints)
from .config import FIELDS, TrainConfig
from .distributed import SingleDevice, data_parallel, launch_env, pin_local_device
from .evaluate import EvaluationStopped, evaluate
from .metrics import MetricsFiles, topk_correct
from .plots import plot_curves
from .precision import MixedPrecision
from .runfolder import RunFolderLock, clean_stale_temporaries, contents
from .schedule import lr_scale

# fields that must agree between a run and the checkpoint it resumes from
IDENTITY_FIELDS = ("model", "model_options", "dataset", "val_size", "subset", "val_subset", "batch_size", "lr",
                   "weight_decay", "betas", "eps", "clip_grad_norm", "schedule", "warmup_epochs", "augment",
                   "resize", "seed", "dtype")
# what `--resume` may change (the rest continues the checkpoint's config)
RESUME_MAY_CHANGE = ("epochs", "test", "backend", "progress", "compile", "checkpoint_every", "eval_batch_size",
                     "precision", "devices")
# environment variables that set thread counts, recorded with each run
THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "XLA_FLAGS", "CONVNN_THREADS")


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM stopped the run; `last` holds the last completed step unless saved is False."""

    def __init__(self, signum: int, run_dir: Path, step: Optional[int], saved: bool) -> None:
        self.signum, self.run_dir, self.step, self.saved = signum, Path(run_dir), step, saved
        name = signal.Signals(signum).name
        last = self.run_dir / "checkpoints" / "last.safetensors"
        if saved:
            what = f"interrupted by {name} at step {step}; saved {last}"
        else:
            what = (f"interrupted by {name} again: stopped without saving; {last} holds step {step}"
                    if step is not None else f"interrupted by {name} before the first checkpoint: nothing saved")
        super().__init__(f"{what}; resume with: convnn train --resume {self.run_dir}" if step is not None else what)

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class TrainingDiverged(FloatingPointError):
    """The loss, the gradient norm or a parameter became NaN or inf."""


@dataclass
class RunResult:
    """What a finished (or resumed-and-finished) run produced."""

    run_dir: Path
    history: list[dict[str, Any]]
    best: dict[str, Any]
    test: Optional[dict[str, Any]]
    curves: Optional[Path]
    params: Any = None
    state: Any = None
    backend: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class _Run:
    """The state of one run that the stages of Trainer.run read and advance."""

    run_dir: Path
    backend: Any
    why: str
    model: Any
    train: Dataset
    val: Dataset
    test_set: Optional[Dataset]
    resize: Optional[int]
    files: MetricsFiles
    opt: Any
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    scheduled: bool
    params: Any = None
    state: Any = None
    opt_state: Any = None
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)
    sums: dict[str, float] = field(default_factory=lambda: _empty_sums())
    label_dtype: str = "int64"
    step_fn: Optional[Callable[..., Any]] = None
    eval_logits: Optional[Callable[..., Any]] = None
    eval_bs: int = 0
    meta_base: dict[str, Any] = field(default_factory=dict)
    t_epoch: float = 0.0
    last_loss: float = float("nan")
    saved_at: Optional[tuple[int, int, int]] = None  # (epoch, step_in_epoch, global_step) of 'last' on disk
    threads: dict[str, Any] = field(default_factory=dict)
    mp: Any = None                      # MixedPrecision: how the forward computes
    dp: Any = field(default_factory=SingleDevice)  # how the run spreads over devices (distributed.py)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and (when loaded) torch before anything random happens, the model included."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    import sys

    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def step_seed(seed: int, step: int, stream: int) -> int:
    """A 63-bit seed for one (run seed, step, stream) triple."""
    words = np.random.SeedSequence([seed, step, stream]).generate_state(2, dtype=np.uint32)
    return ((int(words[0]) << 32) | int(words[1])) & ((1 << 63) - 1)


def _float(backend: Any, value: Any) -> float:
    return float(np.asarray(backend.to_numpy(value)) if not isinstance(value, (int, float)) else value)


class Trainer:
    """One training run. `run()` trains (or resumes) and returns a RunResult.

    step_callback(global_step) is called after every optimizer step; raising from it stops the run
    the way a crash would (the test suite uses it to interrupt and resume).
    """

    def __init__(self, config: TrainConfig, *, resume: Optional[str] = None,
                 step_callback: Optional[Callable[[int], None]] = None,
                 log: Callable[[str], None] = print) -> None:
        self.cfg = config
        self.resume = resume
        self.step_callback = step_callback
        self.log = log
        self._signal: Optional[int] = None
        self._rank = 0
        self._run_dir: Optional[Path] = None
        self._saved_step: Optional[int] = None

    # ------------------------------------------------------------------ setup
    def _data(self) -> tuple[Dataset, Dataset]:
        cfg = self.cfg
        full = load_dataset(cfg.dataset, "train", cfg.data_dir, download=cfg.download)
        val_size = cfg.val_size if cfg.val_size is not None else default_val_size(len(full))
        train, val = split_validation(full, val_size)
        if cfg.subset is not None:
            train = train.take(np.arange(min(cfg.subset, len(train))))
        if cfg.val_subset is not None:
            val = val.take(np.arange(min(cfg.val_subset, len(val))), val.name)
        return train, val

    def _model_options(self, train: Dataset) -> dict[str, Any]:
        opts = dict(self.cfg.model_options)
        opts.setdefault("dtype", self.cfg.dtype)
        if train.images.shape[1] != 3:
            opts.setdefault("in_chans", int(train.images.shape[1]))
        return opts

    def _resize(self, model: Any, train: Dataset) -> Optional[int]:
        if self.cfg.resize is not None:
            return self.cfg.resize
        size = model.options.get("image_size")
        h = train.images.shape[2]
        if size is not None and size != h:
            return int(size)
        if size is None and h < 32:  # VGG's five 2x2 pools need at least 32 pixels
            return 32
        return None

    def _check_resume_config(self, saved: dict[str, Any]) -> None:
        mine = self.cfg.resolved()
        diff = [f"{k}: checkpoint {saved.get(k)!r} vs now {mine.get(k)!r}" for k in IDENTITY_FIELDS
                if _norm(saved.get(k)) != _norm(mine.get(k))]
        if diff:
            raise ValueError("the checkpoint comes from a different training config; resume with the same settings "
                             "(or start a new run): " + "; ".join(diff))

    def _check_config_json(self, run_dir: Path, saved: dict[str, Any]) -> None:
        """Refuse to resume when config.json was edited since the checkpoint was saved: the resume would ignore the
        edit and overwrite it. A field the resume itself sets to the edited value is not a conflict."""
        path = run_dir / "config.json"
        if not path.is_file():
            return
        advice = (f"--resume continues the checkpoint's config and rewrites config.json; restore {path} (only "
                  f"{', '.join('--' + k.replace('_', '-') for k in RESUME_MAY_CHANGE[:2])} and display options may "
                  f"change on the command line), or start a new run with the edited settings")
        try:
            on_disk = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is not valid JSON ({err}); {advice}") from err
        if not isinstance(on_disk, dict):
            raise ValueError(f"{path} does not hold a JSON object; {advice}")
        mine = self.cfg.resolved()
        diff = [f"{k}: config.json {on_disk[k]!r} vs checkpoint {saved.get(k)!r}" for k in sorted(FIELDS)
                if k in on_disk and _norm(on_disk[k]) not in (_norm(saved.get(k)), _norm(mine.get(k)))]
        if diff:
            raise ValueError(f"{path} was edited after the checkpoint was saved ({'; '.join(diff)}); {advice}")

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        """Train (or resume) to cfg.epochs, evaluating and checkpointing after each epoch; test at the end.

        The run folder is locked for the whole run (a second run into it raises RunFolderBusy). SIGINT and
        SIGTERM (in the main thread) stop the run after the current step, save 'last' and raise
        TrainingInterrupted; a second signal stops at once without saving.
        """
        set_seed(self.cfg.seed)  # before the model is built (SPEC.md section 8)
        run_dir = self._run_dir = self._target_dir()
        self._rank = launch_env()[0]
        if self._rank != 0:  # under torchrun only rank 0 writes the run folder and prints
            self.log = lambda text: None
            return self._run_unlocked(run_dir)
        lock = RunFolderLock(run_dir).acquire()
        if not lock.locked:
            self.log(f"note: {run_dir} could not be locked (no file locks on this platform or file system); make sure "
                     f"no other run writes into it")
        previous = self._install_signal_handlers()
        try:
            return self._run_locked(run_dir)
        except Exception as err:
            if getattr(err, "run_dir", None) is None:
                try:
                    err.run_dir = run_dir  # for the command line's one-line report
                except AttributeError:  # pragma: no cover - an exception type without a __dict__
                    pass
            raise
        finally:
            self._restore_signal_handlers(previous)
            lock.release()

    def _run_unlocked(self, run_dir: Path) -> RunResult:
        """A torchrun rank other than 0: trains in step with rank 0 and writes nothing."""
        previous = self._install_signal_handlers()
        try:
            return self._run_locked(run_dir)
        finally:
            self._restore_signal_handlers(previous)

    def _run_locked(self, run_dir: Path) -> RunResult:
        ckpt = self._open_run(run_dir)
        r = self._build(run_dir)
        try:
            return self._train(r, ckpt)
        finally:
            r.dp.close()

    def _train(self, r: "_Run", ckpt: Any) -> RunResult:
        self._write_config(r)
        self._start(r, ckpt)
        self._announce(r)
        if ckpt is None or _norm(ckpt.meta["train"]) != _norm(self.cfg.resolved()):
            # a fresh run can be resumed from its first step on; a resume that changed --epochs (or another
            # allowed option) records it, so the next --resume continues with it and config.json agrees
            self._checkpoint(r, ("last",))
        self._check_stop(r)
        while r.epoch < self.cfg.epochs:
            self._train_epoch(r)
            try:
                self._end_epoch(r)
            except EvaluationStopped:
                self._check_stop(r)
                raise
            self._check_stop(r)
        try:
            return self._finish(r)
        except EvaluationStopped:
            self._check_stop(r)
            raise

    def _target_dir(self) -> Path:
        """The run folder: the resumed run's, or out_dir/run_name (default MODEL-DATASET-TIMESTAMP)."""
        if self.resume is None:
            return self._new_run_dir()
        path = Path(self.resume)
        if not path.exists():
            raise FileNotFoundError(f"--resume {path}: no such run folder or checkpoint")
        return path if path.is_dir() else path.parent.parent

    def _open_run(self, run_dir: Path) -> Any:
        """The checkpoint to resume (or None), holding the folder's lock: a new run needs an empty folder; a
        resumed run must match its checkpoint's config and config.json. Stale temporaries are removed."""
        if self.resume is None and self._main:
            files = [f for f in contents(run_dir) if not f.endswith(".tmp")]
            if files:
                if (run_dir / "checkpoints" / "last.safetensors").exists():
                    raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume {run_dir} or "
                                          f"choose another --run-name")
                raise FileExistsError(f"{run_dir} is not empty ({', '.join(files[:4])}"
                                      f"{', ...' if len(files) > 4 else ''}) but holds no checkpoints/"
                                      f"last.safetensors to resume; choose another --run-name or --out-dir (or move "
                                      f"the folder away)")
        removed = clean_stale_temporaries(run_dir) if self._main else []
        if removed:
            self.log(f"removed {len(removed)} temporary file(s) an interrupted write left: "
                     f"{', '.join(p.name for p in removed[:3])}{', ...' if len(removed) > 3 else ''}")
        if self.resume is None:
            return None
        ckpt = load_checkpoint(self.resume)
        self._check_resume_config(ckpt.meta["train"])
        self._check_config_json(run_dir, ckpt.meta["train"])
        return ckpt

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, self._on_signal)
            except (ValueError, OSError):  # pragma: no cover - not allowed here
                pass
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signal is not None:  # the second one: stop now
            raise TrainingInterrupted(signum, self._run_dir or Path("."), self._saved_step, saved=False)
        self._signal = signum
        self.log(f"{signal.Signals(signum).name}: stopping after the current step to save a checkpoint (send it "
                 f"again to stop at once without saving)")

    @property
    def _main(self) -> bool:
        """Whether this process writes the run folder (rank 0 under torchrun, else the only process)."""
        return self._rank == 0

    def _stop_requested(self) -> bool:
        return self._signal is not None

    def _agree_on_signal(self, signalled_ranks: float) -> None:
        """Under torchrun every rank stops at the same step: a signal any rank received stops them all."""
        if self._signal is None and signalled_ranks > 0:
            self._signal = int(signal.SIGTERM)

    def _check_stop(self, r: "_Run") -> None:
        """After a signal: save 'last' at the current position (unless it is already there) and stop."""
        if r.dp.world > 1:
            self._agree_on_signal(r.dp.sum_floats([float(self._signal is not None)])[0])
        if self._signal is None:
            return
        if r.saved_at != (r.epoch, r.step_in_epoch, r.global_step):
            self._checkpoint(r, ("last",))
        raise TrainingInterrupted(self._signal, r.run_dir, r.global_step, saved=True)

    def _build(self, run_dir: Path) -> "_Run":
        """The backend, the data (test split checked up front), the model and the schedule of a run."""
        cfg = self.cfg
        pin_local_device()
        backend, why = resolve_training_backend(cfg.backend, cfg.model, cfg.model_options, dtype=cfg.dtype)
        mp = MixedPrecision(cfg.precision, backend)
        train, val = self._data()
        # asked-for test data must exist before hours of training, not after (no fallback when it is missing)
        test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, download=cfg.download) if cfg.test else None
        model = create_model(cfg.model, backend=mp.backend(), num_classes=train.num_classes,
                             **self._model_options(train))
        dp = data_parallel(backend, cfg.devices)
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        warmup_steps = int(round(cfg.warmup_epochs * steps_per_epoch))
        return _Run(run_dir=run_dir, backend=backend, why=why, model=model, train=train, val=val, test_set=test_set,
                    resize=self._resize(model, train), files=MetricsFiles(run_dir),
                    opt=backend.adamw(cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps),
                    steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * cfg.epochs,
                    warmup_steps=warmup_steps, scheduled=cfg.schedule != "constant" or warmup_steps > 0,
                    mp=mp, dp=dp)

    def _write_config(self, r: "_Run") -> None:
        """The run folder and its config.json (the resolved settings, the backend and why it was chosen)."""
        r.threads = _threads(r.backend)
        if not self._main:
            return
        r.run_dir.mkdir(parents=True, exist_ok=True)
        (r.run_dir / "checkpoints").mkdir(exist_ok=True)
        resolved = {**self.cfg.resolved(), "resolved_backend": r.backend.name, "backend_reason": r.why,
                    "distributed": r.dp.describe(),
                    "threads": r.threads, "model_config": r.model.config, "num_params": r.model.num_params(),
                    "resize": r.resize, "train_images": len(r.train), "val_images": len(r.val),
                    "data_source": r.train.source}
        atomic_write_text(r.run_dir / "config.json", json.dumps(resolved, indent=2) + "\n")

    def _start(self, r: "_Run", ckpt: Any) -> None:
        """Fresh parameters from the seed, or everything the checkpoint saved (metrics after it are dropped)."""
        if ckpt is None:
            r.params, r.state = r.model.init(self.cfg.seed)
            r.opt_state = r.opt.init(r.params)
            r.params, r.state, r.opt_state = r.dp.replicate((r.params, r.state, r.opt_state))
            return
        r.params, r.state, r.opt_state = r.dp.replicate(self._restore(ckpt, r.model, r.opt))
        meta = ckpt.meta
        r.epoch, r.step_in_epoch = int(meta["epoch"]), int(meta["step_in_epoch"])
        r.global_step = int(meta["global_step"])
        r.history, r.best, r.sums = list(meta["history"]), dict(meta["best"]), dict(meta["sums"])
        r.saved_at = (r.epoch, r.step_in_epoch, r.global_step)
        self._saved_step = r.global_step
        if self._main:
            r.files.truncate_after(r.global_step)
        self.log(f"resuming {r.run_dir} at epoch {r.epoch + 1}, step {r.global_step}")

    def _announce(self, r: "_Run") -> None:
        """Build the step and evaluation functions, and print what runs where (earlier epochs of a resume too)."""
        cfg, model, backend = self.cfg, r.model, r.backend
        spread = "" if r.dp.world == 1 and r.dp.devices == 1 else (
            f", data-parallel over {r.dp.devices} devices ({r.dp.kind})")
        self.log(f"run {r.run_dir}: {model.name} ({model.num_params():,} params, {_opts(cfg.model_options)}) on "
                 f"{backend.name} [{r.why}]; {cfg.dataset}: {len(r.train)} train / {len(r.val)} val images, "
                 f"{cfg.epochs} epochs x {r.steps_per_epoch} steps of {cfg.batch_size}"
                 f"{'' if cfg.precision == 'fp32' else f'; {cfg.precision} compute, float32 weights'}{spread}")
        r.label_dtype = _label_dtype(backend)
        r.step_fn = self._step_fn(model, backend, r.opt, r.scheduled, r.mp, r.dp)
        r.eval_logits = self._eval_fn(model, backend, r.mp, r.dp)
        r.eval_bs = cfg.eval_batch_size or cfg.batch_size
        r.meta_base = {"model": model.config, "train": cfg.resolved(), "backend": backend.name, "resize": r.resize,
                       "threads": r.threads, "dataset": {"name": cfg.dataset, "train": len(r.train), "val": len(r.val)},
                       "distributed": r.dp.describe()}
        self._print_header()
        for row in r.history:  # a resumed run shows its earlier epochs first
            self._print_row(row)

    def _train_epoch(self, r: "_Run") -> None:
        """The remaining steps of epoch r.epoch, in the order a function of (seed, epoch) fixes."""
        cfg = self.cfg
        perm = np.random.default_rng([cfg.seed, r.epoch, 7]).permutation(len(r.train))
        bar = self._bar(r.steps_per_epoch, r.step_in_epoch, r.epoch)
        r.t_epoch = time.perf_counter()
        for k in range(r.step_in_epoch, r.steps_per_epoch):
            self._train_step(r, perm[k * cfg.batch_size:(k + 1) * cfg.batch_size])
            if bar is not None:
                bar.set_postfix(loss=f"{r.last_loss:.3f}", acc=f"{r.sums['top1'] / r.sums['n']:.3f}",
                                img_s=f"{r.sums['n'] / max(r.sums['seconds'], 1e-9):.0f}")
                bar.update(1)
            r.step_in_epoch = k + 1
            if (cfg.checkpoint_every and r.global_step % cfg.checkpoint_every == 0
                    and r.step_in_epoch < r.steps_per_epoch):
                self._checkpoint(r, ("last",))
            if self.step_callback is not None:
                self.step_callback(r.global_step)
            if self._signal is not None:
                if bar is not None:
                    bar.close()
                self._check_stop(r)
        if bar is not None:
            bar.close()

    def _train_step(self, r: "_Run", index: np.ndarray) -> None:
        """One optimizer step on the images `index`; its metrics go to the sums and metrics.jsonl."""
        cfg, backend, model, dp = self.cfg, r.backend, r.model, r.dp
        t0 = time.perf_counter()
        x_host = r.train.images[index]
        if cfg.augment:  # drawn for the global batch, so every rank's shard is what a single process would see
            x_host = random_crop_flip(x_host, np.random.default_rng(step_seed(cfg.seed, r.global_step, 1)))
        rows = dp.local_rows(len(index))
        x_host, labels = x_host[rows], r.train.labels[index][rows]
        x_host = normalise(x_host, r.train.mean, r.train.std)
        if r.resize:
            x_host = resize_bilinear(x_host, r.resize)
        x = dp.place_batch(backend.asarray(x_host, model.dtype))
        y = dp.place_batch(backend.asarray(labels, r.label_dtype))
        stream = 0 if dp.rank == 0 else 100 + dp.rank  # each rank draws its own dropout/sampling keys
        key = backend.make_rng(step_seed(cfg.seed, r.global_step, stream)) if model.train_rng_draws else None
        scale = lr_scale(cfg.schedule, r.global_step, r.total_steps, r.warmup_steps)
        extra = {"weight": len(rows) / len(index)} if dp.reduces_gradients else {}
        try:
            r.params, r.state, r.opt_state, loss, logits, gnorm = r.step_fn(r.params, r.state, r.opt_state, x, y,
                                                                            key, scale, **extra)
        except (ValueError, ArithmeticError) as err:
            # a layer refusing non-finite inputs: the parameters diverged, the data did not
            bad = self._non_finite(to_host(r.params, backend.to_numpy), "params")
            if bad is not None:
                raise self._diverged(r, r.global_step, bad) from err
            raise
        loss_f = _float(backend, loss)
        gnorm_f = None if gnorm is None else _float(backend, gnorm)
        if not math.isfinite(loss_f) or (gnorm_f is not None and not math.isfinite(gnorm_f)):
            what = f"loss={loss_f}" + ("" if gnorm_f is None else f", gradient norm={gnorm_f}")
            raise self._diverged(r, r.global_step + 1, what)
        correct = topk_correct(np.asarray(backend.to_numpy(logits), dtype=np.float32), labels)
        if dp.world > 1:  # the global counts, and whether any rank was asked to stop
            top1, top5, signalled = dp.sum_floats([correct[1], correct[5], float(self._signal is not None)])
            correct = {1: int(round(top1)), 5: int(round(top5))}
            self._agree_on_signal(signalled)
        dt = time.perf_counter() - t0
        r.global_step += 1
        n = len(index)
        for name, value in (("loss", loss_f * n), ("top1", correct[1]), ("top5", correct[5]), ("n", n),
                            ("seconds", dt)):
            r.sums[name] += value
        r.last_loss = loss_f
        if self._main:
            r.files.step({"step": r.global_step, "epoch": r.epoch, "loss": loss_f, "top1": correct[1] / n,
                          "lr": cfg.lr * scale, "grad_norm": gnorm_f,
                          "images_per_second": n / dt if dt > 0 else None})

    def _end_epoch(self, r: "_Run") -> None:
        """Validate, record the epoch, checkpoint ('last', then 'best' when validation top-1 improved), plot."""
        cfg, sums = self.cfg, r.sums
        tensors = self._host_tensors(r)  # checked finite before validation uses the parameters
        val = self._evaluate(r, r.val, "validation")
        row = {"epoch": r.epoch, "step": r.global_step, "train_loss": sums["loss"] / sums["n"],
               "train_top1": sums["top1"] / sums["n"], "train_top5": sums["top5"] / sums["n"],
               "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
               "lr": cfg.lr * lr_scale(cfg.schedule, max(0, r.global_step - 1), r.total_steps, r.warmup_steps),
               "epoch_seconds": time.perf_counter() - r.t_epoch,
               "images_per_second": sums["n"] / max(sums["seconds"], 1e-9)}
        self._print_row(row)
        improved = not r.best or row["val_top1"] > r.best["val_top1"]
        history, best, position = list(r.history), dict(r.best), (r.epoch, r.step_in_epoch, r.sums)
        r.history.append(row)
        if improved:
            r.best = {"epoch": r.epoch, "step": r.global_step, "val_top1": row["val_top1"],
                      "val_top5": row["val_top5"], "val_loss": row["val_loss"]}
        r.epoch, r.step_in_epoch, r.sums = r.epoch + 1, 0, _empty_sums()
        try:
            # 'last' first: a failure leaves both files as they were (write_checkpoints is all-or-nothing)
            self._checkpoint(r, ("last", "best") if improved else ("last",), tensors)
        except BaseException:
            r.history, r.best, (r.epoch, r.step_in_epoch, r.sums) = history, best, position
            raise
        if not self._main:
            return
        r.files.epochs(r.history)
        plot_curves(r.run_dir / "curves.png", r.history, r.files.read_steps(),
                    f"{r.model.name} {_opts(cfg.model_options)} on {cfg.dataset} ({r.backend.name})")

    def _meta(self, r: "_Run", epoch: int, step_in_epoch: int) -> dict[str, Any]:
        """What a checkpoint saved now records besides the arrays (enough to resume exactly)."""
        return {**r.meta_base, "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": r.global_step,
                "history": r.history, "best": r.best, "sums": r.sums}

    def _finish(self, r: "_Run") -> RunResult:
        """The test of the best checkpoint (when asked for), summary.json, and where everything is."""
        run_dir, best = r.run_dir, r.best
        if not self._main:  # rank 0 tests and writes the summary
            return RunResult(run_dir, r.history, best, None, None, r.params, r.state, r.backend.name)
        curves = run_dir / "curves.png" if (run_dir / "curves.png").exists() else None
        test = (self._test(r.model, r.test_set, run_dir, r.resize, r.eval_bs, r.eval_logits, r.dp)
                if r.test_set is not None else None)
        summary = {"run_dir": str(run_dir), "backend": r.backend.name, "best": best,
                   "last": r.history[-1] if r.history else None, "test": test}
        atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        if best:
            self.log(f"best validation top-1 {100 * best['val_top1']:.2f}% at epoch {best['epoch'] + 1} "
                     f"(checkpoint {run_dir / 'checkpoints' / 'best.safetensors'})")
        if test:
            self.log(f"test ({test['n']} images, best model): loss {test['loss']:.4f}, top-1 "
                     f"{100 * test['top1']:.2f}%, top-5 {100 * test['top5']:.2f}%")
        if curves is not None:
            self.log(f"curves: {curves}")
        self.log(f"metrics: {r.files.csv} (per epoch), {r.files.jsonl} (per step); config: {run_dir / 'config.json'}")
        return RunResult(run_dir, r.history, best, test, curves, r.params, r.state, r.backend.name)

    # ------------------------------------------------------------------ pieces
    def _new_run_dir(self) -> Path:
        cfg = self.cfg
        base = Path(cfg.out_dir)
        name = cfg.run_name or f"{cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        return base / name

    def _restore(self, ckpt: Any, model: Any, opt: Any) -> tuple[Any, Any, Any]:
        backend = model.backend
        params = restore_tree(ckpt.groups["params"], model.param_specs(), backend, model.dtype, "params")
        state = restore_tree(ckpt.groups["state"], model.state_specs(), backend, model.dtype, "state")
        template = opt.init(params)
        try:
            opt_state = fill_like(template, ckpt.groups["opt"], backend.asarray, "optimizer state")
        except ValueError as err:
            raise ValueError(f"{err} (the checkpoint's optimizer state was written by backend "
                             f"{ckpt.meta.get('backend')!r}; resume on that backend)") from err
        return params, state, opt_state

    def _host_tensors(self, r: "_Run") -> dict[str, np.ndarray]:
        """The checkpoint tensors on the host; TrainingDiverged when any is NaN or inf."""
        tensors = host_tensors(r.params, r.state, r.opt_state, r.backend.to_numpy)
        bad = self._non_finite(tensors)
        if bad is not None:
            raise self._diverged(r, r.global_step, bad)
        return tensors

    @staticmethod
    def _non_finite(tensors: dict[str, np.ndarray], prefix: str = "") -> Optional[str]:
        """'parameter NAME became VALUE' for the first non-finite tensor, else None."""
        try:
            check_finite({f"{prefix}.{k}" if prefix else k: v for k, v in tensors.items()})
        except NonFiniteTensor as err:
            kind = {"params": "parameter", "state": "model state", "opt": "optimizer state"}[err.name.split(".")[0]]
            return f"{kind} {err.name} became {err.value}"
        return None

    def _diverged(self, r: "_Run", step: int, what: str) -> TrainingDiverged:
        last = r.run_dir / "checkpoints" / "last.safetensors"
        kept = (f"the last good checkpoint is kept: {last} (step {r.saved_at[2]})" if r.saved_at is not None
                else "no checkpoint was saved before it")
        return TrainingDiverged(f"training diverged at step {step} ({what}); {kept}. Lower the learning rate "
                                f"(lr={self.cfg.lr}), clip the gradients (--clip-grad-norm, now "
                                f"{self.cfg.clip_grad_norm}) or check the data, then start a new run")

    def _checkpoint(self, r: "_Run", names: tuple[str, ...], tensors: Optional[dict[str, np.ndarray]] = None) -> None:
        """Save the run's current position to checkpoints/NAME.safetensors for each name, in order, all or nothing.

        Non-finite tensors raise TrainingDiverged (a good checkpoint is never replaced by a diverged one); a failed
        write raises CheckpointWriteError, leaving every previous file intact.
        """
        if tensors is None:
            tensors = self._host_tensors(r)
        if self._main:
            data = checkpoint_bytes(tensors, self._meta(r, r.epoch, r.step_in_epoch))
            folder = r.run_dir / "checkpoints"
            try:
                write_checkpoints([folder / f"{name}.safetensors" for name in names], data)
            except CheckpointWriteError as err:
                raise CheckpointWriteError(err.errno, f"{err}; fix that, then continue with: convnn train --resume "
                                                      f"{r.run_dir}") from err
        if "last" in names:
            r.saved_at = (r.epoch, r.step_in_epoch, r.global_step)
            self._saved_step = r.global_step

    def _step_fn(self, model: Any, backend: Any, opt: Any, scheduled: bool, mp: MixedPrecision,
                 dp: Any) -> Callable[..., Any]:
        """step(params, state, opt_state, x, y, key, scale) -> (params, state, opt_state, loss, logits, grad norm).

        Under torchrun the step also takes weight= (this rank's share of the global batch): the gradients and the
        loss are all-reduced between the backward and the clipping, outside any compiled region.
        """
        clip = self.cfg.clip_grad_norm
        ops = model.backend  # the backend, or its bf16 casting view

        def loss_fn(params: Any, state: Any, x: Any, y: Any, key: Any) -> Any:
            with mp.autocast():
                logits, new_state = model.apply(params, state, x, train=True, rng=key)
                loss = ops.cross_entropy(logits, y)
            return loss, (logits, mp.keep_dtypes(new_state, state))

        value_and_grad = backend.value_and_grad(loss_fn, has_aux=True)

        def update(params: Any, opt_state: Any, grads: Any, scale: Any) -> Any:
            gnorm = None
            if clip is not None:
                grads, gnorm = backend.clip_grad_norm(grads, clip)
            new_params, new_opt = opt.update(grads, opt_state, params)
            if scheduled:  # AdamW's update is linear in the LR: p + s * (update at the base LR)
                new_params = tree_map(lambda p, q: p + (q - p) * scale, params, new_params)
            return new_params, new_opt, gnorm

        compiled = self._compiled(backend)
        if not dp.reduces_gradients:
            def step(params: Any, state: Any, opt_state: Any, x: Any, y: Any, key: Any, scale: Any) -> Any:
                (loss, (logits, new_state)), grads = value_and_grad(params, state, x, y, key)
                new_params, new_opt, gnorm = update(params, opt_state, grads, scale)
                return new_params, new_state, new_opt, loss, logits, gnorm

            whole = backend.compile(step) if compiled else step
            return dp.train_step(value_and_grad, update, whole) if dp.devices > 1 else whole

        grads_of = backend.compile(value_and_grad) if compiled else value_and_grad
        apply_update = backend.compile(update) if compiled else update

        def reduced_step(params: Any, state: Any, opt_state: Any, x: Any, y: Any, key: Any, scale: Any, *,
                         weight: float) -> Any:
            if x.shape[0] == 0:  # a last batch smaller than the number of ranks leaves this rank nothing
                loss, logits, new_state = backend.asarray(np.zeros((), np.float32)), x[:, :0, 0, 0], state
                grads = tree_map(lambda p: p * 0, params)
            else:
                (loss, (logits, new_state)), grads = grads_of(params, state, x, y, key)
            grads, loss = dp.reduce_gradients(grads, loss, weight)
            new_params, new_opt, gnorm = apply_update(params, opt_state, grads, scale)
            return new_params, dp.average_state(new_state), new_opt, loss, logits, gnorm

        return reduced_step

    def _eval_fn(self, model: Any, backend: Any, mp: MixedPrecision, dp: Any) -> Callable[..., Any]:
        def logits(params: Any, state: Any, x: Any) -> Any:
            with mp.autocast():
                return model.apply(params, state, x, train=False, rng=None)[0]

        fn = backend.compile(logits) if self._compiled(backend) else logits
        if dp.devices > 1 and not dp.reduces_gradients:  # jax: the evaluation batches are split too
            return dp.eval_logits(logits, fn)
        return fn

    def _evaluate(self, r: "_Run", ds: Dataset, desc: str) -> dict[str, Any]:
        """evaluate() over ds; under torchrun each rank evaluates its share and the sums are combined."""
        cfg, dp = self.cfg, r.dp
        if dp.world == 1:
            return evaluate(r.model, r.params, r.state, ds, batch_size=r.eval_bs, resize=r.resize,
                            logits_fn=r.eval_logits, progress=cfg.progress, desc=desc,
                            should_stop=self._stop_requested)
        if len(ds) < dp.world:  # too few images to share: every rank evaluates all of them
            return evaluate(r.model, r.params, r.state, ds, batch_size=r.eval_bs, resize=r.resize,
                            logits_fn=r.eval_logits, progress=cfg.progress and dp.is_main, desc=desc)
        part = ds.take(dp.local_rows(len(ds)))
        # no early stop mid-evaluation: the ranks agree on a signal at the next step instead
        m = evaluate(r.model, r.params, r.state, part, batch_size=r.eval_bs, resize=r.resize,
                     logits_fn=r.eval_logits, progress=cfg.progress and dp.is_main, desc=desc)
        loss, top1, top5, n = dp.sum_floats([m["loss"] * m["n"], m["top1"] * m["n"], m["top5"] * m["n"], m["n"]])
        return {"loss": loss / n, "top1": round(top1) / n, "top5": round(top5) / n, "n": int(round(n))}

    def _compiled(self, backend: Any) -> bool:
        mode = self.cfg.compile
        return mode == "on" or (mode == "auto" and backend.capabilities.compile_by_default)

    def _test(self, model: Any, test: Dataset, run_dir: Path, resize: Optional[int], batch_size: int,
              eval_logits: Callable[..., Any], dp: Any = None) -> dict[str, Any]:
        cfg = self.cfg
        ckpt = load_checkpoint(run_dir / "checkpoints" / "best.safetensors")
        backend = model.backend
        params = restore_tree(ckpt.groups["params"], model.param_specs(), backend, model.dtype, "params")
        state = restore_tree(ckpt.groups["state"], model.state_specs(), backend, model.dtype, "state")
        if dp is not None:
            params, state = dp.replicate((params, state))
        metrics = evaluate(model, params, state, test, batch_size=batch_size, resize=resize, logits_fn=eval_logits,
                           progress=cfg.progress, desc="test", should_stop=self._stop_requested)
        result = {**metrics, "epoch": ckpt.meta["best"]["epoch"], "split": "test"}
        atomic_write_text(run_dir / "test.json", json.dumps(result, indent=2) + "\n")
        return result

    def _bar(self, total: int, initial: int, epoch: int) -> Any:
        if not self.cfg.progress:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
                    leave=False, dynamic_ncols=True)

    def _print_header(self) -> None:
        self.log(f"{'epoch':>5} {'train loss':>10} {'train top1':>10} {'val loss':>9} {'val top1':>9} "
                 f"{'val top5':>9} {'time s':>7} {'img/s':>7}")

    def _print_row(self, row: dict[str, Any]) -> None:
        self.log(f"{row['epoch'] + 1:>5} {row['train_loss']:>10.4f} {100 * row['train_top1']:>9.2f}% "
                 f"{row['val_loss']:>9.4f} {100 * row['val_top1']:>8.2f}% {100 * row['val_top5']:>8.2f}% "
                 f"{row['epoch_seconds']:>7.1f} {row['images_per_second']:>7.1f}")


def restore_tree(flat: dict[str, np.ndarray], specs: dict[str, Any], backend: Any, dtype: str, what: str) -> Any:
    """Backend arrays for a model's params/state from a checkpoint, checked against the model's shapes."""
    missing = sorted(set(specs) - set(flat))
    extra = sorted(set(flat) - set(specs))
    if missing or extra:
        raise ValueError(f"the checkpoint's {what} do not fit this model (a different model or options?): missing "
                         f"{missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {extra[:4]}"
                         f"{'...' if len(extra) > 4 else ''}")
    out = {}
    for path, spec in specs.items():
        arr = flat[path]
        if tuple(arr.shape) != tuple(spec.shape):
            raise ValueError(f"the checkpoint's {what} {path} has shape {tuple(arr.shape)}; this model needs "
                             f"{tuple(spec.shape)}")
        out[path] = backend.asarray(arr, dtype)
    return unflatten(out)


def _label_dtype(backend: Any) -> str:
    """int64 labels, or int32 where the backend runs without 64-bit integers (capabilities.int64_labels)."""
    return "int64" if backend.capabilities.int64_labels else "int32"


def _empty_sums() -> dict[str, float]:
    return {"loss": 0.0, "top1": 0, "top5": 0, "n": 0, "seconds": 0.0}


def _norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in sorted(value.items())}
    return value


def _threads(backend: Any) -> dict[str, Any]:
    """The thread counts a run computes with: the backend's (numba: its pool, torch: intra-op), the environment
    variables that set them, and the CPU count."""
    count = getattr(backend, "threads", None)
    return {"backend": int(count) if isinstance(count, (int, np.integer)) else None, "cpu_count": os.cpu_count(),
            "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}


def _opts(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"


__all__ = ["RunResult", "Trainer", "TrainingDiverged", "TrainingInterrupted", "DatasetNotFound", "restore_tree",
           "set_seed"]
