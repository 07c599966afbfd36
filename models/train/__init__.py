"""Training and evaluation of zoo models: config and presets, the loop, checkpoints, metrics and plots."""
from .checkpoint import CheckpointCorrupt, CheckpointWriteError, load_checkpoint, save_checkpoint
from .config import PRESETS, TrainConfig, build_config
from .evaluate import evaluate
from .loop import RunResult, Trainer, TrainingDiverged, TrainingInterrupted, restore_tree
from .runfolder import RunFolderBusy

__all__ = ["PRESETS", "CheckpointCorrupt", "CheckpointWriteError", "RunFolderBusy", "RunResult", "TrainConfig",
           "Trainer", "TrainingDiverged", "TrainingInterrupted", "build_config", "evaluate", "load_checkpoint",
           "restore_tree", "save_checkpoint"]
