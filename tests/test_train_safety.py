"""Nothing silent: run folders are locked and never reused by accident, interrupts save a resumable checkpoint,
checkpoints carry digests, a full disk keeps the previous checkpoints, config.json edits are not ignored on
resume, threads are recorded, atomic writes respect the umask, and bad hyperparameters or divergence are named.

Tiny runs (32 training images, 1-2 epochs) on the NumPy backend with plain convolutions keep these fast."""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from convnn.registry import backend_status
from convnn.models.cli import run_eval
from convnn.models.train import TrainConfig, Trainer, build_config, load_checkpoint
from convnn.models.train import checkpoint as checkpoint_mod
from convnn.models.train import loop as loop_mod

pytest.importorskip("autograd")

ROOT = Path(__file__).resolve().parents[1]
CONV = {"layer": "conv", "ratio": 0.5, "width": 0.0625, "head": "light"}


def _config(tmp_path: Path, name: str, **overrides):
    base = {"backend": "numpy", "model": "vgg11", "model_options": CONV, "dataset": "sample", "subset": 32,
            "val_subset": 16, "batch_size": 16, "epochs": 1, "lr": 1e-3, "progress": False,
            "out_dir": str(tmp_path), "run_name": name}
    base.update(overrides)
    return build_config("demo", None, base)


def _quiet(cfg, **kw):
    return Trainer(cfg, log=lambda s: None, **kw)


class Stop(Exception):
    pass


