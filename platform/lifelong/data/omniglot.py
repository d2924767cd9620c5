"""Omniglot (Lake et al. 2015), preprocessed as in the reference code of Kaiser et al. 2017.

Where the archives come from, first match wins:
1. `root`, a directory holding `images_background.zip` / `images_evaluation.zip`;
2. `$LIFELONG_OMNIGLOT_DIR`, the same kind of directory;
3. `$LIFELONG_DATA_DIR/omniglot/`;
4. `<cache_dir>/omniglot/`, where an earlier download went;
5. a download from the official URL into `<cache_dir>/omniglot/` (only with `download=True`),
   accepted only if its md5 matches the official one.
An explicit location (1 or 2) that lacks the archive is an error rather than a reason to
download: the caller named where the data is. Local copies are checked by their structure, not
their md5, because faithful re-encodings of the official archives have other bytes.

Preprocessing: every 105x105 image is resized to `image_size` (default 28) with PIL's bilinear
filter, which antialiases when shrinking (as scipy's `imresize`, which the reference code used,
did through PIL), and inverted so ink is high (255) on a 0 background. The background split
turns every character into 4 classes, rotated by 0, 90, 180 and 270 degrees counter-clockwise
(3856 classes); the evaluation split keeps its 659 characters unrotated. Classes are ordered by
alphabet, character, rotation (sorted names); images within a class by file name. The result is
cached in `<cache_dir>/omniglot/` and reused while the archive's size and mtime are unchanged.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
import zipfile
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lifelong.data.cache import default_cache_dir, read_cached_arrays, write_cached_arrays
from lifelong.data.download import download_verified
from lifelong.config import check_int
from lifelong.errors import ConfigError, CorruptArchiveError, DataError

SPLITS = ("background", "evaluation")
SOURCE_IMAGE_SIZE = 105
ROTATIONS_DEG = (0, 90, 180, 270)
# Bump whenever the preprocessing changes its output: older cache entries are then rebuilt.
PREPROCESSING_VERSION = 1

_BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
# split -> (official URL, md5 of the official archive)
ARCHIVES: dict[str, tuple[str, str]] = {
    "background": (f"{_BASE_URL}/images_background.zip", "68d2efa1b9178cc56df9314c21c6e718"),
    "evaluation": (f"{_BASE_URL}/images_evaluation.zip", "6b91aef0f799c5bb55b94e3f2daec811"),
}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OmniglotLayout:
    """The counts an archive of one split must have.

    Attributes:
        num_alphabets: Alphabet directories in the archive.
        num_characters: Character directories over all alphabets.
        images_per_character: PNG files in every character directory (drawers).
    """

    num_alphabets: int
    num_characters: int
    images_per_character: int = 20

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            check_int(f"OmniglotLayout.{name}", value)


OFFICIAL_LAYOUTS = {
    "background": OmniglotLayout(num_alphabets=30, num_characters=964),
    "evaluation": OmniglotLayout(num_alphabets=20, num_characters=659),
}


@dataclass(frozen=True, eq=False)
class OmniglotSplit:
    """One preprocessed Omniglot split.

    Attributes:
        images: [num_classes, images_per_class, image_size, image_size] uint8, ink 255 on 0;
            read-only, since one copy is shared by everything that samples from it.
        class_names: [num_classes] "Alphabet/characterNN/rotDDD" (background) or
            "Alphabet/characterNN" (evaluation), in the order of `images`.
        split: "background" or "evaluation".
    """

    images: np.ndarray
    class_names: tuple[str, ...]
    split: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 [C, n, H, W], got {self.images.dtype} "
                            f"{self.images.shape}")
        if len(self.class_names) != self.images.shape[0]:
            raise DataError(f"{len(self.class_names)} class names for "
                            f"{self.images.shape[0]} classes")

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def images_per_class(self) -> int:
        return self.images.shape[1]


def load_omniglot(split: str, root: str | os.PathLike | None = None,
                  cache_dir: str | os.PathLike | None = None, download: bool = True,
                  image_size: int = 28, *, layout: OmniglotLayout | None = None,
                  progress: bool = True) -> OmniglotSplit:
    """Loads one Omniglot split, preprocessed, from the cache or from its archive.

    Args:
        split: "background" (training, rotations x4) or "evaluation" (testing).
        root: Directory holding the official zip archives; see the module docstring for the
            lookup order when it is None.
        cache_dir: Where downloads and preprocessed arrays go; default `$LIFELONG_CACHE_DIR`,
            else `~/.cache/lifelong`.
        download: Download from the official URL when no local archive is found.
        image_size: Side of the resized square images.
        layout: Counts the archive must have; default the official ones of `split`. Smaller
            layouts serve synthetic test archives.
        progress: Show tqdm progress bars while downloading and preprocessing.

    Returns:
        The split, `images` [num_classes, images_per_character, image_size, image_size] uint8.

    Raises:
        ConfigError: Unknown split, or image_size not a positive int.
        DataError: No archive found (and downloading disabled or failed).
        CorruptArchiveError: The archive is not a readable zip, has another structure than
            `layout`, holds an unreadable or wrongly sized PNG, or a download fails its md5.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown Omniglot split {split!r}; expected one of {SPLITS}")
    check_int("image_size", image_size)
    layout = OFFICIAL_LAYOUTS[split] if layout is None else layout
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    archive = _locate_archive(split, root, cache_root, download, progress)

    stat = archive.stat()
    meta = {
        "dataset": "omniglot", "split": split, "image_size": image_size,
        "preprocessing_version": PREPROCESSING_VERSION, "layout": asdict(layout),
        "source": {"name": archive.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns},
    }
    cache_path = cache_root / "omniglot" / f"{split}_{image_size}px.npz"
    cached = read_cached_arrays(cache_path, meta)
    expected_shape = (layout.num_characters * _rotations(split), layout.images_per_character,
                      image_size, image_size)
    if (cached is not None and cached.keys() == {"images", "class_names"}
            and cached["images"].shape == expected_shape and cached["images"].dtype == np.uint8
            and cached["class_names"].shape == expected_shape[:1]):
        images, class_names = cached["images"], tuple(str(n) for n in cached["class_names"])
    else:
        images, class_names = _preprocess_archive(archive, split, image_size, layout, progress)
        try:
            write_cached_arrays(cache_path, {"images": images,
                                             "class_names": np.array(class_names)}, meta)
        except OSError as exc:
            # A cache is an optimisation: an unwritable cache dir must not fail the load.
            warnings.warn(f"cannot write Omniglot cache {cache_path}: {exc}", stacklevel=2)
    images.flags.writeable = False
    return OmniglotSplit(images=images, class_names=class_names, split=split)


