"""Small Multi30k files in the official layout (multi30k/dataset ``data/task1/raw``): each
split's ``<split>.en.gz`` / ``<split>.de.gz`` with its official number of lines, made of a few
words (umlauts included, so a UTF-8 round trip is checked)."""

from __future__ import annotations

import gzip
from pathlib import Path

from lifelong.data.multi30k import SPLIT_SIZES

ENGLISH = ("a dog runs", "the man sleeps", "two girls play", "a big dog sleeps")
GERMAN = ("ein hund rennt", "der mann schläft", "zwei mädchen spielen",
          "ein großer hund schläft")


def write_split(folder: Path, split: str, lines: dict[str, int] | None = None) -> None:
    """Writes ``split`` into ``folder``; ``lines`` overrides a language's line count."""
    folder.mkdir(parents=True, exist_ok=True)
    for lang, sentences in (("en", ENGLISH), ("de", GERMAN)):
        n = (lines or {}).get(lang, SPLIT_SIZES[split])
        with gzip.open(folder / f"{split}.{lang}.gz", "wt", encoding="utf-8") as fh:
            fh.writelines(f"{sentences[i % len(sentences)]}\n" for i in range(n))


def write_splits(folder: Path, splits) -> Path:
    """Writes every split of ``splits`` into ``folder``; returns it."""
    for split in splits:
        write_split(folder, split)
    return folder
