"""The review sheets' drawing (comp.report.explain): PNG pages of images beside their Grad-CAM heat maps,
MIL rows as strips of their instances over their heat maps, and images as PNG data URIs for the HTML page.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from comp.io import write_bytes
from comp.report.plots import new_figure

THUMB = 160  # px: smaller images are enlarged (nearest neighbour) in the HTML page so they can be seen


def strip(images: list[np.ndarray], side: int = THUMB, gap: int = 2) -> np.ndarray:
    """(side, n * (side + gap) - gap, 3) uint8: the images, each scaled to `side` px (`_enlarged`), side by
    side on white."""
    tiles = [_enlarged(im, side) for im in images]
    out = np.full((side, len(tiles) * (side + gap) - gap, 3), 255, np.uint8)
    for j, t in enumerate(tiles):
        out[:t.shape[0], j * (side + gap):j * (side + gap) + t.shape[1]] = t
    return out


def _enlarged(img: np.ndarray, side: int = THUMB) -> np.ndarray:
    """`img` scaled to `side` px on its longer edge (nearest neighbour when enlarging, area when shrinking)."""
    f = side / max(img.shape[:2])
    size = (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f)))
    return cv2.resize(img, size, interpolation=cv2.INTER_NEAREST if f >= 1 else cv2.INTER_AREA)


def sheet(items: list[dict], title: str, path: Path, per_row: int = 4) -> Path:
    """A PNG page: each item's image beside its heat map, titled with id, truth, prediction (green when
    right, red when wrong, black for a regression) and its probability or value. The tiles are laid out as
    one array and drawn with one imshow: a matplotlib axes per tile costs seconds per page. MIL rows (items
    with `weights`, `render`): the strip of instances over the strip of their heat maps, each instance
    captioned with its index in the row and its weight; `per_row` * 2 instances a line."""
    if items and "weights" in items[0]:
        return _mil_sheet(items, title, path, per_row)
    t, gap, band = THUMB, 8, 30  # tile side, spacing, caption band (px)
    rows = max(1, -(-len(items) // per_row))
    cell_w, cell_h = 2 * t + 2 * gap, t + band + gap
    canvas = np.full((rows * cell_h, per_row * cell_w, 3), 255, np.uint8)
    for k, it in enumerate(items):
        y, x = (k // per_row) * cell_h + band, (k % per_row) * cell_w
        for j, img in enumerate((it["image"], it["heat"])):
            tile = _enlarged(img)
            canvas[y:y + tile.shape[0], x + j * (t + 2):x + j * (t + 2) + tile.shape[1]] = tile
    fig, ax = _page(canvas)
    for k, it in enumerate(items):
        y, x = (k // per_row) * cell_h + band - 3, (k % per_row) * cell_w
        _caption(ax, it, x, y, x + t + 2)
    return _save(fig, title, path)


def _page(canvas: np.ndarray) -> tuple[Any, Any]:
    """A figure showing `canvas` at 100 dpi, 1 px a pixel, with room for a title above."""
    h, w = canvas.shape[:2]
    top = 36
    fig = new_figure(figsize=(w / 100, (h + top) / 100), dpi=100)
    ax = fig.add_axes((0, 0, 1, h / (h + top)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    return fig, ax


def _caption(ax: Any, it: dict, x: int, y: int, x_pred: int) -> None:
    """An item's id, truth and prediction (coloured as `sheet` says) above the point (x, y)."""
    ax.text(x, y - 13, f"{it['id']}", fontsize=7, va="bottom")
    ax.text(x, y, f"truth {it['truth']}", fontsize=7, va="bottom")
    ax.text(x_pred, y, f"pred {it['pred']}", fontsize=7, va="bottom",
            color="black" if it["ok"] is None else "green" if it["ok"] else "red")


def _save(fig: Any, title: str, path: Path) -> Path:
    fig.suptitle(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return write_bytes(path, buf.getvalue())


def _mil_sheet(items: list[dict], title: str, path: Path, per_row: int) -> Path:
    """`sheet` of MIL rows: per row its instances (`images`) over their heat maps (`heats`)."""
    t, gap, band, label = THUMB, 12, 30, 14  # tile side, spacing, caption band, instance label band (px)
    k_max = max(len(it["images"]) for it in items)
    per_row = max(1, (2 * per_row) // k_max)
    rows = -(-len(items) // per_row)
    cell_w, cell_h = k_max * (t + 2) + gap, band + label + 2 * (t + 2) + gap
    canvas = np.full((rows * cell_h, per_row * cell_w, 3), 255, np.uint8)
    for k, it in enumerate(items):
        y, x = (k // per_row) * cell_h + band + label, (k % per_row) * cell_w
        for j, (img, heat) in enumerate(zip(it["images"], it["heats"], strict=True)):
            for dy, im in ((0, img), (t + 2, heat)):
                tile = _enlarged(im)
                canvas[y + dy:y + dy + tile.shape[0], x + j * (t + 2):x + j * (t + 2) + tile.shape[1]] = tile
    fig, ax = _page(canvas)
    for k, it in enumerate(items):
        y, x = (k // per_row) * cell_h + band - 3, (k % per_row) * cell_w
        _caption(ax, it, x, y, x + t + 2)
        ax.text(x + 2 * (t + 2), y, f"{len(it['images'])} of {it['n']} instances", fontsize=7, va="bottom")
        for j, (i, w) in enumerate(zip(it["instances"], it["weights"], strict=True)):
            ax.text(x + j * (t + 2), y + label, f"#{i}  w {w:.3f}", fontsize=7, va="bottom")
    return _save(fig, title, path)


def data_uri(img: np.ndarray) -> str:
    """An (H, W, 3) uint8 RGB image as a PNG data URI, enlarged to at least THUMB px."""
    if max(img.shape[:2]) < THUMB:
        img = _enlarged(img)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("cv2 could not encode a review image as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
