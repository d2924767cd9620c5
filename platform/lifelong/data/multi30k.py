"""Multi30k task 1, English-German (Elliott et al. 2016): aligned raw sentence pairs.

Where the files are looked for, in order:
1. ``root`` given to ``load_multi30k``;
2. ``$LIFELONG_MULTI30K_DIR``;
3. ``$LIFELONG_DATA_DIR/multi30k/``;
4. the cache (``$LIFELONG_CACHE_DIR`` or ~/.cache/lifelong) ``/multi30k/``, downloaded there from
   the official URLs when missing (``download=True``).

Files keep the official form: ``<split>.<lang>.gz``, raw (untokenised) text, one sentence per
line, aligned line by line. The project publishes no checksums for them, so a copy is checked by
its structure instead: each split has exactly its official number of lines in both languages.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from lifelong.data.cache import default_cache_dir
from lifelong.errors import ConfigError, CorruptArchiveError, DataError

OFFICIAL_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{split}.{lang}.gz"
SPLIT_SIZES = {"train": 29_000, "val": 1_014, "test_2016_flickr": 1_000}
LANGUAGES = ("en", "de")


@dataclass(frozen=True)
class Multi30kSplit:
    """One split: ``source[i]`` (English) translates to ``target[i]`` (German)."""

    split: str
    source: tuple[str, ...]
    target: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.source)


def load_multi30k(split: str, root: str | os.PathLike | None = None, download: bool = True,
                  progress: bool = True) -> Multi30kSplit:
    """Loads an English-German split of Multi30k task 1.

    Args:
        split: ``train``, ``val`` or ``test_2016_flickr``.
        root: A folder holding ``<split>.en.gz`` and ``<split>.de.gz``.
        download: Fetch missing files from the official URLs into the cache.

    Raises:
        ConfigError: Unknown split.
        DataError: The files are missing and cannot (or may not) be downloaded.
        CorruptArchiveError: A file is not gzip text or has the wrong number of lines.
    """
    if split not in SPLIT_SIZES:
        raise ConfigError(f"unknown Multi30k split {split!r}; expected one of "
                          f"{sorted(SPLIT_SIZES)}")
    folder = _locate(split, root, download, progress)
    source, target = (_read_lines(folder / f"{split}.{lang}.gz", SPLIT_SIZES[split])
                      for lang in LANGUAGES)
    return Multi30kSplit(split=split, source=tuple(source), target=tuple(target))


def _candidates(root) -> list[Path]:
    if root is not None:  # a folder named explicitly is the only place looked at
        return [Path(root)]
    found = []
    if env := os.environ.get("LIFELONG_MULTI30K_DIR"):
        found.append(Path(env))
    if env := os.environ.get("LIFELONG_DATA_DIR"):
        found.append(Path(env) / "multi30k")
    return found


def _locate(split: str, root, download: bool, progress: bool) -> Path:
    names = [f"{split}.{lang}.gz" for lang in LANGUAGES]
    for folder in _candidates(root):
        if all((folder / n).is_file() for n in names):
            return folder
    if root is not None:
        raise DataError(f"{root} does not hold {' and '.join(names)}")
    cached = default_cache_dir() / "multi30k"
    if all((cached / n).is_file() for n in names):
        return cached
    if not download:
        raise DataError(f"Multi30k {split} not found: set LIFELONG_MULTI30K_DIR or "
                        "LIFELONG_DATA_DIR, or allow downloading")
    from lifelong.data.download import download_verified

    for lang, name in zip(LANGUAGES, names):  # no published checksums: _read_lines checks
        download_verified(OFFICIAL_URL.format(split=split, lang=lang), cached / name, None,
                          progress=progress)
    return cached


def _read_lines(path: Path, expected: int) -> list[str]:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CorruptArchiveError(f"{path}: not gzip-compressed UTF-8 text ({exc})") from None
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != expected:
        raise CorruptArchiveError(f"{path}: {len(lines)} lines, the official file has "
                                  f"{expected}")
    return [line.strip() for line in lines]
