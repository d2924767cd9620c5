"""Why a shown rare word is not used: the one-shot items examined piece by piece.

For each item the shown pair is written into the memory (as the protocol does) and the asked
sentence is decoded teacher-forced on its reference. At each subword piece of the word's
translation in that reference, with gold piece g:

* ``written``: the showing wrote a slot holding g (else the shown pair spells the word with
  other pieces and the memory cannot supply g);
* ``rank``: the rank of the best such slot among all filled slots by similarity to the asking
  query (1: the nearest); within ``choose_k`` the memory's answer holds it;
* ``gate``, ``p_mem``, ``p_dec``, ``p``: the gate and the probabilities of g from the memory,
  the decoder and their mixture; ``right``: g is the mixture's most likely piece.

Each item gets the first cause that stops it, in order: ``not written``, ``key not found``
(rank > choose_k), ``found, not trusted`` (found but g not the most likely piece at the first
piece), ``later piece`` (the first piece right, a later one wrong), ``free decoding`` (every
piece right when teacher-forced, yet the free translation misses the word), ``hit``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lifelong.experiments.translation.oneshot import RareWordItem, hit, show, stem
from lifelong.experiments.translation.showings import words
from lifelong.experiments.translation.train import pad_batch
from lifelong.models.checkpoint import TranslationModel

CAUSES = ("not written", "key not found", "found, not trusted", "later piece",
          "free decoding", "hit")


@dataclass(frozen=True)
class PieceDiagnosis:
    """One piece of an item's translation, at its position in the asked reference."""

    first: bool
    written: bool
    rank: int | None  # None when not written
    gate: float
    p_mem: float
    p_dec: float
    p: float
    right: bool


@dataclass(frozen=True)
class ItemDiagnosis:
    item: RareWordItem
    pieces: tuple[PieceDiagnosis, ...]  # empty: no translation found in the reference's pieces
    cause: str


def word_span(pieces: list[str], translations: tuple[str, ...]) -> range | None:
    """The positions of the first word of ``pieces`` (sentencepiece pieces, a word starts at
    '▁') whose letters stem-match one of ``translations``; None if none does."""
    starts = [i for i, p in enumerate(pieces) if p.startswith("\u2581")] + [len(pieces)]
    wanted = {stem(t) for t in translations}
    for a, b in zip(starts, starts[1:]):
        text = words("".join(pieces[a:b]).replace("\u2581", " "))
        if text and stem(text[0]) in wanted:
            return range(a, b)
    return None


@torch.no_grad()
def diagnose_item(tm: TranslationModel, item: RareWordItem, output_with: str) -> ItemDiagnosis:
    """Shows the item's pair, examines the asked reference's translation pieces, and restores
    the memory. ``output_with``: the item's free translation after the showing."""
    memory, model = tm.memory, tm.model
    saved = {k: v.clone() for k, v in memory.state_dict().items()}
    before_keys, before_values = memory.keys.clone(), memory.values.clone()
    was = model.training
    model.eval()
    try:
        show(tm, item)
        written = ((memory.keys != before_keys).any(1) | (memory.values != before_values))
        tgt_ids = tm.target_vocab.encode([item.asked_target])[0]
        span = word_span(tm.target_vocab.pieces(item.asked_target), item.translations)
        if span is None:
            return ItemDiagnosis(item, (), "not written")
        src = pad_batch(tm.source_vocab.encode([item.asked_source]))
        o, features, _ = model.teacher_forced(src, pad_batch([tgt_ids]))
        pos = torch.tensor(list(span))
        gold = torch.tensor([tgt_ids[i] for i in span])
        m = model.mixture(o[pos], features[pos], memory)
        p = (1 - m.gate) * m.p_dec + m.gate * m.p_mem
        q = F.normalize(model.memory_query(features[pos]), dim=1)
        filled = memory.values >= 0
        sims = (q @ memory.keys.t()).masked_fill(~filled, float("-inf"))  # [P, N]
        pieces = []
        for j, g in enumerate(gold.tolist()):
            holders = written & (memory.values == g)
            rank = None
            if bool(holders.any()):
                best = sims[j][holders].max()
                rank = int((sims[j] > best).sum()) + 1
            pieces.append(PieceDiagnosis(
                first=j == 0, written=rank is not None, rank=rank,
                gate=float(m.gate[j, 0]), p_mem=float(m.p_mem[j, g]),
                p_dec=float(m.p_dec[j, g]), p=float(p[j, g]),
                right=int(p[j].argmax()) == g))
    finally:
        memory.load_state_dict(saved)
        model.train(was)
    return ItemDiagnosis(item, tuple(pieces), _cause(pieces, memory.choose_k,
                                                     hit(item, output_with)))


def _cause(pieces: list[PieceDiagnosis], choose_k: int, hit_free: bool) -> str:
    if hit_free:
        return "hit"
    first = pieces[0]
    if not first.written:
        return "not written"
    if first.rank > choose_k:
        return "key not found"
    if not first.right:
        return "found, not trusted"
    if not all(piece.right for piece in pieces):
        return "later piece"
    return "free decoding"


def diagnosis_table(diagnoses: list[ItemDiagnosis], choose_k: int) -> dict:
    """The figures over all items: causes (fractions of items), and per piece kind (first /
    later): pieces, written, rank 1 and within choose_k (of those written), median rank, and
    the means of gate, p_mem, p_dec, p and right."""
    n = len(diagnoses)
    causes = Counter(d.cause for d in diagnoses)
    table: dict = {"items": n, "causes": {c: causes[c] / n if n else float("nan")
                                          for c in CAUSES}}
    for kind, want in (("first piece", True), ("later pieces", False)):
        ps = [p for d in diagnoses for p in d.pieces if p.first == want]
        ranks = [p.rank for p in ps if p.written]
        row = {"pieces": len(ps), "written": _mean([p.written for p in ps]),
               "rank 1": _mean([r == 1 for r in ranks]),
               f"rank <= {choose_k}": _mean([r <= choose_k for r in ranks]),
               "median rank": float(np.median(ranks)) if ranks else float("nan")}
        for key in ("gate", "p_mem", "p_dec", "p", "right"):
            row[key] = _mean([getattr(p, key) for p in ps])
        table[kind] = row
    return table


def _mean(xs) -> float:
    return float(np.mean(xs)) if len(xs) else float("nan")
