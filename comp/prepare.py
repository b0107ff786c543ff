"""scripts/prepare.py's work: data present and readable, folds written."""

from __future__ import annotations

from typing import Any

from tqdm import tqdm

from comp.competition import load_competition
from comp.config import resolve_path
from comp.download import ensure_data
from comp.errors import UserError
from comp.log import log
from comp.folds import load_or_make_folds
from comp.images import read_image


def check_images(paths: list[str]) -> None:
    """Decode every image once; all failures in one error listing them with a count."""
    bad = []
    for p in tqdm(paths, desc="check images", leave=False, dynamic_ncols=True):
        try:
            read_image(p)
        except UserError as e:
            bad.append(str(e))
    if bad:
        shown = "; ".join(bad[:5]) + (f"; ... and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise UserError(f"{len(bad)} of {len(paths)} images cannot be used: {shown}")


def prepare(cfg: Any) -> None:
    root = ensure_data(cfg)
    comp = load_competition(cfg)
    check_images(comp.train["path"].tolist() + comp.test["path"].tolist())
    folds = load_or_make_folds(cfg, comp.train, resolve_path(cfg, cfg.out_dir))
    counts = folds.groupby("fold").size().tolist()
    log(f"{root}: {len(comp.train)} training images in {comp.num_classes} classes, "
               f"{len(comp.test)} test images; folds {counts}")
