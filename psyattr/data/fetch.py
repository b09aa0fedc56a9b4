"""Finding and fetching the OMI faces: a local copy, $PSYATTR_DATA_DIR, or a download from the public repository."""

from __future__ import annotations

import logging
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# Peterson et al., PNAS 2022 (CC BY-NC-SA 4.0); pinned to the commit the tests' copy was made from.
OMI_URL = "https://raw.githubusercontent.com/jcpeterson/omi/53bb3c13113afc3ae67aa6ede4ac9dfe33f306af"
OMI_COUNT = 1004
OMI_FILES = ("attribute_means.csv", "LICENSE.txt", "README.md")


class FetchError(RuntimeError):
    """A data set that could neither be found nor fetched."""


def default_data_home() -> Path:
    """Where fetched data sets go: `$PSYATTR_DATA_HOME`, else `~/.cache/psyattr/data`."""
    return Path(os.environ.get("PSYATTR_DATA_HOME") or Path.home() / ".cache" / "psyattr" / "data")


def is_omi_folder(folder: Path) -> bool:
    """Whether `folder` holds OMI's ratings and its 256 px (or original) images."""
    images = folder / "images_256" if (folder / "images_256").is_dir() else folder / "images"
    return (folder / "attribute_means.csv").is_file() and images.is_dir() and any(images.glob("*.jpg"))


def find_omi(data: str | os.PathLike | None = None) -> Path:
    """OMI from `data`, else `$PSYATTR_DATA_DIR/omi`, else the fetched copy; raise FetchError saying how to get it."""
    candidates = []
    if data is not None:
        candidates.append(Path(data))
    if os.environ.get("PSYATTR_DATA_DIR"):
        candidates.append(Path(os.environ["PSYATTR_DATA_DIR"]) / "omi")
    candidates.append(default_data_home() / "omi")
    for folder in candidates:
        if is_omi_folder(folder):
            return folder
    raise FetchError(f"OMI faces not found (looked in {', '.join(map(str, candidates))}): pass --data FOLDER, set "
                     "PSYATTR_DATA_DIR, or run `psyattr data fetch omi` (needs internet)")


def _download(url: str, target: Path, timeout: float) -> None:
    tmp = target.with_name(f".{target.name}.partial")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as handle:
            shutil.copyfileobj(response, handle)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _store_256(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.partial.jpg")
    with Image.open(source) as image:
        image.convert("RGB").resize((256, 256), Image.Resampling.LANCZOS).save(tmp, quality=90)
    os.replace(tmp, target)


def fetch_omi(dest: str | os.PathLike | None = None, source: str | os.PathLike | None = None,
              progress: bool = True, timeout: float = 60.0) -> Path:
    """Put OMI (ratings + 256 px images) in `dest`/omi, from a local folder or the public repository; resumable."""
    target = Path(dest) if dest is not None else default_data_home()
    target = target / "omi"
    images = target / "images_256"
    images.mkdir(parents=True, exist_ok=True)
    if source is not None:
        source = Path(source)
        if not is_omi_folder(source):
            raise FetchError(f"{source} is not an OMI folder: expected attribute_means.csv and images_256/ (or images/)")
        for name in OMI_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, target / name)
        originals = source / "images_256" if (source / "images_256").is_dir() else source / "images"
        files = sorted(originals.glob("*.jpg"))
        for path in tqdm(files, desc="copying OMI", unit="img", disable=not progress):
            if not (images / path.name).exists():
                _store_256(path, images / path.name)
        return target
    try:
        for name in OMI_FILES:
            if not (target / name).exists():
                _download(f"{OMI_URL}/{name}", target / name, timeout)
        missing = [i for i in range(1, OMI_COUNT + 1) if not (images / f"{i}.jpg").exists()]
        scratch = target / ".download"
        scratch.mkdir(exist_ok=True)
        for number in tqdm(missing, desc="downloading OMI", unit="img", disable=not progress):
            original = scratch / f"{number}.jpg"
            _download(f"{OMI_URL}/images/{number}.jpg", original, timeout)
            _store_256(original, images / f"{number}.jpg")
            original.unlink()
        shutil.rmtree(scratch, ignore_errors=True)
    except (urllib.error.URLError, OSError) as err:
        raise FetchError(f"downloading OMI failed ({err}); what was fetched is kept in {target} and a rerun "
                         "continues from there; without internet, pass a local copy with --from") from err
    return target