def _rotations(split: str) -> int:
    return len(ROTATIONS_DEG) if split == "background" else 1


def _locate_archive(split: str, root: str | os.PathLike | None, cache_root: Path,
                    download: bool, progress: bool) -> Path:
    """Finds the archive of `split` (see the module docstring), downloading if allowed."""
    name = f"images_{split}.zip"
    explicit = [(root, "root argument"),
                (os.environ.get("LIFELONG_OMNIGLOT_DIR") or None, "$LIFELONG_OMNIGLOT_DIR")]
    for directory, origin in explicit:
        if directory is not None:
            path = Path(directory).expanduser() / name
            if not path.is_file():
                raise DataError(f"Omniglot archive {path} (from the {origin}) does not exist")
            return path

    candidates = []
    if data_dir := os.environ.get("LIFELONG_DATA_DIR"):
        candidates.append(Path(data_dir).expanduser() / "omniglot" / name)
    downloaded = cache_root / "omniglot" / name
    candidates.append(downloaded)
    for path in candidates:
        if path.is_file():
            return path
    if not download:
        raise DataError(f"Omniglot archive {name} not found (looked in "
                        f"{', '.join(map(str, candidates))}) and download=False; pass root, set "
                        f"LIFELONG_OMNIGLOT_DIR or LIFELONG_DATA_DIR, or allow downloading")
    url, md5 = ARCHIVES[split]
    _log.info("downloading Omniglot %s from %s to %s", split, url, downloaded)
    return download_verified(url, downloaded, md5, progress=progress)


