"""Omniglot loading: lookup, preprocessing, structure checks, caching, verified downloads.

Archives are small synthetic ones in the official layout
(`images_<split>/<Alphabet>/characterNN/<ID>_<DD>.png`, 105x105 1-bit PNGs), except for the slow
test, which reads the real data when `$LIFELONG_DATA_DIR/omniglot` holds it.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import random
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lifelong.data import OmniglotLayout, load_omniglot
from lifelong.data import omniglot
from lifelong.errors import ConfigError, CorruptArchiveError, DataError

# Read before the autouse fixture below hides them: only the slow real-data test uses them.
_REAL_DATA_DIR = os.environ.get("LIFELONG_DATA_DIR")
_REAL_CACHE_DIR = os.environ.get("LIFELONG_CACHE_DIR")

ALPHABETS = {"Alpha": 2, "Beta": 1}  # alphabet -> characters
DRAWERS = 4
SMALL = OmniglotLayout(num_alphabets=2, num_characters=3, images_per_character=DRAWERS)


def _png(character: int, drawer: int, size: int = 105) -> bytes:
    """A 1-bit PNG whose ink (black, as in Omniglot) identifies its character and drawer.

    The ink is an L-shaped, off-centre mark, so every rotation of it differs, and its area grows
    with the drawer index, so tests can tell drawers apart after resizing.
    """
    pixels = np.full((size, size), 255, dtype=np.uint8)
    pixels[10:10 + 12 * (drawer + 1), 10:20] = 0
    pixels[10:20, 20:30 + 9 * character] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def make_archive(directory: Path, split: str = "background", alphabets=None,
                 drawers: int = DRAWERS, replace: dict[str, bytes] | None = None,
                 extra: dict[str, bytes] | None = None, drop: tuple[str, ...] = ()) -> Path:
    """Writes `images_<split>.zip` into `directory`, members in a shuffled (unsorted) order.

    Args:
        alphabets: alphabet name -> number of characters.
        replace: member name -> bytes to store instead of the generated PNG.
        extra: member name -> bytes of additional entries.
        drop: member names to leave out.
    """
    alphabets = ALPHABETS if alphabets is None else alphabets
    members = {}
    character_id = 0
    for alphabet, num_characters in alphabets.items():
        for c in range(num_characters):
            character_id += 1
            for d in range(drawers):
                directory_name = f"images_{split}/{alphabet}/character{c + 1:02d}"
                file_name = f"{character_id:04d}_{d + 1:02d}.png"
                members[f"{directory_name}/{file_name}"] = _png(character_id, d)
    members.update(replace or {})
    members.update(extra or {})
    names = [name for name in members if name not in drop]
    random.Random(0).shuffle(names)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"images_{split}.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            zf.writestr(name, members[name])
    return path


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path):
    """No test may see the real data, the user's cache, or a proxy in front of localhost."""
    for name in ("LIFELONG_OMNIGLOT_DIR", "LIFELONG_DATA_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LIFELONG_CACHE_DIR", str(tmp_path / "default-cache"))
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")


def load(split="background", root=None, cache_dir=None, **kwargs):
    """`load_omniglot` with the layout of `make_archive` and no progress bars by default."""
    kwargs.setdefault("layout", SMALL)
    kwargs.setdefault("progress", False)
    return load_omniglot(split, root=root, cache_dir=cache_dir, **kwargs)


