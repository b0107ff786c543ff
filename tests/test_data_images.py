"""Decoding every format into RGB uint8, the unusable-file kinds, the reduced JPEG decode, and the
medical preprocessing steps on a real fundus photograph (skimage.data.retina)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from comp.data import preprocess as P
from comp.data.image_base import ImageError
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
    # one grey level, so no range of its own: the full 16-bit scale (tests/test_bit_depth.py has the rest)
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


@pytest.mark.parametrize("kind, write", [
    ("missing", lambda p: None),
    ("empty", lambda p: p.write_bytes(b"")),
    ("truncated", lambda p: p.write_bytes(_jpeg_bytes()[: len(_jpeg_bytes()) // 2])),
    ("corrupt", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 4 + b"\xff\xd9")),
])
def test_unusable_file_kinds(tmp_path, kind, write):
    path = tmp_path / "x.jpg"
    write(path)
    with pytest.raises(ImageError) as e:
        read_image(path, target=8)
    assert e.value.kind == kind and str(path) in str(e.value) and "\n" not in str(e.value)
    assert isinstance(e.value, UserError)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".jpg"])
def test_truncation_found_in_every_format(tmp_path, ext):
    """OpenCV decodes a JPEG cut short without complaint; the tail check catches it, and PNG/BMP too."""
    whole = cv2.imencode(ext, cv2.resize(RGB, (64, 64)))[1].tobytes()
    path = tmp_path / f"cut{ext}"
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ImageError) as e:
        read_image(path)
    assert e.value.kind == "truncated"


def test_trailing_bytes_after_jpeg_end_still_load(tmp_path):
    """Some cameras append data after the EOI marker: not truncation."""
    path = tmp_path / "tail.jpg"
    path.write_bytes(_jpeg_bytes() + bytes(range(256)) * 8)
    assert read_image(path).shape == (20, 30, 3)


# ---- preprocessing on a real fundus photograph -------------------------------------------------

@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    """skimage's fundus photograph (1411 x 1411), placed as DR 2015 shoots them: a wider black frame
    cutting the disc at the top and bottom."""
    from skimage import data

    r = data.retina()
    frame = np.zeros((1100, 1700, 3), np.uint8)
    frame[:, 145 : 145 + r.shape[1]] = r[155 : 155 + 1100]
    return frame


def test_crop_black_is_the_bounding_box(retina):
    out = P.crop_black(retina)
    gray = cv2.cvtColor(retina, cv2.COLOR_RGB2GRAY)
    left, top, right, bottom = Image.fromarray(((gray > P.BLACK_TOL) * 255).astype(np.uint8)).getbbox()
    assert (right - left, bottom - top) == (out.shape[1], out.shape[0])  # PIL's getbbox, as the X-ray report
    assert out.shape[0] == 1100 and out.shape[1] < 1411  # the frame's side borders gone, the cut rows kept
    assert (P.crop_black(np.zeros((10, 10, 3), np.uint8)) == 0).all()  # all black: kept whole


def test_crop_circle_squares_the_disc(retina):
    out = P.apply(retina, ["crop_circle"], 256)
    assert out.shape == (256, 256, 3)
    assert out[:10].max() <= P.BLACK_TOL + 1 and out[-10:].max() <= P.BLACK_TOL + 1  # padded top and bottom
    assert abs(P.eye_radius(out) - 128) <= 3  # the disc spans the width
    assert out[128, 128].mean() > 50  # the eye is centred


def test_ben_graham(retina):
    img = P.apply(retina, ["crop_circle"], 256)
    out = P.ben_graham(img)
    yy, xx = np.mgrid[:256, :256]
    dist = np.hypot(yy - 128, xx - 128)
    inside, outside = out[dist < 100], out[dist > 120]
    assert (outside == 128).all()  # grey outside 90 % of the disc
    assert abs(inside.mean() - 128) < 12  # the local average colour is subtracted: mid-grey on average
    assert inside.std() > 8  # the vessels and the disc stay visible
    assert abs(np.median(inside.reshape(-1, 3), 0) - 128).max() < 10  # no colour cast left
    # Scale invariance: the blur is relative to the eye's radius, so 512 px then halved ~ 256 px.
    big = cv2.resize(P.apply(retina, ["crop_circle", "ben_graham"], 512), (256, 256), interpolation=cv2.INTER_AREA)
    small = P.apply(retina, ["crop_circle", "ben_graham"], 256)
    assert np.abs(big.astype(int) - small.astype(int))[dist < 100].mean() < 8


def test_contrast_steps(retina):
    img = P.apply(retina, ["crop_circle"], 128)
    lum = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[32:96, 32:96].std()
    for step in (P.clahe, P.equalize):
        out = step(img)
        assert out.shape == img.shape and out.dtype == np.uint8
        assert cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[32:96, 32:96].std() > lum  # more contrast in the retina
    gray = P.grayscale(img)
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    for step in (P.clahe, P.equalize):  # a grey X-ray stays grey (and is cached as one channel)
        out = step(gray)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_apply_order_and_names(retina, tmp_path):
    steps = ["ben_graham", "crop_circle", "clahe", "equalize", "grayscale", "crop_black"]
    out = P.apply(retina, steps, 64)  # crops run first wherever they are listed
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    path = tmp_path / "eye.jpg"
    cv2.imwrite(str(path), cv2.cvtColor(retina, cv2.COLOR_RGB2BGR))
    assert P.load_preprocessed(path, 64, ["crop_circle", "ben_graham"]).shape == (64, 64, 3)
    with pytest.raises(UserError, match=r"images.preprocess\[1\]: unknown step 'ben_grahm'"):
        P.check_steps(["crop_circle", "ben_grahm"])
