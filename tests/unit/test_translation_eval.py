"""The rare-word protocol and BLEU on a tiny translator: items are found as defined (test, val
and held-out pools), no asked sentence's reference is ever in the memory when it is translated,
each word starts from the same memory state, intervals are Wilson's, the diagnosis reads the
model's own mixture, and BLEU is sacrebleu's."""

import math

import pytest
import torch

from lifelong.memory import Memory
from lifelong.models.translator import Translator, TranslatorConfig
from lifelong.models.vocab import SubwordVocab
from lifelong.experiments.translation.train import pad_batch
from lifelong.models.checkpoint import TranslationModel
from lifelong.experiments.translation.diagnose import (CAUSES, diagnose_item, diagnosis_table,
                                                       word_span)
from lifelong.experiments.translation.evaluate import bleu, translate
from lifelong.experiments.translation.heldout import HeldOutWord, held_out_pairs, hold_out
from lifelong.experiments.translation.oneshot import (breakdown, heldout_items, rare_word_items,
                                                      run_rare_words, wilson)
from test_translator import GERMAN, corpus

GERMAN = {**GERMAN, "zebra": "zebrafell", "lion": "loewe"}
TEST = [("big zebra sleeps", "gross zebrafell schlaeft"),
        ("small zebra runs", "klein zebrafell rennt"),
        ("the lion runs", "der loewe rennt"),
        ("dog runs", "hund rennt")]


class SpyMemory(Memory):
    """Records the label sequences written since the last load_state_dict."""

    def query(self, q, labels=None, update=True, **kw):
        if labels is not None and update:
            self.written.append(labels.tolist())
        return super().query(q, labels, update, **kw)

    def load_state_dict(self, state, *args, **kw):
        self.written = []
        return super().load_state_dict(state, *args, **kw)


@pytest.fixture(scope="module")
def model():
    src, tgt = corpus(64)
    src, tgt = src + ["zebra runs", "lion sleeps"], tgt + ["zebrafell rennt", "loewe schlaeft"]
    sv = SubwordVocab.train(src + [s for s, _ in TEST] + ["the"], 48, model_type="word")
    tv = SubwordVocab.train(tgt + [t for _, t in TEST] + ["der"], 48, model_type="word")
    torch.manual_seed(0)
    net = Translator(len(sv), len(tv), TranslatorConfig(emb_dim=32, hidden=64, key_dim=16,
                                                        dropout=0.0))
    memory = SpyMemory(key_dim=16, num_slots=512, num_values=len(tv), choose_k=8)
    memory.written = []
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    s, t = pad_batch(sv.encode(src)), pad_batch(tv.encode(tgt))
    for _ in range(30):
        out = net(s, t, memory)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return TranslationModel(net, sv, tv, memory), (src, tgt)


def test_items_follow_the_definition(model):
    _, train = model
    test = ([s for s, _ in TEST], [t for _, t in TEST])
    items = rare_word_items(train, [("test", test)], max_train_count=1)
    assert [(i.word, i.asked, i.shown_from, i.translations, i.train_count) for i in items] == [
        ("lion", 2, "train", ("loewe",), 1),          # shown: its one training pair
        ("zebra", 0, "test", ("zebrafell",), 1)]      # shown: the other test pair holding it
    assert items[1].shown_target == "klein zebrafell rennt"
    assert items[1].asked_source == "big zebra sleeps" and items[1].asked_from == "test"
    assert rare_word_items(train, [("test", test)], max_train_count=0) == []  # seen once
    # asked from val, shown from the other evaluation split before training
    val = (["a zebra sleeps"], ["ein zebrafell schlaeft"])
    items = rare_word_items(train, [("val", val), ("test", test)], max_train_count=1)
    assert [(i.word, i.asked_from, i.shown_from) for i in items] == [("zebra", "val", "test")]


def test_held_out_words_leave_training_and_are_asked_from_their_pairs(model):
    _, (src, tgt) = model
    sources = src + ["the okapi runs", "a red okapi sleeps", "okapi house"]
    targets = tgt + ["der okapitier rennt", "ein rot okapitier schlaeft", "okapitier haus"]
    chosen = hold_out(sources, count=50, max_count=3, seed=0)
    okapi = [h for h in chosen if h.word == "okapi"]
    assert len(okapi) == 1 and {okapi[0].shown, okapi[0].asked} < set(range(len(src), len(src) + 3))
    assert hold_out(sources, count=50, max_count=3, seed=0) == chosen  # seeded
    removed = held_out_pairs(chosen)
    assert len(removed) == 2 * len(chosen)  # the words' pairs are disjoint
    for h in chosen:  # every chosen word was held in 2..3 sources
        assert 2 <= sum(h.word in s.split() for s in sources) <= 3
    assert HeldOutWord.from_list(okapi[0].to_list()) == okapi[0]
    with pytest.raises(Exception, match="held-out word"):
        HeldOutWord.from_list(["okapi", -1, 3])
    kept = ([s for i, s in enumerate(sources) if i not in removed],
            [t for i, t in enumerate(targets) if i not in removed])
    items = heldout_items(kept, (sources, targets), okapi, max_train_count=1)
    assert [(i.word, i.asked_from, i.train_count, i.translations) for i in items] == [
        ("okapi", "heldout", 1, ("okapitier",))]  # the third okapi pair stayed in training
    assert heldout_items(kept, (sources, targets), okapi, max_train_count=0) == []
    with pytest.raises(Exception):
        hold_out(sources, count=-1)