def count_preprocessing(monkeypatch) -> list[int]:
    """Counts calls of the archive decoder (a list with one element, the count)."""
    calls = [0]
    original = omniglot._preprocess_archive

    def counting(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(omniglot, "_preprocess_archive", counting)
    return calls


# --- loading and preprocessing ------------------------------------------------------------


def test_background_has_four_rotations_per_character_in_sorted_order(tmp_path):
    make_archive(tmp_path / "data")
    split = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert split.split == "background"
    assert split.images.shape == (12, DRAWERS, 28, 28) and split.images.dtype == np.uint8
    assert (split.num_classes, split.images_per_class) == (12, DRAWERS)
    characters = ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert split.class_names == tuple(f"{c}/rot{r:03d}" for c in characters
                                      for r in (0, 90, 180, 270))
    for c in range(3):
        upright = split.images[4 * c]
        for r in range(1, 4):
            rotated = np.rot90(upright, k=r, axes=(1, 2))  # counter-clockwise, every drawer
            np.testing.assert_array_equal(split.images[4 * c + r], rotated)
        assert not np.array_equal(split.images[4 * c + 1], upright)


def test_images_are_sorted_by_file_name_and_ink_is_high(tmp_path):
    make_archive(tmp_path / "data")
    images = load(root=tmp_path / "data", cache_dir=tmp_path / "cache").images
    ink = images.astype(np.int64).sum(axis=(2, 3))  # [C, n]
    # The synthetic mark grows with the drawer number in the file name.
    assert (np.diff(ink, axis=1) > 0).all()
    assert images[:, :, -1, -1].max() == 0  # paper is 0
    assert images.max() == 255  # solid ink is 255


def test_preprocessing_is_bilinear_resize_then_inversion(tmp_path):
    make_archive(tmp_path / "data")
    split = load(root=tmp_path / "data", cache_dir=tmp_path / "cache", image_size=20)
    # Alpha/character02 is character id 2; drawer 3 is the third file name.
    source = Image.open(io.BytesIO(_png(2, 2))).convert("L")
    expected = 255 - np.asarray(source.resize((20, 20), Image.Resampling.BILINEAR))
    assert split.images.shape[-2:] == (20, 20)
    np.testing.assert_array_equal(split.images[4, 2], expected)


def test_evaluation_split_is_not_rotated(tmp_path):
    make_archive(tmp_path / "data", split="evaluation")
    split = load("evaluation", root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert split.images.shape == (3, DRAWERS, 28, 28)
    assert split.class_names == ("Alpha/character01", "Alpha/character02", "Beta/character01")


def test_alphabets_sort_by_name_not_by_joined_path(tmp_path):
    make_archive(tmp_path / "data", alphabets={"Ab-c": 1, "Ab": 1, "Aa": 1})
    split = load(root=tmp_path / "data", cache_dir=tmp_path / "cache",
                 layout=OmniglotLayout(3, 3, DRAWERS))
    assert [n.split("/")[0] for n in split.class_names[::4]] == ["Aa", "Ab", "Ab-c"]


def test_images_are_read_only(tmp_path):
    make_archive(tmp_path / "data")
    split = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError):
        split.images[0, 0, 0, 0] = 1


@pytest.mark.parametrize("kwargs", [{"split": "train"}, {"image_size": 0},
                                    {"image_size": 28.0}, {"image_size": True}])
def test_bad_arguments_are_config_errors(tmp_path, kwargs):
    make_archive(tmp_path / "data")
    with pytest.raises(ConfigError):
        load(**{"split": "background", "root": tmp_path / "data", **kwargs})


def test_layout_rejects_non_positive_counts():
    with pytest.raises(ConfigError):
        OmniglotLayout(num_alphabets=0, num_characters=3)


# --- structure checks and corrupt archives --------------------------------------------------


def test_official_layout_rejects_a_small_archive(tmp_path):
    make_archive(tmp_path / "data")
    with pytest.raises(CorruptArchiveError, match="2 alphabets, expected 30"):
        load_omniglot("background", root=tmp_path / "data", cache_dir=tmp_path / "cache",
                      progress=False)


def test_missing_image_is_a_structure_error(tmp_path):
    make_archive(tmp_path / "data", drop=("images_background/Beta/character01/0003_02.png",))
    with pytest.raises(CorruptArchiveError, match=r"Beta/character01 has 3 images, expected 4"):
        load(root=tmp_path / "data")


def test_unexpected_entry_is_a_structure_error_but_archiver_metadata_is_not(tmp_path):
    data = tmp_path / "data"
    make_archive(data, extra={"images_background/Alpha/character01/.DS_Store": b"x",
                              "__MACOSX/images_background/._Alpha": b"x"})
    assert load(root=data, cache_dir=tmp_path / "cache").num_classes == 12
    make_archive(data, extra={"images_background/Alpha/stray.png": _png(1, 0)})
    with pytest.raises(CorruptArchiveError,
                       match="unexpected entry 'images_background/Alpha/stray.png'"):
        load(root=data, cache_dir=tmp_path / "cache")


def test_archive_of_the_other_split_is_rejected(tmp_path):
    make_archive(tmp_path / "data", split="evaluation")
    data = tmp_path / "data"
    (data / "images_evaluation.zip").rename(data / "images_background.zip")
    with pytest.raises(CorruptArchiveError, match="unexpected entry 'images_evaluation/"):
        load(root=data)


def test_garbage_file_is_a_corrupt_archive(tmp_path):
    path = tmp_path / "data" / "images_background.zip"
    path.parent.mkdir()
    path.write_bytes(b"this is not a zip file" * 100)
    with pytest.raises(CorruptArchiveError, match="not a readable zip") as info:
        load(root=path.parent, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)
    assert not list((tmp_path).glob("cache/**/*.npz"))


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_zip_is_a_corrupt_archive(tmp_path, keep):
    path = make_archive(tmp_path / "data")
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    with pytest.raises(CorruptArchiveError) as info:
        load(root=path.parent, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)


def test_corrupt_member_bytes_are_a_corrupt_archive(tmp_path):
    # Flip bytes inside a member's data while the zip directory stays intact: the CRC (or the
    # inflater) catches it when the member is read.
    path = make_archive(tmp_path / "data")
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + 5, start + min(25, info.compress_size - 1)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match="corrupt or truncated|cannot decode"):
        load(root=path.parent, cache_dir=tmp_path / "cache")


