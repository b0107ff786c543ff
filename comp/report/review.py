"""Which out-of-fold images a review sheet shows (comp.report.explain), for every task (comp.tasks): per
group (true class; label of a multi-label task; all images of a regression) the sections SECTIONS, each
row with its truth and prediction as shown and the logit its Grad-CAM map explains."""

from __future__ import annotations

import numpy as np
import pandas as pd

from comp.experiment.oof import oof_probs, oof_targets
from comp.report import errors_analysis as ea
from comp.tasks import Task

SECTIONS = {"errors": "most confident errors", "unsure": "least confident correct", "random": "random sample"}


def section_titles(task: Task) -> dict[str, str]:
    """SECTIONS as named for `task` (a regression head's errors are its largest absolute errors), without
    `unsure` for a regression."""
    if task.kind == "regression":  # no "correct" to be unsure of
        return {"errors": "largest absolute errors", "random": SECTIONS["random"]}
    if task.head == "regression":
        return {**SECTIONS, "errors": "wrong grades, largest absolute error", "unsure": "right grade, farthest value"}
    if task.kind == "multilabel":
        return {**SECTIONS, "errors": "most confident errors (per label, at 0.5)",
                "unsure": "least confident correct (per label)"}
    return dict(SECTIONS)


def _long(oof: pd.DataFrame, task: Task) -> pd.DataFrame:
    """One row per (image, group shown): group (true class; label; 0 for a regression), wrong, worse (the
    errors' sort key, larger first), unsure (the correct ones' sort key, larger first), truth and pred
    (as shown), cam and sign (the Grad-CAM logit), ok (colour of the prediction: True, False, None)."""
    y, p = oof_targets(oof), oof_probs(oof).astype(np.float64)
    base = oof[["id"]].reset_index(drop=True)
    if task.kind == "multilabel":
        bce = ea.label_bce(y, p)
        parts = []
        for k, name in enumerate(task.names):
            t, hit = y[:, k] >= 0.5, p[:, k] >= 0.5
            parts.append(base.assign(group=k, wrong=t != hit, worse=bce[:, k], unsure=bce[:, k], cam=k, sign=1,
                                     truth=[f"{name}={int(v)}" for v in t], ok=t == hit,
                                     pred=[f"{name} {v:.2f}" for v in p[:, k]]))
        return pd.concat(parts, ignore_index=True)
    if task.head == "regression":
        v, truth = task.values(p), y.astype(np.float64)
        err = np.abs(v - truth)
        if task.kind == "ordinal":
            pred = task.decode(p)
            return base.assign(group=truth.astype(int), wrong=pred != truth, worse=err, unsure=err, cam=0, sign=1,
                               truth=ea._named(truth, task.names), ok=pred == truth,
                               pred=[f"{task.names[c]} ({x:.2f})" for c, x in zip(pred, v, strict=True)])
        return base.assign(group=0, wrong=True, worse=err, unsure=err, cam=0, sign=1, ok=None,
                           truth=[f"{x:.4g}" for x in truth], pred=[f"{x:.4g}" for x in v])
    cls, pred = ea._truth(task, y), p.argmax(1)
    p_label = p[np.arange(len(cls)), cls]
    cam, sign = (np.zeros_like(pred), np.where(pred == task.positive, 1, -1)) if task.num_logits == 1 else (pred, 1)
    return base.assign(group=cls, wrong=pred != cls, worse=p.max(1), unsure=-p_label, cam=cam, sign=sign,
                       truth=ea._named(cls, task.names), ok=pred == cls,
                       pred=[f"{task.names[c]} ({x:.2f})" for c, x in zip(pred, p.max(1), strict=True)])


def review_rows(oof: pd.DataFrame, task: Task | list[str], per_class: int, seed: int) -> pd.DataFrame:
    """The OOF rows of one fold to show: per group (true class, label, or all of a regression), `per_class`
    of each section (module docstring).

    Returns:
        id, section, truth, pred (as shown), ok, cam, sign (the Grad-CAM logit), in section then group order.
    """
    df = _long(oof, ea.as_task(task))
    rng = np.random.default_rng(seed)
    parts = []
    for _, mine in df.groupby("group", sort=True):
        wrong, right = mine[mine["wrong"]], mine[~mine["wrong"]]
        chosen = {"errors": wrong.sort_values("worse", ascending=False, kind="stable").head(per_class),
                  "unsure": right.sort_values("unsure", ascending=False, kind="stable").head(per_class),
                  "random": mine.iloc[np.sort(rng.permutation(len(mine))[:per_class])]}
        parts += [rows.assign(section=s) for s, rows in chosen.items()]
    out = pd.concat(parts, ignore_index=True)
    order = {s: i for i, s in enumerate(SECTIONS)}
    return out.sort_values("section", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
