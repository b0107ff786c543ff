"""Decoding any image file the competitions ship into an RGB uint8 array at the training size.

OpenCV decodes (it is several times faster than PIL on JPEG and PNG), JPEGs much larger than the
target are decoded at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients (IMREAD_REDUCED_*),
and whatever the file holds (grayscale, RGBA, palette, 16-bit) comes out as (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from comp.errors import UserError

cv2.setNumThreads(1)  # the DataLoader workers are the parallelism; OpenCV threads would fight them

_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))


def _jpeg_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF header without decoding it; None if not a readable JPEG."""
    with open(path, "rb") as f:
        data = f.read(1 << 16)
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        seg_len = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        i += 2 + seg_len
    return None


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Any array cv2.imread(IMREAD_UNCHANGED) returns → (H, W, 3) uint8 RGB."""
    if img.dtype == np.uint16:  # 16-bit PNG/TIFF: keep the top 8 bits of the full range
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:  # RGBA: composite on black, as the image would show on a dark background
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, target: int | None = None) -> np.ndarray:
    """Decode `path` into (H, W, 3) uint8 RGB. With `target` (the side it will be resized to), a JPEG at
    least 2x larger on its short side is decoded at a reduced scale, which is most of the speed-up on
    full-size fundus photographs.

    Raises:
        UserError: the file is missing, empty, or not a decodable image.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        raise UserError(f"image file not found: {path}") from None
    if size == 0:
        raise UserError(f"image file is empty (0 bytes): {path}")
    img = None
    if target:
        wh = _jpeg_size(path) if path.suffix.lower() in (".jpg", ".jpeg") else None
        if wh:
            for factor, flag in _REDUCED:
                if min(wh) // factor >= target:
                    img = cv2.imread(str(path), flag)  # BGR, already 3 channels
                    if img is not None:
                        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
                    break
    if img is None:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if raw is None:
            raw = _read_with_pil(path)
        img = to_rgb_uint8(raw)
    return img


def _read_with_pil(path: Path) -> np.ndarray:
    """Fallback for what OpenCV cannot open (CMYK JPEG variants, some palette files). PIL verifies the
    whole stream, so a truncated file fails here rather than training on half an image."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))[:, :, ::-1].copy()  # to BGR like cv2
    except Exception as e:
        raise UserError(f"cannot decode image file {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def resize(img: np.ndarray, size: int) -> np.ndarray:
    """Square resize to `size`; INTER_AREA when shrinking (no aliasing), INTER_LINEAR when enlarging."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Decode and resize to (size, size, 3) uint8 RGB: what the cache stores and the Dataset yields."""
    return resize(read_image(path, target=size), size)
