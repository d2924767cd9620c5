"""Subword vocabularies (sentencepiece), trained on a training split only and saved with the
model as the sentencepiece model's bytes (no file beside the checkpoint to lose)."""

from __future__ import annotations

import io
from typing import Iterable, Sequence

from lifelong.errors import ConfigError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class SubwordVocab:
    """A trained sentencepiece model: text <-> ids, with pad 0, unk 1, bos 2, eos 3.

    Build one with ``SubwordVocab.train``; restore one with ``SubwordVocab(model_bytes)``.
    """

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model = bytes(model)
        self.processor = spm.SentencePieceProcessor(model_proto=self.model)

    @classmethod
    def train(cls, sentences: Iterable[str], size: int = 8000,
              model_type: str = "bpe") -> "SubwordVocab":
        """Trains a vocabulary of ``size`` pieces (at most) on ``sentences``; one thread, so
        the same sentences give the same vocabulary."""
        import sentencepiece as spm

        if size < 8:
            raise ConfigError(f"vocabulary size must be >= 8, got {size}")
        sentences = [s for s in sentences if s.strip()]
        if not sentences:
            raise ConfigError("cannot train a vocabulary on no sentences")
        out = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences), model_writer=out, vocab_size=size,
            model_type=model_type, character_coverage=1.0, pad_id=PAD, unk_id=UNK, bos_id=BOS,
            eos_id=EOS, num_threads=1, hard_vocab_limit=False,
            minloglevel=2)
        return cls(out.getvalue())

    def __len__(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, sentences: Sequence[str], eos: bool = True) -> list[list[int]]:
        """Token ids of each sentence (ending in EOS unless ``eos`` is False)."""
        ids = self.processor.encode(list(sentences))
        return [s + [EOS] if eos else s for s in ids]

    def word_starts(self) -> list[bool]:
        """For each id, whether its piece begins a word (sentencepiece's '▁'); the
        special pieces (PAD, UNK, BOS, EOS) count as words of their own."""
        p = self.processor
        return [p.is_control(i) or p.is_unknown(i) or p.id_to_piece(i).startswith("\u2581")
                for i in range(len(self))]

    def pieces(self, sentence: str) -> list[str]:
        return self.processor.encode(sentence, out_type=str)

    def decode(self, ids: Sequence[int]) -> str:
        """The detokenised text of ids, up to the first EOS (PAD/BOS dropped)."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i not in (PAD, BOS):
                out.append(int(i))
        return self.processor.decode(out)
