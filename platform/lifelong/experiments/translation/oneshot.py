"""The one-shot rare-word protocol: after one showing of a pair holding a rare word, does the
translator use the word in another sentence?

A *rare word* is an English word (lower-cased, letters only) held in at most
``max_train_count`` training sources. Each item asks one sentence holding the word and shows
the memory one *other* pair holding it first. Items come from three pools:

* ``test`` / ``val``: for each rare word of the split's sources, the first sentence of the split
  holding it is asked; the pair shown is another pair of the same split, else of the other
  evaluation split, else a training pair (one exposure long forgotten by a memory that
  training has overwritten many times).
* ``heldout``: the words whose two training pairs were held out of training
  (``heldout.hold_out``, recorded in the checkpoint): one is shown, the other asked.

Showing writes the shown pair's target tokens into the memory, keyed by the decoder's states,
with no gradient step. The word's translations are read off the references: the words of the
asked reference (4+ letters) whose first five letters also begin a word of the shown
reference and occur in at most ``max_train_count + 1`` training targets; a hit is an asked
output holding one of them (same five-letter stem); a word without such a candidate is not
scored. Each item is translated without and with its showing from the same memory state
(restored after each item), so items never help each other, and the asked sentence's own
reference is never in the memory when it is translated.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

from lifelong.experiments.translation.evaluate import bleu, translate
from lifelong.experiments.translation.heldout import HeldOutWord
from lifelong.experiments.translation.showings import words
from lifelong.experiments.translation.train import pad_batch
from lifelong.models.checkpoint import TranslationModel

STEM = 5  # letters of a German word compared (inflections differ between sentences)
Pairs = tuple[Sequence[str], Sequence[str]]  # (sources, targets)


def stem(word: str) -> str:
    return word[:STEM]


@dataclass(frozen=True)
class RareWordItem:
    """One scored rare word: the sentence asked, the pair shown, the German words counted as
    the word's translation, and how often training saw the word (its source sentences)."""

    word: str
    asked_from: str  # "test", "val" or "heldout"
    asked: int       # index in the asked pool (for heldout: in the training split)
    asked_source: str
    asked_target: str
    shown_from: str  # "test", "val", "train" or "heldout"
    shown_source: str
    shown_target: str
    translations: tuple[str, ...]
    train_count: int


class _Training:
    """The counts the items are defined by, over the pairs the model trained on."""

    def __init__(self, train: Pairs):
        self.pairs = train
        self.source_counts = Counter(w for s in train[0] for w in set(words(s)))
        self.stem_counts = Counter(stem(w) for s in train[1] for w in set(words(s)))

    def translations(self, asked_target: str, shown_target: str,
                     max_train_count: int) -> tuple[str, ...]:
        shown = {stem(x) for x in words(shown_target) if len(x) >= 4}
        return tuple(sorted({x for x in words(asked_target) if len(x) >= 4 and stem(x) in shown
                             and self.stem_counts[stem(x)] <= max_train_count + 1}))


def rare_word_items(train: Pairs, pools: Sequence[tuple[str, Pairs]],
                    max_train_count: int = 1) -> list[RareWordItem]:
    """Items asked from the first of ``pools`` (name, (sources, targets)), shown from the pools
    in order and then from ``train`` (the training pairs the model saw), sorted by word."""
    t = _Training(train)
    name, (sources, targets) = pools[0]
    asked_at: dict[str, int] = {}
    for i, sentence in enumerate(sources):
        for w in words(sentence):
            if t.source_counts[w] <= max_train_count:
                asked_at.setdefault(w, i)
    show_from = [*pools, ("train", train)]
    by_name = dict(show_from)
    items = []
    for w in sorted(asked_at):
        asked = asked_at[w]
        shown = next(((pool, j) for pool, (srcs, _) in show_from for j, s in enumerate(srcs)
                      if not (pool == name and j == asked) and w in words(s)), None)
        if shown is None:
            continue
        pool, j = shown
        shown_source, shown_target = by_name[pool][0][j], by_name[pool][1][j]
        cands = t.translations(targets[asked], shown_target, max_train_count)
        if cands and shown_target != targets[asked]:
            items.append(RareWordItem(w, name, asked, sources[asked], targets[asked], pool,
                                      shown_source, shown_target, cands, t.source_counts[w]))
    return items


def heldout_items(train: Pairs, split: Pairs, heldout: Sequence[HeldOutWord],
                  max_train_count: int = 1) -> list[RareWordItem]:
    """Items of the held-out words seen in at most ``max_train_count`` of the ``train`` pairs
    (those the model trained on); ``split`` is the whole training split, which the held-out
    ids index."""
    t = _Training(train)
    items = []
    for h in heldout:
        count = t.source_counts[h.word]
        if count > max_train_count:
            continue
        asked_target, shown_target = split[1][h.asked], split[1][h.shown]
        cands = t.translations(asked_target, shown_target, max_train_count)
        if cands and shown_target != asked_target:
            items.append(RareWordItem(h.word, "heldout", h.asked, split[0][h.asked],
                                      asked_target, "heldout", split[0][h.shown], shown_target,
                                      cands, count))
    return items


