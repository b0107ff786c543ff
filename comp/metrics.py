"""Competition metrics over scikit-learn, computed from class probabilities.

Each metric takes (y_true (N,), probs (N, C)) and returns a float where higher is better. The
competition's metric (`metric` in the config) picks the best checkpoint and is the CV score.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from comp.errors import UserError


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC-AUC: of the positive class (binary), else one-vs-rest macro average (scikit-learn's
    multi_class='ovr'). A class absent from `y` (a small validation fold) has no AUC of its own: the
    average is then over the classes present; NaN when fewer than two are."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(skm.roc_auc_score(y, p[:, 1]))
    if len(present) < p.shape[1]:
        return float(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present]))
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
    """Every metric at once (the columns of metrics.csv). Quiet: scikit-learn's warnings about a class
    never predicted (early epochs) or an undefined kappa would repeat every epoch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: fn(y, probs) for name, fn in METRICS.items()}


def classification_report(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support, as a DataFrame indexed by class name."""
    rep = skm.classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                    output_dict=True, zero_division=0)
    table = pd.DataFrame(rep).T
    if "accuracy" in table.index:  # scikit-learn repeats the accuracy in every column of its row
        table.loc["accuracy", ["precision", "recall"]] = np.nan
        table.loc["accuracy", "support"] = len(y)
    return table.astype({"support": int})


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int, normalize: str | None = None) -> np.ndarray:
    """Confusion matrix (rows: true class); `normalize='true'` divides each row by its count."""
    return skm.confusion_matrix(y, pred, labels=range(num_classes), normalize=normalize)
