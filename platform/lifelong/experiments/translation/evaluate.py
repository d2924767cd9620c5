"""Translating with a checkpoint and scoring BLEU (sacrebleu on detokenised output against
the raw references; its signature is recorded). Translation only reads the memory: nothing of
the test set is written while it is translated. The one-shot rare-word protocol is
``oneshot``.
"""

from __future__ import annotations

from typing import Sequence

from lifelong.experiments.translation.train import pad_batch
from lifelong.models.checkpoint import TranslationModel


def translate(tm: TranslationModel, sentences: Sequence[str], memory="model", beam: int = 1,
              batch_size: int = 64) -> list[str]:
    """Detokenised translations (greedy when beam is 1). ``memory``: "model" uses the
    checkpoint's memory, None none, or any memory object."""
    memory = tm.memory if memory == "model" else memory
    out = []
    for i in range(0, len(sentences), batch_size):
        src = pad_batch(tm.source_vocab.encode(sentences[i:i + batch_size]))
        ids = tm.model.greedy(src, memory) if beam == 1 else \
            tm.model.beam(src, memory, beam=beam)
        out += [tm.target_vocab.decode(x) for x in ids]
    return out


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[float, str]:
    """(corpus BLEU, sacrebleu signature), default 13a tokenisation, detokenised input."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return score.score, str(metric.get_signature())
