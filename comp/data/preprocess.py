"""Medical preprocessing named in `images.preprocess`, applied once before caching (or on the fly).

Each step maps an (H, W, 3) uint8 RGB image to another one:

- `crop_black`: crop to the bounding box of the non-black pixels (the chest X-ray pipelines did this
  with PIL's `Image.getbbox`; a tolerance absorbs JPEG noise in the border, as in the APTOS 2019 kernels'
  `crop_image_from_gray(img, tol=7)`).
- `crop_border`: for radiographs: trim, side by side, the rows and columns that are one flat grey (within
  BORDER_TOL of that side's outermost line) over at least BORDER_FRAC of their length: a uniform border of
  any grey (the white of a collimated MONOCHROME1 export, the grey frame of a screenshot) and the bands
  of burned-in text that X-ray exports carry (letters on a flat strip: a line through them is still
  >= TEXT_FRAC background; a run of them, up to TEXT_GAP of the side tall, counts when the strip goes on
  flat after it), which `crop_black` keeps since neither is black. Repeated until nothing changes, so a
  text band inside a white frame goes too; at most BORDER_MAX of each side.
- `crop_circle`: `crop_black`, then pad the short side with black so the square is centred on the eye:
  a fundus photograph whose top and bottom are cut off stays a circle after the square resize.
- `ben_graham`: Ben Graham's DR 2015 winning preprocessing (competition report, and his code
  `cv2.addWeighted(a, 4, cv2.GaussianBlur(a, (0, 0), scale / 30), -4, 128)` with `scale` the eye's
  radius in pixels): subtract the local average colour, which maps it to grey 128 and evens out
  lighting and pigmentation between cameras and patients, then keep 90 % of the eye's disc (grey
  outside) to drop the ring the blur leaves at the rim; the same margin is kept from a straight edge
  where the photograph cuts the disc. The radius is measured as he did, from the non-dark run of the
  middle row.
- `clahe`: contrast-limited adaptive histogram equalisation (clip 2, 8x8 tiles) of the lightness (LAB L
  channel), the usual choice for fundus vessels and X-ray lungs.
- `equalize`: global histogram equalisation of the luma (YCrCb Y).
- `grayscale`: one luminance channel repeated three times.

Order: crop steps run on the decoded image, before the resize to `image_size` (wherever they are
listed); the other steps run after the resize, in list order, so their scale (blur sigma, CLAHE tiles)
is relative to the training resolution whatever size the source file had.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comp.data.dicom import DicomOptions
from comp.data.readers import read_image, resize
from comp.errors import UserError

BLACK_TOL = 7  # grey level at or below which a border pixel counts as black (APTOS kernels' tol=7)
CLAHE_CLIP, CLAHE_TILES = 2.0, (8, 8)
BORDER_TOL, BORDER_FRAC, BORDER_MAX = 6, 0.9, 0.25  # crop_border: grey-level tolerance, flat share, max per side
TEXT_FRAC, TEXT_GAP = 0.4, 0.06  # crop_border: background share of a text line, longest text run (share of side)


def _is_gray(img: np.ndarray) -> bool:
    return bool((img[:, :, 0] == img[:, :, 1]).all() and (img[:, :, 1] == img[:, :, 2]).all())


def crop_black(img: np.ndarray) -> np.ndarray:
    """Crop to the bounding box of pixels brighter than BLACK_TOL; an all-black image is kept whole."""
    mask = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) > BLACK_TOL
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return img
    return img[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _flat_run(lines: np.ndarray, limit: int) -> int:
    """How many of `lines` (L, N) grey, outermost first, belong to the border: flat lines (>= BORDER_FRAC of
    their pixels within BORDER_TOL of the outermost line's median grey), and runs of text lines (>= TEXT_FRAC
    so) at most TEXT_GAP of the side long with a flat line after them; at most `limit` lines."""
    limit = max(0, min(limit, len(lines)))
    ref = int(np.median(lines[0]))
    frac = (np.abs(lines[:limit].astype(np.int16) - ref) <= BORDER_TOL).mean(1)
    flat, text = frac >= BORDER_FRAC, frac >= TEXT_FRAC
    gap = max(8, int(TEXT_GAP * len(lines)))
    n = i = 0
    while i < limit:
        if flat[i]:
            i = n = i + 1
            continue
        j = i
        while j < limit and text[j] and not flat[j] and j - i < gap:
            j += 1
        if j == i or j == limit or not flat[j]:
            break
        i = j
    return n


def crop_border(img: np.ndarray) -> np.ndarray:
    """Trim uniform borders and burned-in text bands on each side (module docstring), at most BORDER_MAX of
    each side (a blank image keeps its middle). (H, W, 3) uint8 -> (h, w, 3) uint8, a view."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    top, bottom, left, right = 0, h, 0, w
    for _ in range(8):  # a band inside a frame: each pass peels one layer
        g = grey[top:bottom, left:right]
        cut = (_flat_run(g, int(h * BORDER_MAX) - top), _flat_run(g[::-1], int(h * BORDER_MAX) - (h - bottom)),
               _flat_run(g.T, int(w * BORDER_MAX) - left), _flat_run(g.T[::-1], int(w * BORDER_MAX) - (w - right)))
        if not any(cut):
            break
        top, bottom, left, right = top + cut[0], bottom - cut[1], left + cut[2], right - cut[3]
    return img[top:bottom, left:right]


