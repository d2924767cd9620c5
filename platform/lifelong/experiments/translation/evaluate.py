"""Evaluating a translator: BLEU on a test split, and the one-shot rare-word protocol.

BLEU: sacrebleu on detokenised output against the raw references (its signature is recorded).
Translation only reads the memory: nothing of the test set is written while it is translated.

One-shot rare words. A *rare word* is an English word (lower-cased, letters only) that occurs
at most ``max_train_count`` times in the training sources. For each rare word of a test source,
the first test sentence holding it is *asked* (translated); another sentence pair holding it is
*shown* first: another test pair, else a validation pair, else its one training pair (Multi30k's
test set rarely repeats a rare word, so most shown pairs come from the training data: one
exposure long forgotten by a memory that training has overwritten many times). Showing writes
the pair's target tokens into the memory, keyed by the decoder's states, with no gradient step.
The word's reference translation is read off the references: the words of the asked reference
(4+ letters) whose first five letters also begin a word of the shown reference and occur in at
most ``max_train_count + 1`` training targets; a hit is an asked output containing one of them
(same five-letter stem); words without such a candidate are not scored. Each word is measured
without and with its showing from the same memory state (restored after each word), so words
never help each other, and the asked sentence's own reference is never in the memory when it is
translated.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from lifelong.experiments.translation.showings import words
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


STEM = 5  # letters of a German word compared (inflections differ between sentences)


def _stem(word: str) -> str:
    return word[:STEM]


@dataclass(frozen=True)
class RareWordItem:
    """One scored rare word: the pair shown, the test sentence asked, and the German words
    counted as the word's translation."""

    word: str
    shown_source: str
    shown_target: str
    shown_from: str  # "test", "val" or "train"
    asked: int       # index in the test split
    translations: tuple[str, ...]


def rare_word_items(train: tuple[Sequence[str], Sequence[str]],
                    test: tuple[Sequence[str], Sequence[str]],
                    val: tuple[Sequence[str], Sequence[str]] = ((), ()),
                    max_train_count: int = 1) -> list[RareWordItem]:
    """The protocol's items, sorted by word. Each of train / test / val is (sources,
    targets)."""
    src_counts = Counter(w for s in train[0] for w in words(s))
    stem_counts = Counter(_stem(w) for s in train[1] for w in set(words(s)))
    pools = [("test", test), ("val", val), ("train", train)]
    asked_at: dict[str, int] = {}
    for i, sentence in enumerate(test[0]):
        for w in words(sentence):
            if src_counts[w] <= max_train_count:
                asked_at.setdefault(w, i)
    items = []
    for w in sorted(asked_at):
        asked = asked_at[w]
        shown = next(((name, j) for name, (srcs, _) in pools for j, s in enumerate(srcs)
                      if not (name == "test" and j == asked) and w in words(s)), None)
        if shown is None:
            continue
        name, j = shown
        shown_source, shown_target = dict(pools)[name][0][j], dict(pools)[name][1][j]
        shown_stems = {_stem(x) for x in words(shown_target) if len(x) >= 4}
        cands = tuple(sorted({x for x in words(test[1][asked]) if len(x) >= 4 and
                              _stem(x) in shown_stems and
                              stem_counts[_stem(x)] <= max_train_count + 1}))
        if cands and shown_target != test[1][asked]:
            items.append(RareWordItem(w, shown_source, shown_target, name, asked, cands))
    return items


@dataclass
class RareWordResult:
    """Hits and BLEU on the asked sentences, without and with the one showing."""

    items: list[RareWordItem]
    without: list[str]
    with_shown: list[str]
    references: list[str]

    def hit_rate(self, outputs: list[str]) -> float:
        hits = [bool({_stem(t) for t in item.translations} & {_stem(x) for x in words(out)})
                for item, out in zip(self.items, outputs)]
        return sum(hits) / len(hits) if hits else float("nan")

    def bleu(self, outputs: list[str]) -> float:
        return bleu(outputs, self.references)[0] if outputs else float("nan")


def run_rare_words(tm: TranslationModel, items: list[RareWordItem],
                   test_source: Sequence[str], test_target: Sequence[str],
                   on_write: Callable[[str], None] | None = None,
                   on_translate: Callable[[int], None] | None = None) -> RareWordResult:
    """Measures each item without and with showing its pair, from the same memory state.

    Args:
        on_write, on_translate: called with the target text written into the memory / the test
            index translated (tests use them to check that no reference leaks).
    """
    memory = tm.memory
    without, with_shown = [], []
    for item in items:
        if on_translate:
            on_translate(item.asked)
        without += translate(tm, [test_source[item.asked]])
        if memory is None:  # nothing to show a model without memory
            with_shown += without[-1:]
            continue
        saved = {k: v.clone() for k, v in memory.state_dict().items()}
        src = pad_batch(tm.source_vocab.encode([item.shown_source]))
        tgt = pad_batch(tm.target_vocab.encode([item.shown_target]))
        if on_write:
            on_write(item.shown_target)
        tm.model.remember(src, tgt, memory)
        if on_translate:
            on_translate(item.asked)
        with_shown += translate(tm, [test_source[item.asked]])
        memory.load_state_dict(saved)
    return RareWordResult(items, without, with_shown,
                          [test_target[item.asked] for item in items])


def restore_check(memory) -> Callable[[], bool]:
    """A closure telling whether the memory still holds the state it had when made."""
    saved = {k: v.clone() for k, v in memory.state_dict().items()}
    return lambda: all(torch.equal(v, saved[k]) for k, v in memory.state_dict().items())