def test_unreadable_png_names_the_member(tmp_path):
    bad = "images_background/Beta/character01/0003_02.png"
    path = make_archive(tmp_path / "data", replace={bad: b"\x89PNG\r\n\x1a\n" + b"\0" * 40})
    with pytest.raises(CorruptArchiveError, match=f"cannot decode {bad}") as info:
        load(root=path.parent, cache_dir=tmp_path / "cache")
    assert str(path) in str(info.value)
    assert not list((tmp_path).glob("cache/**/*.npz"))


def test_wrongly_sized_png_is_rejected(tmp_path):
    bad = "images_background/Alpha/character01/0001_01.png"
    make_archive(tmp_path / "data", replace={bad: _png(1, 0, size=64)})
    with pytest.raises(CorruptArchiveError, match=f"{bad} is 64x64, expected 105x105"):
        load(root=tmp_path / "data")


# --- locating the archive -----------------------------------------------------------------


def test_lookup_order_root_then_omniglot_dir_then_data_dir(tmp_path, monkeypatch):
    make_archive(tmp_path / "root", alphabets={"Root": 2, "X": 1})
    make_archive(tmp_path / "omniglot-dir", alphabets={"Env": 2, "X": 1})
    make_archive(tmp_path / "data-dir" / "omniglot", alphabets={"Data": 2, "X": 1})
    monkeypatch.setenv("LIFELONG_OMNIGLOT_DIR", str(tmp_path / "omniglot-dir"))
    monkeypatch.setenv("LIFELONG_DATA_DIR", str(tmp_path / "data-dir"))
    cache = tmp_path / "cache"

    def first_alphabet(**kwargs):
        return load(cache_dir=cache, download=False, **kwargs).class_names[0].split("/")[0]

    assert first_alphabet(root=tmp_path / "root") == "Root"
    assert first_alphabet() == "Env"
    monkeypatch.delenv("LIFELONG_OMNIGLOT_DIR")
    assert first_alphabet() == "Data"


def test_explicit_location_without_archive_is_an_error_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setattr(omniglot, "download_verified", _fail("must not download"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="root argument"):
        load(root=tmp_path / "empty")
    monkeypatch.setenv("LIFELONG_OMNIGLOT_DIR", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="LIFELONG_OMNIGLOT_DIR"):
        load()


def test_nothing_found_without_download_is_a_data_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LIFELONG_DATA_DIR", str(tmp_path / "no-data-here"))
    with pytest.raises(DataError, match="download=False"):
        load(cache_dir=tmp_path / "cache", download=False)


# --- caching ------------------------------------------------------------------------------


def test_second_load_reads_the_cache_without_decoding(tmp_path, monkeypatch):
    make_archive(tmp_path / "data")
    first = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache" / "omniglot" / "background_28px.npz").is_file()
    monkeypatch.setattr(omniglot, "_preprocess_archive", _fail("decoded again"))
    second = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(first.images, second.images)
    assert first.class_names == second.class_names
    assert not second.images.flags.writeable


def test_default_cache_dir_is_lifelong_cache_dir(tmp_path):
    make_archive(tmp_path / "data")
    load(root=tmp_path / "data")
    entry = tmp_path / "default-cache" / "omniglot" / "background_28px.npz"
    assert entry.is_file()
    assert entry.stat().st_mode & 0o777 == 0o644  # readable by the user's other processes


def test_cache_is_rebuilt_when_the_archive_changes(tmp_path, monkeypatch):
    path = make_archive(tmp_path / "data")
    load(root=path.parent, cache_dir=tmp_path / "cache")
    calls = count_preprocessing(monkeypatch)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load(root=path.parent, cache_dir=tmp_path / "cache")
    load(root=path.parent, cache_dir=tmp_path / "cache")
    assert calls == [1]


def test_cache_is_per_image_size_and_split(tmp_path, monkeypatch):
    make_archive(tmp_path / "data")
    make_archive(tmp_path / "data", split="evaluation")
    calls = count_preprocessing(monkeypatch)
    root, cache = tmp_path / "data", tmp_path / "cache"
    assert load(root=root, cache_dir=cache, image_size=14).images.shape[-1] == 14
    assert load(root=root, cache_dir=cache).images.shape[-1] == 28
    assert load("evaluation", root=root, cache_dir=cache).num_classes == 3
    assert calls == [3]


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip"])
def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch, damage):
    make_archive(tmp_path / "data")
    good = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    cache_file = tmp_path / "cache" / "omniglot" / "background_28px.npz"
    data = bytearray(cache_file.read_bytes())
    if damage == "garbage":
        data = bytearray(b"not an npz" * 10)
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        for i in range(len(data) // 4, len(data) // 4 + 16):
            data[i] ^= 0xFF
    cache_file.write_bytes(bytes(data))
    calls = count_preprocessing(monkeypatch)
    rebuilt = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert calls == [1]
    np.testing.assert_array_equal(rebuilt.images, good.images)
    load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert calls == [1]  # the rebuilt entry is valid again


def test_unwritable_cache_only_warns(tmp_path, monkeypatch):
    make_archive(tmp_path / "data")

    def refuse(*args, **kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(omniglot, "write_cached_arrays", refuse)
    with pytest.warns(UserWarning, match="cannot write Omniglot cache"):
        split = load(root=tmp_path / "data", cache_dir=tmp_path / "cache")
    assert split.num_classes == 12


# --- downloading --------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    """A synthetic background archive served over HTTP on localhost: (base URL, md5)."""
    path = make_archive(tmp_path / "served")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(path.parent)))
    # A short poll interval: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        yield f"http://127.0.0.1:{server.server_address[1]}", md5
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_verifies_md5_and_is_reused(tmp_path, monkeypatch, served):
    base, md5 = served
    monkeypatch.setitem(omniglot.ARCHIVES, "background", (f"{base}/images_background.zip", md5))
    split = load(cache_dir=tmp_path / "cache", progress=True)
    assert split.num_classes == 12
    downloaded = tmp_path / "cache" / "omniglot" / "images_background.zip"
    assert hashlib.md5(downloaded.read_bytes()).hexdigest() == md5
    assert not list((tmp_path / "cache").rglob("*.part"))
    monkeypatch.setattr(omniglot, "download_verified", _fail("downloaded twice"))
    (tmp_path / "cache" / "omniglot" / "background_28px.npz").unlink()
    assert load(cache_dir=tmp_path / "cache").num_classes == 12


