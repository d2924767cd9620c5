"""The translator on a tiny synthetic corpus: the loss falls with and without the memory, the
memory fills with target tokens and never resets, decoding (greedy and beam) is deterministic,
and a pair shown once to the memory changes the translation without a gradient step."""

import numpy as np
import pytest
import torch

from lifelong.errors import ConfigError
from lifelong.memory import Memory
from lifelong.models.translator import Translator, TranslatorConfig
from lifelong.models.vocab import EOS, PAD, SubwordVocab

WORDS = ["cat", "dog", "red", "big", "runs", "sleeps", "house", "tree", "blue", "small"]
GERMAN = {"cat": "katze", "dog": "hund", "red": "rot", "big": "gross", "runs": "rennt",
          "sleeps": "schlaeft", "house": "haus", "tree": "baum", "blue": "blau",
          "small": "klein"}


def corpus(n=48, seed=0):
    rng = np.random.default_rng(seed)
    src = [" ".join(rng.choice(WORDS, size=rng.integers(2, 5))) for _ in range(n)]
    return src, [" ".join(GERMAN[w] for w in s.split()) for s in src]


def batch(vocab, sentences):
    ids = vocab.encode(sentences)
    out = torch.full((len(ids), max(map(len, ids))), PAD, dtype=torch.long)
    for i, row in enumerate(ids):
        out[i, : len(row)] = torch.tensor(row)
    return out


@pytest.fixture(scope="module")
def data():
    src, tgt = corpus()
    sv = SubwordVocab.train(src + WORDS, size=40, model_type="word")
    tv = SubwordVocab.train(tgt + list(GERMAN.values()), size=40, model_type="word")
    return sv, tv, batch(sv, src), batch(tv, tgt)


def small(sv, tv, use_memory=True, seed=0):
    torch.manual_seed(seed)
    return Translator(len(sv), len(tv), TranslatorConfig(emb_dim=32, hidden=64, key_dim=16,
                                                         dropout=0.0, use_memory=use_memory))


def tiny_memory(tv, num_slots, choose_k):
    """A memory for ``small`` models (key_dim 16) whose values are tv's tokens."""
    return Memory(key_dim=16, num_slots=num_slots, num_values=len(tv), choose_k=choose_k)


