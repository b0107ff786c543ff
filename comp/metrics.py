"""Competition metrics over scikit-learn, computed from class probabilities.

Each metric takes (y_true (N,), probs (N, C)) and returns a float where higher is better. The
competition's metric (`metric` in the config) picks the best checkpoint and is the CV score.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from comp.errors import UserError


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return float("nan")  # undefined on a single class (a tiny validation fold)
    if p.shape[1] == 2:
        return float(skm.roc_auc_score(y, p[:, 1]))
    present = np.unique(y)
    if len(present) < p.shape[1]:  # one-vs-rest over the classes present, renormalised
        q = p[:, present] / p[:, present].sum(1, keepdims=True)
        return float(skm.roc_auc_score(np.searchsorted(present, y), q, multi_class="ovr"))
    return float(skm.roc_auc_score(y, p, multi_class="ovr"))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda y, p: float(skm.accuracy_score(y, p.argmax(1))),
    "balanced_accuracy": lambda y, p: float(skm.balanced_accuracy_score(y, p.argmax(1))),
    "f1_macro": lambda y, p: float(skm.f1_score(y, p.argmax(1), average="macro", zero_division=0)),
    "f1_weighted": lambda y, p: float(skm.f1_score(y, p.argmax(1), average="weighted", zero_division=0)),
    "qwk": lambda y, p: float(skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic")),
    "auc": _auc,
}


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise UserError(f"bad value for config key 'metric': {name!r}; choose from {sorted(METRICS)}")
    return name


def score_all(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Every metric at once (the columns of metrics.csv)."""
    return {name: fn(y, probs) for name, fn in METRICS.items()}


def classification_report(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support, as a DataFrame indexed by class name."""
    rep = skm.classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                    output_dict=True, zero_division=0)
    return pd.DataFrame(rep).T


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int, normalize: str | None = None) -> np.ndarray:
    """Confusion matrix (rows: true class); `normalize='true'` divides each row by its count."""
    return skm.confusion_matrix(y, pred, labels=range(num_classes), normalize=normalize)
