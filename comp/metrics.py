"""Competition metrics over scikit-learn, computed from class probabilities.

Each metric takes (y_true (N,) class indices, probs (N, C)) and returns a float where higher is better.
The competition's metric (`metric` in the config) picks the best checkpoint and is the CV score.

Every metric is computed over the competition's C classes, C = probs.shape[1], never over the classes
that happen to occur in `y_true` or in the predictions: scikit-learn infers the class set from the data
unless given `labels`, and for quadratic kappa that changes the weights themselves (a grade absent from
a validation fold moves its neighbours closer together: y=[0,0,1,1,2,2,4,4,4,0] against
pred=[0,1,1,2,2,4,4,4,2,0] scores 0.8519 over the grades present and 0.7917 over the grades 0..4).
A per-class score that is undefined (F1 of a class neither present nor predicted, recall of a class
absent from `y_true`, AUC of a class absent from `y_true`) is left out of its average, as scikit-learn
does with `zero_division=np.nan`: a correct "never this class" is neither rewarded nor punished.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from comp.errors import UserError

# values that mean "positive" in a two-class competition's own spelling (a 0/1 target, a True/False column)
TRUE_VALUES = {"1", "1.0", "true", "t", "yes", "y", "positive", "pos"}


def positive_index(positive_class: str, classes: Sequence[Any], values: Sequence[Any]) -> int:
    """The index of a two-class competition's positive class: the one whose probability an AUC
    submission holds and whose scores rank the AUC.

    Args:
        positive_class: the `data.positive_class` config value, a class name or its value; "" = the class
            whose value is 1 / "1" / True-like (TRUE_VALUES), else the second class in order.
        classes: the class names in label order; values: the competition's value of each (same order).

    Raises:
        UserError: `positive_class` is neither a class name nor a class value, naming the key.
    """
    if positive_class != "":
        for spelt in ([str(c) for c in classes], [str(v) for v in values]):
            if positive_class in spelt:
                return spelt.index(positive_class)
        raise UserError(f"bad value for config key 'data.positive_class': {positive_class!r} is not one of the "
                        f"classes {[str(c) for c in classes]} (or their values {[str(v) for v in values]})")
    true_like = [i for i, v in enumerate(values) if str(v).strip().lower() in TRUE_VALUES]
    return true_like[0] if len(true_like) == 1 else min(1, len(classes) - 1)


def _labels(p: np.ndarray) -> range:
    return range(p.shape[1])


def qwk(y: np.ndarray, p: np.ndarray) -> float:
    """Quadratic weighted kappa of the argmax over the grades 0..C-1 (weights (i-j)^2 of the full grid);
    NaN when undefined (one grade on both sides). comp.predict.thresholds.qwk is the fast equivalent for
    its search (tests/test_correct_metrics.py proves them equal)."""
    return float(skm.cohen_kappa_score(y, p.argmax(1), weights="quadratic", labels=_labels(p)))


def auc(y: np.ndarray, p: np.ndarray, positive: int = 1) -> float:
    """ROC-AUC. Two classes: of the positive class (index `positive`, see `positive_index`), ranked by its
    own probability column, as the leaderboard ranks the submitted P(positive). More classes: the
    one-vs-rest macro average (scikit-learn's multi_class='ovr') over the classes present in `y` (a class
    absent from a small validation fold has no AUC of its own); NaN when fewer than two are present."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(skm.roc_auc_score(y == positive, p[:, positive]))
    return float(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present]))


METRICS: dict[str, Callable[..., float]] = {
    "accuracy": lambda y, p: float(skm.accuracy_score(y, p.argmax(1))),
    # mean recall over the classes present in y (scikit-learn's balanced_accuracy_score)
    "balanced_accuracy": lambda y, p: float(skm.recall_score(y, p.argmax(1), labels=_labels(p), average="macro",
                                                              zero_division=np.nan)),
    "f1_macro": lambda y, p: float(skm.f1_score(y, p.argmax(1), labels=_labels(p), average="macro",
                                                zero_division=np.nan)),
    "f1_weighted": lambda y, p: float(skm.f1_score(y, p.argmax(1), labels=_labels(p), average="weighted",
                                                   zero_division=np.nan)),
    "qwk": qwk,
    "auc": auc,
}


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise UserError(f"bad value for config key 'metric': {name!r}; choose from {sorted(METRICS)}")
    return name


def score(name: str, y: np.ndarray, probs: np.ndarray, positive: int = 1) -> float:
    """One metric; `positive` (the positive class's index, `positive_index`) matters to a two-class AUC only."""
    return METRICS[name](y, probs, positive) if name == "auc" else METRICS[name](y, probs)


def score_all(y: np.ndarray, probs: np.ndarray, positive: int = 1) -> dict[str, float]:
    """Every metric at once (the columns of metrics.csv). Quiet: scikit-learn's warnings about a class
    never predicted (early epochs) or an undefined kappa would repeat every epoch."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: score(name, y, probs, positive) for name in METRICS}


def classification_report(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support over every class of `classes`, as a DataFrame indexed
    by class name. An undefined entry (the precision of a class never predicted, the recall of a class
    absent from `y`) is NaN and left out of the averages, so the `macro avg` row's F1 and recall are
    METRICS' f1_macro and balanced_accuracy, and the `weighted avg` F1 is f1_weighted."""
    rep = skm.classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                    output_dict=True, zero_division=np.nan)
    table = pd.DataFrame(rep).T
    if "accuracy" in table.index:  # scikit-learn repeats the accuracy in every column of its row
        table.loc["accuracy", ["precision", "recall"]] = np.nan
        table.loc["accuracy", "support"] = len(y)
    return table.astype({"support": int})


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int, normalize: str | None = None) -> np.ndarray:
    """(C, C) confusion matrix over every class (rows: true class); `normalize='true'` divides each row
    by its count (a class absent from `y` keeps a row of zeros)."""
    return skm.confusion_matrix(y, pred, labels=range(num_classes), normalize=normalize)