def _tensor_range(path: Path, name: str) -> tuple[int, int]:
    """Byte range of one tensor's data inside a safetensors file."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    begin, end = header[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end


def _flip(path: Path, name: str, count: int = 64) -> None:
    start, end = _tensor_range(path, name)
    assert end - start >= 2 * count
    data = bytearray(path.read_bytes())
    mid = (start + end) // 2 - count // 2
    for i in range(mid, mid + count):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- 1. one run per folder
def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    cfg = _config(tmp_path, "shared", epochs=1)
    seen = {}

    def start_second(step: int) -> None:
        if step == 1:
            with pytest.raises(Exception) as info:
                _quiet(_config(tmp_path, "shared", epochs=1)).run()
            seen["err"] = info.value

    result = _quiet(cfg, step_callback=start_second).run()
    err = seen["err"]
    text = str(err)
    assert "in use" in text and str(tmp_path / "shared") in text and f"pid {os.getpid()}" in text, text
    # the first run's files are its own: one record per step, its best checkpoint
    steps = [json.loads(line)["step"] for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    # once the first run is over, a new run into its folder is refused (resume it instead)
    with pytest.raises(FileExistsError, match="--resume"):
        _quiet(_config(tmp_path, "shared")).run()


def test_a_folder_with_files_but_no_last_checkpoint_is_not_reused(tmp_path):
    run = tmp_path / "old"
    (run / "checkpoints").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    (run / "checkpoints" / "best.safetensors").write_bytes(b"an old model")
    with pytest.raises(FileExistsError, match="not empty"):
        _quiet(_config(tmp_path, "old")).run()
    assert (run / "metrics.jsonl").read_text() == '{"step": 1, "loss": 9.0}\n'
    assert (run / "checkpoints" / "best.safetensors").read_bytes() == b"an old model"


# ----------------------------------------------------------------------------- 2. interrupts
@pytest.mark.skipif(not backend_status("numba")[0], reason="numba backend not available")
def test_sigint_mid_epoch_saves_a_resumable_checkpoint_and_says_how_to_resume(tmp_path):
    """Ctrl-C in epoch 1 of a numba ConvNN run: one line, exit 130, 'last' at the last step; --resume finishes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}
    cmd = [sys.executable, "-m", "convnn", "train", "--backend", "numba", "-o", "width=0.0625", "--dataset",
           "sample", "--subset", "160", "--val-subset", "16", "--batch-size", "16", "--epochs", "3",
           "--no-progress", "--out-dir", str(tmp_path), "--run-name", "int"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jsonl = tmp_path / "int" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "SystemError" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0] and str(tmp_path / "int") in lines[0], err
    ckpt = load_checkpoint(tmp_path / "int")
    logged = [json.loads(line)["step"] for line in jsonl.read_text().splitlines()]
    assert ckpt.meta["epoch"] == 0 and 3 <= ckpt.meta["global_step"] == logged[-1] < 10
    done = subprocess.run([sys.executable, "-m", "convnn", "train", "--resume", str(tmp_path / "int"), "--epochs",
                           "1", "--no-progress"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(tmp_path / "int").meta["global_step"] == 10
    steps = [json.loads(line)["step"] for line in jsonl.read_text().splitlines()]
    assert steps == list(range(1, 11))


SELF_SIGNAL = """
import os, signal, sys
from convnn.models.train import loop
sig, stop = getattr(signal, sys.argv[1]), int(sys.argv[2])
init = loop.Trainer.__init__
def patched(self, *a, **k):
    k.setdefault("step_callback", lambda step: step == stop and os.kill(os.getpid(), sig))
    init(self, *a, **k)
loop.Trainer.__init__ = patched
from convnn.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("sig,code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_at_step_one_leaves_a_run_that_resumes_to_the_uninterrupted_result(tmp_path, sig, code):
    args = ["train", "--backend", "numpy", "-o", "layer=conv", "-o", "width=0.0625", "--dataset", "sample",
            "--subset", "32", "--val-subset", "16", "--batch-size", "16", "--epochs", "2", "--no-progress",
            "--out-dir", str(tmp_path)]
    proc = subprocess.run([sys.executable, "-c", SELF_SIGNAL, sig, "1", *args, "--run-name", "sig"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--resume" in lines[0], proc.stderr
    assert load_checkpoint(tmp_path / "sig").meta["global_step"] == 1
    resumed = subprocess.run([sys.executable, "-m", "convnn", "train", "--resume", str(tmp_path / "sig"),
                              "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    from convnn.cli import main

    assert main([*args, "--run-name", "full"]) == 0
    full, got = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "sig")
    assert got.meta["global_step"] == full.meta["global_step"] == 4
    for path, leaf in full.groups["params"].items():
        np.testing.assert_array_equal(got.groups["params"][path], leaf, err_msg=path)


# ----------------------------------------------------------------------------- 3. digests
def test_flipped_bytes_in_a_parameter_are_caught_on_load(tmp_path):
    run = _quiet(_config(tmp_path, "d")).run().run_dir
    best = run / "checkpoints" / "best.safetensors"
    name = max(load_checkpoint(best).groups["params"].items(), key=lambda kv: kv[1].size)[0]
    _flip(best, f"params.{name}")
    with pytest.raises(checkpoint_mod.CheckpointCorrupt) as info:
        run_eval(str(run), "numpy")
    assert str(best) in str(info.value) and f"params.{name}" in str(info.value)


def test_flipped_bytes_in_the_optimizer_state_stop_a_resume(tmp_path):
    cfg = _config(tmp_path, "o", epochs=1)
    run = _quiet(cfg).run().run_dir
    last = run / "checkpoints" / "last.safetensors"
    opt = max(load_checkpoint(last).groups["opt"].items(), key=lambda kv: kv[1].size)[0]
    _flip(last, f"opt.{opt}")
    with pytest.raises(checkpoint_mod.CheckpointCorrupt, match=f"opt.{opt}"):
        _quiet(_config(tmp_path, "o", epochs=2), resume=str(run)).run()


def test_edited_checkpoint_metadata_is_caught(tmp_path):
    run = _quiet(_config(tmp_path, "m")).run().run_dir
    last = run / "checkpoints" / "last.safetensors"
    raw = last.read_bytes()
    assert raw.count(b'\\"global_step\\": 2') == 1
    last.write_bytes(raw.replace(b'\\"global_step\\": 2', b'\\"global_step\\": 7'))
    with pytest.raises(checkpoint_mod.CheckpointCorrupt, match="metadata"):
        load_checkpoint(last)


# ----------------------------------------------------------------------------- 4. a full disk
def test_a_full_disk_while_writing_the_second_checkpoint_keeps_a_resumable_run(tmp_path, monkeypatch):
    cfg = _config(tmp_path, "full_disk", epochs=1)
    state = {"armed": False, "files": 0}
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        prefix = kwargs.get("prefix", "")
        if state["armed"] and ".safetensors" in prefix:
            state["files"] += 1
            if state["files"] == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), prefix)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    def arm(step: int) -> None:
        state["armed"] = step == 2  # the last step of the epoch: the next writes are the end-of-epoch checkpoints

    with pytest.raises(OSError) as info:
        _quiet(cfg, step_callback=arm).run()
    assert info.value.errno == errno.ENOSPC
    assert "intact" in str(info.value) and "--resume" in str(info.value)
    monkeypatch.setattr(tempfile, "mkstemp", real)
    run = tmp_path / "full_disk"
    assert not list(run.rglob("*.tmp"))
    ckpt = load_checkpoint(run)  # the previous 'last' is still there and whole
    assert ckpt.meta["global_step"] < 2
    result = _quiet(_config(tmp_path, "full_disk", epochs=1), resume=str(run)).run()
    assert result.best and load_checkpoint(run).meta["global_step"] == 2
    assert load_checkpoint(run / "checkpoints" / "best.safetensors").meta["global_step"] == 2


def test_last_is_written_before_best(tmp_path, monkeypatch):
    written = []
    real = os.replace

    def replace(src, dst):
        written.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    _quiet(_config(tmp_path, "order")).run()
    names = [n for n in written if n.endswith(".safetensors")]
    assert names[-2:] == ["last.safetensors", "best.safetensors"]


# ----------------------------------------------------------------------------- 5. config.json edits
def test_resume_refuses_an_edited_config_json(tmp_path):
    run = _quiet(_config(tmp_path, "edit", epochs=1)).run().run_dir
    path = run / "config.json"
    config = json.loads(path.read_text())
    config["lr"] = 0.05
    config["augment"] = True
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError) as info:
        _quiet(_config(tmp_path, "edit", epochs=2), resume=str(run)).run()
    text = str(info.value)
    assert "config.json" in text and "lr: config.json 0.05" in text and "augment: config.json True" in text
    assert "epochs: config.json" not in text
    assert json.loads(path.read_text())["lr"] == 0.05  # the edit was not overwritten


def test_a_resume_that_changed_epochs_and_stopped_early_resumes_again(tmp_path):
    """A resume with --epochs 3 interrupted before its next checkpoint: the next `--resume RUN` (the checkpoint's
    config) continues to 3 epochs and is not refused because config.json says 3."""
    run = _quiet(_config(tmp_path, "again", epochs=1)).run().run_dir

    def stop(step: int) -> None:
        raise Stop()

    with pytest.raises(Stop):
        _quiet(_config(tmp_path, "again", epochs=3), resume=str(run), step_callback=stop).run()
    saved = load_checkpoint(run).meta["train"]
    assert saved["epochs"] == 3
    result = _quiet(TrainConfig(**saved), resume=str(run)).run()
    assert len(result.history) == 3


# ----------------------------------------------------------------------------- 6. threads, .tmp, permissions
def test_threads_are_recorded_and_stale_temporaries_cleaned(tmp_path):
    run = _quiet(_config(tmp_path, "thr")).run().run_dir
    config = json.loads((run / "config.json").read_text())
    assert config["threads"]["cpu_count"] == os.cpu_count()
    assert "backend" in config["threads"]
    assert load_checkpoint(run).meta["threads"] == config["threads"]
    stale = [run / "checkpoints" / "last.safetensors.abc123.tmp", run / "metrics.jsonl.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    _quiet(_config(tmp_path, "thr", epochs=2), resume=str(run)).run()
    assert not any(path.exists() for path in stale)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_of_a_run_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        run = _quiet(_config(tmp_path, "perm")).run().run_dir
    finally:
        os.umask(old)
    for name in ("config.json", "summary.json", "epochs.csv", "metrics.jsonl", "checkpoints/last.safetensors",
                 "checkpoints/best.safetensors"):
        assert (run / name).stat().st_mode & 0o777 == mode, name


# ----------------------------------------------------------------------------- 7. hyperparameters, divergence
@pytest.mark.parametrize("overrides,match", [
    ({"lr": math.inf}, "lr=inf"),
    ({"lr": 1e30}, "lr=1e\\+30"),
    ({"lr": math.nan}, "lr=nan"),
    ({"weight_decay": math.inf}, "weight_decay=inf"),
    ({"clip_grad_norm": math.nan}, "clip_grad_norm=nan"),
    ({"eps": math.inf}, "eps=inf"),
    ({"warmup_epochs": math.nan}, "warmup_epochs=nan"),
    ({"betas": [0.9, math.nan]}, "betas"),
    ({"resize": 100000}, "resize=100000"),
])
def test_non_finite_or_absurd_hyperparameters_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, "hp", **overrides)


def test_divergence_is_reported_as_divergence_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    # a schedule whose scale turns infinite at step 3 (index 2) makes the parameters non-finite
    real = loop_mod.lr_scale
    monkeypatch.setattr(loop_mod, "lr_scale", lambda s, step, total, warm: math.inf if step == 2 else real(
        s, step, total, warm))
    cfg = _config(tmp_path, "div", epochs=2, schedule="cosine", checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"training diverged at step [34] \((loss=|parameter)") as info:
        _quiet(cfg).run()
    assert "last good checkpoint" in str(info.value)
    ckpt = load_checkpoint(tmp_path / "div")
    assert ckpt.meta["global_step"] == 2
    assert all(np.isfinite(a).all() for g in ckpt.groups.values() for a in g.values())


# ----------------------------------------------------------------------------- 8. eval batch size
@pytest.mark.parametrize("bs", [-5, 0])
def test_eval_refuses_a_non_positive_batch_size(tmp_path, bs):
    run = _quiet(_config(tmp_path, "ev")).run().run_dir
    with pytest.raises(ValueError, match=f"batch_size={bs}"):
        run_eval(str(run), "numpy", batch_size=bs)
