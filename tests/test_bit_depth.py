"""High bit depth keeps its grey levels (issue 13 item 2): a 10-, 12- or 16-bit PNG or TIFF maps its real
range to 0..255 (the PNG's sBIT depth, else a grey image's own range), identically on the OpenCV path
and the PIL fallback."""

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from comp.data.images import _read_with_pil, png_sbit
from comp.data.readers import read_image


def with_sbit(path: Path, bits: int) -> None:
    """Insert an sBIT chunk (`bits` for the grey channel) after the IHDR of a grey PNG, as exporters
    writing 12-bit data into 16-bit PNGs do (cv2 and PIL write none)."""
    data = path.read_bytes()
    end = 8 + 8 + 13 + 4  # signature, IHDR's length + type, its 13 bytes, its CRC
    body = b"sBIT" + bytes([bits])
    chunk = struct.pack(">I", 1) + body + struct.pack(">I", zlib.crc32(body))
    path.write_bytes(data[:end] + chunk + data[end:])


def ramp(bits: int, top: int | None = None) -> np.ndarray:
    """A 64x64 uint16 grey ramp over 0..top (default 2^bits - 1), every value of the range present."""
    top = 2**bits - 1 if top is None else top
    return np.linspace(0, top, 64 * 64).round().astype(np.uint16).reshape(64, 64)


def write(path: Path, img: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), img)
    return path


def both_paths(path: Path) -> np.ndarray:
    """The OpenCV decode and the PIL fallback agree; returns the grey channel."""
    a, b = read_image(path), _read_with_pil(path, None)
    assert a.dtype == b.dtype == np.uint8 and (a == b).all(), path
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0]


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("bits", [10, 12, 16])
def test_own_range_keeps_the_grey_levels(tmp_path, ext, bits):
    img = ramp(bits)
    out = both_paths(write(tmp_path / f"r{bits}{ext}", img))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 256  # not 2^(bits-8) levels
    expect = np.rint(img.astype(float) * 255 / (2**bits - 1))
    assert (out == expect).all()
    dark = ramp(bits, top=2 ** (bits - 1) - 1) + 7  # half the range, lifted: still stretched to 0..255
    out = both_paths(write(tmp_path / f"d{bits}{ext}", dark))
    assert out.min() == 0 and out.max() == 255


@pytest.mark.parametrize("bits", [10, 12])
def test_png_sbit_sets_the_range(tmp_path, bits):
    p = write(tmp_path / "x.png", ramp(bits, top=2 ** (bits - 1) - 1))  # uses half of its 2^bits levels
    with_sbit(p, bits)
    assert png_sbit(p) == bits and Image.open(p).size == (64, 64)  # a valid PNG still
    out = both_paths(p)
    assert out.min() == 0 and out.max() == 127  # 0..2^bits-1 is the range, not the image's own
    full = write(tmp_path / "f.png", ramp(bits))
    with_sbit(full, bits)
    assert (both_paths(full) == np.rint(ramp(bits).astype(float) * 255 / (2**bits - 1))).all()


def test_pil_fallback_through_read_image(tmp_path):
    """A PNG with junk after IEND goes to PIL by read_image itself: the same pixels."""
    p = write(tmp_path / "a.png", ramp(12))
    clean = read_image(p)
    p.write_bytes(p.read_bytes() + bytes(2048))  # IEND no longer in the tail read
    assert (read_image(p) == clean).all()


def test_16bit_colour_and_one_level(tmp_path):
    rgb = np.stack([ramp(16), ramp(16)[::-1], np.full((64, 64), 40000, np.uint16)], -1)
    out = read_image(write(tmp_path / "c.png", rgb))  # colour: the full 16-bit scale, per channel
    assert (out[..., 2] == np.rint(ramp(16).astype(float) * 255 / 65535)).all()  # BGR on disk -> RGB
    assert (out[..., 1] == np.rint(ramp(16)[::-1].astype(float) * 255 / 65535)).all()
    assert (out[..., 0] == round(40000 * 255 / 65535)).all()
    flat = np.full((8, 8), 3000, np.uint16)  # one grey level has no range of its own: the 16-bit scale
    assert (both_paths(write(tmp_path / "flat.png", flat)) == round(3000 * 255 / 65535)).all()