def fit(model, memory, src, tgt, steps):
    """Adam steps on the whole corpus; the nll of each step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        out = model(src, tgt, memory)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.nll.item())
    return losses


@pytest.mark.parametrize("use_memory", [True, False])
def test_loss_falls_on_a_tiny_corpus(data, use_memory):
    sv, tv, src, tgt = data
    model = small(sv, tv, use_memory)
    memory = tiny_memory(tv, 256, 16) if use_memory else None
    losses = fit(model, memory, src, tgt, 40)
    assert losses[-1] < 0.3 * losses[0], losses[::8]
    if use_memory:
        assert int((memory.values >= 0).sum()) > 0  # written, never cleared
        out = model(src, tgt, memory, update=False)
        assert out.memory_loss.item() >= 0
        assert torch.equal(out.loss, out.nll + out.memory_loss)  # the margin loss is trained


def test_decoding_is_deterministic_and_learns_the_corpus(data):
    sv, tv, src, tgt = data
    model = small(sv, tv)
    memory = tiny_memory(tv, 256, 16)
    fit(model, memory, src, tgt, 60)
    state = {k: v.clone() for k, v in memory.state_dict().items()}
    greedy = model.greedy(src[:8], memory)
    assert greedy == model.greedy(src[:8], memory)
    assert model.beam(src[:4], memory, beam=3) == model.beam(src[:4], memory, beam=3)
    for k, v in memory.state_dict().items():  # decoding reads the memory, never writes it
        assert torch.equal(v, state[k]), k
    refs = [row[row != PAD].tolist() for row in tgt[:8]]
    hits = sum(g == r[: r.index(EOS)] for g, r in zip(greedy, refs))
    assert hits >= 6, (greedy, refs)
    assert all(tv.decode(g) for g in greedy)


def test_remember_writes_without_a_gradient_step(data):
    sv, tv, src, tgt = data
    model = small(sv, tv)
    memory = tiny_memory(tv, 64, 8)
    before = [p.clone() for p in model.parameters()]
    model.remember(src[:2], tgt[:2], memory)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert int((memory.values >= 0).sum()) == int((tgt[:2] != PAD).sum())
    assert all(p.grad is None for p in model.parameters())


def test_blind_positions_leave_the_true_token_to_the_memory(data):
    sv, tv, src, tgt = data
    model = small(sv, tv)
    memory = tiny_memory(tv, 256, 16)
    fit(model, memory, src, tgt, 30)
    blind = tgt != PAD
    model.eval()
    with torch.no_grad():
        seen = model(src, tgt, memory, update=False)
        blinded = model(src, tgt, memory, update=False, blind=blind)
        alone = model(src, tgt, None, update=False, blind=blind)
        decoder = model(src, tgt, None, update=False)
    floor = -np.log(1e-9)  # log p is clamped at 1e-9: what a blind decoder alone would get
    assert seen.nll.item() < blinded.nll.item() < floor - 1  # the memory supplies the tokens
    assert alone.nll.item() == decoder.nll.item()  # no memory: nothing to leave them to


@pytest.mark.parametrize("use_memory", [True, False])
def test_training_scores_equal_the_full_mixture_at_the_true_tokens(data, use_memory):
    """gold_log_probs (training, no [N, V] mixture) against log_probs (decoding) gathered."""
    sv, tv, src, tgt = data
    model = small(sv, tv, use_memory)
    memory = tiny_memory(tv, 512, 8) if use_memory else None
    fit(model, memory, src[:16], tgt[:16], 5)  # a memory with repeated values among the k
    model.eval()
    with torch.no_grad():
        o, features, scored = model.teacher_forced(src, tgt)
        labels = tgt[scored]
        blind = torch.rand(labels.shape, generator=torch.Generator().manual_seed(0)) < 0.3
        for b in (None, blind):
            full, loss_full = model.log_probs(o, features, memory, labels, blind=b)
            gold, loss_gold = model.gold_log_probs(o, features, labels, memory, blind=b)
            torch.testing.assert_close(gold, full.gather(1, labels[:, None])[:, 0])
            assert torch.equal(loss_gold, loss_full)


def test_source_keyed_query_splits_the_similarity_by_its_weight(data):
    """With source_key_weight w, cos(q1, q2) = w cos(aligned parts) + (1 - w) cos(state parts);
    two positions aligned to the same source piece are at least 2w - 1 similar, and the aligned
    part is the embedding of one piece of the sentence (hard alignment)."""
    sv, tv, src, tgt = data
    torch.manual_seed(0)
    config = TranslatorConfig(emb_dim=32, hidden=64, key_dim=16, dropout=0.0,
                              source_key_weight=0.75)
    model = Translator(len(sv), len(tv), config)
    features = torch.randn(6, 64 + 32)
    features[3:, 64:] = features[:3, 64:]  # the same aligned source, other decoder states
    q = model.memory_query(features)
    assert q.shape == (6, 16)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(6))
    aligned = torch.nn.functional.normalize(model.query_aligned(features[:, 64:]), dim=1)
    state = torch.nn.functional.normalize(model.query(features[:, :64]), dim=1)
    expected = 0.75 * aligned @ aligned.t() + 0.25 * state @ state.t()
    torch.testing.assert_close(q @ q.t(), expected)
    assert bool(((q[:3] * q[3:]).sum(1) >= 0.75 - 0.25 - 1e-6).all())
    o, features, scored = model.teacher_forced(src[:4], tgt[:4])
    aligned = features[:, 64:]  # each position's source half: one source piece's embedding
    rows = scored.nonzero()[:, 0]
    for n, row in enumerate(rows.tolist()):
        pieces = src[row][src[row] != PAD]
        assert any(torch.equal(aligned[n], model.src_emb.weight[p]) for p in pieces.tolist())
    memory = tiny_memory(tv, 256, 16)  # and it trains like the learned mix
    losses = fit(model, memory, src, tgt, 40)
    assert losses[-1] < 0.3 * losses[0], losses[::8]


def test_source_keyed_query_aligns_on_whole_source_words(data):
    """The source half is the sum of the aligned word's piece embeddings: with no piece
    beginning a word, a sentence is one word, and every position's source half is the sum of
    all its pieces' embeddings."""
    sv, tv, src, tgt = data
    config = TranslatorConfig(emb_dim=32, hidden=64, key_dim=16, dropout=0.0,
                              source_key_weight=0.5)
    model = Translator(len(sv), len(tv), config, source_word_starts=[False] * len(sv))
    assert model.state_dict()["source_word_starts"].sum() == 0  # saved with the weights
    _, features, scored = model.teacher_forced(src[:4], tgt[:4])
    rows = scored.nonzero()[:, 0]
    for n, row in enumerate(rows.tolist()):
        pieces = src[row][src[row] != PAD]
        torch.testing.assert_close(features[n, 64:], model.src_emb(pieces).sum(0))
    with pytest.raises(ConfigError):
        Translator(len(sv), len(tv), config, source_word_starts=[True] * 3)


@pytest.mark.parametrize("changes, key", [
    ({"source_key_weight": 0.0}, "source_key_weight"),
    ({"source_key_weight": 1.0}, "source_key_weight"),
    ({"source_key_weight": True}, "source_key_weight"),
    ({"source_key_weight": 0.5, "query_source": False}, "source_key_weight"),
    ({"source_key_weight": 0.5, "key_dim": 15}, "key_dim"),
])
def test_source_key_weight_rejects_bad_values(changes, key):
    with pytest.raises(ConfigError) as err:
        TranslatorConfig(**changes)
    assert err.value.key == key
