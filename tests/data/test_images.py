"""comp.data.images, the readers chosen by file: every format decodes to RGB uint8 (channel order, alpha,
CMYK), the reduced JPEG decode, the unusable-file kinds; high bit depth keeps its grey levels (a 10-, 12- or
16-bit PNG or TIFF maps its real range to 0..255: the PNG's sBIT depth, else a grey image's own range,
identically on the OpenCV path and the PIL fallback), and a DICOM reads as its 16-bit PNG export."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from replicas import write_cr

from comp.data.image_base import ImageError
from comp.data.images import _read_with_pil, png_sbit
from comp.data.readers import load_image, read_image
from comp.errors import UserError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _pil(mode: str, ext: str):
    def write(path: Path) -> None:
        Image.fromarray(RGB).convert(mode).save(path.with_suffix(ext))
    return write


def _cv(array: np.ndarray, ext: str):
    def write(path: Path) -> None:
        assert cv2.imwrite(str(path.with_suffix(ext)), array)
    return write


FORMATS = {
    "rgb.png": _pil("RGB", ".png"),
    "gray.png": _pil("L", ".png"),
    "rgba.png": _pil("RGBA", ".png"),
    "gray_alpha.png": _pil("LA", ".png"),
    "palette.png": _pil("P", ".png"),
    "bilevel.png": _pil("1", ".png"),
    "gray16.png": _cv(RNG.integers(0, 65536, (20, 30), dtype=np.uint16), ".png"),
    "rgb16.png": _cv(RNG.integers(0, 65536, (20, 30, 3), dtype=np.uint16), ".png"),
    "rgba16.png": _cv(RNG.integers(0, 65536, (20, 30, 4), dtype=np.uint16), ".png"),
    "rgb.jpeg": _pil("RGB", ".jpeg"),
    "gray.jpg": _pil("L", ".jpg"),
    "cmyk.jpg": _pil("CMYK", ".jpg"),
    "rgb.bmp": _pil("RGB", ".bmp"),
    "palette.bmp": _pil("P", ".bmp"),
    "bilevel.bmp": _pil("1", ".bmp"),
    "rgb.tif": _pil("RGB", ".tif"),
    "float.tif": lambda p: Image.fromarray(RNG.random((20, 30)).astype(np.float32)).save(p.with_suffix(".tif")),
    "rgba.webp": _pil("RGBA", ".webp"),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_format_decodes_to_rgb_uint8(tmp_path, name):
    path = tmp_path / name
    FORMATS[name](path)
    img = read_image(path)
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8 and img.flags.c_contiguous
    assert load_image(path, 16).shape == (16, 16, 3)


def test_channel_order_alpha_and_depth(tmp_path):
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red).save(tmp_path / "red.png")
    assert (read_image(tmp_path / "red.png")[0, 0] == [255, 0, 0]).all()  # RGB, not OpenCV's BGR

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 1] = 200  # green everywhere, transparent on the left half
    rgba[:, 4:, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    img = read_image(tmp_path / "rgba.png")
    assert (img[:, :4] == 0).all() and (img[:, 4:] == [0, 200, 0]).all()  # composited on black

    g16 = np.full((8, 8), 0xAB12, np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    # one grey level, so no range of its own: the full 16-bit scale (high bit depth: below)
    assert (read_image(tmp_path / "g16.png") == round(0xAB12 * 255 / 65535)).all()

    gray = RGB[..., 0].copy()
    Image.fromarray(gray).save(tmp_path / "gray.png")
    img = read_image(tmp_path / "gray.png")
    assert (img[..., 0] == gray).all() and (img[..., 1] == gray).all() and (img[..., 2] == gray).all()


def test_cmyk_jpeg_matches_pil(tmp_path):
    Image.fromarray(RGB).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    ours = read_image(tmp_path / "c.jpg").astype(int)
    pil = np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")).astype(int)
    assert np.abs(ours - pil).mean() < 3  # two JPEG decoders, same colours


def test_reduced_dct_decode(tmp_path):
    """A JPEG is decoded at the smallest of libjpeg-turbo's scales (k/8) keeping both sides >= the target,
    with OpenCV's very pixels at the scales both have; after the resize it is close to the full decode."""
    from skimage import data

    big = cv2.resize(data.retina(), (320, 240), interpolation=cv2.INTER_AREA)
    path = tmp_path / "big.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(big, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert read_image(path).shape == (240, 320, 3)
    assert read_image(path, target=60).shape == (60, 80, 3)  # 2/8: 240 * 2/8 >= 60
    assert read_image(path, target=61).shape == (90, 120, 3)  # 3/8
    assert read_image(path, target=211).shape == (240, 320, 3)  # 7/8 would be 210: full decode
    for target, flag in ((30, cv2.IMREAD_REDUCED_COLOR_8), (60, cv2.IMREAD_REDUCED_COLOR_4),
                         (120, cv2.IMREAD_REDUCED_COLOR_2), (None, cv2.IMREAD_COLOR)):
        by_cv2 = cv2.cvtColor(cv2.imread(str(path), flag), cv2.COLOR_BGR2RGB)
        assert np.array_equal(read_image(path, target=target), by_cv2), target
    full = cv2.resize(read_image(path), (48, 48), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(load_image(path, 48).astype(int) - full).mean() < 4


def _jpeg_bytes() -> bytes:
    return cv2.imencode(".jpg", RGB)[1].tobytes()


def _cut(ext: str, keep: float):
    def write(path: Path) -> None:
        whole = cv2.imencode(ext, cv2.resize(RGB, (64, 64)))[1].tobytes()
        path.write_bytes(whole[: int(len(whole) * keep)])
    return write


# name -> (the file's suffix, how it is written, the kind of ImageError, the decode's target size)
UNUSABLE = {
    "missing": (".jpg", lambda p: None, "missing", 8),
    "empty": (".jpg", lambda p: p.write_bytes(b""), "empty", 8),
    "truncated": (".jpg", lambda p: p.write_bytes(_jpeg_bytes()[: len(_jpeg_bytes()) // 2]), "truncated", 8),
    "corrupt": (".jpg", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4 + b"\xff\xd9"), "corrupt", 8),
    # OpenCV decodes a JPEG cut short without complaint; the tail check catches it, and PNG/BMP too
    "a PNG cut short": (".png", _cut(".png", 2 / 3), "truncated", None),
    "a BMP cut short": (".bmp", _cut(".bmp", 2 / 3), "truncated", None),
    "a JPEG cut short": (".jpg", _cut(".jpg", 2 / 3), "truncated", None),
}


@pytest.mark.parametrize("name", list(UNUSABLE))
def test_an_unusable_file_is_an_image_error_of_its_kind(tmp_path, name):
    ext, write, kind, target = UNUSABLE[name]
    path = tmp_path / f"x{ext}"
    write(path)
    with pytest.raises(ImageError) as e:
        read_image(path, target=target)
    assert e.value.kind == kind and str(path) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UserError)


def test_trailing_bytes_after_jpeg_end_still_load(tmp_path):
    """Some cameras append data after the EOI marker: not truncation."""
    path = tmp_path / "tail.jpg"
    path.write_bytes(_jpeg_bytes() + bytes(range(256)) * 8)
    assert read_image(path).shape == (20, 30, 3)


# ---- high bit depth ----------------------------------------------------------------------------

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


def test_a_dicom_and_its_16bit_png_export_look_the_same(tmp_path):
    grey = np.clip(np.random.default_rng(1).normal(120, 50, (40, 50)), 0, 255).astype(np.uint8)
    write_cr(tmp_path / "x.dcm", grey, "p", mono1=False, window=False, rle=False)
    stored = pydicom.dcmread(tmp_path / "x.dcm").pixel_array
    cv2.imwrite(str(tmp_path / "x.png"), stored)  # the stored values, no sBIT: the image's own range
    assert (read_image(tmp_path / "x.dcm") == read_image(tmp_path / "x.png")).all()
    write_cr(tmp_path / "w.dcm", grey, "p", mono1=False, window=True, rle=True)  # window 2048/4096 = 0..4095
    with_sbit(tmp_path / "x.png", 12)  # a 12-bit export: 0..4095
    assert (read_image(tmp_path / "w.dcm") == read_image(tmp_path / "x.png")).all()


def test_a_float_tiff_with_nan_keeps_its_picture_and_says_so(tmp_path, capsys):
    """A float TIFF's no-data NaN (and inf) made the whole image black (cv2.normalize spreads NaN): the finite
    values are stretched as without them, the others shown as the lowest, with a warning naming the file; a
    file of NaN alone is refused by name."""
    ramp_f = np.tile(np.linspace(-1.0, 3.0, 30, dtype=np.float32), (20, 1))
    clean = both_paths(write(tmp_path / "clean.tif", ramp_f))
    holes = ramp_f.copy()
    holes[5:8, 10:12], holes[0, 0] = np.nan, np.inf
    out = both_paths(write(tmp_path / "holes.tif", holes))
    keep = np.isfinite(holes)
    assert (out[keep] == clean[keep]).all() and (out[~keep] == 0).all()
    assert "holes.tif read with repairs: 7 of 600 values NaN or infinite" in capsys.readouterr().err
    with pytest.raises(ImageError, match=r"nan\.tif.*no finite value"):
        read_image(write(tmp_path / "nan.tif", np.full((4, 4), np.nan, np.float32)))
