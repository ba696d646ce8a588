"""Decoding image files into uint8 RGB arrays and resizing them to squares.

Everything here works on NumPy arrays of shape (H, W, 3) and dtype uint8.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from PIL import Image, ImageOps

Image.init()

# Formats Pillow registers for opening but cannot decode without something outside Pillow
# (stub plugins, Ghostscript for EPS, Windows for WMF/EMF).
_UNDECODABLE_FORMATS = frozenset({"BUFR", "EPS", "GRIB", "HDF5", "MPEG", "WMF"})

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ext.lower()
    for ext, fmt in Image.registered_extensions().items()
    if fmt in Image.OPEN and fmt not in _UNDECODABLE_FORMATS
)
"""Lower-case file suffixes (with the dot) of the formats Pillow can open and decode."""

# What a damaged or hostile file may make Pillow raise. KeyboardInterrupt, SystemExit and
# programming errors in this module are not in the list.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError and "image file is truncated"
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    MemoryError,
    struct.error,
    Image.DecompressionBombError,
)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def _over_black(rgba: np.ndarray) -> np.ndarray:
    """Composite an (H, W, 4) uint8 array over black: rgb * alpha / 255, rounded."""
    rgb = rgba[..., :3].astype(np.uint32)
    alpha = rgba[..., 3:].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to a uint8 (H, W, 3) array.

    Alpha (RGBA, LA, PA, and palette images with transparency) is composited over black;
    a colour-key transparency on RGB or L images is ignored.
    16-bit grey (I;16*) and 32-bit integer grey (I, taken as 16-bit, clipped to 0..65535) are
    divided by 257 and rounded; float grey (F) is clipped to 0..255 and rounded; 1-bit becomes
    0/255; CMYK, YCbCr and the rest go through Pillow's own conversion to RGB.
    """
    mode = img.mode
    if mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    if mode in ("L", "1"):
        return _grey_to_rgb(np.asarray(img.convert("L"), dtype=np.uint8))
    if mode.startswith("I;16") or mode == "I":
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return _grey_to_rgb(((wide * 2 + 257) // 514).astype(np.uint8))
    if mode == "F":
        flt = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0)
        return _grey_to_rgb(np.rint(np.clip(flt, 0.0, 255.0)).astype(np.uint8))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _over_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def decode_image(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Read an image file into a uint8 (H, W, 3) RGB array, or None if it cannot be read.

    The first frame is used, EXIF orientation is applied, and the pixel data is decoded at
    once, so truncated files fail here. Missing, empty, corrupt, truncated, over-large
    (decompression bomb) and non-image files all give None; see pil_to_rgb for modes.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            arr = pil_to_rgb(img)
    except _DECODE_ERRORS:
        return None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        return None
    return arr


def resize_short_side(img: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) resized (bilinear, antialiased) so that its shorter side is `size`."""
    h, w = img.shape[:2]
    if h <= w:
        new_h, new_w = size, max(size, round(w * size / h))
    else:
        new_h, new_w = max(size, round(h * size / w)), size
    if (new_h, new_w) == (h, w):
        return img
    pil = Image.fromarray(np.ascontiguousarray(img))
    return np.asarray(pil.resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)


def resize_square(
    img: np.ndarray,
    size: int,
    crop: str = "center",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Resize so the shorter side is `size` (bilinear, antialiased), then crop size x size.

    crop is "center" or "random" (offsets drawn from `rng`, a fresh generator if None).
    Grey (H, W) input is accepted. Returns uint8 (size, size, 3).
    """
    if crop not in ("center", "random"):
        raise ValueError(f"crop must be 'center' or 'random', not {crop!r}")
    if size < 1:
        raise ValueError(f"size must be positive, not {size}")
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = _grey_to_rgb(arr)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) image, got shape {arr.shape}")
    arr = resize_short_side(arr.astype(np.uint8, copy=False), size)
    new_h, new_w = arr.shape[:2]
    if crop == "center":
        top, left = (new_h - size) // 2, (new_w - size) // 2
    else:
        gen = rng if rng is not None else np.random.default_rng()
        top = int(gen.integers(0, new_h - size + 1))
        left = int(gen.integers(0, new_w - size + 1))
    return arr[top : top + size, left : left + size].copy()  # writable, contiguous
