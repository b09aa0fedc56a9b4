"""Image decoding and resizing the way the Levi-Hassner nets were trained (256 px, 227 px crops)."""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

TRAIN_SIZE = 256
CROP_SIZE = 227
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

log = logging.getLogger(__name__)


class ImageError(ValueError):
    """An image file that cannot be decoded."""


DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "PSYATTR_MAX_PIXELS"
# Large JPEGs are decoded at a reduced scale (1/2 .. 1/8, by the JPEG decoder itself) while their long side
# stays at least this many pixels: enough to find and frame a face, in bounded memory and time.
WORKING_SIDE = 2048


def max_pixels() -> int:
    """psyattr's limit on an image's pixel count: `$PSYATTR_MAX_PIXELS`, else 50 million."""
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a number of pixels, got {text!r}") from None
    if value < 1:
        raise ValueError(f"{MAX_PIXELS_ENV} must be positive, got {text!r}")
    return value


def _too_large(path: Path, width: int, height: int, limit: int) -> ImageError:
    return ImageError(f"{path} is {width}x{height} = {width * height:,} pixels, over psyattr's limit of {limit:,} "
                      f"(raise it with --max-pixels or {MAX_PIXELS_ENV}, or shrink the image)")


def decode_rgb(path: str | os.PathLike | bytes, limit: int | None = None, name: str = "the photo") -> np.ndarray:
    """Decode any image file (or its bytes, called `name`) to RGB uint8 `(H, W, 3)`: EXIF-rotated, any mode.

    Images over `limit` pixels (default `max_pixels()`) are refused before they are decoded; large JPEGs are
    decoded at a reduced scale.
    """
    source = io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else Path(path)
    path = name if isinstance(source, io.BytesIO) else source
    limit = limit or max_pixels()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
        with image:
            if image.format == "JPEG" and max(image.size) > 2 * WORKING_SIDE:
                image.draft("RGB", (WORKING_SIDE, WORKING_SIDE))
            width, height = image.size
            if width * height > limit:
                raise _too_large(path, width, height, limit)
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                # Transparent pixels become white rather than whatever colour hides behind them.
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
            elif image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                # 16-bit and float images are rescaled to 0..255 instead of being clipped.
                array = np.asarray(image, dtype=np.float64)
                span = float(array.max() - array.min()) or 1.0
                image = Image.fromarray(((array - array.min()) / span * 255).astype(np.uint8))
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise
    except Image.DecompressionBombError as err:
        # PIL refuses such images before it reports their size: they are far over psyattr's own limit too.
        raise ImageError(f"{path} is over psyattr's limit of {limit:,} pixels ({err}); shrink the image, "
                         f"or raise the limit with --max-pixels or {MAX_PIXELS_ENV}") from None
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ImageError(f"cannot decode image {path}: {err} (is it a complete image file?)") from err


def load_rgb(path: str | os.PathLike, size: int = TRAIN_SIZE) -> np.ndarray:
    """Decode any image file to RGB uint8 `(size, size, 3)`: EXIF-rotated, any mode, resized (aspect not kept)."""
    image = Image.fromarray(decode_rgb(path))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def center_crop(images: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Crop the central `size` x `size` pixels of an image `(H, W, C)` or batch `(N, H, W, C)`."""
    height, width = images.shape[-3], images.shape[-2]
    if height < size or width < size:
        raise ValueError(f"image of {height}x{width} is smaller than the {size}x{size} crop")
    top, left = (height - size) // 2, (width - size) // 2
    return images[..., top : top + size, left : left + size, :]


def load_model_input(path: str | os.PathLike) -> np.ndarray:
    """Decode an image to the model's input: RGB float32 `(227, 227, 3)` in 0..255, resized then centre-cropped."""
    return center_crop(load_rgb(path)).astype(np.float32)


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (not recursive) into a sorted list of image files."""
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found.extend(sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif entry.exists():
            found.append(entry)
        else:
            raise FileNotFoundError(f"no such image or folder: {entry}")
    return found


def image_batches(paths: Sequence[Path], size: int, load: Callable[[Path], np.ndarray] = load_model_input
                  ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[Path, str]]]]:
    """Per batch of `size` paths: the indices read, their model inputs, and the (path, reason) of those skipped."""
    for start in range(0, len(paths), size):
        kept, images, failed = [], [], []
        for index in range(start, min(start + size, len(paths))):
            try:
                images.append(load(paths[index]))
                kept.append(index)
            except (ImageError, FileNotFoundError, IsADirectoryError) as err:
                log.warning("skipped %s: %s", paths[index], err)
                failed.append((paths[index], str(err)))
        yield kept, np.stack(images) if images else np.zeros((0, CROP_SIZE, CROP_SIZE, 3), np.float32), failed


def unique_stems(paths: Sequence[Path]) -> list[str]:
    """Output file stems, one per path: a repeated stem gets `_2`, `_3`, ... so that no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        stems.append(path.stem if count == 0 else f"{path.stem}_{count + 1}")
    return stems
