"""`convnn train` and `convnn eval` end every failure in one line on stderr (exit 2) that names what went wrong
and what to do: never a raw traceback, never exit 0 with a meaningless result."""
from __future__ import annotations

import errno
import json
import math
import os
import pathlib
import struct

import pytest

from convnn.cli import main
from convnn.models.train import load_checkpoint
from convnn.models.train import loop as loop_mod

pytest.importorskip("autograd")

TINY = ["--backend", "numpy", "-o", "layer=conv", "-o", "width=0.0625", "--dataset", "sample", "--subset", "32",
        "--val-subset", "16", "--batch-size", "16", "--epochs", "1", "--no-progress"]


def _one_line(capsys, prefix: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(prefix) and "Traceback" not in err[0], err
    return err[0]


def _train(tmp_path, name: str, *extra: str) -> int:
    return main(["train", *TINY, "--out-dir", str(tmp_path), "--run-name", name, *extra])


@pytest.fixture
def run(tmp_path, capsys):
    assert _train(tmp_path, "ok") == 0
    capsys.readouterr()
    return tmp_path / "ok"


# ----------------------------------------------------------------------------- train
def test_a_convnn_model_on_the_numpy_backend(tmp_path, capsys):
    args = ["train", "--backend", "numpy", "--dataset", "sample", "--subset", "32", "--epochs", "1",
            "--no-progress", "--out-dir", str(tmp_path)]
    assert main(args) == 2
    line = _one_line(capsys, "convnn train: error:")
    trainers = line.rsplit("train it on ", 1)[1]  # the order follows the shipped speed figures
    assert sorted(trainers.replace(" or ", ", ").split(", ")) == ["jax", "numba", "torch"], line


@pytest.mark.parametrize("flag,value", [("--lr", "inf"), ("--lr", "1e30"), ("--weight-decay", "inf"),
                                        ("--clip-grad-norm", "nan"), ("--resize", "100000")])
def test_absurd_hyperparameters(tmp_path, capsys, flag, value):
    assert _train(tmp_path, "hp", flag, value) == 2
    line = _one_line(capsys, "convnn train: error:")
    assert flag.lstrip("-").replace("-", "_") in line
    assert not (tmp_path / "hp").exists()


def test_divergence(tmp_path, capsys, monkeypatch):
    real = loop_mod.lr_scale
    monkeypatch.setattr(loop_mod, "lr_scale", lambda s, step, total, warm: math.inf if step == 1 else real(
        s, step, total, warm))
    assert _train(tmp_path, "div", "--schedule", "cosine", "--epochs", "2") == 2
    line = _one_line(capsys, "convnn train: error:")
    assert "training diverged at step" in line and "last good checkpoint" in line
    assert load_checkpoint(tmp_path / "div").meta["global_step"] < 2


def test_a_floating_point_error(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise FloatingPointError("overflow encountered in multiply")

    monkeypatch.setattr(loop_mod, "normalise", boom)
    assert _train(tmp_path, "fpe") == 2
    assert "overflow encountered in multiply" in _one_line(capsys, "convnn train: error:")


def test_out_of_memory(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.75 TiB for an array")

    monkeypatch.setattr(loop_mod, "normalise", boom)
    assert _train(tmp_path, "oom") == 2
    line = _one_line(capsys, "convnn train: error:")
    assert "out of memory" in line and "--batch-size" in line


def test_a_file_where_the_output_folder_should_be(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["train", *TINY, "--out-dir", str(tmp_path / "afile"), "--run-name", "r"]) == 2
    line = _one_line(capsys, "convnn train: error:")
    assert str(tmp_path / "afile") in line and "--out-dir" in line


@pytest.mark.parametrize("code,words", [(errno.EACCES, "permission"), (errno.EROFS, "read-only")])
def test_an_unwritable_output_folder(tmp_path, capsys, monkeypatch, code, words):
    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "locked")):
            raise OSError(code, os.strerror(code), str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    assert main(["train", *TINY, "--out-dir", str(tmp_path / "locked"), "--run-name", "r"]) == 2
    line = _one_line(capsys, "convnn train: error:")
    assert words in line.lower() and "--out-dir" in line


def test_a_busy_run_folder(tmp_path, capsys):
    import fcntl

    folder = tmp_path / "busy"
    folder.mkdir()
    with open(folder / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        holder.write("4242\n")
        holder.flush()
        assert _train(tmp_path, "busy") == 2
    line = _one_line(capsys, "convnn train: error:")
    assert str(folder) in line and "4242" in line


def test_an_unexpected_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something no one planned for")

    monkeypatch.setattr(loop_mod, "normalise", boom)
    assert _train(tmp_path, "bug") == 2
    line = _one_line(capsys, "convnn train: error:")
    assert "RuntimeError" in line and "something no one planned for" in line and "CONVNN_TRACEBACK=1" in line


# ----------------------------------------------------------------------------- eval
@pytest.mark.parametrize("bs", ["-5", "0"])
def test_eval_with_a_non_positive_batch_size(run, capsys, bs):
    assert main(["eval", str(run), "--backend", "numpy", "--no-progress", "--batch-size", bs]) == 2
    assert "--batch-size" in _one_line(capsys, "convnn eval: error:")


def test_eval_of_a_corrupted_checkpoint(run, capsys):
    best = run / "checkpoints" / "best.safetensors"
    raw = bytearray(best.read_bytes())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name, entry = max(((k, v) for k, v in header.items() if k.startswith("params.")),
                      key=lambda kv: kv[1]["data_offsets"][1] - kv[1]["data_offsets"][0])
    start = 8 + n + (entry["data_offsets"][0] + entry["data_offsets"][1]) // 2
    for i in range(start, start + 64):
        raw[i] ^= 0xFF
    best.write_bytes(bytes(raw))
    assert main(["eval", str(run), "--backend", "numpy", "--no-progress"]) == 2
    line = _one_line(capsys, "convnn eval: error:")
    assert str(best) in line and name in line


def test_eval_output_where_a_file_blocks_the_folder(run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "metrics.json"
    assert main(["eval", str(run), "--backend", "numpy", "--no-progress", "--output", str(out)]) == 2
    assert str(out) in _one_line(capsys, "convnn eval: error:")


def test_eval_of_a_missing_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nothing"), "--no-progress"]) == 2
    _one_line(capsys, "convnn eval: error:")