def hit(item: RareWordItem, output: str) -> bool:
    """Whether ``output`` holds one of the item's translations (same five-letter stem)."""
    return bool({stem(t) for t in item.translations} & {stem(x) for x in words(output)})


def translation_pieces(item: RareWordItem, target_vocab) -> int:
    """Subword pieces of the item's shortest counted translation (the target vocabulary's)."""
    return min(len(target_vocab.pieces(t)) for t in item.translations)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval (low, high) of a proportion hits / n ((nan, nan) for n 0)."""
    if n == 0:
        return float("nan"), float("nan")
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class RareWordResult:
    """The asked sentences' translations without and with the one showing."""

    items: list[RareWordItem]
    without: list[str]
    with_shown: list[str]

    @property
    def references(self) -> list[str]:
        return [item.asked_target for item in self.items]

    def hits(self, outputs: list[str]) -> list[bool]:
        return [hit(item, out) for item, out in zip(self.items, outputs)]

    def hit_rate(self, outputs: list[str]) -> float:
        hits = self.hits(outputs)
        return sum(hits) / len(hits) if hits else float("nan")

    def bleu(self, outputs: list[str]) -> float:
        return bleu(outputs, self.references)[0] if outputs else float("nan")

    def rows(self, groups: dict[str, Callable[[RareWordItem], bool]]) -> list[dict]:
        """One row per group (name -> which items): words, hit rates without / with the
        showing and their 95% Wilson intervals."""
        without, with_shown = self.hits(self.without), self.hits(self.with_shown)
        rows = []
        for name, member in groups.items():
            idx = [i for i, item in enumerate(self.items) if member(item)]
            row = {"group": name, "words": len(idx)}
            for key, hits in (("without", without), ("with", with_shown)):
                k = sum(hits[i] for i in idx)
                row[f"hit_{key}"] = k / len(idx) if idx else float("nan")
                row[f"hit_{key}_low"], row[f"hit_{key}_high"] = wilson(k, len(idx))
            rows.append(row)
        return rows


def breakdown(items: Sequence[RareWordItem], target_vocab) -> dict[str, Callable]:
    """The groups a rare-word table reports: all items, by pool, by training frequency (0, 1,
    2-5, 6+) and by the translation's subword pieces (1, 2, 3+)."""
    pieces = {id(item): translation_pieces(item, target_vocab) for item in items}
    groups: dict[str, Callable] = {"all": lambda item: True}
    for pool in ("test", "val", "heldout"):
        groups[f"asked from {pool}"] = lambda item, pool=pool: item.asked_from == pool
    for name, low, high in (("0", 0, 0), ("1", 1, 1), ("2-5", 2, 5), ("6+", 6, 10**9)):
        groups[f"seen {name} times"] = lambda item, a=low, b=high: a <= item.train_count <= b
    for name, low, high in (("1 piece", 1, 1), ("2 pieces", 2, 2), ("3+ pieces", 3, 10**9)):
        groups[name] = lambda item, a=low, b=high: a <= pieces[id(item)] <= b
    return groups


def run_rare_words(tm: TranslationModel, items: list[RareWordItem], beam: int = 1,
                   on_write: Callable[[str], None] | None = None,
                   on_translate: Callable[[RareWordItem], None] | None = None,
                   progress: Callable[[], None] | None = None) -> RareWordResult:
    """Translates each item's asked sentence without and with showing its pair, from the same
    memory state.

    Args:
        beam: beam size (1: greedy).
        on_write, on_translate: called with the target text written into the memory / the
            item about to be translated (tests use them to check that no reference leaks).
        progress: called once per item done.
    """
    memory = tm.memory
    without, with_shown = [], []
    for item in items:
        if on_translate:
            on_translate(item)
        without += translate(tm, [item.asked_source], beam=beam)
        if memory is None:  # nothing to show a model without memory
            with_shown += without[-1:]
        else:
            saved = {k: v.clone() for k, v in memory.state_dict().items()}
            show(tm, item, on_write)
            if on_translate:
                on_translate(item)
            with_shown += translate(tm, [item.asked_source], beam=beam)
            memory.load_state_dict(saved)
        if progress:
            progress()
    return RareWordResult(items, without, with_shown)


def show(tm: TranslationModel, item: RareWordItem,
         on_write: Callable[[str], None] | None = None) -> None:
    """Writes the item's shown pair into the checkpoint's memory (no gradient step)."""
    src = pad_batch(tm.source_vocab.encode([item.shown_source]))
    tgt = pad_batch(tm.target_vocab.encode([item.shown_target]))
    if on_write:
        on_write(item.shown_target)
    tm.model.remember(src, tgt, tm.memory)
