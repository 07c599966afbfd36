"""Training configuration: presets, files and overrides, validation, schedules and accuracy counting."""
from __future__ import annotations

import json

import numpy as np
import pytest

from convnn.models.train.config import PRESETS, TrainConfig, build_config
from convnn.models.train.metrics import topk_correct
from convnn.models.train.schedule import lr_scale


def test_paper_preset_is_the_protocol_of_spec_section_7():
    cfg = build_config("paper")
    assert (cfg.lr, cfg.weight_decay, cfg.schedule, cfg.clip_grad_norm, cfg.batch_size, cfg.epochs, cfg.augment,
            cfg.seed, cfg.betas, cfg.eps) == (1e-4, 0.01, "constant", 1.0, 256, 150, False, 42, (0.9, 0.999), 1e-8)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"epochs": 3, "model_options": {"layer": "convnn"}, "lr": 0.01}))
    cfg = build_config("demo", str(path), {"lr": 0.5, "model_options.k": 5})
    assert cfg.epochs == 3 and cfg.lr == 0.5
    assert cfg.model_options == {**PRESETS["demo"]["model_options"], "layer": "convnn", "k": 5}


@pytest.mark.parametrize("overrides,match", [
    ({"epochz": 3}, "unknown training option 'epochz'"),
    ({"epochs": 0}, "epochs=0"),
    ({"lr": -1}, "lr=-1"),
    ({"schedule": "step"}, "schedule='step'"),
    ({"clip_grad_norm": 0}, "clip_grad_norm"),
    ({"augment": "yes"}, "augment"),
])
def test_bad_options_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_config("paper", None, overrides)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        build_config("paper", str(bad))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_config("paper", str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="preset='fast'"):
        build_config("fast")


def test_schedules():
    assert lr_scale("constant", 10, 100, 0) == 1.0
    assert lr_scale("constant", 0, 100, 4) == 0.25
    assert lr_scale("cosine", 4, 104, 4) == 1.0
    assert abs(lr_scale("cosine", 54, 104, 4) - 0.5) < 1e-12
    assert lr_scale("cosine", 104, 104, 4) == 0.0


def test_topk_counts_per_sample():
    logits = np.array([[0.1, 0.9, 0.0], [0.5, 0.2, 0.3], [0.0, 0.0, 1.0]])
    labels = np.array([1, 2, 1])  # row 3: a tie between 0 and 1 goes to index 0
    assert topk_correct(logits, labels, (1, 2, 5)) == {1: 1, 2: 2, 5: 3}


def test_resolved_config_is_json():
    cfg = TrainConfig(model_options={"layer": "conv"})
    assert json.loads(json.dumps(cfg.resolved()))["model_options"] == {"layer": "conv"}


def test_another_model_does_not_inherit_the_presets_model_options():
    cfg = build_config("demo", None, {"model": "vit_tiny_cifar", "model_options.depth": 2})
    assert cfg.model_options == {"depth": 2} and cfg.dataset == "sample"
    assert build_config("demo").model_options["layer"] == "branching"
