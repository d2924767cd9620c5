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


# The four official English-German test sets, in small generated files.

def test_the_four_official_test_sets_load_from_the_official_layout(tmp_path):
    from lifelong.data.multi30k import TEST_SPLITS
    from multi30k_fakes import GERMAN, write_splits

    assert TEST_SPLITS == ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
                           "test_2018_flickr")
    write_splits(tmp_path, TEST_SPLITS)
    sizes = {split: len(load_multi30k(split, root=tmp_path, download=False))
             for split in TEST_SPLITS}
    assert sizes == {"test_2016_flickr": 1000, "test_2017_flickr": 1000,
                     "test_2017_mscoco": 461, "test_2018_flickr": 1071}
    data = load_multi30k("test_2018_flickr", root=tmp_path, download=False)
    assert data.target[1] == GERMAN[1] == "der mann schläft"  # UTF-8 round trip
    assert len(data.source) == len(data.target)


def test_an_unknown_split_lists_the_valid_names(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_multi30k("test_2019_flickr", root=tmp_path)
    for name in ("train", "val", "test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
                 "test_2018_flickr"):
        assert name in str(error.value)


def test_mismatched_line_counts_name_the_file(tmp_path):
    from multi30k_fakes import write_split

    write_split(tmp_path, "test_2017_mscoco", lines={"de": 460})
    with pytest.raises(CorruptArchiveError, match=r"test_2017_mscoco\.de\.gz: 460 lines, the "
                       "official file has 461"):
        load_multi30k("test_2017_mscoco", root=tmp_path)
    write_split(tmp_path, "test_2017_flickr")
    with gzip.open(tmp_path / "test_2017_flickr.en.gz", "wb") as fh:
        fh.write(b"caf\xe9\n" * 1000)  # Latin-1, not UTF-8
    with pytest.raises(CorruptArchiveError, match=r"test_2017_flickr\.en\.gz: not gzip"):
        load_multi30k("test_2017_flickr", root=tmp_path)


def test_a_folder_missing_the_2018_german_reference_names_it(tmp_path):
    from multi30k_fakes import write_split

    write_split(tmp_path, "test_2018_flickr")
    (tmp_path / "test_2018_flickr.de.gz").unlink()  # a clone from before its release
    with pytest.raises(DataError, match=r"does not hold test_2018_flickr\.de\.gz \("):
        load_multi30k("test_2018_flickr", root=tmp_path)


def test_the_official_urls_follow_the_repository_layout():
    from lifelong.data import multi30k

    assert multi30k.OFFICIAL_URL.format(split="test_2018_flickr", lang="de") == (
        "https://github.com/multi30k/dataset/raw/master/data/task1/raw/test_2018_flickr.de.gz")


@pytest.fixture
def official_server(tmp_path, monkeypatch):
    """A local HTTP server standing in for github.com/multi30k/dataset/raw/master: it serves
    tmp_path/"served" at /data/task1/raw/ and records the paths asked for. Loading looks at an
    empty data folder and an empty cache, so everything comes through a download."""
    import functools
    import http.server
    import threading

    from lifelong.data import multi30k

    served = tmp_path / "served"
    served.mkdir()
    requested = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            requested.append(path)
            prefix = "/data/task1/raw/"
            name = path[len(prefix):] if path.startswith(prefix) else "\0missing"
            return str(served / name)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(multi30k, "OFFICIAL_URL", base + "/data/task1/raw/{split}.{lang}.gz")
    monkeypatch.delenv("LIFELONG_MULTI30K_DIR", raising=False)
    monkeypatch.setenv("LIFELONG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("LIFELONG_CACHE_DIR", str(tmp_path / "cache"))
    yield served, requested, tmp_path / "cache" / "multi30k"
    server.shutdown()
    server.server_close()


def test_a_missing_test_set_is_downloaded_from_the_official_layout(official_server):
    from multi30k_fakes import write_split

    served, requested, cache = official_server
    write_split(served, "test_2017_mscoco")
    data = load_multi30k("test_2017_mscoco", progress=False)
    assert len(data) == 461
    assert requested == ["/data/task1/raw/test_2017_mscoco.en.gz",
                         "/data/task1/raw/test_2017_mscoco.de.gz"]
    assert sorted(p.name for p in cache.iterdir()) == ["test_2017_mscoco.de.gz",
                                                      "test_2017_mscoco.en.gz"]
    assert len(load_multi30k("test_2017_mscoco", progress=False)) == 461
    assert len(requested) == 2  # the second load reads the cache


def test_a_failed_download_is_a_typed_error_naming_file_and_remedy(official_server):
    from multi30k_fakes import write_split

    served, _, cache = official_server
    write_split(served, "test_2018_flickr")
    (served / "test_2018_flickr.de.gz").unlink()  # the server answers 404
    with pytest.raises(DataError) as error:
        load_multi30k("test_2018_flickr", progress=False)
    message = str(error.value)
    assert "test_2018_flickr.de.gz is in none of" in message and "404" in message
    assert "LIFELONG_MULTI30K_DIR" in message
    assert not isinstance(error.value, CorruptArchiveError)
    assert [p.name for p in cache.iterdir()] == ["test_2018_flickr.en.gz"]  # no partial file
    with pytest.raises(DataError, match="allow downloading"):
        load_multi30k("test_2017_flickr", download=False)


def test_a_downloaded_file_of_the_wrong_size_is_refused(official_server):
    from multi30k_fakes import write_split

    served, _, _ = official_server
    write_split(served, "test_2017_flickr", lines={"en": 999})
    with pytest.raises(CorruptArchiveError, match=r"test_2017_flickr\.en\.gz: 999 lines"):
        load_multi30k("test_2017_flickr", progress=False)


def test_no_network_is_a_typed_error(tmp_path, monkeypatch):
    import socket

    from lifelong.data import multi30k

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(multi30k, "OFFICIAL_URL",
                        f"http://127.0.0.1:{port}/data/task1/raw/{{split}}.{{lang}}.gz")
    monkeypatch.delenv("LIFELONG_MULTI30K_DIR", raising=False)
    monkeypatch.delenv("LIFELONG_DATA_DIR", raising=False)
    monkeypatch.setenv("LIFELONG_CACHE_DIR", str(tmp_path))
    with pytest.raises(DataError, match="could not be downloaded"):
        load_multi30k("test_2017_flickr", progress=False)
