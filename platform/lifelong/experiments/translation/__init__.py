"""Multi30k English-German translation with the life-long memory on the decoder (Kaiser et al.
2017, section 4.3): show-then-ask training, BLEU and the one-shot rare-word evaluation; the
jobs behind ``lifelong train|evaluate translation``."""

from lifelong.experiments.translation.config import TranslationEvalJob, TranslationJob
from lifelong.experiments.translation.train import train_translation

__all__ = ["TranslationEvalJob", "TranslationJob", "train_translation"]
