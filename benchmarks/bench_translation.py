"""Benchmark a translator training step: the baseline against the memory model, side by side.

On the same real Multi30k batches (the checkpoint's vocabularies), one process, ``--threads``
torch threads, each variant timed over the same batches, ``--repeats`` times in turn:

- baseline: the same sizes without memory (forward + backward + Adam);
- memory, full mixture: the loss read off the dense [N, V] mixture (``Translator.log_probs``,
  what decoding uses);
- memory: the training path (``gold_log_probs``: only the true tokens);
- memory + showings: the same after writing the show-then-ask pairs (``train.show_per_batch``);
- lookup: one memory query of the batch's size alone (labels, gradient to the similarities).

Prints a table (ms per step and the ratio to the baseline) and writes JSON with ``--out``.

Usage:
    python benchmarks/bench_translation.py --checkpoint runs/translation/translator.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    import lifelong  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

import numpy as np
import torch

from lifelong.data import load_multi30k
from lifelong.models.translator import Translator
from lifelong.experiments.translation.showings import Showings
from lifelong.experiments.translation.train import length_batches, pad_batch
from lifelong.models.checkpoint import TranslationModel


def full_mixture_loss(model: Translator, src, tgt, memory, blind=None) -> torch.Tensor:
    """The training loss read off ``log_probs`` (the dense mixture), as before gold_log_probs."""
    o, features, scored = model.teacher_forced(src, tgt)
    log_p, memory_loss = model.log_probs(o, features, memory, tgt[scored], update=True,
                                         blind=None if blind is None else blind[scored])
    return -log_p.gather(1, tgt[scored][:, None]).mean() + memory_loss


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a memory translator.pt")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per variant")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--show", type=int, default=16, help="pairs shown per batch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tm = TranslationModel.load(args.checkpoint)
    if tm.memory is None:
        parser.error(f"{args.checkpoint} has no memory: give a memory model's checkpoint")
    train = load_multi30k("train", progress=False)
    src, tgt = tm.source_vocab.encode(train.source), tm.target_vocab.encode(train.target)
    rng = np.random.default_rng(0)
    lengths = np.asarray([len(s) + len(g) for s, g in zip(src, tgt)])
    batches = length_batches(lengths, args.batch_size, rng)[:args.batches]
    showings = Showings(train.source, tgt)
    c = tm.model.config
    baseline = Translator(len(tm.source_vocab), len(tm.target_vocab),
                          type(c)(**{**c.__dict__, "use_memory": False}))
    memory = tm.memory

    def timed(model, loss_of, show: int = 0) -> float:
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        start = time.perf_counter()
        for idx in batches:
            s, g = pad_batch([src[i] for i in idx]), pad_batch([tgt[i] for i in idx])
            blind = None
            if show:
                plan = showings.plan(idx, show, rng)
                model.remember(pad_batch([src[j] for _, j in plan]),
                               pad_batch([tgt[j] for _, j in plan]), memory)
                blind = showings.blind(idx, plan, tuple(g.shape))
            loss = loss_of(model, s, g, blind)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return 1000 * (time.perf_counter() - start) / len(batches)

    tokens = int(np.mean([sum(len(tgt[i]) for i in idx) for idx in batches]))
    variants = {
        "baseline": lambda: timed(baseline, lambda m, s, g, b: m(s, g).loss),
        "memory, full mixture": lambda: timed(
            tm.model, lambda m, s, g, b: full_mixture_loss(m, s, g, memory)),
        "memory": lambda: timed(tm.model, lambda m, s, g, b: m(s, g, memory).loss),
        f"memory + {args.show} showings": lambda: timed(
            tm.model, lambda m, s, g, b: m(s, g, memory, blind=b).loss, args.show),
        f"lookup of {tokens} queries": lambda: lookup_ms(memory, tokens, len(tm.target_vocab)),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, run in variants.items():
            results[name].append(run())
    base = results["baseline"]
    print(f"\n{args.batches} batches of {args.batch_size} sentences ({tokens} target tokens on "
          f"average), {args.threads} thread(s), {args.repeats} repeats in turn\n")
    print("| variant | ms per step (each repeat) | x baseline (each repeat) |\n"
          "| --- | --- | --- |")
    for name, ms in results.items():
        print(f"| {name} | {' / '.join(f'{x:.0f}' for x in ms)} | "
              f"{' / '.join(f'{x / b:.2f}' for x, b in zip(ms, base))} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "ms": results}, indent=1))
    return 0


def lookup_ms(memory, n: int, num_values: int, reps: int = 10) -> float:
    """One query of n random keys with labels, no update, gradient to the similarities."""
    q = torch.randn(n, memory.key_dim, requires_grad=True)
    labels = torch.randint(0, num_values, (n,))
    start = time.perf_counter()
    for _ in range(reps):
        memory.query(q, labels, update=False, grad_similarities=memory.supports_grad_similarities)
    return 1000 * (time.perf_counter() - start) / reps


if __name__ == "__main__":
    sys.exit(main())