def test_wilson_intervals_and_groups(model):
    lo, hi = wilson(7, 10)
    assert lo < 0.7 < hi and lo == pytest.approx(0.3968, abs=1e-4)
    assert hi == pytest.approx(0.8922, abs=1e-4)
    assert wilson(0, 20)[0] == 0.0 and all(math.isnan(x) for x in wilson(0, 0))
    tm, train = model
    test = ([s for s, _ in TEST], [t for _, t in TEST])
    items = rare_word_items(train, [("test", test)], max_train_count=1)
    groups = breakdown(items, tm.target_vocab)
    assert sum(groups["all"](i) for i in items) == 2
    assert sum(groups["seen 1 times"](i) for i in items) == 2
    assert sum(groups["asked from val"](i) for i in items) == 0


def test_no_reference_leaks_and_every_word_starts_from_the_same_memory(model):
    tm, train = model
    test_src, test_tgt = [s for s, _ in TEST], [t for _, t in TEST]
    items = rare_word_items(train, [("test", (test_src, test_tgt))], max_train_count=1)
    memory = tm.memory
    memory.load_state_dict(memory.state_dict())  # start recording
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    translated = []

    def on_translate(item):
        translated.append(item.asked)
        reference = tm.target_vocab.encode([item.asked_target])[0]
        assert reference not in memory.written, "the asked reference is in memory"

    result = run_rare_words(tm, items, on_translate=on_translate)
    assert translated == [2, 2, 0, 0]  # each asked without, then with its showing
    assert len(result.without) == len(result.with_shown) == 2
    for k, v in memory.state_dict().items():  # restored after every word
        assert torch.equal(v, before[k]), k
    assert 0 <= result.hit_rate(result.with_shown) <= 1
    rows = result.rows(breakdown(items, tm.target_vocab))
    assert rows[0]["group"] == "all" and rows[0]["words"] == 2
    assert rows[0]["hit_with_low"] <= rows[0]["hit_with"] <= rows[0]["hit_with_high"]


def test_diagnosis_reads_the_showing_from_the_memory(model):
    tm, train = model
    test = ([s for s, _ in TEST], [t for _, t in TEST])
    items = rare_word_items(train, [("test", test)], max_train_count=1)
    assert word_span(["\u2581der", "\u2581zebra", "fell", "\u2581rennt"], ("zebrafell",)) == \
        range(1, 3)
    assert word_span(["\u2581der", "\u2581hund"], ("zebrafell",)) is None
    memory = tm.memory
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    result = run_rare_words(tm, items)
    diagnoses = [diagnose_item(tm, i, out) for i, out in zip(items, result.with_shown)]
    for k, v in memory.state_dict().items():  # restored after every item
        assert torch.equal(v, before[k]), k
    for d in diagnoses:
        assert d.cause in CAUSES
        assert d.pieces and d.pieces[0].first
        for p in d.pieces:
            # the word is in the shown pair: the showing wrote it, and right after a showing
            # its key is the nearest (same word, same context) or near
            assert p.written and p.rank >= 1
            assert 0 <= p.gate <= 1 and 0 <= p.p <= 1
            assert p.p == pytest.approx((1 - p.gate) * p.p_dec + p.gate * p.p_mem, abs=1e-5)
    table = diagnosis_table(diagnoses, memory.choose_k)
    assert table["items"] == 2 and sum(table["causes"].values()) == pytest.approx(1.0)
    assert table["first piece"]["written"] == 1.0


def test_translation_reads_the_memory_only_and_bleu_is_sacrebleus(model):
    tm, _ = model
    memory = tm.memory
    memory.load_state_dict(memory.state_dict())
    hyps = translate(tm, [s for s, _ in TEST], beam=2)
    assert hyps == translate(tm, [s for s, _ in TEST], beam=2) and memory.written == []
    same = "der hund rennt über die wiese ."
    score, signature = bleu([same], [same])
    assert score == pytest.approx(100.0) and signature.startswith("nrefs:1")
    assert bleu(["ein baum steht im park ."], [same])[0] < 10


def test_checkpoints_round_trip_and_older_ones_still_load(model, tmp_path):
    tm, (src, _) = model
    ids = pad_batch(tm.source_vocab.encode(src[:4]))
    back = TranslationModel.load(tm.save(tmp_path / "t.pt"))
    assert back.model.greedy(ids, back.memory) == tm.model.greedy(ids, tm.memory)
    # a checkpoint written before query_source / gate_on_memory existed
    torch.manual_seed(1)
    old_config = TranslatorConfig(emb_dim=32, hidden=64, key_dim=16, query_source=False,
                                  gate_on_memory=False)
    old = TranslationModel(Translator(len(tm.source_vocab), len(tm.target_vocab), old_config),
                           tm.source_vocab, tm.target_vocab, None)
    payload = torch.load(old.save(tmp_path / "old.pt"), weights_only=True)
    del payload["model_config"]["query_source"], payload["model_config"]["gate_on_memory"]
    torch.save(payload, tmp_path / "old.pt")
    loaded = TranslationModel.load(tmp_path / "old.pt")
    assert not loaded.model.config.query_source and not loaded.model.config.gate_on_memory
    assert loaded.model.greedy(ids) == old.model.greedy(ids)
