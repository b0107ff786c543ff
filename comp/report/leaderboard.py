"""CV against the public leaderboard: every recorded submission of a competition (submissions/index.csv,
written by comp.submit.kaggle) as one point, to see whether the cross-validation tracks what Kaggle
scores, and where it stops doing so (overfitting the public split, a leak in the folds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from comp.config import resolve_path
from comp.errors import UserError

SHOWN = ["time", "message", "cv_metric", "cv_score", "public_score", "status", "kaggle_ref"]


def leaderboard(cfg: Any, path: Path) -> pd.DataFrame:
    """The recorded submissions of data.competition (a table of SHOWN, oldest first) and a figure at `path`
    (PNG, comp.report.plots.new_figure): CV score (x) against public score (y) of each scored one, labelled by its
    message, with the y = x line. An index.csv of an older kit (no status or public_score) is read too.

    Raises:
        UserError: no index.csv, or no submission of this competition recorded in it.
    """
    from comp.report.plots import new_figure, save_figure

    index = resolve_path(cfg.predict.submissions_dir) / "index.csv"
    if not index.is_file():
        raise UserError(f"{index}: no submission recorded yet (scripts/submit.py writes it)")
    df = pd.read_csv(index, dtype=str, keep_default_na=False)
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *SHOWN])), fill_value="")
    df = df[df["competition"] == cfg.data.competition]
    if df.empty:
        raise UserError(f"{index}: no submission to {cfg.data.competition!r} recorded")
    table = df[SHOWN].reset_index(drop=True)
    cv = pd.to_numeric(table["cv_score"], errors="coerce")
    public = pd.to_numeric(table["public_score"], errors="coerce")
    scored = cv.notna() & public.notna()
    fig = new_figure(figsize=(6, 5))
    ax = fig.subplots()
    ax.scatter(cv[scored], public[scored], color="tab:blue")
    for x, y, text in zip(cv[scored], public[scored], table["message"][scored], strict=True):
        ax.annotate(text[:30], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if scored.any():
        lo, hi = min(cv[scored].min(), public[scored].min()), max(cv[scored].max(), public[scored].max())
        pad = (hi - lo) * 0.05 or 0.01
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="grey", linestyle="--", linewidth=1, label="y = x")
        ax.legend(loc="lower right")
    metric = next((m for m in table["cv_metric"] if m), "CV")
    ax.set_xlabel(f"CV {metric} (out-of-fold)")
    ax.set_ylabel("public leaderboard score")
    ax.set_title(f"{cfg.data.competition}: {int(scored.sum())} of {len(table)} submissions scored")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return table
