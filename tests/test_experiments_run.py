"""Running grids: in-process and on a local Ray instance give identical tables; a killed grid resumes without redoing
finished cells; a failing cell is reported and the others still run; status and report."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import argparse

import pytest

from convnn.cli import run_command
from convnn.models.experiments.cli import register

# two cheap cells: a Conv2d-only VGG and a branching VGG with 16 random candidates, on 32 sample images
TINY_GRID = """
name = "tiny"
title = "tiny test grid"
model = "vgg11"
datasets = ["cifar10"]
seeds = [3]
reference = "vgg-branching"
plot_axis = "ratio"
[model_options]
layer = "branching"
sampling = "random"
num_samples = 16
[scales.smoke]
subset = {subset}
val_subset = 16
batch_size = 16
epochs = {epochs}
[[axes]]
name = "ratio"
option = "model_options.ratio"
values = [0.0, 0.5]
[[axes]]
name = "pe"
[axes.levels]
"Col/Col" = {{ model_options = {{ select = "feature" }} }}
[[orderings]]
claim = "branching >= conv2d"
chain = ["ratio=0.5", ">=", "ratio=0.0"]
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CONVNN_TRACEBACK": ""}


def main(argv: list[str]) -> int:
    """`convnn ARGV` through this command's own parser (as convnn.cli.main does once the entry point is found)."""
    parser = argparse.ArgumentParser(prog="convnn")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return run_command(args.func, args)


def _grid_file(tmp_path: Path, epochs: int = 1, subset: int = 32) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_GRID.format(epochs=epochs, subset=subset))
    return path


def _rows(folder: Path) -> list[dict]:
    report = json.loads((folder / "report" / "tiny.json").read_text())
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in report["rows"]]


def test_in_process_and_local_ray_give_identical_tables(tmp_path, capsys):
    pytest.importorskip("ray")
    grid = _grid_file(tmp_path)
    common = ["experiment", "run", str(grid), "--scale", "smoke", "--threads", "1", "--no-progress"]
    assert main([*common, "--out-dir", str(tmp_path / "local")]) == 0
    assert main([*common, "--out-dir", str(tmp_path / "ray"), "--ray", "--ray-cpus", "2"]) == 0
    tables = []
    for where in ("local", "ray"):
        folder = tmp_path / where / "tiny" / "smoke"
        assert main(["experiment", "report", str(folder)]) == 0
        assert {p.suffix for p in (folder / "report").iterdir()} == {".md", ".csv", ".json", ".png"}
        tables.append(_rows(folder))
    assert tables[0] == tables[1]
    assert [r["seeds_done"] for r in tables[0]] == [1, 1]
    assert all(r["best"] is not None and r["paper_best"] is not None for r in tables[0])
    report = json.loads((tmp_path / "ray" / "tiny" / "smoke" / "report" / "tiny.json").read_text())
    assert report["orderings"][0]["ours"]["verdict"] in ("holds", "fails")
    assert report["orderings"][0]["paper"]["verdict"] == "holds"
    out = capsys.readouterr().out
    assert "| ratio=0.5, pe=Col/Col |" in out


def _wait_for(predicate, timeout: float) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_killed_grid_resumes_without_redoing_finished_cells(tmp_path):
    grid = _grid_file(tmp_path, epochs=4, subset=64)
    out_dir = tmp_path / "out"
    folder = out_dir / "tiny" / "smoke"
    first, second = "sample__ratio=0.0__pe=Col_Col__seed=3", "sample__ratio=0.5__pe=Col_Col__seed=3"
    cmd = [sys.executable, "-m", "convnn", "experiment", "run", str(grid), "--scale", "smoke", "--out-dir",
           str(out_dir), "--threads", "1", "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=tmp_path)
    try:
        # kill -9 once the first cell is done and the second has saved a checkpoint (after its first epoch)
        def second_mid_way() -> bool:
            csv = folder / "cells" / second / "epochs.csv"
            return (folder / "cells" / first / "summary.json").exists() and csv.exists() and \
                len(csv.read_text().splitlines()) >= 2
        assert _wait_for(second_mid_way, 120), proc.stdout.read().decode() if proc.poll() is not None else "timeout"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first_summary = (folder / "cells" / first / "summary.json").stat().st_mtime_ns
    assert not (folder / "cells" / second / "summary.json").exists()
    status = subprocess.run([sys.executable, "-m", "convnn", "experiment", "status", str(folder)], env=ENV,
                            capture_output=True, text=True, cwd=tmp_path)
    assert status.returncode == 0
    assert f"done         {first}" in status.stdout and f"interrupted  {second}" in status.stdout

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "1 already done, 1 to run" in again.stdout
    assert f"{second}: done" in again.stdout and "resumed" in again.stdout
    assert (folder / "cells" / first / "summary.json").stat().st_mtime_ns == first_summary  # not redone
    log = (folder / "logs" / f"{second}.log").read_text()
    assert "resuming" in log
    epochs = (folder / "cells" / second / "epochs.csv").read_text().splitlines()
    assert len(epochs) == 1 + 4


def test_a_failing_cell_is_reported_and_the_others_run(tmp_path, capsys):
    grid = tmp_path / "two.toml"
    grid.write_text('name = "two"\nmodel = "vgg11"\ndatasets = ["sample", "cifar100"]\nseeds = [0]\n'
                    '[scales.cpu]\nsubset = 16\nval_subset = 8\nbatch_size = 16\nepochs = 1\n'
                    '[[axes]]\nname = "layer"\noption = "model_options.layer"\nvalues = ["conv"]\n')
    empty = tmp_path / "no-data"
    empty.mkdir()
    code = main(["experiment", "run", str(grid), "--scale", "cpu", "--out-dir", str(tmp_path / "out"),
                 "--data-dir", str(empty), "--threads", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "sample__layer=conv__seed=0: done" in out
    assert "cifar100__layer=conv__seed=0: FAILED" in out and "CIFAR-100" in out.upper()
    folder = tmp_path / "out" / "two" / "cpu"
    assert main(["experiment", "status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "1 done, 1 failed of 2 cells" in out
    assert main(["experiment", "report", str(folder), "--no-plot"]) == 0
    report = json.loads((folder / "report" / "two.json").read_text())
    assert [r["seeds_done"] for r in report["rows"]] == [1, 0]


def test_dry_run_and_errors(tmp_path, capsys):
    assert main(["experiment", "run", "vgg-branching", "--scale", "paper", "--dry-run", "--where", "ratio=0.5",
                 "--dataset", "cifar100", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 cells" in out and "cifar100__ratio=0.5__pe=Loc_Col_Loc_Col__seed=42" in out
    assert not (tmp_path / "vgg-branching").exists()
    assert main(["experiment", "run", "no-such-grid"]) == 2
    assert "neither a shipped grid" in capsys.readouterr().err
    assert main(["experiment", "run", "vgg-k", "--ray", "--ray-address", "x", "--out-dir", str(tmp_path)]) == 2
    assert main(["experiment", "status", "vgg-k", "--out-dir", str(tmp_path)]) == 2
    assert "no grid.json" in capsys.readouterr().err