def crop_circle(img: np.ndarray) -> np.ndarray:
    """`crop_black`, then pad to a square with black, centred: the eye's disc fills the square."""
    img = crop_black(img)
    h, w = img.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return cv2.copyMakeBorder(img, top, side - h - top, left, side - w - left, cv2.BORDER_CONSTANT, value=(0, 0, 0))


def eye_radius(img: np.ndarray) -> float:
    """Radius of the fundus disc in pixels, from the middle row as in Ben Graham's code: the pixels whose
    channel sum exceeds a tenth of the row's mean."""
    row = img[img.shape[0] // 2].astype(np.float32).sum(1)  # (W,)
    return max(float((row > row.mean() / 10).sum()) / 2, 1.0)


def ben_graham(img: np.ndarray) -> np.ndarray:
    """4 * (img - GaussianBlur(img, sigma=radius/30)) + 128, then grey 128 outside 90 % of the eye's disc
    and within the same margin (radius/10) of the black frame, where a disc cut by the photograph's
    top and bottom edge leaves the blur's halo that Ben's circle alone does not reach."""
    r = eye_radius(img)
    out = cv2.addWeighted(img, 4, cv2.GaussianBlur(img, (0, 0), r / 30), -4, 128)
    mask = np.zeros(img.shape[:2], np.uint8)
    cv2.circle(mask, (img.shape[1] // 2, img.shape[0] // 2), int(r * 0.9), 1, -1, cv2.LINE_8)
    margin = 2 * int(r / 10) + 1
    lit = (cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) > BLACK_TOL).astype(np.uint8)
    lit = cv2.erode(lit, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (margin, margin)), borderValue=0)
    out[(mask & lit) == 0] = 128
    return out


def _on_lightness(img: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], space: tuple[int, int],
                  ch: int) -> np.ndarray:
    """Apply `fn` to one channel: the grey level of a grey image, else channel `ch` of colour space `space`."""
    if _is_gray(img):
        return cv2.cvtColor(fn(np.ascontiguousarray(img[:, :, 0])), cv2.COLOR_GRAY2RGB)
    to, back = space
    conv = cv2.cvtColor(img, to)
    conv[:, :, ch] = fn(np.ascontiguousarray(conv[:, :, ch]))
    return cv2.cvtColor(conv, back)


def clahe(img: np.ndarray) -> np.ndarray:
    """CLAHE of the LAB lightness (or of the grey level)."""
    op = cv2.createCLAHE(clipLimit=CLAHE_CLIP, tileGridSize=CLAHE_TILES)
    return _on_lightness(img, op.apply, (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB), 0)


def equalize(img: np.ndarray) -> np.ndarray:
    """Histogram equalisation of the YCrCb luma (or of the grey level)."""
    return _on_lightness(img, cv2.equalizeHist, (cv2.COLOR_RGB2YCrCb, cv2.COLOR_YCrCb2RGB), 0)


def grayscale(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


CROPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"crop_black": crop_black, "crop_border": crop_border,
                                                          "crop_circle": crop_circle}
STEPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "ben_graham": ben_graham, "clahe": clahe, "equalize": equalize, "grayscale": grayscale}


def check_steps(steps: Any) -> list[str]:
    """The step names of `images.preprocess`, each one we know.

    Raises:
        UserError: an unknown name, naming the key and the choices.
    """
    steps = [str(s) for s in (steps or [])]
    for i, s in enumerate(steps):
        if s not in CROPS and s not in STEPS:
            raise UserError(f"images.preprocess[{i}]: unknown step {s!r}; choose from {[*CROPS, *STEPS]}")
    return steps


def apply(img: np.ndarray, steps: Sequence[str], size: int) -> np.ndarray:
    """Crops, then the square resize to `size`, then the other steps in order → (size, size, 3) uint8."""
    for s in steps:
        if s in CROPS:
            img = CROPS[s](img)
    img = resize(img, size)
    for s in steps:
        if s in STEPS:
            img = STEPS[s](img)
    return np.ascontiguousarray(img)


def load_preprocessed(path: str | Path, size: int, steps: Sequence[str] = (),
                      dicom: DicomOptions | None = None) -> np.ndarray:
    """Decode `path` (a DICOM with the `dicom` windows and frame), preprocess and resize: exactly what the
    cache stores for it. A file to be cropped is decoded at twice the target at least, so the crop still
    has the pixels the resize needs."""
    target = size * 2 if any(s in CROPS for s in steps) else size
    return apply(read_image(path, target=target, dicom=dicom), steps, size)
