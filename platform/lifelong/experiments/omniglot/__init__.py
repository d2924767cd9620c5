"""Omniglot one-shot learning (Kaiser et al. 2017, section 4.1): the encoder trained with the
memory loss (episodic or life-long against a shared memory), the paper's k-shot evaluation and
the life-long retention evaluation; the jobs behind ``lifelong train|evaluate omniglot``,
``lifelong evaluate retention`` and ``lifelong demo``."""

from lifelong.experiments.omniglot.config import OmniglotEvaluateJob, OmniglotTrainJob
from lifelong.experiments.omniglot.evaluate import (
    EvalSettings,
    ShotAccuracy,
    accuracy_table,
    evaluate_encoder,
)
from lifelong.experiments.omniglot.train import TrainResult, train_omniglot

__all__ = ["EvalSettings", "OmniglotEvaluateJob", "OmniglotTrainJob", "ShotAccuracy",
           "TrainResult", "accuracy_table", "evaluate_encoder", "train_omniglot"]
