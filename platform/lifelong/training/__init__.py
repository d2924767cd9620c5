"""Training and evaluation of the Omniglot one-shot model (jobs in ``lifelong.training.jobs``)."""

from lifelong.training.checkpoint import load_encoder, save_encoder
from lifelong.training.evaluate import (
    EvalSettings,
    MemoryConfig,
    ShotAccuracy,
    accuracy_table,
    evaluate_encoder,
)
from lifelong.training.omniglot import OmniglotTrainJob, TrainResult, train_omniglot

__all__ = ["EvalSettings", "MemoryConfig", "OmniglotTrainJob", "ShotAccuracy", "TrainResult",
           "accuracy_table", "evaluate_encoder", "load_encoder", "save_encoder", "train_omniglot"]
