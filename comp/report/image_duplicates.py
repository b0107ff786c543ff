"""Exact and near-duplicate images (the `duplicates` table of comp.report.errors_analysis, scripts/explain.py's
duplicates.csv): candidates by perceptual hash (imagehash's pHash, 64 bits), each confirmed on the pixels.

A hash is a candidate only: blue and white images share one pHash (imagehash#134), as does every flat image,
and an image and its brightened twin; each candidate pair is confirmed on 32x32 grey thumbnails (`confirm`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from comp.errors import UserError
from comp.log import log, progress

THUMB = 32  # side of the greyscale thumbnail a pHash candidate is confirmed on (1 KB an image, kept in memory)
FLAT_STD = 2.0  # a thumbnail whose grey levels vary less than this (std, of 255) is flat: no content to compare
# Pearson r of two thumbnails at least this: a copy. Measured on scikit-image's photographs (retina, astronaut,
# coffee, camera, text, moon, brick, grass ... 16 of them), each resized to 40% and re-encoded as JPEG q60:
# r >= 0.994 with its original; unrelated pairs r <= 0.54
MIN_CORRELATION = 0.95


def thumbnail(img: np.ndarray) -> np.ndarray:
    """(THUMB * THUMB,) float32 grey levels of an (H, W, 3) uint8 image, area-averaged (cv2.INTER_AREA)."""
    import cv2

    grey = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    return cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()


def fingerprints(images: Iterable[np.ndarray], total: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One pass over `total` images (a generator holds one in memory at a time): (N,) uint64 pHash (as
    `phash_bits`), N digests of the exact pixels (comp.data.duplicates.pixel_digest: "" for a flat image)
    and (N, THUMB * THUMB) float32 thumbnails."""
    import imagehash
    from PIL import Image

    from comp.data.duplicates import pixel_digest

    hashes, digests, thumbs = [], [], []
    with progress(total, "hash images") as bar:  # drawn on a terminal only (comp.log)
        for img in images:
            hashes.append(np.packbits(imagehash.phash(Image.fromarray(img)).hash.flatten()).view(">u8")[0])
            digests.append(pixel_digest(img) or "")
            thumbs.append(thumbnail(img))
            bar.update(1)
    return (np.array(hashes, dtype=np.uint64), digests,
            np.stack(thumbs) if thumbs else np.zeros((0, THUMB * THUMB), np.float32))


def confirm(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r of two thumbnails (`thumbnail`), or None when either is flat (`FLAT_STD`): r is undefined
    for a constant, and two flat images of other colours are not copies of each other (imagehash#134). r
    ignores a change of brightness or contrast, so a re-exported, brightened copy still counts; content
    must agree pixel by pixel at THUMB x THUMB, which pHash's 64 signs do not check."""
    if a.std() < FLAT_STD or b.std() < FLAT_STD:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def phash_bits(images: Iterable[np.ndarray]) -> np.ndarray:
    """(N,) uint64 pHash of each (H, W, 3) uint8 image (imagehash.phash: 8x8 DCT signs, 64 bits)."""
    import imagehash
    from PIL import Image

    images = list(images)
    out = []
    with progress(len(images), "hash images") as bar:  # drawn on a terminal only (comp.log)
        for img in images:
            out.append(np.packbits(imagehash.phash(Image.fromarray(img)).hash.flatten()).view(">u8")[0])
            bar.update(1)
    return np.array(out, dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) for i < j with distance <= max_distance, without comparing all N^2 pairs:
    the 64 bits are cut into max_distance + 1 bands, and by the pigeonhole principle two hashes within
    max_distance bits agree exactly on at least one band, so only hashes sharing a band are compared."""
    n_bands = max_distance + 1
    if n_bands > 64:
        raise UserError(f"max_distance={max_distance}: at most 63 of the 64 hash bits")
    edges = np.linspace(0, 64, n_bands + 1).astype(int)
    pairs: dict[tuple[int, int], int] = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1], True])
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            members = np.sort(order[a:b])
            if len(members) < 2:
                continue
            i, j = np.triu_indices(len(members), 1)
            d = _popcount(hashes[members[i]] ^ hashes[members[j]])
            for ii, jj, dd in zip(members[i][d <= max_distance], members[j][d <= max_distance],
                                  d[d <= max_distance], strict=True):
                pairs[(int(ii), int(jj))] = int(dd)
    return sorted((i, j, d) for (i, j), d in pairs.items())


def find_duplicates(items: pd.DataFrame, load: Callable[[str], np.ndarray], classes: list[str],
                    max_distance: int = 4) -> pd.DataFrame:
    """Exact and near-duplicate images among `items` (train and test together).

    Args:
        items: id, path, set (train | test), label: an int class index into `classes` (-1 when unknown: an
            unlabelled test image), or the label as shown (a string, "" when unknown: `duplicate_items`).
        load: `load(path) -> (H, W, 3) uint8` (the kit's image loader: the cache when there is one).
        max_distance: largest pHash Hamming distance (of 64 bits) of a candidate pair. A resized and
            JPEG-recompressed copy of a photograph lands at 0-2 (tests/report/test_errors_analysis.py), unrelated images
            near 32. A candidate is reported only when `confirm`ed: neither image flat, and the Pearson r of
            their 32x32 greyscale thumbnails >= MIN_CORRELATION (imagehash#134: one pHash for blue and white).
    Returns:
        id_a, set_a, label_a, id_b, set_b, label_b, distance, correlation (the thumbnails' r), kind
        (identical: the same pixels as loaded; near), conflict (both labelled and the labels differ);
        conflicts first, then by distance. The columns data.duplicates reads back (comp.data.duplicates).
    """
    cols = ["id_a", "set_a", "label_a", "id_b", "set_b", "label_b", "distance", "correlation", "kind", "conflict"]
    paths = items["path"].tolist()
    if items["label"].dtype.kind in "iu":
        shown = [classes[int(v)] if v >= 0 else "" for v in items["label"]]
    else:
        shown = items["label"].fillna("").astype(str).tolist()
    hashes, digests, thumbs = fingerprints((load(p) for p in paths), len(paths))
    flat = thumbs.std(1) < FLAT_STD if len(paths) else np.zeros(0, bool)
    if flat.any():
        log(f"duplicates: {int(flat.sum())} flat image(s) (one colour, e.g. {items['id'].iloc[int(flat.argmax())]!r}) "
            f"are not compared: a perceptual hash cannot tell them apart (imagehash#134)")
    rows = []
    for i, j, d in near_pairs(hashes, max_distance):
        r = None if flat[i] or flat[j] else confirm(thumbs[i], thumbs[j])
        if r is None or r < MIN_CORRELATION:  # a hash collision, not a copy
            continue
        same = digests[i] != "" and digests[i] == digests[j]
        la, lb = shown[i], shown[j]
        rows.append({"id_a": items["id"].iloc[i], "set_a": items["set"].iloc[i], "label_a": la,
                     "id_b": items["id"].iloc[j], "set_b": items["set"].iloc[j], "label_b": lb,
                     "distance": d, "correlation": round(r, 4), "kind": "identical" if same else "near",
                     "conflict": bool(la != "" and lb != "" and la != lb)})
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values(["conflict", "distance"], ascending=[False, True], kind="stable").reset_index(drop=True)