def test_download_with_wrong_md5_leaves_nothing(tmp_path, monkeypatch, served):
    base, md5 = served
    url = f"{base}/images_background.zip"
    monkeypatch.setitem(omniglot.ARCHIVES, "background", (url, "0" * 32))
    with pytest.raises(CorruptArchiveError, match="failed its checksum"):
        load(cache_dir=tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_download_from_file_url(tmp_path, monkeypatch):
    path = make_archive(tmp_path / "elsewhere")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(omniglot.ARCHIVES, "background", (path.as_uri(), md5))
    assert load(cache_dir=tmp_path / "cache").num_classes == 12


def test_download_http_error_is_a_data_error(tmp_path, monkeypatch, served):
    base, md5 = served
    monkeypatch.setitem(omniglot.ARCHIVES, "background", (f"{base}/missing.zip", md5))
    with pytest.raises(DataError, match="cannot download"):
        load(cache_dir=tmp_path / "cache")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []


def test_official_sources_are_the_published_ones():
    base = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
    assert omniglot.ARCHIVES["background"] == (
        f"{base}/images_background.zip", "68d2efa1b9178cc56df9314c21c6e718")
    assert omniglot.ARCHIVES["evaluation"] == (
        f"{base}/images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811")


# --- real data ----------------------------------------------------------------------------


@pytest.mark.slow
def test_real_omniglot_has_the_official_counts(monkeypatch):
    if not _REAL_DATA_DIR:
        pytest.skip("LIFELONG_DATA_DIR is not set (point it at a directory holding "
                    "omniglot/images_background.zip and omniglot/images_evaluation.zip)")
    root = Path(_REAL_DATA_DIR) / "omniglot"
    names = ("images_background.zip", "images_evaluation.zip")
    if not all((root / name).is_file() for name in names):
        pytest.skip(f"real Omniglot not found: {root} lacks images_background.zip or "
                    f"images_evaluation.zip")
    if _REAL_CACHE_DIR:
        monkeypatch.setenv("LIFELONG_CACHE_DIR", _REAL_CACHE_DIR)
    else:
        monkeypatch.delenv("LIFELONG_CACHE_DIR")
    background = load_omniglot("background", root=root, download=False)
    evaluation = load_omniglot("evaluation", root=root, download=False)
    assert background.images.shape == (3856, 20, 28, 28)
    assert evaluation.images.shape == (659, 20, 28, 28)
    assert len(set(background.class_names)) == 3856 and len(set(evaluation.class_names)) == 659
    for split in (background, evaluation):
        # Ink is high and sparse: the paper (0) dominates every image.
        assert split.images.max() == 255
        assert (split.images == 0).mean() > 0.5


def _fail(message: str):
    def fail(*args, **kwargs):
        raise AssertionError(message)

    return fail
