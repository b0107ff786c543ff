"""Assign K folds once and reuse them: `<out_dir>/folds.csv` (id, label, group, fold).

Stratified by label, and grouped by patient when the config names a group, so the two eyes of one
patient (DR 2015) or the images of one subject (C-NMC) never sit on both sides of a split. Every later
run reads the same file; a changed dataset or fold setting is refused instead of silently re-split.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from comp.errors import UserError


def split(train: pd.DataFrame, n_folds: int, seed: int, grouped: bool) -> pd.Series:
    """Fold number (0..n_folds-1) for each row of `train` (columns label, group)."""
    smallest = int(train["label"].value_counts().min())
    if smallest < n_folds:
        raise UserError(f"folds.n_folds={n_folds} but the rarest class has only {smallest} image(s); "
                        f"lower folds.n_folds")
    fold = pd.Series(-1, index=train.index, dtype=int)
    use_groups = grouped and train["group"].nunique() < len(train)
    if use_groups:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = splitter.split(train, train["label"], groups=train["group"])
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = splitter.split(train, train["label"])
    for k, (_, valid_idx) in enumerate(parts):
        fold.iloc[valid_idx] = k
    return fold


def folds_path(out_dir: Path) -> Path:
    return out_dir / "folds.csv"


def load_or_make_folds(cfg: Any, train: pd.DataFrame, out_dir: Path) -> pd.DataFrame:
    """The fold table for this experiment: read from `out_dir/folds.csv` when it exists (and still
    matches the data and settings), else made and written atomically.

    Raises:
        UserError: folds.csv exists but was made from other images, labels or fold settings.
    """
    path = folds_path(out_dir)
    n, seed = cfg.folds.n_folds, cfg.seed
    if path.exists():
        folds = pd.read_csv(path, dtype={"id": str, "group": str}, keep_default_na=False)
        same_rows = len(folds) == len(train) and set(folds["id"]) == set(train["id"])
        if not same_rows:
            raise UserError(f"{path} was made from a different set of images ({len(folds)} rows, data has "
                            f"{len(train)}); delete it or use another out_dir to re-split")
        merged = train[["id", "label"]].merge(folds[["id", "label"]], on="id", suffixes=("", "_f"))
        if (merged["label"] != merged["label_f"]).any():
            bad = merged.loc[merged["label"] != merged["label_f"], "id"].iloc[0]
            raise UserError(f"{path}: the label of {bad!r} changed since the folds were made; delete it to re-split")
        if folds["fold"].nunique() != n:
            raise UserError(f"{path} has {folds['fold'].nunique()} folds but folds.n_folds={n}; "
                            f"delete it or use another out_dir to re-split")
        return train.merge(folds[["id", "fold"]], on="id")
    out = train.assign(fold=split(train, n, seed, cfg.folds.grouped))
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    out[["id", "label", "group", "fold"]].to_csv(tmp, index=False)
    os.replace(tmp, path)
    return out
