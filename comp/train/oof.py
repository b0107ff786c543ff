"""Out-of-fold predictions: `<out_dir>/fold<K>/oof.csv` (id, label, prob_<class>...), the validation
images of each fold predicted by the model of its best epoch. The one writer and reader of the format,
and the cross-validation score computed from it (the CV score every report and submission record shows).
Test probabilities saved for blending (`predict.py --save-probs`) use the same `prob_<class>` columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io
from comp.config import resolve_path
from comp.errors import UserError
from comp.metrics import METRICS, positive_index, score

PREFIX = "prob_"


def prob_frame(ids: list[str], probs: np.ndarray, classes: list[str], labels: np.ndarray | None = None) -> pd.DataFrame:
    """id[, label], prob_<class>... for (N, C) probabilities `probs`, in row order."""
    df = pd.DataFrame({"id": list(ids)})
    if labels is not None:
        df["label"] = np.asarray(labels)
    for c, name in enumerate(classes):
        df[f"{PREFIX}{name}"] = probs[:, c]
    return df


def write_oof(path: Path, ids: list[str], labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> None:
    """One fold's oof.csv, written atomically."""
    io.write_csv(path, prob_frame(ids, probs, classes, labels))


def prob_columns(df: pd.DataFrame) -> list[str]:
    """The `prob_<class>` columns of an OOF or probabilities frame, in file order (= class order)."""
    return [c for c in df.columns if c.startswith(PREFIX)]


def oof_probs(df: pd.DataFrame) -> np.ndarray:
    """(N, C) probabilities of an OOF or probabilities frame."""
    return df[prob_columns(df)].to_numpy()


def classes_of(df: pd.DataFrame) -> list[str]:
    """Class names in label order, from the prob_<name> columns."""
    return [c[len(PREFIX):] for c in prob_columns(df)]


def oof_files(out_dir: Path, n_folds: int, name: str = "oof.csv") -> list[Path]:
    """The `name` file (oof.csv, or oof_tta.csv: comp.predict.oof_tta) of every fold that has one, in fold
    order."""
    return [p for k in range(n_folds) if (p := out_dir / f"fold{k}" / name).is_file()]


def read_oof(paths: list[Path]) -> pd.DataFrame:
    """OOF files (`fold<K>/<name>`: id, label, prob_<class>...) concatenated, with a `fold` column."""
    return pd.concat([pd.read_csv(p, dtype={"id": str}).assign(fold=int(p.parent.name[len("fold"):]))
                      for p in paths], ignore_index=True)


def load_oof(out_dir: Path, n_folds: int) -> pd.DataFrame:
    """The out-of-fold predictions of every trained fold, concatenated (id, label, prob_*, fold).

    Raises:
        UserError: no fold has an oof.csv yet.
    """
    paths = oof_files(out_dir, n_folds)
    if not paths:
        raise UserError(f"no fold of {out_dir} has an oof.csv yet; train a fold first")
    return read_oof(paths)


def cv_table(cfg: Any) -> tuple[pd.DataFrame, float, int]:
    """Per-fold scores of every metric, and the competition metric over all out-of-fold predictions
    together (the CV score), with the number of folds found.

    Raises:
        UserError: no fold has an oof.csv yet.
    """
    out_dir = resolve_path(cfg.out_dir)
    oof = load_oof(out_dir, cfg.folds.n_folds)
    classes = classes_of(oof)
    positive = 1
    if len(classes) == 2:  # the class a two-class AUC ranks: data.positive_class, by name or value
        values = [str(v) for v in cfg.data.class_values] or classes
        positive = positive_index(cfg.data.positive_class, classes, values)
    rows = []
    for k, part in oof.groupby("fold"):
        y, p = part["label"].to_numpy(), oof_probs(part)
        rows.append({"fold": k, "n": len(part), **{m: score(m, y, p, positive) for m in METRICS}})
    table = pd.DataFrame(rows)
    cv = score(cfg.metric, oof["label"].to_numpy(), oof_probs(oof), positive)
    return table, cv, len(rows)
