"""Training and evaluation of zoo models: config and presets, the loop, checkpoints, metrics and plots."""
from .checkpoint import load_checkpoint, save_checkpoint
from .config import PRESETS, TrainConfig, build_config
from .evaluate import evaluate
from .loop import RunResult, Trainer, restore_tree

__all__ = ["PRESETS", "RunResult", "TrainConfig", "Trainer", "build_config", "evaluate", "load_checkpoint",
           "restore_tree", "save_checkpoint"]
