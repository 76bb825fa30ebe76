"""The run layer every training task shares, and classification on top of it.

- :mod:`.distributed`: torchrun's context, the process group, autocast;
- :mod:`.checkpointing`: the run directory and the :class:`CheckpointSaver` (save-every timer,
  TensorBoard, preemption);
- :mod:`.loop`: :func:`train_one_epoch` and :func:`fit`, for any :class:`Task`;
- :mod:`.classification`: classification training and evaluation (``scalenet train``);
- :mod:`.pool`: worker processes for small trainings side by side.
"""

from .checkpointing import (
    DEFAULT_SAVE_EVERY, PREEMPTED_EXIT_CODE, CheckpointSaver, NoCheckpointLeft, Preempted, RunDir, check_same_run,
    describe_position,
)
from .classification import (
    CHECKPOINT_FORMAT, PRESETS, TrainConfig, TrainResult, cosine_with_warmup, evaluate, evaluate_checkpoint,
    is_training_checkpoint, load_run_checkpoint, model_from_checkpoint, start_from, train,
)
from .distributed import DistContext, autocast, is_main_process, on_main_rank, setup_distributed, under_torchrun
from .loop import EpochTally, FitResult, Task, TrainingError, Updater, batches, fit, format_rate, progress_bar, train_one_epoch
from .pool import auto_jobs, check_jobs, gpu_slots, in_processes, jobs_for

__all__ = [
    "DistContext", "setup_distributed", "is_main_process", "on_main_rank", "under_torchrun", "autocast",
    "RunDir", "CheckpointSaver", "NoCheckpointLeft", "Preempted", "PREEMPTED_EXIT_CODE", "DEFAULT_SAVE_EVERY",
    "describe_position", "check_same_run",
    "Updater", "Task", "TrainingError", "EpochTally", "FitResult", "train_one_epoch", "fit", "batches",
    "progress_bar", "format_rate",
    "TrainConfig", "TrainResult", "PRESETS", "CHECKPOINT_FORMAT", "train", "evaluate", "evaluate_checkpoint",
    "load_run_checkpoint", "is_training_checkpoint", "model_from_checkpoint", "cosine_with_warmup", "start_from",
    "auto_jobs", "check_jobs", "gpu_slots", "in_processes", "jobs_for",
]
