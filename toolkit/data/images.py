"""Image files: which names are images, their size from the header, and decoding to BGR.

Reading is cheap: image sizes come from the file header (PIL opens lazily), pixels are decoded only
by ``load_image`` when a sample is used. A truncated image body is therefore found when it is loaded,
not when the set is read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from devices.errors import DataError

log = logging.getLogger(__name__)

#: File name endings read as images (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# EXIF orientation -> the PIL transpose that shows the photo upright (EXIF 2.3, tag 0x0112).
_ORIENTATION_TAG = 0x0112

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(im: Image.Image, path: Path) -> int:
    """EXIF orientation read from the header only (1 = upright, or when there is none).

    Both the readers (for width/height) and ``load_image`` (for the pixels) use this one function,
    so a sample's size always matches the array ``load_image`` returns.
    """
    # PIL's PNG getexif() decodes the whole image when the eXIf chunk was not seen before the pixel
    # data; a header read must not decode, so a PNG only counts EXIF found in its header.
    if im.format == "PNG" and "exif" not in im.info:
        return 1
    try:
        value = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception as exc:  # a broken EXIF block must not make a usable photo unusable
        log.warning("%s: unreadable EXIF block (%s); treating the image as upright", path, exc)
        return 1
    return value if value in _TRANSPOSE else 1


def _open_error(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"cannot read image {path}: {exc}",
        "the file is corrupt, truncated or not an image: re-export or re-download it, or delete it "
        "together with its annotation",
    )


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image as ``load_image`` returns it, from the file header only.

    Raises:
        DataError: The file is missing or not a readable image.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if _orientation(im, path) in (5, 6, 7, 8):  # these orientations turn the photo by 90°
                width, height = height, width
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}", "check the images folder, or restore the file") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_error(path, exc) from exc
    return width, height


def _to_rgb8(im: Image.Image, path: Path) -> np.ndarray:
    """Decoded PIL image -> RGB uint8 (H, W, 3)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grey: scale the full 0..65535 range (PIL's convert("L") clips at 255 instead, which
        # turns any real 16-bit photo white).
        wide = np.asarray(im).astype(np.int64).clip(0, 65535)
        grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if im.mode == "F":
        raise DataError(
            f"image {path} holds floating-point pixels, which have no standard 8-bit scale",
            "convert it to an 8-bit or 16-bit image",
        )
    # convert("RGB") drops alpha (RGBA, LA, PA) and expands grey and palette images; dropping alpha
    # is what cv2.imread(IMREAD_COLOR) does on the device, so training sees the pixels the camera
    # path would. In the bundled RGBA sets alpha < 255 covers under 0.4 % of pixels (a border).
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image as BGR uint8 (H, W, 3), upright per its EXIF orientation.

    Handles RGB, RGBA (alpha dropped), grey, palette and 16-bit images. Width and height equal
    ``image_size(path)`` and hence ``Sample.width``/``Sample.height``.

    Raises:
        DataError: The file is missing, corrupt, truncated or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            orientation = _orientation(im, path)
            im.load()
            upright = im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im
            rgb = _to_rgb8(upright, path)
    except FileNotFoundError as exc:
        raise DataError(f"image not found: {path}", "check the path, or restore the file") from exc
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise _open_error(path, exc) from exc
    return np.ascontiguousarray(rgb[..., ::-1])


def is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
