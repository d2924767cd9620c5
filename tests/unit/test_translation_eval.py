"""The rare-word protocol and BLEU on a tiny translator: items are found as defined, no asked
sentence's reference is ever in the memory when it is translated, each word starts from the same
memory state, and BLEU is sacrebleu's."""

import pytest
import torch

from lifelong.memory import Memory
from lifelong.models.translator import Translator, TranslatorConfig
from lifelong.models.vocab import SubwordVocab
from lifelong.experiments.translation.train import pad_batch
from lifelong.models.checkpoint import TranslationModel
from lifelong.experiments.translation.evaluate import (
    bleu,
    rare_word_items,
    run_rare_words,
    translate,
)
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
    items = rare_word_items(train, test, max_train_count=1)
    assert [(i.word, i.asked, i.shown_from, i.translations) for i in items] == [
        ("lion", 2, "train", ("loewe",)),          # shown: its one training pair
        ("zebra", 0, "test", ("zebrafell",))]      # shown: the other test pair holding it
    assert items[1].shown_target == "klein zebrafell rennt"
    assert rare_word_items(train, test, max_train_count=0) == []  # both seen once in training


def test_no_reference_leaks_and_every_word_starts_from_the_same_memory(model):
    tm, train = model
    test_src, test_tgt = [s for s, _ in TEST], [t for _, t in TEST]
    items = rare_word_items(train, (test_src, test_tgt), max_train_count=1)
    memory = tm.memory
    memory.load_state_dict(memory.state_dict())  # start recording
    before = {k: v.clone() for k, v in memory.state_dict().items()}
    references = {i: tm.target_vocab.encode([t])[0] for i, t in enumerate(test_tgt)}
    translated = []

    def on_translate(asked):
        translated.append(asked)
        assert references[asked] not in memory.written, "the asked reference is in memory"

    result = run_rare_words(tm, items, test_src, test_tgt, on_translate=on_translate)
    assert translated == [2, 2, 0, 0]  # each asked without, then with its showing
    assert len(result.without) == len(result.with_shown) == 2
    for k, v in memory.state_dict().items():  # restored after every word
        assert torch.equal(v, before[k]), k
    assert 0 <= result.hit_rate(result.with_shown) <= 1


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
