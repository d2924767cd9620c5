"""A sequence-to-sequence translator whose decoder consults the life-long memory.

Encoder: embeddings and a bidirectional GRU. Decoder: a GRU over the target prefix with Luong
("general") attention on the encoder states, giving an output state o_t [H] per position. The
decoder's own distribution is softmax(W o_t). The memory is queried with
q_t = W_q [o_t; e_t] [key_dim], where e_t is the attention-weighted average of the *source
embeddings* (not the encoder's contextual states): at a word the decoder is translating, e_t is
nearly that word's own embedding in any sentence, so a rare word shown once in one sentence
is found again in another (``query_source``; without it q_t = W_q o_t). With
``source_key_weight`` w the query is two unit halves instead of one learned mix,

    q_t = [sqrt(w) * n(W_s a_t); sqrt(1 - w) * n(W_o o_t)],   n(x) = x / |x|,

where a_t is the sum of the embeddings of the pieces of the source *word* holding the piece
the attention weighs most (hard alignment: the same vector wherever the word occurs), so that
the similarity of two queries is w * cos(source parts) + (1 - w) * cos(decoder parts): two
positions aligned to the same source word share w of it whatever the decoder's state (a
common piece of a rare word does not: the word's other pieces are in the sum), and the decoder
part tells the pieces of one target word apart. The memory's values are
target token ids; its softmax over the k neighbours, scattered onto their tokens, is p_mem. A
learned gate mixes them:

    p(y_t) = (1 - g_t) * p_dec(y_t) + g_t * p_mem(y_t),
    g_t = sigmoid(w_g . o_t + v_g . [s_t, max p_mem, max p_dec] + b_g)

where s_t is the similarity of the nearest neighbour (``gate_on_memory``): the gate sees how
close the memory's answer is and how sure the decoder is, so it can open for a close match the
decoder does not know. g_t = 0 where the memory returned no filled slot. Training adds the
memory's margin loss to the translation loss and writes (q_t, y_t) into the memory, which is
never cleared. With a local ``Memory`` the neighbours' softmax carries a gradient to the query;
with a ``ShardedMemory`` it is a constant (the keys stay on the shards) and the query learns
from the margin loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.config import check_int
from lifelong.errors import ConfigError
from lifelong.models.vocab import BOS, EOS, PAD


@dataclass(frozen=True)
class TranslatorConfig:
    """Sizes of the translator (section ``model``).

    Attributes:
        emb_dim, hidden: embedding and GRU sizes (the encoder's GRU has hidden / 2 per
            direction).
        dropout: on embeddings and output states during training.
        key_dim: size of the memory's keys (the query projection's output).
        use_memory: False builds the baseline: no query, no gate, the decoder alone.
        gate_bias: initial bias of the gate (negative: trust the decoder at first).
        query_source: the query also sees the attention-weighted source embeddings.
        gate_on_memory: the gate also sees the nearest similarity and both distributions'
            peaks.
        source_key_weight: None, or the share w in (0, 1) of the query's similarity fixed to
            the aligned source embeddings (needs ``query_source``; key_dim / 2 dimensions
            each).
    """

    emb_dim: int = 256
    hidden: int = 512
    dropout: float = 0.2
    key_dim: int = 128
    use_memory: bool = True
    gate_bias: float = -2.0
    query_source: bool = True
    gate_on_memory: bool = True
    source_key_weight: float | None = None

    def __post_init__(self) -> None:
        for name in ("emb_dim", "hidden", "key_dim"):
            check_int(name, getattr(self, name))
        if self.hidden % 2:
            raise ConfigError("must be even (two encoder directions)", key="hidden")
        if not 0 <= self.dropout < 1:
            raise ConfigError("must lie in [0, 1)", key="dropout")
        w = self.source_key_weight
        if w is not None:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 < w < 1:
                raise ConfigError(f"must be null or a number in (0, 1), got {w!r}",
                                  key="source_key_weight")
            if not self.query_source:
                raise ConfigError("needs query_source: true (the aligned source embeddings)",
                                  key="source_key_weight")
            if self.key_dim < 2 or self.key_dim % 2:
                raise ConfigError("must be even with source_key_weight (two halves)",
                                  key="key_dim")


@dataclass
class TranslatorOutput:
    """loss = nll + memory_loss (scalars); tokens: positions scored."""

    loss: torch.Tensor
    nll: torch.Tensor
    memory_loss: torch.Tensor
    tokens: int


class Translator(nn.Module):
    """Args:
        src_vocab, tgt_vocab: vocabulary sizes; config: ``TranslatorConfig``.
        source_word_starts: [src_vocab] bools, which source pieces begin a word
            (``SubwordVocab.word_starts``); used with ``source_key_weight`` and saved with the
            weights (default: every piece a word).
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, config: TranslatorConfig,
                 source_word_starts=None):
        super().__init__()
        c = self.config = config
        self.tgt_vocab = tgt_vocab
        self.src_emb = nn.Embedding(src_vocab, c.emb_dim, padding_idx=PAD)
        self.tgt_emb = nn.Embedding(tgt_vocab, c.emb_dim, padding_idx=PAD)
        self.encoder = nn.GRU(c.emb_dim, c.hidden // 2, batch_first=True, bidirectional=True)
        self.bridge = nn.Linear(c.hidden, c.hidden)
        self.decoder = nn.GRU(c.emb_dim, c.hidden, batch_first=True)
        self.attn = nn.Linear(c.hidden, c.hidden, bias=False)
        self.combine = nn.Linear(2 * c.hidden, c.hidden)
        self.out = nn.Linear(c.hidden, tgt_vocab)
        self.drop = nn.Dropout(c.dropout)
        if c.use_memory:
            if c.source_key_weight is None:
                self.query = nn.Linear(c.hidden + (c.emb_dim if c.query_source else 0),
                                       c.key_dim)
            else:
                self.query = nn.Linear(c.hidden, c.key_dim // 2)
                self.query_aligned = nn.Linear(c.emb_dim, c.key_dim // 2)
                starts = (torch.ones(src_vocab, dtype=torch.bool) if source_word_starts is None
                          else torch.as_tensor(source_word_starts, dtype=torch.bool))
                if starts.shape != (src_vocab,):
                    raise ConfigError(f"source_word_starts has shape {tuple(starts.shape)}, "
                                      f"expected ({src_vocab},)")
                self.register_buffer("source_word_starts", starts)
            self.gate = nn.Linear(c.hidden, 1)
            nn.init.constant_(self.gate.bias, c.gate_bias)
            if c.gate_on_memory:
                self.gate_memory = nn.Linear(3, 1, bias=False)

    # ------------------------------------------------------------------------------ network
    def encode(self, src: torch.Tensor) -> "Encoded":
        """src [B, S] ids (PAD-padded) -> the encoder's states, mask, embeddings and h0."""
        mask = src != PAD
        lengths = mask.sum(1).clamp(min=1).cpu()
        emb = self.src_emb(src)
        packed = nn.utils.rnn.pack_padded_sequence(self.drop(emb), lengths,
                                                   batch_first=True, enforce_sorted=False)
        states, h = self.encoder(packed)
        states, _ = nn.utils.rnn.pad_packed_sequence(states, batch_first=True,
                                                     total_length=src.shape[1])
        h0 = torch.tanh(self.bridge(torch.cat([h[0], h[1]], dim=1))).unsqueeze(0)
        words = None
        if self.config.use_memory and self.config.source_key_weight is not None:
            words = _word_sums(emb * mask.unsqueeze(-1), self.source_word_starts[src])
        return Encoded(states, mask, emb, h0, words)

    def decode(self, prefix: torch.Tensor, enc: "Encoded", h: torch.Tensor):
        """Decodes prefix [B, T] ids from GRU state h [1, B, H].

        Returns:
            (o [B, T, H] output states, the memory's features [B, T, H (+ E)]: o and, with
            ``query_source``, the attention-weighted source embeddings (with
            ``source_key_weight``: the most attended source word's summed piece
            embeddings); the GRU state after the prefix).
        """
        y, h = self.decoder(self.drop(self.tgt_emb(prefix)), h)
        scores = torch.bmm(self.attn(y), enc.states.transpose(1, 2))  # [B, T, S]
        attention = scores.masked_fill(~enc.mask.unsqueeze(1), float("-inf")).softmax(-1)
        context = torch.bmm(attention, enc.states)
        o = self.drop(torch.tanh(self.combine(torch.cat([y, context], -1))))
        features = o
        if self.config.use_memory and self.config.query_source:
            if self.config.source_key_weight is None:
                aligned = torch.bmm(attention, enc.embeddings)
            else:  # the most attended source word's pieces: the same in any sentence
                nearest = attention.argmax(-1, keepdim=True)  # [B, T, 1]
                aligned = enc.words.gather(1, nearest.expand(-1, -1, enc.words.shape[-1]))
            features = torch.cat([o, aligned], -1)
        return o, features, h

    def log_probs(self, o: torch.Tensor, features: torch.Tensor, memory=None,
                  labels: torch.Tensor | None = None, update: bool = False,
                  blind: torch.Tensor | None = None):
        """log p(y) [N, V] for output states o [N, H], mixing in the memory's answer (what
        decoding needs; training scores only the true tokens, with ``gold_log_probs``).

        Args:
            features: [N, H (+ E)] what the memory's query is made from (``decode``).
            memory: a ``Memory`` / ``ShardedMemory`` (None, or a model without memory: the
                decoder alone).
            labels: [N] the true next tokens: with them the memory loss is computed, and
                written into memory when ``update``.
            blind: [N] bool, training only: positions where the decoder is made blind to the
                true token (its logit is -inf), as it is to a word it never learned; only the
                memory can supply it there (show-then-ask training; see ``showings``).
                Ignored without a memory.

        Returns:
            (log_probs [N, V], memory loss scalar (0 without memory or labels)).
        """
        logits = self.out(o)
        if memory is None or not self.config.use_memory:
            return logits.log_softmax(-1), o.new_zeros(())
        m = self.mixture(o, features, memory, labels, update, blind)
        p = (1 - m.gate) * m.p_dec + m.gate * m.p_mem
        return p.clamp_min(1e-9).log(), m.loss

    def mixture(self, o: torch.Tensor, features: torch.Tensor, memory,
                labels: torch.Tensor | None = None, update: bool = False,
                blind: torch.Tensor | None = None) -> "Mixture":
        """The parts of the memory model's distribution (``log_probs`` mixes them; the
        one-shot diagnosis reads them): arguments as ``log_probs``, with a memory."""
        logits = _blinded(self.out(o), labels, blind)
        a = self._consult(o, features, memory, labels, update)
        p_mem = torch.zeros_like(logits).scatter_add(1, a.values.clamp(min=0), a.weights)
        p_dec = logits.softmax(-1)
        gate = self._gate(o, a, p_mem.detach().max(1).values, p_dec.detach().max(1).values)
        return Mixture(p_dec=p_dec, p_mem=p_mem, gate=gate, loss=a.loss)

    def gold_log_probs(self, o: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       memory=None, update: bool = False,
                       blind: torch.Tensor | None = None):
        """log p(labels) [N]: ``log_probs(...)`` at the true tokens, computed without the
        [N, V] mixture (the memory's mass on a token is summed over its k neighbours), which
        is most of the memory's cost in training. Arguments as ``log_probs``.

        Returns:
            (log p(labels) [N], memory loss scalar).
        """
        logits = self.out(o)
        if memory is None or not self.config.use_memory:
            return logits.log_softmax(-1).gather(1, labels[:, None])[:, 0], o.new_zeros(())
        log_p_dec = _blinded(logits, labels, blind).log_softmax(-1)
        a = self._consult(o, features, memory, labels, update)
        p_mem_gold = (a.weights * (a.values == labels[:, None])).sum(1, keepdim=True)
        with torch.no_grad():  # the memory's peak: the largest mass any one token gets
            same = a.values.unsqueeze(2) == a.values.unsqueeze(1)  # [N, k, k]
            mem_peak = (same * a.weights.unsqueeze(1)).sum(2).max(1).values
        gate = self._gate(o, a, mem_peak, log_p_dec.detach().max(1).values.exp())
        p = (1 - gate) * log_p_dec.gather(1, labels[:, None]).exp() + gate * p_mem_gold
        return p.clamp_min(1e-9).log()[:, 0], a.loss

    def memory_query(self, features: torch.Tensor) -> torch.Tensor:
        """The memory's query [N, key_dim] from features [N, H (+ E)] (``decode``)."""
        w = self.config.source_key_weight
        if w is None:
            return self.query(features)
        hidden = self.config.hidden
        aligned = F.normalize(self.query_aligned(features[:, hidden:]), dim=1)
        state = F.normalize(self.query(features[:, :hidden]), dim=1)
        return torch.cat([aligned * w ** 0.5, state * (1 - w) ** 0.5], 1)

    def _consult(self, o, features, memory, labels, update) -> "_Answer":
        """Queries the memory with the projection of features [N, H (+ E)]."""
        answer = memory.query(self.memory_query(features), labels,
                              update=update and labels is not None,
                              grad_similarities=memory.supports_grad_similarities)
        values = answer.neighbour_values.to(o.device)
        filled = values >= 0
        any_filled = filled.any(1, keepdim=True)
        nearest = answer.similarities.to(o.device).detach().max(1).values
        return _Answer(values=values, weights=answer.softmax.to(o.device) * filled,
                       any_filled=any_filled, nearest=nearest.masked_fill(~any_filled[:, 0], 0.0),
                       loss=answer.loss.to(o.device) if answer.loss is not None
                       else o.new_zeros(()))

    def _gate(self, o, a: "_Answer", mem_peak: torch.Tensor,
              dec_peak: torch.Tensor) -> torch.Tensor:
        """g [N, 1] from o [N, H] and, with ``gate_on_memory``, the nearest similarity and the
        peaks [N] of the memory's and the decoder's distributions; 0 where nothing matched."""
        gate_logit = self.gate(o)
        if self.config.gate_on_memory:
            peaks = torch.stack([a.nearest, mem_peak, dec_peak], 1)
            gate_logit = gate_logit + self.gate_memory(peaks)
        return torch.sigmoid(gate_logit) * a.any_filled

    # ------------------------------------------------------------------------------ training
    def forward(self, src: torch.Tensor, tgt: torch.Tensor, memory=None,
                update: bool = True, blind: torch.Tensor | None = None) -> TranslatorOutput:
        """Teacher-forced loss of src [B, S] -> tgt [B, T] (tgt ends in EOS, PAD-padded);
        blind: [B, T] bool positions the decoder may not predict (see ``log_probs``)."""
        o, features, scored = self.teacher_forced(src, tgt)
        log_p, memory_loss = self.gold_log_probs(o, features, tgt[scored], memory, update,
                                                 None if blind is None else blind[scored])
        nll = -log_p.mean()
        return TranslatorOutput(loss=nll + memory_loss, nll=nll, memory_loss=memory_loss,
                                tokens=int(scored.sum()))

    def teacher_forced(self, src: torch.Tensor, tgt: torch.Tensor):
        """Decodes tgt [B, T] (ends in EOS, PAD-padded) given itself shifted right after BOS.

        Returns:
            (o [N, H], the memory's features [N, H (+ E)], scored [B, T] bool): the output
            states and features at the N non-PAD target positions, and where those are.
        """
        enc = self.encode(src)
        prefix = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)
        o, features, _ = self.decode(prefix, enc, enc.h0)
        scored = tgt != PAD
        return o[scored], features[scored], scored

    @torch.no_grad()
    def remember(self, src: torch.Tensor, tgt: torch.Tensor, memory) -> None:
        """Writes the pairs' target tokens into memory, keyed by the decoder's states, with no
        gradient step (what the one-shot protocol shows the model). Only the memory is
        consulted: no output layer, no loss."""
        was = self.training
        self.eval()
        try:
            o, features, scored = self.teacher_forced(src, tgt)
            self._consult(o, features, memory, tgt[scored], update=True)
        finally:
            self.train(was)

    # ------------------------------------------------------------------------------ decoding
    @torch.no_grad()
    def greedy(self, src: torch.Tensor, memory=None, max_len: int = 80) -> list[list[int]]:
        """The most likely token at each step, until EOS; a list of ids per sentence."""
        was = self.training
        self.eval()
        try:
            enc = self.encode(src)
            h, token = enc.h0, torch.full((src.shape[0], 1), BOS, device=src.device)
            out = torch.zeros(src.shape[0], 0, dtype=torch.long, device=src.device)
            done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
            for _ in range(max_len):
                o, features, h = self.decode(token, enc, h)
                log_p, _ = self.log_probs(o[:, 0], features[:, 0], memory)
                token = log_p.argmax(-1, keepdim=True).masked_fill(done.unsqueeze(1), PAD)
                out = torch.cat([out, token], 1)
                done |= token[:, 0] == EOS
                if done.all():
                    break
        finally:
            self.train(was)
        return [_until_eos(row) for row in out.tolist()]

    @torch.no_grad()
    def beam(self, src: torch.Tensor, memory=None, beam: int = 5, max_len: int = 80,
             length_penalty: float = 1.0) -> list[list[int]]:
        """Beam search per sentence; hypotheses ranked by log p / length ** length_penalty."""
        was = self.training
        self.eval()
        try:
            return [self._beam_one(src[i:i + 1], memory, beam, max_len, length_penalty)
                    for i in range(src.shape[0])]
        finally:
            self.train(was)

    def _beam_one(self, src, memory, beam, max_len, alpha) -> list[int]:
        enc = self.encode(src)
        hyps = [([], 0.0, enc.h0)]  # (tokens, log p, GRU state)
        finished: list[tuple[list[int], float]] = []
        for _ in range(max_len):
            tokens = torch.tensor([[t[-1] if t else BOS] for t, _, _ in hyps], device=src.device)
            h = torch.cat([hh for _, _, hh in hyps], dim=1)
            o, features, h = self.decode(tokens, enc.expand(len(hyps)), h)
            log_p, _ = self.log_probs(o[:, 0], features[:, 0], memory)
            scores = torch.tensor([s for _, s, _ in hyps], device=src.device)[:, None] + log_p
            top = scores.view(-1).topk(min(beam, scores.numel()))
            vocab = log_p.shape[1]
            hyps_next = []
            for score, flat in zip(top.values.tolist(), top.indices.tolist()):
                i, token = divmod(flat, vocab)
                tokens_i = hyps[i][0] + [token]
                if token == EOS:
                    finished.append((tokens_i, score / len(tokens_i) ** alpha))
                else:
                    hyps_next.append((tokens_i, score, h[:, i:i + 1]))
            hyps = hyps_next
            if not hyps or len(finished) >= beam:
                break
        finished += [(t, s / len(t) ** alpha) for t, s, _ in hyps]
        best = max(finished, key=lambda f: (f[1], [-x for x in f[0]]))  # ties: stable
        return _until_eos(best[0])


@dataclass
class Mixture:
    """p(y) = (1 - gate) * p_dec + gate * p_mem: p_dec, p_mem [N, V], gate [N, 1], and the
    memory's margin loss (scalar; 0 without labels)."""

    p_dec: torch.Tensor
    p_mem: torch.Tensor
    gate: torch.Tensor
    loss: torch.Tensor


@dataclass
class _Answer:
    """The memory's answer as the mixture uses it: values and weights [N, k] of the
    neighbours (weights 0 for empty ones), any_filled [N, 1], nearest similarity [N]."""

    values: torch.Tensor
    weights: torch.Tensor
    any_filled: torch.Tensor
    nearest: torch.Tensor
    loss: torch.Tensor


def _blinded(logits: torch.Tensor, labels: torch.Tensor | None,
             blind: torch.Tensor | None) -> torch.Tensor:
    """logits [N, V] with the true token's logit -inf at the blind positions [N]."""
    if blind is None or labels is None or not bool(blind.any()):
        return logits
    rows = blind.nonzero().squeeze(1)
    return logits.index_put((rows, labels[rows]), logits.new_tensor(float("-inf")))


def _word_sums(emb: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """[B, S, E]: at each position, the sum of emb [B, S, E] over the pieces of its word
    (a word begins where starts [B, S] is True, or at the sentence's first piece)."""
    word = starts.long().cumsum(1)  # [B, S] the word's index in its sentence
    index = word.unsqueeze(-1).expand_as(emb)
    sums = emb.new_zeros(emb.shape[0], emb.shape[1] + 1, emb.shape[2]).scatter_add(1, index, emb)
    return sums.gather(1, index)


@dataclass
class Encoded:
    """The encoder's output: states [B, S, H], mask [B, S] (True at real tokens), the source
    embeddings [B, S, E], the decoder's initial state h0 [1, B, H], and with
    ``source_key_weight`` each position's word's summed piece embeddings [B, S, E]."""

    states: torch.Tensor
    mask: torch.Tensor
    embeddings: torch.Tensor
    h0: torch.Tensor
    words: torch.Tensor | None = None

    def expand(self, n: int) -> "Encoded":
        """The encoding of one sentence repeated n times (beam hypotheses)."""
        return Encoded(self.states.expand(n, -1, -1), self.mask.expand(n, -1),
                       self.embeddings.expand(n, -1, -1), self.h0.expand(-1, n, -1),
                       None if self.words is None else self.words.expand(n, -1, -1))


def _until_eos(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else [i for i in ids if i != PAD]
