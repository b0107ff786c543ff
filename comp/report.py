"""Cross-validation reports from a run's fold folders: per-fold scores and the out-of-fold score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.config import resolve_path
from comp.errors import UserError
from comp.metrics import METRICS


def load_oof(out_dir: Path, n_folds: int) -> pd.DataFrame:
    """The out-of-fold predictions of every trained fold, concatenated (id, label, prob_*, fold)."""
    parts = []
    for k in range(n_folds):
        path = out_dir / f"fold{k}" / "oof.csv"
        if path.is_file():
            parts.append(pd.read_csv(path, dtype={"id": str}).assign(fold=k))
    if not parts:
        raise UserError(f"no fold of {out_dir} has an oof.csv yet; train a fold first")
    return pd.concat(parts, ignore_index=True)


def oof_probs(oof: pd.DataFrame) -> np.ndarray:
    return oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy()


def cv_table(cfg: Any) -> tuple[pd.DataFrame, float, int]:
    """Per-fold scores of every metric, and the competition metric over all out-of-fold predictions
    together (the CV score), with the number of folds found."""
    out_dir = resolve_path(cfg, cfg.out_dir)
    oof = load_oof(out_dir, cfg.folds.n_folds)
    rows = []
    for k, part in oof.groupby("fold"):
        y, p = part["label"].to_numpy(), oof_probs(part)
        rows.append({"fold": k, "n": len(part), **{m: fn(y, p) for m, fn in METRICS.items()}})
    table = pd.DataFrame(rows)
    cv = METRICS[cfg.metric](oof["label"].to_numpy(), oof_probs(oof))
    return table, cv, len(rows)