def _preprocess_archive(archive: Path, split: str, image_size: int, layout: OmniglotLayout,
                        progress: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """Decodes and preprocesses every image of an archive.

    Returns:
        images: [num_characters * rotations, images_per_character, image_size, image_size]
            uint8, ink high.
        class_names: [num_characters * rotations] names, in the order of `images`.

    Raises:
        CorruptArchiveError: Unreadable zip, wrong structure or bad PNG (names the member).
    """
    # Opened outside the try: a file that cannot be opened (permissions) is not corrupt.
    with open(archive, "rb") as file:
        try:
            zf = zipfile.ZipFile(file)
        except zipfile.BadZipFile as exc:
            raise CorruptArchiveError(f"Omniglot archive {archive} is not a readable zip "
                                      f"(corrupt or truncated): {exc}") from exc
        with zf:
            return _preprocess_members(zf, archive, split, image_size, layout, progress)


def _preprocess_members(zf: zipfile.ZipFile, archive: Path, split: str, image_size: int,
                        layout: OmniglotLayout,
                        progress: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """`_preprocess_archive` on the opened zip `zf` of `archive`."""
    rotations = _rotations(split)
    characters = _index_members(zf, archive, split, layout)
    images = np.empty((len(characters) * rotations, layout.images_per_character,
                       image_size, image_size), dtype=np.uint8)
    class_names = []
    try:
        with tqdm(total=len(characters) * layout.images_per_character, unit="img",
                  desc=f"Preprocessing Omniglot {split}", disable=not progress) as bar:
            for c, (character, members) in enumerate(characters.items()):
                for i, member in enumerate(members):
                    image = _decode_png(zf.read(member), image_size, archive, member)
                    for r in range(rotations):
                        # Rotating the resized image equals resizing the rotated one (the
                        # filter is symmetric) and is 4x cheaper; np.rot90 turns
                        # counter-clockwise, as the reference code's imrotate did.
                        images[c * rotations + r, i] = np.rot90(image, k=r)
                    bar.update()
                for r in range(rotations):
                    suffix = f"/rot{ROTATIONS_DEG[r]:03d}" if rotations > 1 else ""
                    class_names.append(character + suffix)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, OSError) as exc:
        # Raised by zf.read: a member whose bytes are truncated, fail their CRC, or use a
        # compression method this Python lacks.
        raise CorruptArchiveError(f"Omniglot archive {archive} is corrupt or truncated: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return images, tuple(class_names)


def _index_members(zf: zipfile.ZipFile, archive: Path, split: str,
                   layout: OmniglotLayout) -> dict[str, list[str]]:
    """Maps "Alphabet/characterNN" -> its PNG member names, both sorted; checks the layout.

    Raises:
        CorruptArchiveError: An unexpected entry, or counts that differ from `layout`.
    """
    top = f"images_{split}"
    characters: dict[tuple[str, str], list[str]] = {}
    for member in zf.namelist():
        parts = member.rstrip("/").split("/")
        # Archivers add metadata such as __MACOSX/ or .DS_Store; they are not images.
        if member.endswith("/") or any(p.startswith(".") or p == "__MACOSX" for p in parts):
            continue
        if len(parts) != 4 or parts[0] != top or not parts[3].lower().endswith(".png"):
            raise CorruptArchiveError(f"Omniglot archive {archive} has an unexpected entry "
                                      f"{member!r}; expected {top}/<alphabet>/<character>/*.png")
        characters.setdefault((parts[1], parts[2]), []).append(member)

    def fail(what: str) -> CorruptArchiveError:
        return CorruptArchiveError(f"Omniglot archive {archive} has the wrong structure: {what}")

    num_alphabets = len({alphabet for alphabet, _ in characters})
    if num_alphabets != layout.num_alphabets:
        raise fail(f"{num_alphabets} alphabets, expected {layout.num_alphabets}")
    if len(characters) != layout.num_characters:
        raise fail(f"{len(characters)} characters, expected {layout.num_characters}")
    for (alphabet, character), members in characters.items():
        if len(members) != layout.images_per_character:
            raise fail(f"{alphabet}/{character} has {len(members)} images, expected "
                       f"{layout.images_per_character}")
    # Sorting (alphabet, character) pairs rather than joined paths keeps the order of sorted
    # alphabet names even where a name sorts before "/" (e.g. "Alphabet-b" vs "Alphabet").
    return {f"{alphabet}/{character}": sorted(characters[alphabet, character])
            for alphabet, character in sorted(characters)}


def _decode_png(data: bytes, image_size: int, archive: Path, member: str) -> np.ndarray:
    """Decodes one 105x105 PNG into [image_size, image_size] uint8, ink 255 on 0.

    Raises:
        CorruptArchiveError: The bytes are no readable image, or not 105x105.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (SOURCE_IMAGE_SIZE, SOURCE_IMAGE_SIZE):
                raise CorruptArchiveError(
                    f"Omniglot archive {archive}: {member} is {image.size[0]}x{image.size[1]}, "
                    f"expected {SOURCE_IMAGE_SIZE}x{SOURCE_IMAGE_SIZE}")
            # Mode "1" cannot be filtered; as "L" strokes are 0 and paper 255.
            gray = image.convert("L").resize((image_size, image_size), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptArchiveError(f"Omniglot archive {archive}: cannot decode {member}: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return 255 - np.asarray(gray, dtype=np.uint8)
