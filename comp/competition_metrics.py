"""The published metrics of Kaggle medical-imaging competitions, as plain NumPy / scikit-learn functions.

Each function takes the ground truth first and the prediction second, as NumPy arrays, and returns one
float. They know nothing of configs or registries (comp.metrics wires them in). Where scikit-learn has the
metric it computes it; where a competition's published metric code differs from scikit-learn (its own
clipping, renormalisation or rescaling) that code's arithmetic is reproduced and the docstring says so.

NaN means "undefined on this data" (an AUC over one class, a pfbeta with no positive case), never an
error: a small validation fold can hit it, and an average over folds can leave it out. Inputs of the wrong
shape, mismatched lengths, labels out of range or non-finite values are the caller's (the kit's) bug and
raise ValueError, not comp.errors.UserError.
"""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

NAN = float("nan")


def _arrays(a: np.ndarray, b: np.ndarray, ndim_a: int, ndim_b: int) -> tuple[np.ndarray, np.ndarray]:
    """`a` and `b` as float arrays of the given ndims, with equal (non-zero) first dimensions.

    Raises:
        ValueError: a wrong ndim, different lengths, no rows, or a NaN / infinite value.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != ndim_a or b.ndim != ndim_b:
        raise ValueError(f"expected a {ndim_a}-D truth and a {ndim_b}-D prediction, got shapes {a.shape} and {b.shape}")
    if len(a) != len(b):
        raise ValueError(f"truth and prediction differ in length: {a.shape} vs {b.shape}")
    if len(a) == 0:
        raise ValueError("no rows to score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("truth or prediction holds a NaN or infinite value")
    return a, b


def _binary(y: np.ndarray) -> np.ndarray:
    """`y` as int 0/1; ValueError on any other value."""
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"expected 0/1 labels, got the values {np.unique(y)[:10].tolist()}")
    return y.astype(np.int64)


def _same_shape(Y: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Y, P = _arrays(Y, P, 2, 2)
    if Y.shape != P.shape:
        raise ValueError(f"truth and prediction differ in shape: {Y.shape} vs {P.shape}")
    return Y, P


def log_loss(y: np.ndarray, p: np.ndarray, eps: float = 1e-15) -> float:
    """Multi-class log loss (lower is better), as Kaggle's "Multi Class Log Loss" metric scores it
    (e.g. Intel & MobileODT Cervical Cancer Screening): each probability is clipped to [eps, 1-eps], each
    row is then divided by its sum, and the score is -mean(log p[i, y[i]]) over the rows.

    Args:
        y: (N,) int class indices in 0..C-1. A class absent from `y` is fine (the class set is C = p.shape[1],
            as scikit-learn's `labels=range(C)`).
        p: (N, C) predicted probabilities (rows need not sum to 1: they are renormalised after clipping).
        eps: the clip bound.

    Returns: the mean negative log-likelihood in nats; never NaN.

    Raises:
        ValueError: shapes or lengths mismatch, a label is not an integer in 0..C-1, a value is not finite.

    Computed here rather than by sklearn.metrics.log_loss because scikit-learn clips to the float's machine
    epsilon (not Kaggle's eps) and does not renormalise; on rows that already lie in [eps, 1-eps] and sum to 1
    the two agree (tests/test_metrics.py).
    """
    y, p = _arrays(y, p, 1, 2)
    if not (np.array_equal(y, np.round(y)) and (y >= 0).all() and (y < p.shape[1]).all()):
        raise ValueError(f"class indices must be integers in 0..{p.shape[1] - 1}, got {np.unique(y)[:10].tolist()}")
    p = np.clip(p, eps, 1 - eps)
    p = p / p.sum(axis=1, keepdims=True)
    return float(-np.mean(np.log(p[np.arange(len(y)), y.astype(np.int64)])))


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC of a two-class problem (sklearn.metrics.roc_auc_score), e.g. SIIM-ISIC Melanoma
    Classification 2020 ("AUC" metric).

    Args:
        y: (N,) 0/1 labels, 1 = positive.
        score: (N,) any real score, higher = more likely positive (a probability, a logit).

    Returns: the AUC in [0, 1]; NaN when `y` holds one class only (the AUC is undefined).

    Raises:
        ValueError: lengths mismatch, a label other than 0/1, a value not finite.
    """
    y, score = _arrays(y, score, 1, 1)
    y = _binary(y)
    if len(np.unique(y)) < 2:
        return NAN
    return float(skm.roc_auc_score(y, score))


def partial_auc(y: np.ndarray, score: np.ndarray, min_tpr: float = 0.80) -> float:
    """pAUC above a minimum true-positive rate: the area between the ROC curve and the line TPR = min_tpr,
    as "ISIC 2024 - Skin Cancer Detection with 3D-TBP" scores it (Evaluation: "partial area under the ROC
    curve (pAUC) above 80% true positive rate (TPR)"; code by N. Kurtansky, MSKCC, in
    github.com/ISIC-Research/Challenge-2024-Metrics). The labels are flipped and the scores negated, so the
    region TPR >= min_tpr becomes FPR <= max_fpr = 1 - min_tpr of the flipped problem; scikit-learn's
    McClish-standardised partial AUC over that range (roc_auc_score(max_fpr=...)) is mapped back to the area:
        pAUC = 0.5 max_fpr^2 + (max_fpr - 0.5 max_fpr^2) / (1 - 0.5) * (scaled - 0.5).

    Args:
        y: (N,) 0/1 labels, 1 = malignant (positive).
        score: (N,) real scores, higher = more likely positive.
        min_tpr: the TPR floor, in [0, 1).

    Returns: the area in [0, 1 - min_tpr] ([0, 0.2] for the competition's 0.8): a perfect ranking scores
        1 - min_tpr, a random one (1 - min_tpr)^2 / 2 (0.02), a fully inverted one 0. NaN when `y` holds
        one class only.

    Raises:
        ValueError: lengths mismatch, a label other than 0/1, a value not finite, min_tpr outside [0, 1).
    """
    y, score = _arrays(y, score, 1, 1)
    y = _binary(y)
    if not 0.0 <= min_tpr < 1.0:
        raise ValueError(f"min_tpr must be in [0, 1), got {min_tpr!r}")
    if len(np.unique(y)) < 2:
        return NAN
    v_gt, v_pred = np.abs(y - 1), -score
    max_fpr = abs(1 - min_tpr)
    scaled = skm.roc_auc_score(v_gt, v_pred, max_fpr=max_fpr)
    return float(0.5 * max_fpr**2 + (max_fpr - 0.5 * max_fpr**2) / (1.0 - 0.5) * (scaled - 0.5))


def probabilistic_f1(y: np.ndarray, p: np.ndarray, beta: float = 1.0) -> float:
    """Probabilistic F-beta (pF1 for beta = 1) of "RSNA Screening Mammography Breast Cancer Detection" 2023
    (its metric page "probabilistic F1 score", the host's `pfbeta` function): the confusion counts are the
    sums of the clipped probabilities, ctp = sum(p*y), cfp = sum(p*(1-y)); precision = ctp / (ctp + cfp),
    recall = ctp / sum(y); the score is (1 + beta^2) P R / (beta^2 P + R), and 0 unless P > 0 and R > 0.
    With 0/1 predictions it is the ordinary F-beta score.

    Args:
        y: (N,) 0/1 labels (cancer = 1).
        p: (N,) predicted probabilities, clipped to [0, 1].
        beta: the weight of recall (> 0).

    Returns: the score in [0, 1]. NaN when `y` has no positive case (recall undefined; the host's code divides
        by zero there). 0 when every p is 0 (the host's code divides by zero there too; no positive is
        predicted, so no credit).

    Raises:
        ValueError: lengths mismatch, a label other than 0/1, a value not finite, beta <= 0.
    """
    y, p = _arrays(y, p, 1, 1)
    y = _binary(y)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    y_true_count = y.sum()
    if y_true_count == 0:
        return NAN
    p = np.clip(p, 0.0, 1.0)
    ctp, cfp = float(np.sum(p * y)), float(np.sum(p * (1 - y)))
    if ctp + cfp == 0:
        return 0.0
    precision, recall = ctp / (ctp + cfp), ctp / y_true_count
    if precision > 0 and recall > 0:
        b2 = beta * beta
        return float((1 + b2) * precision * recall / (b2 * precision + recall))
    return 0.0


def mean_column_auc(Y: np.ndarray, P: np.ndarray) -> float:
    """Mean over the label columns of the per-column ROC-AUC, as "RANZCR CLiP - Catheter and Line Position
    Challenge" scores its 11 multi-label targets (Evaluation: the area under the ROC curve of each label,
    averaged over the labels; scikit-learn's roc_auc_score(average='macro') when every column holds both
    classes).

    Args:
        Y: (N, K) 0/1 labels, one column per target.
        P: (N, K) scores, higher = more likely positive.

    Returns: the mean AUC in [0, 1]. A column whose `Y` holds one class (no AUC of its own, e.g. a rare
        label absent from a validation fold) is left out of the mean; NaN when every column is.

    Raises:
        ValueError: shapes differ, a label other than 0/1, a value not finite.
    """
    Y, P = _same_shape(Y, P)
    Y = _binary(Y)
    aucs = [skm.roc_auc_score(Y[:, k], P[:, k]) for k in range(Y.shape[1]) if len(np.unique(Y[:, k])) == 2]
    return float(np.mean(aucs)) if aucs else NAN


def mean_column_log_loss(Y: np.ndarray, P: np.ndarray, eps: float = 1e-15) -> float:
    """Mean over the label columns of the binary log loss (lower is better): the multi-label log loss with
    equal column weights, as Kaggle's "Mean Columnwise Log Loss" metric (e.g. Mechanisms of Action) scores;
    RSNA Intracranial Hemorrhage Detection 2019 used the same loss with the 'any' column weighted higher,
    which this unweighted mean does not do. Each probability is clipped to [eps, 1-eps] (Kaggle's
    convention), each column scored by sklearn.metrics.log_loss with labels [0, 1].

    Args:
        Y: (N, K) 0/1 labels. A column with one class is still scored (log loss needs no second class).
        P: (N, K) predicted probabilities of the label being 1.
        eps: the clip bound.

    Returns: the mean loss in nats; never NaN.

    Raises:
        ValueError: shapes differ, a label other than 0/1, a value not finite.
    """
    Y, P = _same_shape(Y, P)
    Y = _binary(Y)
    P = np.clip(P, eps, 1 - eps)
    return float(np.mean([skm.log_loss(Y[:, k], P[:, k], labels=[0, 1]) for k in range(Y.shape[1])]))


def kl_divergence(Y: np.ndarray, P: np.ndarray, eps: float = 1e-15) -> float:
    """Kullback-Leibler divergence KL(Y || P) (lower is better) of "HMS - Harmful Brain Activity
    Classification" 2024, as its metric code `kaggle_kl_div` scores (micro average, no sample weights):
    P is clipped to [eps, 1-eps] (not renormalised); each element is Y log(Y / P) where Y != 0 and 0 where
    Y == 0 (scipy.special.rel_entr's convention); the row sums are averaged over the rows.

    Args:
        Y: (N, C) target distribution; each row is divided by its sum first, so expert vote counts and vote
            fractions both work (the competition's targets are the votes divided by their total).
        P: (N, C) predicted probabilities (a softmax output).
        eps: the clip bound of P.

    Returns: the mean divergence in nats, >= 0 when P's rows sum to 1; never NaN.

    Raises:
        ValueError: shapes differ, a negative Y, a Y row summing to 0, a value not finite.
    """
    Y, P = _same_shape(Y, P)
    if (Y < 0).any():
        raise ValueError("target distribution holds a negative value")
    total = Y.sum(axis=1, keepdims=True)
    if (total <= 0).any():
        raise ValueError(f"target rows summing to 0: {np.flatnonzero(total[:, 0] <= 0)[:10].tolist()}")
    Y = Y / total
    P = np.clip(P, eps, 1 - eps)
    nonzero = Y != 0
    elem = np.zeros_like(Y)
    elem[nonzero] = Y[nonzero] * np.log(Y[nonzero] / P[nonzero])
    return float(np.mean(elem.sum(axis=1)))


def rmse(y: np.ndarray, v: np.ndarray) -> float:
    """Root mean squared error (sklearn.metrics.root_mean_squared_error, scikit-learn >= 1.4; the kit needs
    >= 1.8). y: (N,) true values; v: (N,) predictions, same units. Never NaN.

    Raises:
        ValueError: lengths mismatch, a value not finite.
    """
    y, v = _arrays(y, v, 1, 1)
    return float(skm.root_mean_squared_error(y, v))


def mae(y: np.ndarray, v: np.ndarray) -> float:
    """Mean absolute error (sklearn.metrics.mean_absolute_error), e.g. bone age in months.
    y: (N,) true values; v: (N,) predictions, same units. Never NaN.

    Raises:
        ValueError: lengths mismatch, a value not finite.
    """
    y, v = _arrays(y, v, 1, 1)
    return float(skm.mean_absolute_error(y, v))


def r2(y: np.ndarray, v: np.ndarray) -> float:
    """Coefficient of determination R^2 (sklearn.metrics.r2_score): 1 - SS_res / SS_tot, higher is better,
    unbounded below. y: (N,) true values; v: (N,) predictions.

    Returns: R^2; NaN with fewer than 2 rows (undefined). A constant `y` gives scikit-learn's finite
        convention: 1.0 when v == y exactly, else 0.0.

    Raises:
        ValueError: lengths mismatch, a value not finite.
    """
    y, v = _arrays(y, v, 1, 1)
    if len(y) < 2:
        return NAN
    return float(skm.r2_score(y, v))


def laplace_log_likelihood(y: np.ndarray, out: np.ndarray, sigma_min: float = 70.0, delta_max: float = 1000.0
                           ) -> float:
    """OSIC Pulmonary Fibrosis Progression's modified Laplace log-likelihood (higher is better), from the
    competition's Evaluation page: per row sigma_c = max(Confidence, 70), delta = min(|FVC - FVC_pred|, 1000),
    metric = -sqrt(2) delta / sigma_c - ln(sqrt(2) sigma_c), averaged over the rows (Kaggle scored each
    patient's last 3 visits; the caller picks the rows). The Laplace log-density with sd sigma_c, so
    Confidence is the predicted sd (comp.likelihood).

    Args:
        y: (N,) true values (FVC in ml); out: (N, 2) predicted value and sigma (Confidence), same units.

    Raises:
        ValueError: shapes or lengths mismatch, a value not finite.
    """
    y, out = _arrays(y, out, 1, 2)
    if out.shape[1] != 2:
        raise ValueError(f"expected (N, 2) value and sigma, got shape {out.shape}")
    sigma = np.maximum(out[:, 1], sigma_min)
    delta = np.minimum(np.abs(y - out[:, 0]), delta_max)
    return float(np.mean(-np.sqrt(2) * delta / sigma - np.log(np.sqrt(2) * sigma)))
