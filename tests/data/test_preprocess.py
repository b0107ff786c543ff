"""comp.data.preprocess, the medical preprocessing steps, on real images: a fundus photograph
(skimage.data.retina) for the crops, Ben Graham's local-average subtraction and the contrast steps, and a
chest CR (pydicom-data's RG1_UNCR.dcm) for the crop of export frames and burned-in text bands."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from comp.data import preprocess as P
from comp.data.dicom import read_dicom
from comp.errors import UserError


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


def test_crop_border_removes_frames_and_text_bands_only():
    cr = read_dicom(get_testdata_file("RG1_UNCR.dcm", download=False))
    chest = cv2.resize(cr, (460, 488), interpolation=cv2.INTER_AREA)  # a real CR chest
    assert P.crop_border(chest).shape == chest.shape  # no border: its bright low-contrast abdomen is kept
    framed = np.full((600, 560, 3), 255, np.uint8)  # a white export frame
    framed[30:518, 50:510] = chest
    framed[518:560, 50:510] = 0  # a black strip under it with burned-in text
    cv2.putText(framed, "R  PORTABLE AP  12/03/2018", (60, 545), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
    out = P.crop_border(framed)
    assert out.shape == chest.shape and (out == chest).all()
    assert P.crop_black(framed).shape == framed.shape  # what crop_black cannot do: nothing there is black
