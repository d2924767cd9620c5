"""Multi30k task 1, English-German (Elliott et al. 2016): aligned raw sentence pairs.

Where the files are looked for, in order:
1. ``root`` given to ``load_multi30k``;
2. ``$LIFELONG_MULTI30K_DIR``;
3. ``$LIFELONG_DATA_DIR/multi30k/``;
4. the cache (``$LIFELONG_CACHE_DIR`` or ~/.cache/lifelong) ``/multi30k/``, downloaded there from
   the official URLs when missing (``download=True``).

Files keep the official form (the multi30k/dataset repository's ``data/task1/raw`` layout):
``<split>.<lang>.gz``, raw (untokenised) text, one sentence per line, aligned line by line. The
project publishes no checksums for them, so a copy is checked by its structure instead: each
split has exactly its official number of lines in both languages, and is UTF-8 gzip text.

The four official English-German test sets are ``TEST_SPLITS``: test_2016_flickr (WMT16),
test_2017_flickr and test_2017_mscoco (WMT17), test_2018_flickr (WMT18; its German reference,
``test_2018_flickr.de.gz``, was added to the repository after the English side).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from lifelong.data.cache import default_cache_dir
from lifelong.errors import ConfigError, CorruptArchiveError, DataError

OFFICIAL_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{split}.{lang}.gz"
SPLIT_SIZES = {"train": 29_000, "val": 1_014, "test_2016_flickr": 1_000,
               "test_2017_flickr": 1_000, "test_2017_mscoco": 461, "test_2018_flickr": 1_071}
TEST_SPLITS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")
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
        split: ``train``, ``val`` or one of ``TEST_SPLITS``.
        root: A folder holding ``<split>.en.gz`` and ``<split>.de.gz`` (the only place looked
            at when given).
        download: Fetch missing files from the official URLs into the cache.
        progress: Show a progress bar while downloading.

    Raises:
        ConfigError: Unknown split (the message lists the valid ones).
        DataError: The files are missing and cannot (or may not) be downloaded; the message
            names the missing files, the folders looked at and the URL that failed.
        CorruptArchiveError: A file is not gzip text or has the wrong number of lines.
    """
    if split not in SPLIT_SIZES:
        raise ConfigError(f"unknown Multi30k split {split!r}; expected one of: "
                          f"{', '.join(SPLIT_SIZES)}")
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
    folders = _candidates(root)
    for folder in folders:
        if all((folder / n).is_file() for n in names):
            return folder
    if root is not None:
        missing = [n for n in names if not (Path(root) / n).is_file()]
        raise DataError(f"{root} does not hold {' and '.join(missing)} (Multi30k {split}, "
                        f"official layout: {OFFICIAL_URL.format(split=split, lang='<lang>')})")
    cached = default_cache_dir() / "multi30k"
    if all((cached / n).is_file() for n in names):
        return cached
    if not download:
        raise DataError(f"Multi30k {split} not found: set LIFELONG_MULTI30K_DIR or "
                        "LIFELONG_DATA_DIR, or allow downloading")
    from lifelong.data.download import download_verified

    for lang, name in zip(LANGUAGES, names):  # no published checksums: _read_lines checks
        if (cached / name).is_file():
            continue
        try:
            download_verified(OFFICIAL_URL.format(split=split, lang=lang), cached / name, None,
                              progress=progress)
        except CorruptArchiveError:
            raise
        except DataError as exc:
            looked = ", ".join(str(f) for f in [*folders, cached])
            raise DataError(f"Multi30k {split}: {name} is in none of {looked} and could not "
                            f"be downloaded ({exc}); copy the official files into one of "
                            "them or set LIFELONG_MULTI30K_DIR") from exc
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
