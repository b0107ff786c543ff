"""The figure of a blend (scripts/blend.py): each member's CV beside each blend method's honest and
in-sample CV, and the members' pairwise OOF correlation (the diversity that makes blending pay).
Written through comp.report.plots.save_figure (comp.io)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from comp.report.plots import new_figure, save_figure


def blend_figure(table: pd.DataFrame, corr: np.ndarray, metric: str, path: Path, title: str = "") -> None:
    """Two panels: bars of the CV of every row of `table` (comp.ensemble.blend.Result.table: name, kind,
    cv_honest, cv_in_sample; members solid, blends' honest CV solid and their in-sample CV hatched), and
    the (M, M) correlation matrix `corr` of the members (rows of kind `member`, in order)."""
    names = table["name"].tolist()
    members = table.loc[table["kind"] == "member", "name"].tolist()
    width = max(9.0, 4.5 + 0.7 * len(names) + 0.5 * len(members))
    fig = new_figure(figsize=(width, 4.2))
    a, b = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
    x = np.arange(len(names))
    colors = ["C0" if k == "member" else "C2" for k in table["kind"]]
    a.bar(x - 0.2, table["cv_honest"], 0.4, color=colors, label="CV (blends: honest, fitted on K-1 folds)")
    blend = (table["kind"] == "blend").to_numpy()
    a.bar(x[blend] + 0.2, table.loc[blend, "cv_in_sample"], 0.4, color="none", edgecolor="C2", hatch="//",
          label="blends: in-sample (optimistic)")
    values = pd.concat([table["cv_honest"], table["cv_in_sample"]]).dropna()
    if len(values):
        lo, hi = float(values.min()), float(values.max())
        pad = max(hi - lo, 1e-3) * 0.5
        a.set_ylim(lo - pad, hi + pad)
    for i, v in enumerate(table["cv_honest"]):
        a.text(i - 0.2, v, f"{v:.4f}", ha="center", va="bottom", fontsize=7, rotation=90)
    a.set_xticks(x, names, rotation=30, ha="right", rotation_mode="anchor")
    a.set(ylabel=metric, title=f"CV {metric}")
    a.legend(fontsize=7, loc="best")
    im = b.imshow(corr, cmap="viridis", vmin=min(0.0, float(np.nanmin(corr))), vmax=1)
    for i in range(len(members)):
        for j in range(len(members)):
            b.text(j, i, f"{corr[i, j]:.2f}", ha="center", va="center", fontsize=8,
                   color="black" if corr[i, j] > 0.6 else "white")
    b.set_xticks(range(len(members)), members, rotation=30, ha="right", rotation_mode="anchor")
    b.set_yticks(range(len(members)), members)
    b.set_title("members' OOF correlation")
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
