"""Multi30k loading: the real files when present, structure checks, typed errors."""

import gzip
import os

import pytest

from lifelong.data import load_multi30k
from lifelong.errors import ConfigError, CorruptArchiveError, DataError


def test_real_splits_are_aligned_with_the_official_sizes():
    if not os.environ.get("LIFELONG_DATA_DIR"):
        pytest.skip("real Multi30k not available (set LIFELONG_DATA_DIR)")
    for split, n in (("train", 29000), ("val", 1014), ("test_2016_flickr", 1000)):
        data = load_multi30k(split, download=False, progress=False)
        assert len(data.source) == len(data.target) == n
    assert data.source[0] and data.target[0]


def test_a_wrong_file_is_refused(tmp_path):
    with pytest.raises(ConfigError):
        load_multi30k("dev", root=tmp_path)
    with pytest.raises(DataError):
        load_multi30k("val", root=tmp_path)
    for lang in ("en", "de"):
        with gzip.open(tmp_path / f"val.{lang}.gz", "wt") as fh:
            fh.write("one line\n")
    with pytest.raises(CorruptArchiveError, match="1 lines, the official file has 1014"):
        load_multi30k("val", root=tmp_path)
    (tmp_path / "val.en.gz").write_bytes(b"not gzip")
    with pytest.raises(CorruptArchiveError, match="not gzip"):
        load_multi30k("val", root=tmp_path)
